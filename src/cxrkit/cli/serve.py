"""``cxrkit serve``: the web page and JSON API over one checkpoint (research use only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import DECODE_MEMORY_HELP, DECODE_TIMEOUT_HELP, PRECISION_HELP
from cxrkit.cli.common import run as _run


def serve(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder (best.pt) or a checkpoint file")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted file, MiB")] = 32.0,
    max_megapixels: Annotated[
        float, typer.Option(help="Largest accepted image, megapixels (2^20 px)")
    ] = 64.0,
    tta: Annotated[
        str, typer.Option(help="Test-time augmentation: none | flip | tencrop")
    ] = "none",
    thresholds: Annotated[
        Path | None, typer.Option(help="thresholds.json (default: the one beside the checkpoint)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cpu)")] = None,
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP)] = None,
    decode_timeout: Annotated[
        float | None, typer.Option(min=0.001, help=DECODE_TIMEOUT_HELP)
    ] = None,
    decode_memory: Annotated[int | None, typer.Option(min=16, help=DECODE_MEMORY_HELP)] = None,
    decode_workers: Annotated[
        int | None,
        typer.Option(min=1, help="Decoding worker processes (default: half the cores, at least 1)"),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Most concurrent /predict images run as one forward pass (1: no batching)",
        ),
    ] = 16,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            min=0,
            max=1000,
            help="Longest wait for more requests after the first, milliseconds (only while others are still decoding)",
        ),
    ] = 5.0,
) -> None:
    """Serve a page (drop an X-ray: findings chart + Grad-CAM) and a JSON API on localhost.

    API: POST /predict and POST /explain (multipart field 'file'), schema at /openapi.json.
    Research use only: not a medical device.
    """
    from cxrkit.data.decoder import decode_limits
    from cxrkit.serve import create_app, run_server
    from cxrkit.serve.runner import is_loopback

    if max_upload_mb <= 0 or max_megapixels <= 0:
        _run(_fail, "--max-upload-mb and --max-megapixels must be positive")
    app = _run(
        create_app,
        checkpoint,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=int(max_megapixels * 1024 * 1024),
        tta=tta,
        device=device,
        thresholds=thresholds,
        precision=precision,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        decode_limits=decode_limits(decode_timeout, decode_memory),
        decode_workers=decode_workers,
    )
    info = app.state.service.model_info
    service = app.state.service
    typer.echo(
        f"cxrkit serve: {info.model} from {checkpoint} on http://{host}:{port}/ "
        "(research use only, not a medical device)"
    )
    batching = (
        f"batches of up to {max_batch}, waiting at most {max_wait_ms:g} ms"
        if service.batcher.enabled
        else "no batching"
    )
    typer.echo(f"precision {service.lm.precision['used']}; {batching}")
    if info.warning:
        typer.echo(f"note: {info.warning}")
    if not is_loopback(host):
        typer.secho(
            f"warning: listening on {host}, not loopback: anyone who can reach this "
            "address can use the service (it has no authentication)",
            fg=typer.colors.YELLOW,
            err=True,
        )
    run_server(app, host=host, port=port)


def _fail(message: str):
    raise ValueError(message)

"""``cxrkit predict`` and ``cxrkit export``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import DECODE_MEMORY_HELP, DECODE_TIMEOUT_HELP, PRECISION_HELP
from cxrkit.cli.common import run as _run


def predict(
    checkpoint: Annotated[
        Path, typer.Argument(help="Run folder, checkpoint .pt, or exported .onnx")
    ],
    paths: Annotated[
        list[str], typer.Argument(help="Image files (PNG, JPEG, DICOM), folders, globs")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write FILE.csv or FILE.json")
    ] = None,
    backend: Annotated[
        str, typer.Option(help="auto | torch | onnx (auto: onnx for a .onnx file)")
    ] = "auto",
    tta: Annotated[
        str, typer.Option(help="Test-time augmentation (torch): none | flip | tencrop")
    ] = "none",
    thresholds: Annotated[
        Path | None,
        typer.Option(help="thresholds.json from cxrkit evaluate (default: beside the checkpoint)"),
    ] = None,
    metadata: Annotated[
        Path | None,
        typer.Option(
            help="CSV of patient metadata for models trained with it: columns image (file name or path), age (years or 058Y), sex (M/F), view (PA/AP); NIH's Data_Entry_2017.csv works. Default: metadata.csv beside the images, then DICOM tags"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass")] = 16,
    device: Annotated[
        str | None, typer.Option(help="torch backend: cpu, cuda, ... (default: cpu)")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="torch backend: " + PRECISION_HELP)] = None,
    top: Annotated[int, typer.Option(min=0, help="Most probable findings shown per image")] = 3,
    show: Annotated[int, typer.Option(min=0, help="Images shown in the terminal table")] = 50,
    progress: Annotated[bool, typer.Option(help="Progress bar")] = True,
    decode_timeout: Annotated[
        float | None, typer.Option(min=0.001, help=DECODE_TIMEOUT_HELP)
    ] = None,
    decode_memory: Annotated[int | None, typer.Option(min=16, help=DECODE_MEMORY_HELP)] = None,
    decode_workers: Annotated[
        int | None,
        typer.Option(min=1, help="Decoding worker processes (default: half the cores, at least 1)"),
    ] = None,
) -> None:
    """Probabilities of the 14 findings for image files, flagged at the evaluation thresholds.

    Exit code 1 when any input could not be predicted (each is listed with its reason).
    """
    from cxrkit.artefacts import check_writable
    from cxrkit.data.decoder import Decoder, decode_limits, default_workers
    from cxrkit.inference.predict import collect_inputs, load_model, predict_files

    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        typer.secho(f"error: --out {out}: write .csv or .json", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if out is not None:
        _run(check_writable, out)  # before the work, not after it
    inputs = collect_inputs(paths)
    limits = decode_limits(decode_timeout, decode_memory)
    # the decoding workers start now, in the background, while the model loads
    with Decoder(
        decode_workers or default_workers(max(1, len(inputs.files))), limits=limits
    ) as decoder:
        model = _run(
            load_model,
            checkpoint,
            backend=backend,
            device=device,
            thresholds=thresholds,
            precision=precision,
            tta=tta,
        )
        result = _run(
            predict_files,
            model,
            inputs,
            tta=tta,
            batch_size=batch_size,
            progress=progress,
            metadata=metadata,
            decoder=decoder,
        )
    typer.echo(result.summary(top=top, limit=show))
    source = result.thresholds_source or "0.5 (none chosen at evaluation)"
    typer.echo(
        f"{len(result.images) - result.n_failed} predicted, {result.n_failed} failed "
        f"(forward pass: {result.ran_by or result.backend}, {result.backend} backend; "
        f"{result.model}; thresholds: {source})"
    )
    if result.skipped:
        shown = ", ".join(Path(p).name for p in result.skipped[:3])
        typer.echo(
            f"note: {len(result.skipped)} file(s) in the folders are not PNG/JPEG/DICOM "
            f"and were not read ({shown}{', ...' if len(result.skipped) > 3 else ''})"
        )
    if result.metadata_missing:
        typer.echo(
            f"note: {len(result.metadata_missing)} image(s) lacked patient metadata "
            "(defaults used: age missing, sex F, view PA); listed in the "
            "warning above and in --out JSON"
        )
    if out is not None:
        _run(result.save, out)
        typer.echo(f"-> {out}")
    if result.n_failed:
        typer.secho(
            f"error: {result.n_failed} input(s) could not be predicted (see above)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Run folder or checkpoint .pt")],
    format: Annotated[str, typer.Option("--format", help="Export format (onnx)")] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Default: beside the checkpoint, best.onnx")
    ] = None,
    parity_images: Annotated[
        list[str] | None,
        typer.Option(
            "--parity-images",
            help="Real images for the parity check (files, folders, globs; repeatable), e.g. --parity-images DIR; default: 8 of the NIH sample's 256 px images and a 1024 px original, when $CXRKIT_NIH_SAMPLE or shared/nih beside the source checkout holds it",
        ),
    ] = None,
    phantoms: Annotated[int, typer.Option(min=0, help="Phantom images in the parity check")] = 6,
    thresholds: Annotated[
        Path | None, typer.Option(help="thresholds.json to record (default: beside the checkpoint)")
    ] = None,
) -> None:
    """Export to ONNX with the preprocessing inside the graph; check parity with PyTorch."""
    from cxrkit.inference.export import default_parity_images, default_parity_source, export_onnx

    if format != "onnx":
        typer.secho(
            f"error: --format {format}: only onnx is supported", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2)
    if parity_images:
        real = image_files("--parity-images", parity_images)
        source = f"--parity-images {' '.join(parity_images)}"
    else:
        real = default_parity_images()
        source = default_parity_source(real)
    r = _run(
        export_onnx,
        checkpoint,
        out,
        parity_images=real,
        n_phantoms=phantoms,
        thresholds=thresholds,
        parity_source=source,
    )
    p = r["parity"]
    typer.echo(
        f"{r['path']}: {r['model']['name']}, opset {r['opset']}, input uint8 "
        f"(batch, 1, {r['preprocess']['cache']['size']}, {r['preprocess']['cache']['size']})"
    )
    for kind, k in p["by_kind"].items():
        typer.echo(
            f"  parity on {k['n']} {kind} image(s): max |dp| {k['max_abs_diff_probability']:.2e}, "
            f"max |dlogit| {k['max_abs_diff_logit']:.2e}"
        )
    typer.echo(
        f"  overall: max |dp| {p['max_abs_diff_probability']:.2e} (tolerance "
        f"{p['tolerances']['probability']:g}), max |dlogit| {p['max_abs_diff_logit']:.2e}"
        f" -> passed; contract in {r['sidecar']}"
    )
    typer.echo(f"  checked: {'; '.join(p['checked'])}")
    for line in p["not_checked"]:
        typer.secho(f"  not checked: {line}", fg=typer.colors.YELLOW)
    if p.get("ood_score"):
        o = p["ood_score"]
        typer.echo(
            f"  OOD score: max relative difference {o['max_rel_diff_score']:.2e} (tolerance "
            f"{o['tolerance_relative']:g}), flags agree: {o['flags_agree']}"
        )
    else:
        typer.secho(
            "  no OOD record: the export reports no out-of-distribution score "
            "(run `cxrkit ood RUN`, then export again)",
            fg=typer.colors.YELLOW,
        )
    if not r["thresholds"]:
        logging.getLogger(__name__).warning(
            "no thresholds recorded (run `cxrkit evaluate` before exporting, or pass "
            "--thresholds); predictions will flag findings at 0.5"
        )


def image_files(option: str, patterns: list[str]) -> list[Path]:
    """The image files an option's files, folders and globs name; exit 2 on the first
    that names none (the option and the reason in one line)."""
    from cxrkit.inference.predict import collect_inputs

    inputs = collect_inputs(patterns)
    if inputs.problems:
        text, why = inputs.problems[0]
        typer.secho(f"error: {option} {text}: {why}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return inputs.files

"""``cxrkit audit``: is the model reading the chest? (:mod:`cxrkit.audit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import run as _run


def audit(
    run: Annotated[Path, typer.Argument(help="A run folder (best.pt) or a checkpoint file")],
    split: Annotated[str, typer.Option(help="Split to audit: test, val or train")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default RUN/audit/SPLIT)")
    ] = None,
    prepared: Annotated[
        Path | None, typer.Option(help="Prepared folder, if moved since training")
    ] = None,
    bootstrap: Annotated[int, typer.Option(min=10, help="Patient-bootstrap replicates")] = 1000,
    saliency_limit: Annotated[
        int, typer.Option(min=1, help="Grad-CAM on at most this many positives per finding")
    ] = 200,
    occlusion_limit: Annotated[
        int,
        typer.Option(
            min=0, help="Occlusion sensitivity on at most this many of those (0: none; slow)"
        ),
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap, samples and probe folds")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cpu)")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Shortcut audit of a trained model on one split: occlusion, saliency, probes, views, size."""
    from cxrkit.audit import audit_run

    record = _run(
        audit_run,
        run,
        split=split,
        out=out,
        prepared=prepared,
        bootstrap=bootstrap,
        saliency_limit=saliency_limit,
        occlusion_limit=occlusion_limit,
        seed=seed,
        device=device,
        progress=progress,
    )
    typer.echo(
        f"audit of {record['model']} on {split} ({record['n_images']:,} images; chest "
        f"region: {record['chest_region']['source']}) -> {record['out']}"
    )
    for f in record["flags"]:
        typer.echo(f"  FLAG {f['finding']} [{f['measure']}]: {f['action']}")
    if not record["flags"]:
        typer.echo("  no flags")

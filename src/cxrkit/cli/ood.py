"""``cxrkit ood``: a checkpoint's out-of-distribution record, computed when it has none."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import run as _run


def ood(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder (best.pt) or a checkpoint file")],
    prepared: Annotated[
        Path | None, typer.Option(help="Prepared folder, if moved since training")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Recompute even when the checkpoint has a record")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cpu)")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Out-of-distribution record: show the one in use, or compute it from the run's prepared
    cache (``--force``: again) into ``<checkpoint>.ood.json``, which is then the one used."""
    from cxrkit.inference.core import load
    from cxrkit.inference.heldout import ensure_ood_record

    lm = _run(load, checkpoint, device=device)
    had = lm.ood_record is not None and not force
    rec = _run(ensure_ood_record, lm, prepared, force=force, progress=progress)
    how = f"recorded ({lm.ood_source})" if had else f"computed, written to {lm.ood_source}"
    typer.echo(f"{lm.checkpoint}: out-of-distribution record {how}")
    if not had:
        typer.echo(
            f"  predict, serve, evaluate and export use it for this checkpoint from now on "
            f"(in place of any record inside {lm.checkpoint.name})"
        )
    typer.echo(
        f"  fitted on {rec['train']['n']:,} train images, calibrated on "
        f"{rec['val']['n']:,} val images; {rec['val']['flag_rate']:.1%} of val flagged"
    )
    engine = rec.get("provenance", {}).get("features_engine")
    if engine:
        typer.echo(f"  features by {engine['ran_by']} ({engine['used']})")
    typer.echo(f"  method: {rec['method']}")

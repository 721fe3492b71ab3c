"""``cxrkit train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import run as _run


def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="A YAML recipe (see configs/)")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Run folder (overrides the recipe)")] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore last.pt in the run folder (no resume)")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Train a model. Extra arguments are overrides: train.lr=1e-4 model.name=densenet121.

    Re-running the same command resumes from the run folder's last.pt.
    """
    from cxrkit.config import load_config
    from cxrkit.engine.train import fit

    overrides = list(ctx.args) + ([f"out={out}"] if out else [])
    if config is not None and "=" in str(config) and not config.exists():
        overrides, config = [str(config), *overrides], None  # no recipe: defaults + overrides
    cfg = _run(load_config, config, overrides)
    summary = _run(fit, cfg, resume=not fresh, show_progress=progress)
    if summary:
        typer.echo(f"{summary['status']}: best validation mean AUROC "
                   f"{summary['best_val_mean_auroc']:.4f} after {summary['epochs_run']} epochs "
                   f"({summary['seconds']:.0f} s) -> {cfg.out}")

"""``cxrkit train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import run as _run


def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="A YAML recipe (see configs/)")] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Run folder (overrides the recipe)")
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            help="Start the run folder again: delete its checkpoints and records, no resume"
        ),
    ] = False,
    show_config: Annotated[
        bool, typer.Option(help="Print the resolved config with each field's meaning and exit")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Train a model. Extra arguments are overrides: train.lr=1e-4 model.name=densenet121.

    Re-running the same command resumes from the run folder's last.pt; other settings
    are refused (except train.epochs, workers, threads, ...) unless --fresh is given.
    """
    from cxrkit.config import describe_config, load_config
    from cxrkit.engine.train import fit

    overrides = list(ctx.args) + ([f"out={out}"] if out else [])
    if config is not None and "=" in str(config) and not config.exists():
        overrides, config = [str(config), *overrides], None  # no recipe: defaults + overrides
    cfg = _run(load_config, config, overrides)
    if show_config:
        typer.echo(describe_config(cfg), nl=False)
        return
    summary = _run(fit, cfg, resume=not fresh, show_progress=progress)
    if summary:
        best = summary["best_val_mean_auroc"]
        typer.echo(
            f"{summary['status']}: best validation mean AUROC "
            f"{'undefined' if best is None else f'{best:.4f}'} after "
            f"{summary['epochs_run']} epochs ({summary['seconds']:.0f} s) -> {cfg.out}"
        )

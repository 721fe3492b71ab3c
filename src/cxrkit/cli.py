"""The ``cxrkit`` command: a thin Typer shell over the Python API.

Each command parses options, calls one library function and prints its result. Logic
lives in the library so that everything here is also scriptable from Python.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Chest X-ray classification on NIH ChestX-ray14.")

_KNOWN_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError)


def _setup_logging(verbose: bool) -> None:
    import os

    if not sys.stderr.isatty():  # logs and CI: a progress line every 10 s, not every batch
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    warnings.simplefilter("default")
    logging.captureWarnings(True)


def _run(fn, *args, **kwargs):
    """Call library code; turn expected errors into one clear line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except _KNOWN_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def phantoms(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write an NIH-layout release into")],
    patients: Annotated[int, typer.Option(help="Number of patients")] = 300,
    size: Annotated[int, typer.Option(help="Image side in pixels")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes)")] = 0,
) -> None:
    """Write synthetic chest radiographs in NIH's exact layout (for demos and tests)."""
    from cxrkit.data.phantoms import make_phantoms

    release = _run(make_phantoms, out_dir, n_patients=patients, image_size=size, seed=seed)
    typer.echo(f"wrote {release}")


@app.command()
def validate(
    root: Annotated[Path, typer.Argument(help="Unpacked release (metadata and images)")],
    labels: Annotated[Path | None, typer.Option(help="Label file, if not found under ROOT")] = None,
    images: Annotated[bool, typer.Option(help="Also check every image is on disk")] = True,
) -> None:
    """Read and cross-check a release's metadata; report what was found."""
    from cxrkit.data.images import find_images
    from cxrkit.data.release import load_release, match_images
    from cxrkit.data.splits import official_split

    rel = _run(load_release, root, label_file=labels)
    typer.echo(rel.report.summary())
    if rel.boxes is not None:
        typer.echo(f"boxes: {len(rel.boxes):,} on {rel.boxes['image_id'].nunique():,} images")
    if rel.has_official_split:
        _run(official_split, rel.labels, rel.train_val, rel.test, val_fraction=0.0)  # checks leakage
        typer.echo(f"official split: {len(rel.train_val):,} train_val / {len(rel.test):,} test "
                   "images, no patient in both")
    if images:
        table = _run(match_images, rel.labels, find_images(root), on_missing="error")
        typer.echo(f"images: all {len(table):,} on disk")


@app.command()
def prepare(
    root: Annotated[Path, typer.Argument(help="Unpacked release (metadata and images)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the cache")],
    size: Annotated[int, typer.Option(help="Square side of cached images, pixels")] = 256,
    clahe: Annotated[bool, typer.Option(help="Contrast-limited histogram equalisation")] = False,
    crop: Annotated[bool, typer.Option(help="Crop to the exposed chest region")] = False,
    images_root: Annotated[Path | None, typer.Option(help="Images, if not under ROOT")] = None,
    labels: Annotated[Path | None, typer.Option(help="Label file, if not found under ROOT")] = None,
    on_missing: Annotated[str, typer.Option(help="error | drop (drop writes what it dropped)")] = "error",
    protocol: Annotated[str, typer.Option(help="official | random")] = "official",
    val_fraction: Annotated[float, typer.Option(help="Validation share of train_val (official)")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the validation/random split")] = 0,
    workers: Annotated[int | None, typer.Option(help="Decode processes (default: all cores)")] = None,
) -> None:
    """Validate, split and decode a release once into a fast image cache."""
    from cxrkit.data.cache import PreprocessSettings
    from cxrkit.data.prepare import prepare as run_prepare
    from cxrkit.data.splits import split_summary

    settings = PreprocessSettings(size=size, clahe=clahe, crop=crop)
    prepared = _run(run_prepare, root, out, settings=settings, images_root=images_root,
                    label_file=labels, on_missing=on_missing, protocol=protocol,
                    val_fraction=val_fraction, seed=seed, workers=workers)
    summary = split_summary(prepared.split[prepared.split["image_id"].isin(prepared.labels["image_id"])])
    typer.echo(summary.to_string())
    typer.echo(f"cache: {len(prepared.cache):,} images at {size}x{size} in {out}")


@app.command()
def split(
    prepared: Annotated[Path, typer.Argument(help="Folder written by `cxrkit prepare`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Split CSV to write")],
    protocol: Annotated[str, typer.Option(help="official | random")] = "official",
    val_fraction: Annotated[float, typer.Option(help="Validation share of train_val")] = 0.1,
    fractions: Annotated[str, typer.Option(help="train,val,test shares (random)")] = "0.7,0.1,0.2",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Make another patient-disjoint split of a prepared release (leakage checked)."""
    import json

    from cxrkit.data.prepare import make_split
    from cxrkit.data.release import load_release
    from cxrkit.data.splits import save_split, split_summary

    info = json.loads((prepared / "dataset.json").read_text())
    rel = _run(load_release, info["release_root"], label_file=info["files"]["labels"])
    parts = tuple(float(x) for x in fractions.split(","))
    table, prov = _run(make_split, rel, protocol=protocol, val_fraction=val_fraction,
                       fractions=parts, seed=seed)
    save_split(table, out, **prov)
    typer.echo(split_summary(table, rel.labels).to_string())
    typer.echo(f"wrote {out}")


@app.command()
def stats(
    root: Annotated[Path, typer.Argument(help="A release folder or a prepared folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for plots and tables")],
    val_fraction: Annotated[float, typer.Option(help="Validation share (official split)")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Prevalence, co-occurrence and demographics per split, as PNG plots and tables."""
    from cxrkit.eda import describe

    if (root / "dataset.json").exists():
        from cxrkit.data.prepare import load_prepared
        p = _run(load_prepared, root)
        labels, split_table, boxes = p.labels, p.split, p.boxes
    else:
        from cxrkit.data.prepare import make_split
        from cxrkit.data.release import load_release
        rel = _run(load_release, root)
        labels, boxes = rel.labels, rel.boxes
        split_table = None
        if rel.has_official_split:
            split_table, _ = _run(make_split, rel, val_fraction=val_fraction, seed=seed)
    result = _run(describe, labels, split_table, out, boxes=boxes, title=str(root))
    typer.echo(f"wrote {len(result.files)} files to {out}")
    summary = out / "summary.md"
    if summary.exists():
        typer.echo(summary.read_text())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
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


if __name__ == "__main__":  # pragma: no cover
    app()

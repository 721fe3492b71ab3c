"""Data commands: phantoms, validate, prepare, split, stats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import FRACTION
from cxrkit.cli.common import run as _run

#: cxrkit.data.images.MIN_IMAGE_SIDE (not imported here: that module loads OpenCV); the
#: cache refuses smaller images, so phantoms are made at least this large.
MIN_SIDE = 32
#: cxrkit.data.phantoms.MAX_IMAGE_SIDE (the largest side the image cache accepts).
MAX_SIDE = 4096


def phantoms(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write an NIH-layout release into")],
    patients: Annotated[int, typer.Option(min=1, help="Number of patients")] = 300,
    size: Annotated[int, typer.Option(min=MIN_SIDE, max=MAX_SIDE, help="Image side in pixels")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes)")] = 0,
    label_noise: Annotated[str, typer.Option(help="NIH-style label errors: moderate | measured | none")] = "moderate",
    like: Annotated[Path | None, typer.Option(
        help="NIH metadata folder: draw its twin (one phantom per real row, real boxes, lists "
             "and archive layout; its real labels: --patients and --label-noise are ignored)")] = None,
    fraction: Annotated[float, typer.Option(help="With --like: share of patients kept")] = 1.0,
    workers: Annotated[int | None, typer.Option(help="With --like: processes (default: all cores)")] = None,
) -> None:
    """Write synthetic chest radiographs in NIH's exact layout (for demos and tests)."""
    if like is None and (fraction != 1.0 or workers is not None):
        raise typer.BadParameter("--fraction and --workers apply to a twin: add --like META_DIR")
    if like is not None:
        from cxrkit.data.twin import make_twin

        release = _run(make_twin, out_dir, like, fraction=fraction, image_size=size, seed=seed,
                       workers=workers)
        typer.echo(f"wrote {release}")
        return
    from cxrkit.data.phantoms import make_phantoms

    release = _run(make_phantoms, out_dir, n_patients=patients, image_size=size, seed=seed,
                   label_noise=label_noise)
    typer.echo(f"wrote {release}")


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
    if rel.box_report is not None:
        typer.echo(rel.box_report.summary())
    if rel.has_official_split:
        _run(official_split, rel.labels, rel.train_val, rel.test, val_fraction=0.0)  # checks leakage
        typer.echo(f"official split: {len(rel.train_val):,} train_val / {len(rel.test):,} test "
                   "images, no patient in both")
    if images:
        index = _run(find_images, root, warn=False)
        if index.bad:
            typer.echo(f"warning: {len(index.bad):,} bad file(s) under {root} (not readable "
                       "image files; prepare records labelled ones as errors):")
            for path, reason in list(index.bad.items())[:20]:
                typer.echo(f"  {path}: {reason}")
            if len(index.bad) > 20:
                typer.echo(f"  ... and {len(index.bad) - 20:,} more")
        table = _run(match_images, rel.labels, index, on_missing="error")
        n_bad = int(table["path"].isin(index.bad).sum())
        typer.echo(f"images: all {len(table):,} on disk"
                   + (f", {n_bad:,} of them bad files (listed above)" if n_bad else ""))


def prepare(
    root: Annotated[Path, typer.Argument(help="Unpacked release (metadata and images)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the cache")],
    size: Annotated[int, typer.Option(min=8, max=4096, help="Square side of cached images, pixels")] = 256,
    clahe: Annotated[bool, typer.Option(help="Contrast-limited histogram equalisation")] = False,
    crop: Annotated[bool, typer.Option(help="Crop to the exposed chest region")] = False,
    images_root: Annotated[Path | None, typer.Option(help="Images, if not under ROOT")] = None,
    labels: Annotated[Path | None, typer.Option(help="Label file, if not found under ROOT")] = None,
    on_missing: Annotated[str, typer.Option(help="error | drop (drop writes what it dropped)")] = "error",
    protocol: Annotated[str, typer.Option(help="official | random")] = "official",
    val_fraction: Annotated[float, typer.Option(callback=FRACTION, help="Validation share of train_val (official)")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the validation/random split")] = 0,
    workers: Annotated[int | None, typer.Option(min=0, help="Decode processes (default: all cores; 0: in this process)")] = None,
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


def split(
    prepared: Annotated[Path, typer.Argument(help="Folder written by `cxrkit prepare`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Split CSV to write")],
    protocol: Annotated[str, typer.Option(help="official | random")] = "official",
    val_fraction: Annotated[float, typer.Option(callback=FRACTION, help="Validation share of train_val")] = 0.1,
    fractions: Annotated[str, typer.Option(help="train,val,test shares (random)")] = "0.7,0.1,0.2",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Make another patient-disjoint split of a prepared release (leakage checked)."""
    from cxrkit.data.prepare import load_prepared, make_split
    from cxrkit.data.release import load_release
    from cxrkit.data.splits import save_split, split_summary

    info = _run(load_prepared, prepared).info
    rel = _run(load_release, info["release_root"], label_file=info["files"]["labels"])
    parts = tuple(float(x) for x in fractions.split(","))
    table, prov = _run(make_split, rel, protocol=protocol, val_fraction=val_fraction,
                       fractions=parts, seed=seed)
    _run(save_split, table, out, **prov)
    typer.echo(split_summary(table, rel.labels).to_string())
    typer.echo(f"wrote {out}")


def stats(
    root: Annotated[Path, typer.Argument(help="A release folder or a prepared folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for plots and tables")],
    val_fraction: Annotated[float, typer.Option(callback=FRACTION, help="Validation share (official split)")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Prevalence, co-occurrence and demographics per split, as PNG plots and tables."""
    from cxrkit.artefacts import PreparedFolder
    from cxrkit.eda import describe

    if PreparedFolder(root).dataset.exists():
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
    typer.echo(result.summary)

"""Data commands: phantoms, validate, prepare, split, stats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import FRACTION
from cxrkit.cli.common import run as _run


def _cacheable_size(size: int) -> int:
    """Phantoms of a side the cache accepts: at least :data:`cxrkit.data.images.MIN_IMAGE_SIDE`,
    at most :data:`cxrkit.data.phantoms.generator.MAX_IMAGE_SIDE` (imported when the option is
    read: those modules load OpenCV)."""
    from cxrkit.data.images import MIN_IMAGE_SIDE
    from cxrkit.data.phantoms.generator import MAX_IMAGE_SIDE

    if size < MIN_IMAGE_SIDE:
        raise typer.BadParameter(
            f"{size} is smaller than {MIN_IMAGE_SIDE}, the smallest image side the cache accepts"
        )
    if size > MAX_IMAGE_SIDE:
        raise typer.BadParameter(
            f"{size} is larger than {MAX_IMAGE_SIDE}, the largest image side the cache accepts"
        )
    return size


def phantoms(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write an NIH-layout release into")],
    patients: Annotated[int, typer.Option(min=1, help="Number of patients")] = 300,
    size: Annotated[
        int,
        typer.Option(
            callback=_cacheable_size, help="Image side in pixels (at least the cache's minimum)"
        ),
    ] = 256,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes)")] = 0,
    label_noise: Annotated[
        str, typer.Option(help="NIH-style label errors: moderate | measured | none")
    ] = "moderate",
    like: Annotated[
        Path | None,
        typer.Option(
            help="NIH metadata folder: draw its twin (one phantom per real row, real boxes, lists "
            "and archive layout; its real labels: --patients and --label-noise are ignored)"
        ),
    ] = None,
    fraction: Annotated[float, typer.Option(help="With --like: share of patients kept")] = 1.0,
    workers: Annotated[
        int | None, typer.Option(help="With --like: processes (default: all cores)")
    ] = None,
    shortcut: Annotated[
        str | None,
        typer.Option(
            help="FINDING:STRENGTH: plant a spurious token outside the lungs on that share of the "
            "finding's train_val positives and of random test images (for cxrkit audit)"
        ),
    ] = None,
    independent: Annotated[
        list[str] | None,
        typer.Option(
            help="FINDING (repeatable): draw its labels independent of view, sex, age and the "
            "other findings, at the same prevalence (a confound-free control)"
        ),
    ] = None,
) -> None:
    """Write synthetic chest radiographs in NIH's exact layout (for demos and tests)."""
    if like is not None and (shortcut is not None or independent):
        raise typer.BadParameter(
            "--shortcut and --independent apply to phantoms, not to a twin (--like)"
        )
    if like is None and (fraction != 1.0 or workers is not None):
        raise typer.BadParameter("--fraction and --workers apply to a twin: add --like META_DIR")
    if like is not None:
        from cxrkit.data.phantoms.twin import make_twin

        release = _run(
            make_twin, out_dir, like, fraction=fraction, image_size=size, seed=seed, workers=workers
        )
        typer.echo(f"wrote {release}")
        return
    from cxrkit.data.phantoms import make_phantoms

    release = _run(
        make_phantoms,
        out_dir,
        n_patients=patients,
        image_size=size,
        seed=seed,
        label_noise=label_noise,
        shortcut=shortcut,
        independent=independent or (),
    )
    typer.echo(f"wrote {release}")


# -- where a release's files are: one option set, shared by validate and prepare --------
ROOT = Annotated[Path, typer.Argument(help="Unpacked release (metadata and images)")]
IMAGES_ROOT = Annotated[
    list[Path] | None,
    typer.Option(
        "--images-root", help="Folder holding the images, if not ROOT (repeat for several)"
    ),
]
LABELS = Annotated[Path | None, typer.Option(help="Label file, if not found under ROOT")]
BOXES = Annotated[Path | None, typer.Option(help="BBox_List_2017.csv, if not found under ROOT")]
TRAIN_VAL_LIST = Annotated[
    Path | None, typer.Option(help="train_val_list.txt, if not found under ROOT")
]
TEST_LIST = Annotated[Path | None, typer.Option(help="test_list.txt, if not found under ROOT")]
ON_MISSING = Annotated[
    str,
    typer.Option(
        help="Label-file images not on disk: error | drop (prepare writes what it dropped)"
    ),
]


def _sources(root, images_root, labels, boxes, train_val_list, test_list, on_missing):
    """The :class:`~cxrkit.data.release.ReleaseSources` the shared options describe."""
    from cxrkit.data.release import ReleaseSources

    return _run(
        ReleaseSources,
        root,
        images_roots=tuple(images_root or ()),
        label_file=labels,
        box_file=boxes,
        train_val_list=train_val_list,
        test_list=test_list,
        on_missing=on_missing,
    )


def validate(
    root: ROOT,
    images_root: IMAGES_ROOT = None,
    labels: LABELS = None,
    boxes: BOXES = None,
    train_val_list: TRAIN_VAL_LIST = None,
    test_list: TEST_LIST = None,
    on_missing: ON_MISSING = "error",
    images: Annotated[bool, typer.Option(help="Also check every image is on disk")] = True,
) -> None:
    """Read and cross-check a release's metadata and images; report what was found."""
    from cxrkit.data.validate import validate_release

    sources = _sources(root, images_root, labels, boxes, train_val_list, test_list, on_missing)
    _run(_echo_lines, validate_release(sources, images=images))


def _echo_lines(lines) -> None:
    for line in lines:  # each as it comes: an error follows what was already found
        typer.echo(line)


def prepare(
    root: ROOT,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the cache")],
    size: Annotated[
        int, typer.Option(min=8, max=4096, help="Square side of cached images, pixels")
    ] = 256,
    clahe: Annotated[bool, typer.Option(help="Contrast-limited histogram equalisation")] = False,
    crop: Annotated[bool, typer.Option(help="Crop to the exposed chest region")] = False,
    images_root: IMAGES_ROOT = None,
    labels: LABELS = None,
    boxes: BOXES = None,
    train_val_list: TRAIN_VAL_LIST = None,
    test_list: TEST_LIST = None,
    on_missing: ON_MISSING = "error",
    protocol: Annotated[str, typer.Option(help="official | random")] = "official",
    val_fraction: Annotated[
        float, typer.Option(callback=FRACTION, help="Validation share of train_val (official)")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the validation/random split")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Decode processes (default: all cores; 0: in this process)"),
    ] = None,
) -> None:
    """Validate, split and decode a release once into a fast image cache."""
    from cxrkit.data.cache import PreprocessSettings
    from cxrkit.data.prepare import prepare as run_prepare
    from cxrkit.data.splits import split_summary

    sources = _sources(root, images_root, labels, boxes, train_val_list, test_list, on_missing)
    settings = PreprocessSettings(size=size, clahe=clahe, crop=crop)
    prepared = _run(
        run_prepare,
        sources,
        out,
        settings=settings,
        protocol=protocol,
        val_fraction=val_fraction,
        seed=seed,
        workers=workers,
    )
    summary = split_summary(
        prepared.split[prepared.split["image_id"].isin(prepared.labels["image_id"])]
    )
    typer.echo(summary.to_string())
    typer.echo(f"cache: {len(prepared.cache):,} images at {size}x{size} in {out}")


def split(
    prepared: Annotated[Path, typer.Argument(help="Folder written by `cxrkit prepare`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Split CSV to write")],
    protocol: Annotated[str, typer.Option(help="official | random")] = "official",
    val_fraction: Annotated[
        float, typer.Option(callback=FRACTION, help="Validation share of train_val")
    ] = 0.1,
    fractions: Annotated[str, typer.Option(help="train,val,test shares (random)")] = "0.7,0.1,0.2",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Make another patient-disjoint split of a prepared release (leakage checked)."""
    from cxrkit.data.prepare import resplit
    from cxrkit.data.splits import split_summary

    parts = tuple(float(x) for x in fractions.split(","))
    table, labels = _run(
        resplit,
        prepared,
        out,
        protocol=protocol,
        val_fraction=val_fraction,
        fractions=parts,
        seed=seed,
    )
    typer.echo(split_summary(table, labels).to_string())
    typer.echo(f"wrote {out}")


def stats(
    root: Annotated[Path, typer.Argument(help="A release folder or a prepared folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for plots and tables")],
    val_fraction: Annotated[
        float, typer.Option(callback=FRACTION, help="Validation share (official split)")
    ] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Prevalence, co-occurrence and demographics per split, as PNG plots and tables."""
    from cxrkit.data.eda import describe_folder

    result = _run(describe_folder, root, out, val_fraction=val_fraction, seed=seed)
    typer.echo(f"wrote {len(result.files)} files to {out}")
    typer.echo(result.summary)

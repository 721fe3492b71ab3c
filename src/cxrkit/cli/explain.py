"""``cxrkit explain`` and ``cxrkit localize``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import PRECISION_HELP
from cxrkit.cli.common import in_range
from cxrkit.cli.common import run as _run

_SPLITS = ("train", "val", "test")


def explain(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder (best.pt) or a checkpoint file")],
    images: Annotated[
        list[str],
        typer.Argument(help="Image files (PNG/JPEG/DICOM), or one split name: test | val | train"),
    ],
    method: Annotated[
        str, typer.Option(help="gradcam | gradcam++ | smoothgrad | integrated-gradients")
    ] = "gradcam",
    finding: Annotated[
        list[str] | None,
        typer.Option(help="Finding(s) to explain (repeatable); default: each image's top findings"),
    ] = None,
    top_k: Annotated[
        int, typer.Option(min=1, help="Findings per image when --finding is not given")
    ] = 3,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Default: RUN/explain (where the evaluation report looks)"
        ),
    ] = None,
    prepared: Annotated[
        Path | None, typer.Option(help="Prepared folder, if moved since training (split mode)")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Split mode: only the first N images (by name)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch")] = 8,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cpu)")] = None,
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP)] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Saliency overlays (PNG) and raw maps (.npy) for images or a whole split, with index.csv."""
    from cxrkit.explain.images import explain_images, explain_split

    findings = list(finding) if finding else None
    if len(images) == 1 and images[0] in _SPLITS and not Path(images[0]).exists():
        index = _run(
            explain_split,
            checkpoint,
            out,
            split=images[0],
            prepared=prepared,
            method=method,
            findings=findings,
            top_k=top_k,
            limit=limit,
            batch_size=batch_size,
            device=device,
            precision=precision,
            progress=progress,
        )
    else:
        index = _run(
            explain_images,
            checkpoint,
            images,
            out,
            method=method,
            findings=findings,
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            precision=precision,
            progress=progress,
        )
    typer.echo(
        f"{index['image'].nunique():,} images, {len(index):,} maps ({method}) -> "
        f"{index.attrs['out']}/index.csv"
    )
    errors = index.attrs.get("errors") or {}
    if errors:
        for image, why in list(errors.items())[:20]:
            typer.secho(f"error: {image}: {why}", fg=typer.colors.RED, err=True)
        typer.secho(
            f"error: {len(errors)} image(s) could not be explained (listed in "
            f"{index.attrs['out']}/errors.csv)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)


def localize(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder (best.pt) or a checkpoint file")],
    method: Annotated[
        str, typer.Option(help="gradcam | gradcam++ | smoothgrad | integrated-gradients")
    ] = "gradcam",
    split: Annotated[str, typer.Option(help="Split whose box images are scored")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Default: RUN/localize (where the evaluation report looks)"
        ),
    ] = None,
    prepared: Annotated[
        Path | None, typer.Option(help="Prepared folder, if moved since training")
    ] = None,
    threshold: Annotated[
        float,
        typer.Option(
            callback=in_range(0.0, 1.0, lo_open=True),
            help="Map threshold, fraction of its maximum (Wang: 180/255)",
        ),
    ] = 180 / 255,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N box images (by name)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Maps per batch")] = 16,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cpu)")] = None,
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP)] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Localisation benchmark: maps -> boxes, IoU/IoBB accuracy, pointing game, vs Wang et al."""
    from cxrkit.explain.localize import localize_checkpoint

    r = _run(
        localize_checkpoint,
        checkpoint,
        split=split,
        method=method,
        out=out,
        prepared=prepared,
        threshold=threshold,
        limit=limit,
        batch_size=batch_size,
        device=device,
        precision=precision,
        progress=progress,
    )
    o, c = r["overall"], r["counts"]
    typer.echo(
        f"{split}: {c['pairs_scored']:,} (image, finding) pairs on {c['images_scored']:,} "
        f"box images, {method}, in {r['space']}"
    )
    typer.echo(
        f"{'finding':<14} {'pairs':>5} {'IoBB>0.1':>9} {'IoBB>0.5':>9} {'IoU>0.1':>8} "
        f"{'IoU>0.5':>8} {'pointing':>9} {'chance':>7}"
    )
    rows = list(r["per_finding"].items()) + [("all", o)]
    for f, s in rows:
        a, u = s["iobb_accuracy"], s["iou_accuracy"]
        typer.echo(
            f"{f:<14} {s['pairs']:>5} {a['0.1']:>9.3f} {a['0.5']:>9.3f} {u['0.1']:>8.3f} "
            f"{u['0.5']:>8.3f} {s['pointing_rate']:>9.3f} {s['pointing_chance']:>7.3f}"
        )
    typer.echo(f"pointing game p-value vs chance: {o['pointing_p_value']:.3g}")
    for note in r["notes"]:
        typer.echo(f"note: {note}")
    folder = r["out"]
    typer.echo(
        f"Wang et al. 2017 beside ours in accuracy.csv and summary.md (protocol "
        f"differences listed there) -> {folder}"
    )

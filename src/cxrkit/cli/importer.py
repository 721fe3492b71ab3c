"""``cxrkit import``: a published model file -> a run folder (:mod:`cxrkit.importer`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import run as _run
from cxrkit.cli.predict import image_files


def import_(
    file: Annotated[Path, typer.Argument(help="The published model file (.pth, .pth.tar, .pt)")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="chexnet-state-dict | chexnet-pickled | torchxrayvision | torchvision | timm | auto",
        ),
    ] = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="The run folder to write")] = Path(
        "runs/imported"
    ),
    arch: Annotated[
        str | None,
        typer.Option(
            help="torchvision/timm formats: the architecture (densenet121, resnet50, efficientnet_b0, ...)"
        ),
    ] = None,
    prepared: Annotated[
        Path | None,
        typer.Option(
            help="Prepared folder to evaluate on (its cache settings and split are recorded; needed by evaluate, explain, localize)"
        ),
    ] = None,
    outputs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated output names, when the file's order is not its format's"
        ),
    ] = None,
    check_images: Annotated[
        list[str] | None,
        typer.Option(
            "--check-images",
            help="Images for the parity and untrained checks (files, folders, globs); default: the NIH sample's images_256, else phantoms",
        ),
    ] = None,
    check_count: Annotated[
        int, typer.Option(min=2, help="Images for the untrained check (default sample)")
    ] = 32,
    parity_count: Annotated[
        int, typer.Option(min=1, help="Of those, images for the parity check")
    ] = 4,
    force: Annotated[bool, typer.Option(help="Replace a run already in --out")] = False,
) -> None:
    """Import a model trained elsewhere as a cxrkit run folder, checked against its authors' code."""
    from cxrkit.importer import check_images as _images
    from cxrkit.importer import import_model
    from cxrkit.inference.export import nih_sample_folder

    paths = image_files("--check-images", check_images) if check_images else []
    nih = nih_sample_folder()
    names = [s.strip() for s in outputs.split(",")] if outputs else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = _run(
            import_model,
            file,
            format,
            out,
            arch=arch,
            outputs=names,
            prepared=prepared,
            images=lambda: _images(paths, n=check_count, nih=nih),
            parity_count=parity_count,
            force=force,
        )
    s = m["source"]
    typer.echo(f"{out}: {s['format']} ({s['arch']}) from {file}, sha256 {s['sha256'][:12]}...")
    mapped = [r for r in m["outputs"] if r["finding"]]
    typer.echo(f"  outputs: {len(mapped)} of {len(m['outputs'])} mapped to cxrkit findings")
    for r in m["outputs"]:
        if r["dropped"]:
            typer.echo(f"    unmapped: output {r['index']} {r['name']!r}: {r['dropped']}")
    typer.echo(f"  output: {m['output']}")
    p = m["parity"]
    if "max_abs_diff_probability" in p:
        typer.echo(
            f"  parity on {len(p['images'])} image(s) at {p['side']} px vs {p['reference']}: "
            f"max |dp| {p['max_abs_diff_probability']:.2e} (tolerance {p['tolerance']:g}) "
            f"-> {'passed' if p['passed'] else 'FAILED'}"
        )
    else:
        typer.echo(f"  parity: the authors' code path failed: {p['error']}")
    u = m["untrained_check"]
    auc = "n/a" if u["mean_auroc"] is None else f"{u['mean_auroc']:.3f}"
    typer.echo(
        f"  untrained check on {u['n_images']} image(s) ({m['check_images']['source']}): "
        f"mean AUROC {auc} over {u['findings_scored']} finding(s), constant outputs: "
        f"{u['constant_outputs']}"
    )
    for w in caught:
        typer.secho(f"  warning: {w.message}", fg=typer.colors.YELLOW)
    for note in m["notes"]:
        typer.echo(f"  note: {note}")
    if not p.get("passed"):
        typer.secho(
            "error: parity check failed (the run folder is kept for inspection)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)

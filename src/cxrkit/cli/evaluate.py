"""``cxrkit evaluate`` and ``cxrkit compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import PRECISION_HELP
from cxrkit.cli.common import run as _run
from cxrkit.messages import count


def evaluate(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="A run folder (best.pt), a checkpoint file, or a predictions CSV (any model's: needs --release)"
        ),
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate: test | val | train")] = "test",
    tta: Annotated[
        str, typer.Option(help="Test-time augmentation: none | flip | tencrop")
    ] = "none",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Default: RUN/eval/SPLIT[-TTA]; for a predictions file, STEM_eval_ROWS beside it",
        ),
    ] = None,
    prepared: Annotated[
        Path | None, typer.Option(help="Prepared folder, if moved since training")
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Patient-bootstrap resamples for the CIs")
    ] = 1000,
    subgroup_bootstrap: Annotated[int, typer.Option(min=0, help="Resamples per subgroup")] = 200,
    seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
    temperature: Annotated[
        bool, typer.Option(help="Fit a temperature on the threshold split")
    ] = True,
    threshold_method: Annotated[
        str,
        typer.Option(
            help="Thresholds for predict, chosen on the threshold split: youden | max_f1 | sensitivity=T (highest threshold reaching sensitivity T) | specificity=T (lowest reaching specificity T)"
        ),
    ] = "youden",
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--threshold",
            help="Fix one finding's threshold by hand, FINDING=VALUE (repeatable); the rest follow --threshold-method",
        ),
    ] = None,
    threshold_split: Annotated[
        str, typer.Option(help="Fit thresholds/temperature on: val | train")
    ] = "val",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass")] = 64,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cpu)")] = None,
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP)] = None,
    report: Annotated[bool, typer.Option(help="Also write report.html and summary.md")] = True,
    reference: Annotated[
        str, typer.Option(help="auto (radiologists' labels when found) | radiologists | nih")
    ] = "auto",
    expert_labels: Annotated[
        Path | None,
        typer.Option(help="Folder of Google's expert labels (default: under the release root)"),
    ] = None,
    gallery: Annotated[
        int, typer.Option(help="Error gallery: most confident FPs and FNs per finding (0: none)")
    ] = 2,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
    release: Annotated[
        Path | None,
        typer.Option(
            help="Predictions file: the NIH release root (or the folder of Data_Entry_2017*.csv)"
        ),
    ] = None,
    rows: Annotated[
        str,
        typer.Option(
            help="Predictions file: official-test (rows in test_list.txt) | all (every row as given)"
        ),
    ] = "official-test",
    trained_on: Annotated[
        Path | None,
        typer.Option(
            help="Predictions file: the images the model trained on (ids, one a line, or a split.csv: its train+val rows); a scored patient among them is refused"
        ),
    ] = None,
    fit_on: Annotated[
        Path | None,
        typer.Option(
            help="Predictions file: the model's predictions for other images (its validation split) to fit thresholds and temperature on"
        ),
    ] = None,
    logits: Annotated[
        bool,
        typer.Option(help="Predictions file: values are raw scores (logits), not probabilities"),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            help="Predictions file: the model's name in reports (default: the file's stem)"
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Predictions file: a folder of the release's images, to show the error gallery's images"
        ),
    ] = None,
) -> None:
    """Evaluate a checkpoint, or any model's predictions file: AUROC with patient-bootstrap CIs,
    thresholds, calibration, subgroups, radiologists, report."""
    from cxrkit.artefacts import RunFolder
    from cxrkit.evaluate import evaluate_checkpoint
    from cxrkit.evaluate.text import format_ci

    is_file = checkpoint.is_file() and checkpoint.suffix.lower() in (".csv", ".gz")
    wrong = (
        {
            "--split": split != "test",
            "--tta": tta != "none",
            "--prepared": prepared,
            "--threshold-split": threshold_split != "val",
            "--device": device,
            "--precision": precision,
        }
        if is_file
        else {
            "--release": release,
            "--rows": rows != "official-test",
            "--trained-on": trained_on,
            "--fit-on": fit_on,
            "--logits": logits,
            "--name": name,
            "--images": images,
        }
    )
    given = [k for k, v in wrong.items() if v]
    if given:
        what = (
            "a checkpoint, not a predictions file"
            if is_file
            else "a predictions file (a .csv), not a checkpoint"
        )
        typer.secho(f"error: {', '.join(given)} apply to {what}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if is_file:
        return _evaluate_file(
            checkpoint,
            release=release,
            rows=rows,
            out=out,
            name=name,
            logits=logits,
            trained_on=trained_on,
            fit_on=fit_on,
            bootstrap=bootstrap,
            subgroup_bootstrap=subgroup_bootstrap,
            seed=seed,
            temperature=temperature,
            reference=reference,
            expert_labels=expert_labels,
            report=report,
            images=images,
            gallery=gallery,
            threshold_method=threshold_method,
            threshold_overrides=_threshold_overrides(threshold),
        )
    m = _run(
        evaluate_checkpoint,
        checkpoint,
        split=split,
        tta=tta,
        out=out,
        prepared=prepared,
        bootstrap=bootstrap,
        subgroup_bootstrap=subgroup_bootstrap,
        seed=seed,
        temperature=temperature,
        threshold_method=threshold_method,
        threshold_split=threshold_split,
        batch_size=batch_size,
        device=device,
        precision=precision,
        report=report,
        progress=progress,
        reference=reference,
        expert_labels=expert_labels,
        gallery=gallery,
        threshold_overrides=_threshold_overrides(threshold),
    )
    folder = out or RunFolder(m["run_dir"]).eval(split, tta)
    typer.echo(
        f"{split}: {count(m['n_images'], 'image')} of {count(m['n_patients'], 'patient')}, "
        f"mean AUROC {format_ci(m['mean_auroc'], 4)} over {m['mean_auroc']['defined']} "
        f"findings -> {folder}"
    )
    ood = m.get("ood")
    if ood:

        def auc(x):
            return "undefined" if x is None else f"{x:.4f}"

        typer.echo(
            f"out of distribution: {ood['n_flagged']:,} of {ood['n_images']:,} images "
            f"flagged; mean AUROC {auc(ood['mean_auroc_all'])} with them, "
            f"{auc(ood['mean_auroc_without_flagged'])} without"
        )
    else:
        typer.echo("out of distribution: no record (see the warning above); not scored")
    for note in m["notes"]:
        typer.echo(f"note: {note}")


def _threshold_overrides(items: list[str] | None) -> dict[str, float]:
    """``--threshold FINDING=VALUE`` options as a mapping (findings checked against the
    canonical 14 here; the library checks them against the model's)."""
    from cxrkit.evaluate.threshold_choice import parse_overrides
    from cxrkit.labels import FINDINGS

    return _run(parse_overrides, items, FINDINGS)


def _evaluate_file(path: Path, *, out: Path | None, **options) -> None:
    """``cxrkit evaluate FILE.csv --release DIR``: a predictions file scored on NIH's labels."""
    from cxrkit.evaluate.external import evaluate_predictions
    from cxrkit.evaluate.radiologists import read_section
    from cxrkit.evaluate.text import format_ci

    m = _run(evaluate_predictions, path, out=out, **options)
    folder = out or path.with_name(f"{path.stem}_eval_{options['rows']}")
    typer.echo(m["protocol"]["line"])
    typer.echo(
        f"{count(m['n_images'], 'image')} of {count(m['n_patients'], 'patient')}, mean AUROC "
        f"{format_ci(m['mean_auroc'], 4)} over {m['mean_auroc']['defined']} findings "
        f"-> {folder}"
    )
    for note in m["notes"][1:]:
        typer.echo(f"note: {note}")
    section = read_section(folder)
    if section is not None:
        for set_name, rec in section[0]["sets"].items():
            for f in rec["findings"]:
                if f["predicted"]:
                    typer.echo(
                        f"against radiologists ({set_name}, {f['images']:,} images): "
                        f"{f['finding']}: AUROC {format_ci(f['auroc_radiologists'])} vs "
                        f"radiologists, {format_ci(f['auroc_nih'])} vs NIH's labels, "
                        f"difference {format_ci(f['difference'], signed=True)}"
                    )


def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Evaluation folders (of runs or of predictions files), run folders or checkpoints; the first is the baseline"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the comparison")] = Path(
        "comparison"
    ),
    split: Annotated[str, typer.Option(help="Split whose evaluations are compared")] = "test",
    tta: Annotated[str, typer.Option(help="Test-time augmentation of those evaluations")] = "none",
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Patient-bootstrap resamples (paired differences)")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
    evaluate_missing: Annotated[bool, typer.Option(help="Evaluate runs not yet evaluated")] = True,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Runs and predictions files side by side: AUROC with CIs, paired differences and a
    leaderboard on the images every entry scored, time, size."""
    from cxrkit.evaluate.compare import compare_runs

    folder = _run(
        compare_runs,
        runs,
        out=out,
        split=split,
        tta=tta,
        bootstrap=bootstrap,
        seed=seed,
        evaluate_missing=evaluate_missing,
        progress=progress,
    )
    typer.echo((folder / "comparison.md").read_text())
    typer.echo(f"wrote {folder}/comparison.html")

"""``cxrkit evaluate`` and ``cxrkit compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import PRECISION_HELP
from cxrkit.cli.common import run as _run
from cxrkit.messages import count


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder (best.pt) or a checkpoint file")],
    split: Annotated[str, typer.Option(help="Split to evaluate: test | val | train")] = "test",
    tta: Annotated[str, typer.Option(help="Test-time augmentation: none | flip | tencrop")] = "none",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Default: RUN/eval/SPLIT[-TTA]")] = None,
    prepared: Annotated[Path | None, typer.Option(help="Prepared folder, if moved since training")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Patient-bootstrap resamples for the CIs")] = 1000,
    subgroup_bootstrap: Annotated[int, typer.Option(min=0, help="Resamples per subgroup")] = 200,
    seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
    temperature: Annotated[bool, typer.Option(help="Fit a temperature on the threshold split")] = True,
    threshold_method: Annotated[str, typer.Option(help="Thresholds for predict, chosen on the threshold split: youden | max_f1 | sensitivity=T (highest threshold reaching sensitivity T) | specificity=T (lowest reaching specificity T)")] = "youden",
    threshold: Annotated[list[str] | None, typer.Option("--threshold", help="Fix one finding's threshold by hand, FINDING=VALUE (repeatable); the rest follow --threshold-method")] = None,
    threshold_split: Annotated[str, typer.Option(help="Fit thresholds/temperature on: val | train")] = "val",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass")] = 64,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cpu)")] = None,
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP)] = None,
    report: Annotated[bool, typer.Option(help="Also write report.html and summary.md")] = True,
    reference: Annotated[str, typer.Option(help="auto (radiologists' labels when found) | radiologists | nih")] = "auto",
    expert_labels: Annotated[Path | None, typer.Option(help="Folder of Google's expert labels (default: under the release root)")] = None,
    gallery: Annotated[int, typer.Option(help="Error gallery: most confident FPs and FNs per finding (0: none)")] = 2,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Evaluate a checkpoint: AUROC with patient-bootstrap CIs, thresholds, calibration, subgroups."""
    from cxrkit.artefacts import RunFolder
    from cxrkit.evaluate import evaluate_checkpoint

    m = _run(evaluate_checkpoint, checkpoint, split=split, tta=tta, out=out, prepared=prepared,
             bootstrap=bootstrap, subgroup_bootstrap=subgroup_bootstrap, seed=seed,
             temperature=temperature, threshold_method=threshold_method,
             threshold_split=threshold_split, batch_size=batch_size, device=device,
             precision=precision,
             report=report, progress=progress, reference=reference,
             expert_labels=expert_labels, gallery=gallery,
             threshold_overrides=_threshold_overrides(threshold))
    mean = m["mean_auroc"]
    if mean["value"] is None:
        text = "undefined"
    else:
        ci = f" (95% CI {mean['lo']:.4f}-{mean['hi']:.4f})" if mean["lo"] is not None else ""
        text = f"{mean['value']:.4f}{ci}"
    folder = out or RunFolder(m["run_dir"]).eval(split, tta)
    typer.echo(f"{split}: {count(m['n_images'], 'image')} of {count(m['n_patients'], 'patient')}, mean AUROC "
               f"{text} over {mean['defined']} findings -> {folder}")
    ood = m.get("ood")
    if ood:
        def auc(x):
            return "undefined" if x is None else f"{x:.4f}"
        typer.echo(f"out of distribution: {ood['n_flagged']:,} of {ood['n_images']:,} images "
                   f"flagged; mean AUROC {auc(ood['mean_auroc_all'])} with them, "
                   f"{auc(ood['mean_auroc_without_flagged'])} without")
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


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or checkpoints); the first is the baseline")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the comparison")] = Path("comparison"),
    split: Annotated[str, typer.Option(help="Split whose evaluations are compared")] = "test",
    tta: Annotated[str, typer.Option(help="Test-time augmentation of those evaluations")] = "none",
    bootstrap: Annotated[int, typer.Option(min=0, help="Patient-bootstrap resamples (paired differences)")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
    evaluate_missing: Annotated[bool, typer.Option(help="Evaluate runs not yet evaluated")] = True,
    progress: Annotated[bool, typer.Option(help="Progress bars")] = True,
) -> None:
    """Runs side by side: mean and per-finding AUROC with CIs, paired differences, time, size."""
    from cxrkit.evaluate.compare import compare_runs

    folder = _run(compare_runs, runs, out=out, split=split, tta=tta, bootstrap=bootstrap,
                  seed=seed, evaluate_missing=evaluate_missing, progress=progress)
    typer.echo((folder / "comparison.md").read_text())
    typer.echo(f"wrote {folder}/comparison.html")

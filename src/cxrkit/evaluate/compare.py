"""``cxrkit compare ENTRY...``: runs and predictions files side by side, paired on shared images.

Each argument is an evaluation folder (what ``cxrkit evaluate`` wrote, for a run or for any
model's predictions file: :class:`cxrkit.artefacts.EvaluationFolder`), or a run folder /
checkpoint, whose evaluation on ``split`` (with ``tta``) is read from
``<run>/eval/<split>[-<tta>]`` and made first when missing (and said so). The first entry
is the baseline.

Entries need not have scored the same images: a cxrkit run scores its own test split, a
published model its own. Paired comparisons use only the images **every** entry scored
(with the same NIH labels there), and say how many: the difference in AUROC per finding
and in the mean, with a **paired** patient-bootstrap interval
(:func:`cxrkit.metrics.paired_auroc_difference`: all models scored on the same resamples,
the honest way to say whether B beats A), and a leaderboard ranking the entries by mean
AUROC on those images with their intervals (one set of resamples for all).

Writes into ``out``: ``comparison.csv`` (one row per entry, as each was evaluated),
``per_finding.csv`` (AUROC [CI] per finding and entry, and paired differences),
``leaderboard.csv`` / ``leaderboard.md``, ``comparison.png``, ``comparison.md`` and a
self-contained ``comparison.html``.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import (
    EvaluationFolder,
    RunFolder,
    make_folder,
    read_json,
    resolve_checkpoint,
    write_csv,
    write_text,
)
from cxrkit.evaluate.compare_radiologists import radiologists_comparison
from cxrkit.evaluate.core import evaluate_checkpoint
from cxrkit.evaluate.plots import _figure, save_figure
from cxrkit.evaluate.provenance import stale_reason
from cxrkit.evaluate.report import CSS, RESEARCH_USE, _img, _table
from cxrkit.evaluate.text import format_ci, markdown_table
from cxrkit.metrics import bootstrap_mean, bootstrap_ranking, paired_auroc_difference

log = logging.getLogger(__name__)


@dataclass
class EvaluatedRun:
    """One entry's evaluation as read back from disk (a run's or a predictions file's)."""

    name: str
    folder: EvaluationFolder
    metrics: dict
    predictions: pd.DataFrame
    run: dict  #: run.json (training time, images/s, parameters), {} if none
    checkpoint: Path | None = None  #: None for a predictions file

    @property
    def kind(self) -> str:
        return (self.metrics.get("source") or {}).get("kind", "run")


def _unique_names(folders: list[Path]) -> list[str]:
    """Short, distinct names: the run folder's name (``run/eval/test`` -> ``run``), else the
    evaluation folder's, with its parent where two collide."""

    def own(f: Path) -> Path:
        return f.parent.parent if f.parent.name == "eval" else f

    paths = [own(f) for f in folders]
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def load_evaluation(
    path: str | Path,
    *,
    split: str = "test",
    tta: str = "none",
    evaluate_missing: bool = True,
    bootstrap: int = 1000,
    progress: bool = True,
) -> EvaluatedRun:
    """An evaluation folder as it is; a run (or checkpoint): its evaluation on ``split``,
    evaluating it first when missing, unreadable or of another checkpoint (trained further
    since). The name is set by :func:`compare_runs`."""
    path = Path(path)
    checkpoint = None
    if path.is_dir() and EvaluationFolder(path).exists():
        folder = EvaluationFolder(path)
        metrics = folder.read_metrics()
    else:
        checkpoint = resolve_checkpoint(path)
        folder = EvaluationFolder(RunFolder.of(checkpoint).eval(split, tta))
        read, why = _read_evaluation(folder.metrics, checkpoint)
        if why:
            if not evaluate_missing:
                raise ValueError(
                    f"{folder.metrics}: {why}; run `cxrkit evaluate "
                    f"{checkpoint.parent} --split {split}` first"
                )
            log.info("%s: %s; evaluating %s now", folder.metrics, why, checkpoint)
            evaluate_checkpoint(
                checkpoint, split=split, tta=tta, bootstrap=bootstrap, progress=progress
            )
            read = folder.read_metrics()
        assert read is not None  # read, or evaluate_checkpoint wrote it
        metrics = read
    if checkpoint is None and metrics.get("checkpoint"):
        checkpoint = Path(metrics["checkpoint"])
    run_json = RunFolder(metrics["run_dir"]).run_json if metrics.get("run_dir") else None
    return EvaluatedRun(
        name=folder.root.name,
        folder=folder,
        metrics=metrics,
        predictions=folder.read_predictions(metrics["split"]),
        run=read_json(run_json, missing={}) if run_json else {},
        checkpoint=checkpoint,
    )


def _read_evaluation(metrics_file: Path, checkpoint: Path) -> tuple[dict | None, str | None]:
    """``(metrics, None)`` when ``metrics_file`` is an evaluation of ``checkpoint`` as it is
    now; else ``(None, why not)``: missing, unreadable, or of another checkpoint."""
    try:
        metrics = read_json(metrics_file)
    except (OSError, ValueError) as e:
        return None, str(e).removeprefix(f"{metrics_file}: ")
    if metrics is None:
        return None, "no evaluation yet"
    stale = stale_reason(metrics, checkpoint)
    return (None, f"an evaluation of another checkpoint: {stale}") if stale else (metrics, None)


def _model_mb(checkpoint: Path | None) -> float | None:
    if checkpoint is None or not checkpoint.exists():
        return None
    return round(checkpoint.stat().st_size / 2**20, 2)


def shared_findings(runs: list[EvaluatedRun]) -> list[str]:
    """The findings every entry scored, in the first entry's order."""
    common = set.intersection(*(set(r.metrics["findings"]) for r in runs))
    return [f for f in runs[0].metrics["findings"] if f in common]


def shared_images(runs: list[EvaluatedRun], findings: list[str]) -> tuple[pd.DataFrame, str | None]:
    """The images every entry scored (image_id, patient_id, labels), sorted; and why
    there are none to pair on (None when there are)."""
    ids = set.intersection(*(set(r.predictions["image_id"]) for r in runs))
    if not ids:
        return pd.DataFrame(
            columns=["image_id", "patient_id", *findings]
        ), "no image was scored by every entry"
    base = runs[0].predictions.set_index("image_id").loc[sorted(ids)]
    labels = base[findings].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    for r in runs[1:]:
        other = r.predictions.set_index("image_id").loc[sorted(ids), findings]
        lo = other.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        if not np.array_equal(np.nan_to_num(labels, nan=-1), np.nan_to_num(lo, nan=-1)):
            return base.reset_index()[["image_id", "patient_id", *findings]].iloc[
                :0
            ], f"{r.name} has other labels on the shared images"
    return base.reset_index()[["image_id", "patient_id", *findings]], None


def _scores(run: EvaluatedRun, images: pd.DataFrame, findings: list[str]) -> np.ndarray:
    table = run.predictions.set_index("image_id").loc[images["image_id"]]
    return table[[f"p_{f}" for f in findings]].to_numpy(float)


def paired_difference(
    base: EvaluatedRun,
    other: EvaluatedRun,
    images: pd.DataFrame,
    findings: list[str],
    *,
    bootstrap: int,
    seed: int,
) -> dict:
    """AUROC(other) - AUROC(base) per finding and mean on ``images``, paired bootstrap."""
    y = images[findings].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    return paired_auroc_difference(
        y,
        _scores(base, images, findings),
        _scores(other, images, findings),
        images["patient_id"].astype(str).to_numpy(),
        n=bootstrap,
        seed=seed,
    )


def leaderboard(
    runs: list[EvaluatedRun],
    images: pd.DataFrame,
    findings: list[str],
    *,
    bootstrap: int,
    seed: int,
) -> pd.DataFrame:
    """Entries ranked by mean AUROC on the images every entry scored, with 95% CIs (the same
    patient resamples for every entry)."""
    y = images[findings].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    groups = images["patient_id"].astype(str).to_numpy()
    rows = []
    for r in runs:
        roc, _ = bootstrap_ranking(y, _scores(r, images, findings), groups, n=bootstrap, seed=seed)
        mean = bootstrap_mean(roc)
        rows.append(
            {
                "entry": r.name,
                "kind": r.kind,
                "model": r.metrics["model"],
                "images": len(images),
                "patients": int(images["patient_id"].nunique()),
                "findings": mean["defined"],
                "mean_auroc": mean["value"],
                "mean_auroc_lo": mean["lo"],
                "mean_auroc_hi": mean["hi"],
                "mean AUROC [95% CI]": format_ci(mean),
                "mean AUROC as evaluated": format_ci(r.metrics["mean_auroc"]),
                "images as evaluated": r.metrics["n_images"],
            }
        )
    table = pd.DataFrame(rows).sort_values("mean_auroc", ascending=False, kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def comparison_tables(
    runs: list[EvaluatedRun], *, bootstrap: int = 1000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """(one row per entry, per-finding table, leaderboard, notes)."""
    base = runs[0]
    fs = shared_findings(runs)
    images, why = shared_images(runs, fs)
    summary, per_finding, notes = [], {f: {"finding": f} for f in fs}, []
    for r in runs:
        m = r.metrics
        protocol = (m.get("protocol") or {}).get("rows") or m.get("split_protocol")
        row = {
            "entry": r.name,
            "kind": r.kind,
            "model": m["model"],
            "epoch": m.get("epoch"),
            "tta": m.get("tta"),
            "rows": protocol,
            "images": m["n_images"],
            "patients": m["n_patients"],
            "mean AUROC [95% CI]": format_ci(m["mean_auroc"]),
            "train time (s)": r.run.get("seconds"),
            "img/s": r.run.get("images_per_s"),
            "parameters": r.run.get("parameters"),
            "trainable": r.run.get("trainable_parameters"),
            "checkpoint MB": _model_mb(r.checkpoint),
        }
        for f in fs:
            per_finding[f][r.name] = format_ci(m["auroc"].get(f))
        if r is not base:
            key = f"Δ mean vs {base.name} (shared images)"
            if why is None:
                d = paired_difference(base, r, images, fs, bootstrap=bootstrap, seed=seed)
                row[key] = format_ci(d["mean"], signed=True, star=True)
                for j, f in enumerate(fs):
                    per_finding[f][f"Δ {r.name} - {base.name} (shared images)"] = format_ci(
                        {"value": d["value"][j], "lo": d["lo"][j], "hi": d["hi"][j]},
                        signed=True,
                        star=True,
                    )
            else:
                row[key] = f"n/a ({why})"
        summary.append(row)
    if why is None:
        notes.append(
            f"Paired differences and the leaderboard use the {len(images):,} images "
            f"({images['patient_id'].nunique():,} patients) every entry scored, on "
            f"the {len(fs)} findings every entry predicts; each entry's own figures "
            "(the 'mean AUROC' column and the per-finding table) are on the images "
            "it was evaluated on."
        )
        notes.append(
            f"Δ: AUROC difference against the first entry ({base.name}), with a 95% "
            f"paired patient-bootstrap interval ({bootstrap} resamples); * marks an "
            "interval that excludes 0."
        )
        board = leaderboard(runs, images, fs, bootstrap=bootstrap, seed=seed)
    else:
        notes.append(f"No paired difference and no leaderboard: {why}.")
        board = pd.DataFrame()
    for r in runs:
        notes += [
            f"{r.name}: {n}"
            for n in r.metrics["notes"]
            if n.startswith(("Phantom", "The labels are not", "Protocol"))
        ]
    summary = pd.DataFrame(summary)
    for col in ("epoch", "parameters", "trainable"):  # counts: blank for a predictions file
        summary[col] = summary[col].astype("Int64")
    return summary, pd.DataFrame(list(per_finding.values())), board, notes


def comparison_figure(runs: list[EvaluatedRun]):
    """Per-finding AUROC with CIs (as each entry was evaluated), one colour per entry."""
    fs = shared_findings(runs)
    fig = _figure(9.5, 0.42 * len(fs) + 1.6)
    ax = fig.subplots()
    ys = np.arange(len(fs))[::-1]
    k = len(runs)
    for i, r in enumerate(runs):
        off = (i - (k - 1) / 2) * min(0.7 / k, 0.25)
        for y, f in zip(ys, fs, strict=True):
            a = r.metrics["auroc"].get(f) or {}
            if a.get("value") is None:
                continue
            if a.get("lo") is not None:
                ax.plot([a["lo"], a["hi"]], [y + off] * 2, color=f"C{i}", lw=1.6, alpha=0.6)
            ax.plot(a["value"], y + off, "o", ms=4, color=f"C{i}")
        mean = r.metrics["mean_auroc"]["value"]
        ax.plot(
            [],
            [],
            "o-",
            color=f"C{i}",
            label=f"{r.name} (mean {mean:.3f})" if mean is not None else r.name,
        )
    ax.axvline(0.5, color="0.7", lw=0.8, ls="--")
    ax.set_yticks(ys, fs, fontsize=8)
    ax.set(xlim=(0.3, 1.0), xlabel="AUROC (95% CI)", title="Per-finding AUROC by entry")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def compare_runs(
    paths,
    *,
    out: str | Path,
    split: str = "test",
    tta: str = "none",
    bootstrap: int = 1000,
    seed: int = 0,
    evaluate_missing: bool = True,
    progress: bool = True,
) -> Path:
    """Compare evaluations (first = baseline); writes tables, a leaderboard, a plot and
    HTML to ``out``. ``paths``: evaluation folders, run folders or checkpoints."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError("compare needs at least two runs or evaluation folders")
    runs = [
        load_evaluation(
            p,
            split=split,
            tta=tta,
            evaluate_missing=evaluate_missing,
            bootstrap=bootstrap,
            progress=progress,
        )
        for p in paths
    ]
    for r, name in zip(runs, _unique_names([r.folder.root for r in runs]), strict=True):
        r.name = name
    if not shared_findings(runs):
        raise ValueError(
            "the entries share no finding: "
            + "; ".join(f"{r.name}: {', '.join(r.metrics['findings'])}" for r in runs)
        )
    summary, per_finding, board, notes = comparison_tables(runs, bootstrap=bootstrap, seed=seed)
    out = make_folder(out)
    write_csv(summary, out / "comparison.csv")
    write_csv(per_finding, out / "per_finding.csv")
    shown = board.drop(columns=["mean_auroc", "mean_auroc_lo", "mean_auroc_hi"], errors="ignore")
    if len(board):
        write_csv(board, out / "leaderboard.csv")
        write_text(
            "# Leaderboard\n\n"
            + markdown_table(shown)
            + "\n\n"
            + "\n".join(f"- {n}" for n in notes[:1])
            + "\n",
            out / "leaderboard.md",
        )
    experts, expert_notes = radiologists_comparison(
        [(r.name, r.folder.root) for r in runs], bootstrap=bootstrap, seed=seed
    )
    if len(experts):
        write_csv(experts, out / "radiologists.csv")
    save_figure(comparison_figure(runs), out / "comparison.png")
    md = "\n\n".join(
        [f"# Comparison on the {split} split", markdown_table(summary)]
        + (["## Leaderboard (shared images)", markdown_table(shown)] if len(board) else [])
        + ["## Per finding", markdown_table(per_finding), "\n".join(f"- {n}" for n in notes)]
        + (
            [
                "## Against radiologists",
                markdown_table(experts),
                "\n".join(f"- {n}" for n in expert_notes),
            ]
            if len(experts)
            else []
        )
    )
    write_text(md + "\n", out / "comparison.md")
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cxrkit "
        f"comparison</title><style>{CSS}</style></head><body><main><h1>Comparison on the "
        f"{html.escape(split)} split</h1><div class='ruo'>{html.escape(RESEARCH_USE)}</div>"
        + "".join(f"<div class='warn'>{html.escape(n)}</div>" for n in notes)
        + "<h2>Entries</h2>"
        + _table(summary)
        + ("<h2>Leaderboard (shared images)</h2>" + _table(shown) if len(board) else "")
        + "<h2>Per finding</h2>"
        + _table(per_finding)
        + "<figure>"
        + _img(out / "comparison.png", "per-finding AUROC by entry")
        + "</figure>"
        + (
            "<h2>Against radiologists</h2>"
            + "".join(f"<p>{html.escape(n)}</p>" for n in expert_notes)
            + _table(experts)
            if len(experts)
            else ""
        )
        + "</main></body></html>"
    )
    write_text(page, out / "comparison.html")
    return out


__all__ = [
    "EvaluatedRun",
    "compare_runs",
    "comparison_tables",
    "leaderboard",
    "load_evaluation",
    "paired_difference",
    "shared_findings",
    "shared_images",
]

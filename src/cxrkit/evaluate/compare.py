"""``cxrkit compare RUN...``: runs side by side, with paired differences against the first.

Each argument is a run folder (or a checkpoint file). Its evaluation on ``split`` (with
``tta``) is read from ``<run>/eval/<split>[-<tta>]/metrics.json``; a run not yet evaluated
is evaluated first (and says so). The first run is the baseline. When two runs were
evaluated on the same images (same image ids, same labels), the difference in AUROC per
finding and in the mean is given with a **paired** patient-bootstrap interval
(:func:`cxrkit.metrics.paired_auroc_difference`): both models scored on the same
resamples, which is the honest way to say whether B beats A. Runs evaluated on different
images get no paired difference, and the table says why.

Writes into ``out``: ``comparison.csv`` (one row per run), ``per_finding.csv`` (AUROC
[CI] per finding and run, and differences), ``comparison.png`` (per-finding AUROC
overlaid), ``comparison.md`` and a self-contained ``comparison.html``.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import (
    RunFolder,
    atomic_path,
    make_folder,
    read_csv,
    read_json,
    resolve_checkpoint,
    write_csv,
    write_text,
)
from cxrkit.evaluate.compare_radiologists import radiologists_comparison
from cxrkit.evaluate.core import evaluate_checkpoint
from cxrkit.evaluate.plots import _figure
from cxrkit.evaluate.provenance import stale_reason
from cxrkit.evaluate.report import CSS, RESEARCH_USE, _ci, _img, _table
from cxrkit.metrics import paired_auroc_difference

log = logging.getLogger(__name__)


@dataclass
class EvaluatedRun:
    """One run's evaluation as read back from disk."""

    name: str
    checkpoint: Path
    metrics: dict
    predictions: pd.DataFrame
    run: dict            #: run.json (training time, images/s, parameters), {} if absent


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.parent.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.parent.name}/{p.parent.name}" if names.count(p.parent.name) > 1
            else p.parent.name for p in paths]


def load_evaluation(path: str | Path, *, split: str = "test", tta: str = "none",
                    evaluate_missing: bool = True, bootstrap: int = 1000,
                    progress: bool = True) -> tuple[Path, dict, pd.DataFrame]:
    """``(checkpoint, metrics, predictions)`` of a run's evaluation, evaluating if needed."""
    checkpoint = resolve_checkpoint(path)
    folder = RunFolder.of(checkpoint).eval(split, tta)
    metrics_file = folder / "metrics.json"
    metrics, why = _read_evaluation(metrics_file, checkpoint)
    if why:
        if not evaluate_missing:
            raise ValueError(f"{metrics_file}: {why}; run `cxrkit evaluate "
                             f"{checkpoint.parent} --split {split}` first")
        log.info("%s: %s; evaluating %s now", metrics_file, why, checkpoint)
        evaluate_checkpoint(checkpoint, split=split, tta=tta, bootstrap=bootstrap,
                            progress=progress)
        metrics = read_json(metrics_file)
    assert metrics is not None  # evaluate_checkpoint wrote it
    pred = read_csv(folder / f"predictions_{split}.csv",
                       dtype={"image_id": str, "patient_id": str})
    return checkpoint, metrics, pred


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


def _model_mb(checkpoint: Path) -> float:
    return checkpoint.stat().st_size / 2**20


def _same_images(a: EvaluatedRun, b: EvaluatedRun) -> str | None:
    """None if ``a`` and ``b`` were evaluated on the same images and labels, else why not."""
    if a.metrics["findings"] != b.metrics["findings"]:
        return "different findings"
    ia, ib = a.predictions["image_id"], b.predictions["image_id"]
    if len(ia) != len(ib) or set(ia) != set(ib):
        return "evaluated on different images"
    pa = a.predictions.set_index("image_id").loc[ib]
    fs = a.metrics["findings"]
    la = pa[fs].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    lb = b.predictions[fs].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    if not np.array_equal(np.nan_to_num(la, nan=-1), np.nan_to_num(lb, nan=-1)):
        return "same images but different labels"
    return None


def paired_difference(base: EvaluatedRun, other: EvaluatedRun, *, bootstrap: int,
                      seed: int) -> dict:
    """AUROC(other) - AUROC(base) per finding and mean, paired bootstrap over patients."""
    fs = base.metrics["findings"]
    b = other.predictions.sort_values("image_id").reset_index(drop=True)
    a = base.predictions.set_index("image_id").loc[b["image_id"]].reset_index()
    y = b[fs].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    pa = a[[f"p_{f}" for f in fs]].to_numpy(float)
    pb = b[[f"p_{f}" for f in fs]].to_numpy(float)
    return paired_auroc_difference(y, pa, pb, b["patient_id"].to_numpy(), n=bootstrap, seed=seed)


def _signed(value, lo, hi) -> str:
    if value is None or not np.isfinite(value):
        return "undefined"
    if lo is None or not np.isfinite(lo):
        return f"{value:+.3f} (no CI)"
    star = " *" if lo > 0 or hi < 0 else ""
    return f"{value:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"


def comparison_tables(runs: list[EvaluatedRun], *, bootstrap: int = 1000,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(one row per run, per-finding table, notes)."""
    base = runs[0]
    fs = base.metrics["findings"]
    summary, per_finding, notes = [], {f: {"finding": f} for f in fs}, []
    for r in runs:
        m = r.metrics
        row = {"run": r.name, "model": m["model"], "epoch": m["epoch"], "tta": m["tta"],
               "images": m["n_images"], "patients": m["n_patients"],
               "mean AUROC [95% CI]": _ci(m["mean_auroc"]),
               "train time (s)": r.run.get("seconds"), "img/s": r.run.get("images_per_s"),
               "parameters": r.run.get("parameters"),
               "trainable": r.run.get("trainable_parameters"),
               "checkpoint MB": round(_model_mb(r.checkpoint), 2)}
        for f in fs:
            per_finding[f][r.name] = _ci(m["auroc"].get(f))
        if r is not base:
            why = _same_images(base, r)
            key = f"Δ mean vs {base.name}"
            if why is None:
                d = paired_difference(base, r, bootstrap=bootstrap, seed=seed)
                row[key] = _signed(d["mean"]["value"], d["mean"]["lo"], d["mean"]["hi"])
                for j, f in enumerate(fs):
                    per_finding[f][f"Δ {r.name} - {base.name}"] = _signed(
                        d["value"][j], d["lo"][j], d["hi"][j])
            else:
                row[key] = f"n/a ({why})"
                notes.append(f"{r.name} vs {base.name}: no paired difference, {why}.")
        summary.append(row)
    notes.append(f"Δ: AUROC difference against the first run ({base.name}), with a 95% paired "
                 f"patient-bootstrap interval ({bootstrap} resamples); * marks an interval "
                 "that excludes 0.")
    for r in runs:
        notes += [f"{r.name}: {n}" for n in r.metrics["notes"]
                  if n.startswith(("Phantom", "The labels are not", "Only "))]
    return pd.DataFrame(summary), pd.DataFrame(list(per_finding.values())), notes


def comparison_figure(runs: list[EvaluatedRun]):
    """Per-finding AUROC with CIs, one colour per run, findings on the y axis."""
    fs = runs[0].metrics["findings"]
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
        ax.plot([], [], "o-", color=f"C{i}",
                label=f"{r.name} (mean {mean:.3f})" if mean is not None else r.name)
    ax.axvline(0.5, color="0.7", lw=0.8, ls="--")
    ax.set_yticks(ys, fs, fontsize=8)
    ax.set(xlim=(0.3, 1.0), xlabel="AUROC (95% CI)", title="Per-finding AUROC by run")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if v is None or v != v else
                                       (f"{v:.1f}" if isinstance(v, float) else str(v))
                                       for v in row) + " |")
    return "\n".join(lines)


def compare_runs(paths, *, out: str | Path, split: str = "test", tta: str = "none",
                 bootstrap: int = 1000, seed: int = 0, evaluate_missing: bool = True,
                 progress: bool = True) -> Path:
    """Compare runs (first = baseline); writes tables, a plot and HTML to ``out``."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError("compare needs at least two runs")
    loaded = [load_evaluation(p, split=split, tta=tta, evaluate_missing=evaluate_missing,
                              bootstrap=bootstrap, progress=progress) for p in paths]
    names = _unique_names([ck for ck, _, _ in loaded])
    runs = []
    for name, (ck, metrics, pred) in zip(names, loaded, strict=True):
        run_json = RunFolder.of(ck).run_json
        runs.append(EvaluatedRun(name=name, checkpoint=ck, metrics=metrics, predictions=pred,
                                 run=read_json(run_json, missing={})))
    if len({tuple(r.metrics["findings"]) for r in runs}) > 1:
        raise ValueError("the runs predict different findings: "
                         + "; ".join(f"{r.name}: {len(r.metrics['findings'])}" for r in runs))
    summary, per_finding, notes = comparison_tables(runs, bootstrap=bootstrap, seed=seed)
    out = make_folder(out)
    write_csv(summary, out / "comparison.csv")
    write_csv(per_finding, out / "per_finding.csv")
    experts, expert_notes = radiologists_comparison(
        [(r.name, RunFolder.of(r.checkpoint).eval(split, tta)) for r in runs],
        bootstrap=bootstrap, seed=seed)
    if len(experts):
        write_csv(experts, out / "radiologists.csv")
    fig = comparison_figure(runs)
    with atomic_path(out / "comparison.png") as tmp:
        fig.savefig(tmp)
    md = "\n\n".join([f"# Comparison on the {split} split", _markdown(summary),
                      _markdown(per_finding), "\n".join(f"- {n}" for n in notes)]
                     + (["## Against radiologists", _markdown(experts),
                         "\n".join(f"- {n}" for n in expert_notes)] if len(experts) else []))
    write_text(md + "\n", out / "comparison.md")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cxrkit "
            f"comparison</title><style>{CSS}</style></head><body><main><h1>Comparison on the "
            f"{html.escape(split)} split</h1><div class='ruo'>{html.escape(RESEARCH_USE)}</div>"
            + "".join(f"<div class='warn'>{html.escape(n)}</div>" for n in notes)
            + "<h2>Runs</h2>" + _table(summary) + "<h2>Per finding</h2>" + _table(per_finding)
            + "<figure>" + _img(out / "comparison.png", "per-finding AUROC by run")
            + "</figure>"
            + ("<h2>Against radiologists</h2>" + "".join(
                f"<p>{html.escape(n)}</p>" for n in expert_notes) + _table(experts)
               if len(experts) else "")
            + "</main></body></html>")
    write_text(page, out / "comparison.html")
    return out


__all__ = ["EvaluatedRun", "compare_runs", "comparison_tables", "load_evaluation",
           "paired_difference"]

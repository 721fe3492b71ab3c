"""The evaluation's figures, drawn from what ``cxrkit evaluate`` wrote (never recomputed).

Every function takes the evaluation folder's contents -- ``metrics.json`` as a dict and
the ``predictions_<split>.csv`` table -- and returns a matplotlib ``Figure`` (object API,
Agg canvas: no global pyplot state, safe in threads and tests). Curves come from
scikit-learn (``roc_curve``, ``precision_recall_curve``); the AUROC/AUPRC written on them
are the values in ``metrics.json``, so a figure and its table cannot disagree.

:func:`write_figures` draws them all into a folder as PNG and returns their paths, in
the order a report shows them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from cxrkit.artefacts import atomic_path
from cxrkit.evaluate.text import format_ci

DPI = 100


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _grid(n: int, cols: int = 5, cell: float = 2.6) -> tuple[Figure, list]:
    rows = max(1, math.ceil(n / cols))
    fig = _figure(cols * cell, rows * cell)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def labels_and_scores(pred: pd.DataFrame, finding: str) -> tuple[np.ndarray, np.ndarray]:
    """A finding's known labels and probabilities from a predictions table (NaN dropped)."""
    y = pd.to_numeric(pred[finding], errors="coerce").to_numpy(dtype=np.float64)
    p = pred[f"p_{finding}"].to_numpy(dtype=np.float64)
    ok = ~np.isnan(y)
    return y[ok].astype(int), p[ok]


def _defined(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < y.sum() < y.size


def _finding_grid(
    metrics: dict,
    pred: pd.DataFrame,
    draw,
    title,
    *,
    metric: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float],
) -> Figure:
    """One panel per finding: ``draw(ax, y, p)`` where both classes are present, else a
    note that ``metric`` is undefined; ``title(f)`` under the finding's name."""
    findings = metrics["findings"]
    fig, axes = _grid(len(findings))
    for ax, f in zip(axes, findings, strict=True):
        y, p = labels_and_scores(pred, f)
        if _defined(y):
            draw(ax, y, p)
        else:
            ax.text(
                0.5,
                0.5,
                f"one class only:\n{metric} undefined",
                ha="center",
                va="center",
                fontsize=8,
                color="C3",
            )
        ax.set_title(f"{f}\n{title(f)}", fontsize=8)
        ax.set(xlim=(0, 1), ylim=ylim)
        ax.tick_params(labelsize=7)
    fig.supxlabel(xlabel, fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    fig.tight_layout()
    return fig


def roc_grid(metrics: dict, pred: pd.DataFrame) -> Figure:
    """One ROC panel per finding, AUROC with its 95 % CI in the title."""

    def draw(ax, y, p):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color="C0", lw=1.4)

    def title(f):
        rec = metrics["auroc"][f]
        return f"{format_ci(rec)} (n+={rec['positives']})"

    fig = _finding_grid(
        metrics,
        pred,
        draw,
        title,
        metric="AUROC",
        xlabel="1 - specificity (false-positive rate)",
        ylabel="sensitivity (true-positive rate)",
        ylim=(0, 1),
    )
    for ax in fig.axes:  # the chance diagonal, under the curve, in every panel
        if ax.get_visible():
            ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--", zorder=0)
    return fig


def roc_overlay(metrics: dict, pred: pd.DataFrame) -> Figure:
    """All findings' ROC curves on one axis, legend sorted by AUROC."""
    fig = _figure(7.5, 6.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--", label="chance")
    order = sorted(metrics["findings"], key=lambda f: -(metrics["auroc"][f]["value"] or -1))
    cmap = _colours(len(order))
    for i, f in enumerate(order):
        y, p = labels_and_scores(pred, f)
        if not _defined(y):
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1.2, color=cmap[i], label=f"{f} {metrics['auroc'][f]['value']:.3f}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title=f"ROC curves, {metrics['split']} split (AUROC in the legend)",
    )
    ax.legend(fontsize=7, loc="lower right", ncol=1)
    fig.tight_layout()
    return fig


def pr_grid(metrics: dict, pred: pd.DataFrame) -> Figure:
    """One precision-recall panel per finding; the dashed line is the prevalence (chance)."""

    def draw(ax, y, p):
        prec, rec, _ = precision_recall_curve(y, p)
        ax.plot(rec, prec, color="C1", lw=1.4)
        ax.axhline(y.mean(), color="0.6", lw=0.8, ls="--")

    return _finding_grid(
        metrics,
        pred,
        draw,
        lambda f: f"AUPRC {format_ci(metrics['auprc'][f])}",
        metric="AUPRC",
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        ylim=(0, 1.02),
    )


def auroc_forest(metrics: dict) -> Figure:
    """Per-finding AUROC with its 95 % CI, and published values as markers (comparable or not)."""
    findings = metrics["findings"]
    fig = _figure(9.5, 0.38 * len(findings) + 1.4)
    ax = fig.subplots()
    ys = np.arange(len(findings))[::-1]
    for y, f in zip(ys, findings, strict=True):
        r = metrics["auroc"][f]
        if r["value"] is None:
            ax.text(0.5, y, "undefined", va="center", ha="center", fontsize=7, color="C3")
            continue
        if r["lo"] is not None:
            ax.plot([r["lo"], r["hi"]], [y, y], color="C0", lw=2, alpha=0.6)
        ax.plot(r["value"], y, "o", color="C0")
    markers: dict = {}
    for row in metrics.get("published", []):
        if row["finding"] not in findings:
            continue
        y = ys[findings.index(row["finding"])]
        k = list(markers).index(row["source"]) if row["source"] in markers else len(markers)
        markers.setdefault(row["source"], row["comparable"])
        ax.plot(
            row["auroc"],
            y,
            marker="dsv^"[k % 4],
            ms=5,
            ls="none",
            color=f"C{k + 2}",
            alpha=0.9 if row["comparable"] else 0.45,
        )
    handles = [ax.plot([], [], "o-", color="C0", label="this run (95% CI)")[0]]
    for k, (src, comp) in enumerate(markers.items()):
        handles.append(
            ax.plot(
                [],
                [],
                marker="dsv^"[k % 4],
                ls="none",
                color=f"C{k + 2}",
                label=f"{src}{'' if comp else ' (not comparable)'}",
            )[0]
        )
    ax.axvline(0.5, color="0.7", lw=0.8, ls="--")
    ax.set_yticks(ys, findings, fontsize=8)
    ax.set(
        xlim=(0.3, 1.0),
        xlabel="AUROC",
        title=f"Per-finding AUROC, {metrics['split']} split (patient-bootstrap 95% CI)",
    )
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def reliability_diagram(metrics: dict) -> Figure:
    """Reliability curves (mean predicted vs observed frequency) and ECE before/after T."""
    cal = metrics["calibration"]
    findings = metrics["findings"]
    fig = _figure(12, 4.8)
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    a.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8, label="perfectly calibrated")
    cmap = _colours(len(findings))
    for i, f in enumerate(findings):
        rc = cal["reliability"].get(f) or {}
        if rc.get("mean_predicted"):
            a.plot(
                rc["mean_predicted"],
                rc["fraction_positive"],
                "o-",
                ms=3,
                lw=1,
                color=cmap[i],
                label=f,
            )
    a.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted probability (per bin)",
        ylabel="observed fraction positive",
        title=f"Reliability ({cal['bins']} equal-width bins)",
    )
    a.legend(fontsize=6, ncol=2, loc="upper left")
    x = np.arange(len(findings))
    before = [cal["ece"][f] if cal["ece"][f] is not None else np.nan for f in findings]
    b.bar(x - 0.2, before, width=0.4, label="before", color="C3")
    if cal.get("after_temperature"):
        after = [cal["after_temperature"]["ece"][f] for f in findings]
        after = [v if v is not None else np.nan for v in after]
        b.bar(
            x + 0.2,
            after,
            width=0.4,
            color="C2",
            label=f"after temperature T={cal['temperature']:.2f} (fitted on "
            f"{metrics['thresholds']['chosen_on']})",
        )
    b.set_xticks(x, findings, rotation=60, ha="right", fontsize=7)
    b.set(ylabel="expected calibration error", title="ECE per finding")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def subgroup_chart(metrics: dict) -> Figure:
    """AUROC per finding in each subgroup (sex, age band, view) with CIs and counts."""
    rows = pd.DataFrame(metrics["subgroups"])
    attributes = [
        a for a in ("sex", "age_band", "view") if len(rows) and a in set(rows["attribute"])
    ]
    findings = metrics["findings"]
    fig = _figure(13, 3.3 * max(1, len(attributes)))
    axes = fig.subplots(max(1, len(attributes)), 1, squeeze=False).ravel()
    for ax, attribute in zip(axes, attributes, strict=False):
        sub = rows[rows["attribute"] == attribute]
        groups = list(dict.fromkeys(sub["group"]))
        width = 0.8 / max(1, len(groups))
        for k, g in enumerate(groups):
            part = sub[sub["group"] == g].set_index("finding").reindex(findings)
            x = np.arange(len(findings)) - 0.4 + width * (k + 0.5)
            val = part["auroc"].astype(float).to_numpy()
            lo = part["lo"].astype(float).to_numpy()
            hi = part["hi"].astype(float).to_numpy()
            n = int(part["n"].max()) if part["n"].notna().any() else 0
            # a percentile interval need not contain the point estimate (few patients): clip at 0
            err = [
                np.clip(np.nan_to_num(val - lo), 0, None),
                np.clip(np.nan_to_num(hi - val), 0, None),
            ]
            thin = (
                part["caution"].fillna(False).astype(bool).to_numpy()
                if "caution" in part
                else np.zeros(len(x), bool)
            )
            ax.errorbar(
                x[~thin],
                val[~thin],
                yerr=[e[~thin] for e in err],
                fmt="o",
                ms=4,
                capsize=2,
                lw=1,
                color=f"C{k}",
                label=f"{g} (n={n})",
            )
            # fewer than 10 positive patients: a hollow grey marker, no interval
            ax.plot(x[thin], val[thin], "o", ms=4, mfc="none", color="0.6")
        ax.axhline(0.5, color="0.7", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(findings)), findings, rotation=30, ha="right", fontsize=7)
        ax.set(ylim=(0, 1.02), ylabel="AUROC", title=f"AUROC by {attribute.replace('_', ' ')}")
        ax.legend(fontsize=7, ncol=len(groups), loc="lower left")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame) -> Figure:
    """Train/validation loss and validation mean AUROC per epoch (the run's metrics.csv)."""
    fig = _figure(11, 3.6)
    a, b = fig.subplots(1, 2)
    ep = history["epoch"]
    a.plot(ep, history["train_loss"], "o-", ms=3, label="train")
    a.plot(ep, history["val_loss"], "o-", ms=3, label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    a.legend(fontsize=8)
    auroc = pd.to_numeric(history["val_mean_auroc"], errors="coerce")  # NaN: undefined
    b.plot(ep, auroc, "o-", ms=3, color="C2")
    if auroc.notna().any():
        best = auroc.idxmax()
        b.plot(ep[best], auroc[best], "*", ms=12, color="C3", label=f"best: epoch {ep[best]}")
        b.legend(fontsize=8)
    else:  # e.g. a binary task without validation positives: say so, draw no best
        b.text(
            0.5,
            0.5,
            "undefined in every epoch\n(no finding had both classes in validation)",
            transform=b.transAxes,
            ha="center",
            va="center",
            fontsize=9,
        )
    b.set(xlabel="epoch", ylabel="mean AUROC", title="Validation mean AUROC")
    b.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


#: file name -> (title, what it shows), in report order
FIGURES = {
    "auroc_forest.png": "Per-finding AUROC with confidence intervals and published values",
    "roc_overlay.png": "ROC curves, all findings",
    "roc_grid.png": "ROC curve per finding",
    "pr_grid.png": "Precision-recall curve per finding",
    "reliability.png": "Calibration: reliability curves and ECE",
    "subgroups.png": "Subgroups: AUROC by sex, age band and view",
    "training_curves.png": "Training curves",
}


def write_figures(
    folder: Path, metrics: dict, pred: pd.DataFrame, history: pd.DataFrame | None = None
) -> dict[str, Path]:
    """Draw every figure into ``folder``; returns ``{file name: path}`` in report order."""
    folder.mkdir(parents=True, exist_ok=True)
    makers = {
        "auroc_forest.png": lambda: auroc_forest(metrics),
        "roc_overlay.png": lambda: roc_overlay(metrics, pred),
        "roc_grid.png": lambda: roc_grid(metrics, pred),
        "pr_grid.png": lambda: pr_grid(metrics, pred),
        "reliability.png": lambda: reliability_diagram(metrics),
        "subgroups.png": lambda: subgroup_chart(metrics),
    }
    if history is not None and len(history):
        makers["training_curves.png"] = lambda: training_curves(history)
    return {name: save_figure(make(), folder / name) for name, make in makers.items()}


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure atomically (its folder made): the one way evaluation, the report's
    sections and ``cxrkit compare`` put a figure on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


__all__ = [
    "FIGURES",
    "auroc_forest",
    "labels_and_scores",
    "pr_grid",
    "reliability_diagram",
    "roc_grid",
    "roc_overlay",
    "save_figure",
    "subgroup_chart",
    "training_curves",
    "write_figures",
]

"""The report's "Against radiologists" and "Error gallery" sections (HTML and Markdown).

Drawn only from what evaluation wrote (``radiologists.json``, ``radiologists_images.csv``,
``gallery.csv`` and ``gallery/``), so a table and its figure cannot disagree. Each
returns an empty string when its files are absent. Figures are embedded as base64, so the
report stays one self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from cxrkit.artefacts import EvaluationFolder, read_csv
from cxrkit.evaluate.plots import _grid, save_figure
from cxrkit.evaluate.radiologists import read_section
from cxrkit.evaluate.text import format_ci

ROC_FIGURE = "roc_radiologists_{set}.png"
SET_TITLES = {
    "four_findings": "Four findings (Majkowska et al., Radiology 2019)",
    "all_findings": "All findings (Nabulsi et al., Scientific Reports 2021)",
}
INTRO = (
    "NIH's labels were text-mined from radiology reports. Google's radiologists "
    "re-read part of the images; here the model is scored against them and against "
    "NIH's labels on the same images (a paired patient bootstrap gives the "
    "difference), NIH's own label is scored against them (how noisy the training "
    "signal is), and each radiologist is scored against the majority of the other "
    "readers of the same image (the human ceiling). The model's operating point is "
    "the threshold chosen on the validation split."
)


def _esc(x) -> str:
    return html.escape(str(x))


def _v(x, d: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _ci(rec: dict | None, signed: bool = False) -> str:
    return format_ci(rec, signed=signed, missing="—")


def summary_table(rec: dict) -> pd.DataFrame:
    """One row per finding of a set: the headline comparison."""
    rows = []
    for f in rec["findings"]:
        op = (f.get("operating_point") or {}).get("radiologists") or {}
        nv = f.get("nih_vs_radiologists") or {}
        rd = f.get("readers") or {}
        pooled, mean = rd.get("pooled") or {}, rd.get("mean_over_readers") or {}
        rows.append(
            {
                "finding": f["finding"],
                "images": f["images"],
                "positives (radiologists / NIH)": f"{f['positives_radiologists']} / "
                f"{'—' if f['positives_nih'] is None else f['positives_nih']}",
                "AUROC vs radiologists": _ci(f.get("auroc_radiologists"))
                if f["predicted"]
                else "not predicted",
                "AUROC vs NIH": _ci(f.get("auroc_nih")) if f["predicted"] else "—",
                "Δ (radiologists − NIH)": _ci(f.get("difference"), signed=True)
                if f["predicted"]
                else "—",
                "model sens / spec": f"{_v(op.get('sensitivity'))} / {_v(op.get('specificity'))}"
                if op
                else "—",
                "NIH label sens / spec / κ": f"{_v(nv.get('sensitivity'))} / "
                f"{_v(nv.get('specificity'))} / {_v(nv.get('kappa'))}"
                if nv
                else "no NIH label",
                "readers vs others: sens / spec / κ": f"{_v(pooled.get('sensitivity'))} / "
                f"{_v(pooled.get('specificity'))} / "
                f"{_v(pooled.get('kappa'))}"
                if pooled
                else "—",
                "readers (mean κ)": f"{rd.get('readers', 0)} ({_v(mean.get('kappa'))})"
                if rd
                else "—",
            }
        )
    return pd.DataFrame(rows)


def mapping_table(rec: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "expert finding": f["finding"],
                "NIH findings": ", ".join(f["nih_findings"]) or "—",
                "model score / NIH label": f["mapping"]
                if f["predicted"] or not f["nih_findings"]
                else f.get("not_predicted_because", f["mapping"]),
            }
            for f in rec["findings"]
        ]
    )


def whole_set_table(rec: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "finding": r["finding"],
                "images": r["n"],
                "NIH yes, radiologists no": r["fp"],
                "NIH no, radiologists yes": r["fn"],
                "disagreements": r["disagreements"],
                "share": _v(r["disagreements"] / r["n"] if r["n"] else None),
                "sensitivity": _v(r["sensitivity"]),
                "specificity": _v(r["specificity"]),
                "κ": _v(r["kappa"]),
            }
            for r in rec.get("nih_vs_radiologists_whole_set") or []
        ]
    )


def roc_figure(rec: dict, images: pd.DataFrame, set_name: str):
    """One ROC panel per predicted finding against the radiologists: the model's curve, its
    validation-chosen operating point, NIH's label and every reader as points."""
    found = [f for f in rec["findings"] if f["predicted"]]
    if not found:
        return None
    fig, axes = _grid(len(found), cols=min(4, len(found)), cell=2.9)
    part = images[images["set"] == set_name]
    for ax, f in zip(axes, found, strict=True):
        rows = part[part["finding"] == f["finding"]]
        y, s = rows["radiologists"].to_numpy(int), rows["score"].to_numpy(float)
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--", zorder=0)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, color="C0", lw=1.4, label="model")
        for p in f.get("reader_points") or []:
            if p["fpr"] is not None and p["sensitivity"] is not None:
                ax.plot(
                    p["fpr"],
                    p["sensitivity"],
                    "o",
                    ms=4,
                    color="C2",
                    mfc="none" if p["in_reference"] else "C2",
                    alpha=0.8,
                )
        ax.plot([], [], "o", ms=4, color="C2", label="radiologists")
        nv = f.get("nih_vs_radiologists") or {}
        if nv.get("sensitivity") is not None and nv.get("specificity") is not None:
            ax.plot(
                1 - nv["specificity"], nv["sensitivity"], "s", ms=6, color="C3", label="NIH label"
            )
        op = (f.get("operating_point") or {}).get("radiologists") or {}
        if op.get("sensitivity") is not None and op.get("specificity") is not None:
            ax.plot(
                1 - op["specificity"],
                op["sensitivity"],
                "*",
                ms=11,
                color="C1",
                label="model at val threshold",
            )
        a = f.get("auroc_radiologists") or {}
        ax.set_title(
            f"{f['finding']}\nAUROC {_v(a.get('value'))} (n+={f['positives_radiologists']})",
            fontsize=8,
        )
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="lower right")
    fig.supxlabel("1 - specificity (against the radiologists)", fontsize=9)
    fig.supylabel("sensitivity", fontsize=9)
    fig.tight_layout()
    return fig


def _embed(path: Path, alt: str, mime: str = "png") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/{mime};base64,{data}">'


def radiologists_html(out: str | Path) -> str:
    """The "Against radiologists" section, or '' without ``radiologists.json``."""
    out = Path(out)
    read = read_section(out)
    if read is None:
        return ""
    section, images = read
    s = ["<h2>Against radiologists</h2>", f"<p>{_esc(INTRO)}</p>"]
    s += [f"<div class='warn'>{_esc(n)}</div>" for n in section.get("notes") or []]
    for name, rec in section["sets"].items():
        s.append(
            f"<h3>{_esc(SET_TITLES.get(name, name))}: {rec['images_in_split']:,} of "
            f"{rec['images_in_set']:,} images in the {_esc(section['split'])} split</h3>"
        )
        s.append(f"<p>Reference: {_esc(rec['reference'])}. Cite: {_esc(rec['citation'])}</p>")
        s += [f"<div class='warn'>{_esc(n)}</div>" for n in rec.get("notes") or []]
        if rec["findings"]:
            s.append(_html_table(summary_table(rec)))
            fig = roc_figure(rec, images, name)
            if fig is not None:
                path = save_figure(fig, EvaluationFolder(out).figures / ROC_FIGURE.format(set=name))
                s.append(
                    f"<figure>{_embed(path, 'ROC against radiologists')}<figcaption>ROC "
                    "against the radiologists: the model's curve, its operating point "
                    "chosen on validation (star), NIH's label (square) and each "
                    "radiologist (circles; hollow: the reader is part of the "
                    "reference, which flatters them).</figcaption></figure>"
                )
            s.append(
                "<h3>How the expert findings map onto the model's</h3>"
                + _html_table(mapping_table(rec))
            )
        whole = whole_set_table(rec)
        if len(whole):
            s.append(
                f"<h3>NIH's label against the radiologists on all {rec['images_in_set']:,} "
                "images of the set</h3>" + _html_table(whole)
            )
    files = {k: r["files"] for k, r in section["sets"].items()}
    s.append(
        f"<details><summary>expert files (sha256)</summary><pre>"
        f"{_esc(json.dumps({'files': files, 'checked_against': section['checked_against']}, indent=2))}"
        "</pre></details>"
    )
    return "\n".join(s)


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, na_rep="—", border=0)


def gallery_html(out: str | Path) -> str:
    """The "Error gallery" section, or '' without ``gallery.csv`` rows."""
    out = Path(out)
    path = EvaluationFolder(out).gallery_table
    if not path.exists():
        return ""
    table = read_csv(path, dtype={"image_id": str, "overlay": str})  # overlay: blank = none
    if table.empty:
        return ""
    model_free = bool(table["overlay"].fillna("").eq("").any() or table["threshold"].isna().any())
    s = [
        "<h2>Error gallery</h2>",
        "<p>Per finding, the model's most confident false positives and false negatives at "
        "the threshold chosen on validation, judged against the best reference available "
        "for each image (named under it), with the Grad-CAM map for that finding and NIH's "
        "boxes for it in green where the image has them.</p>"
        if not model_free
        else "<p>Per finding, the model's most confident false positives and false negatives, "
        "judged against the best reference available for each image: at the threshold "
        "fitted on other images where there is one, else the negatives it scored highest "
        "and the positives it scored lowest. The images are shown where --images found "
        "them (no saliency map: cxrkit does not have this model's weights).</p>",
    ]
    for finding, g in table.groupby("finding", sort=False):
        figs, missing = [], []
        for r in g.itertuples():
            nih = "—" if pd.isna(r.nih_label) else int(r.nih_label)
            at = "" if pd.isna(r.threshold) else f" (threshold {r.threshold:.2f})"
            cap = (
                f"{r.kind}: {r.image_id}, p = {r.probability:.2f}{at}; {r.reference} says "
                f"{'yes' if r.reference_label else 'no'}; NIH label {nih}"
                + (f"; {r.boxes} NIH box(es)" if r.boxes else "")
            )
            img = out / r.overlay if isinstance(r.overlay, str) and r.overlay else None
            if img is None or not img.exists():
                missing.append(cap)
                continue
            figs.append(
                f"<figure>{_embed(img, cap, 'jpeg')}<figcaption>{_esc(cap)}</figcaption></figure>"
            )
        if figs or missing:
            s.append(
                f"<h3>{_esc(finding)}</h3>"
                + (f"<div class='gallery'>{''.join(figs)}</div>" if figs else "")
                + (
                    "<ul>" + "".join(f"<li>{_esc(c)}</li>" for c in missing) + "</ul>"
                    if missing and model_free
                    else ""
                )
            )
    return "\n".join(s)


def radiologists_markdown(out: str | Path) -> str:
    """The section for ``summary.md`` ('' without ``radiologists.json``)."""
    read = read_section(out)
    if read is None:
        return ""
    section, _ = read
    lines = ["", "## Against radiologists", ""]
    lines += [f"- {n}" for n in section.get("notes") or []]
    for name, rec in section["sets"].items():
        lines += [
            "",
            f"### {SET_TITLES.get(name, name)}: {rec['images_in_split']:,} images "
            f"in the {section['split']} split",
            "",
            f"Reference: {rec['reference']}.",
            "",
        ]
        lines += [f"- {n}" for n in rec.get("notes") or []]
        table = summary_table(rec)
        if len(table):  # the set first: finding names repeat the main table's
            table.insert(0, "set", name)
            cols = list(table.columns)
            lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += [
                "| " + " | ".join(str(v) for v in row) + " |"
                for row in table.itertuples(index=False)
            ]
    return "\n".join(lines) + "\n"


__all__ = [
    "gallery_html",
    "radiologists_html",
    "radiologists_markdown",
    "roc_figure",
    "summary_table",
]

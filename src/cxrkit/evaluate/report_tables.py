"""The tables of the evaluation report, built from ``metrics.json`` (and, for the data
section, the prepared folder or the scored predictions): per-finding AUROC/AUPRC with the
published numbers, thresholds, calibration, subgroups and the data summary. Plain
DataFrames of display strings and numbers; :mod:`cxrkit.evaluate.report` lays them out as
HTML.
"""

from __future__ import annotations

import pandas as pd

from cxrkit.evaluate.text import format_ci


def _num(x, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and x != x) else f"{x:.{digits}f}"


def auroc_table(metrics: dict) -> pd.DataFrame:
    """Per finding: AUROC and AUPRC with CIs, counts, and each published AUROC beside them."""
    pub = pd.DataFrame(
        metrics.get("published") or [], columns=["finding", "source", "auroc", "comparable"]
    )
    rows = []
    for f in metrics["findings"]:
        a, p = metrics["auroc"][f], metrics["auprc"][f]
        row = {
            "finding": f,
            "positives": a["positives"],
            "negatives": a["negatives"],
            "AUROC [95% CI]": format_ci(a),
            "AUPRC [95% CI]": format_ci(p),
            "prevalence": _num(p.get("prevalence")),
        }
        for _, r in pub[pub["finding"] == f].iterrows():
            mark = "" if r["comparable"] else " *"
            row[f"{r['source']}{mark}"] = f"{r['auroc']:.3f}"
        rows.append(row)
    rows.append(
        {
            "finding": "mean over defined findings",
            "AUROC [95% CI]": format_ci(metrics["mean_auroc"]),
            "positives": None,
            "negatives": None,
        }
    )
    table = pd.DataFrame(rows)
    for col in ("positives", "negatives"):
        table[col] = table[col].astype("Int64")
    return table


def published_notes(metrics: dict) -> list[str]:
    seen, out = set(), []
    for r in metrics.get("published") or []:
        if r["source"] not in seen:
            seen.add(r["source"])
            mark = "" if r["comparable"] else " *"
            out.append(f"{r['source']}{mark} — {r['split']}: {r['note']}")
    return out


def threshold_table(metrics: dict, method: str) -> pd.DataFrame:
    rows = []
    for f in metrics["findings"]:
        m = metrics["threshold_metrics"][method][f]
        rows.append(
            {
                "finding": f,
                "threshold": m["threshold"],
                **{k: m[k] for k in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")},
                "TP": m["tp"],
                "FP": m["fp"],
                "TN": m["tn"],
                "FN": m["fn"],
            }
        )
    table = pd.DataFrame(rows)
    for col in ("TP", "FP", "TN", "FN"):
        table[col] = table[col].astype("Int64")
    return table


def calibration_table(metrics: dict) -> pd.DataFrame:
    cal = metrics["calibration"]
    after = cal.get("after_temperature") or {"brier": {}, "ece": {}}
    return pd.DataFrame(
        [
            {
                "finding": f,
                "Brier": cal["brier"][f],
                "ECE": cal["ece"][f],
                "Brier after T": after["brier"].get(f),
                "ECE after T": after["ece"].get(f),
            }
            for f in metrics["findings"]
        ]
    )


def subgroup_table(metrics: dict) -> pd.DataFrame:
    """Findings as rows, one column per subgroup: ``AUROC [CI] (positives/n)``."""
    rows = pd.DataFrame(metrics["subgroups"])
    if rows.empty:
        return rows
    caution = rows["caution"] if "caution" in rows else pd.Series(False, index=rows.index)
    rows["cell"] = [
        f"{format_ci({'value': r.auroc, 'lo': r.lo, 'hi': r.hi}, 2)} ({r.positives}/{r.n})"
        + (f" † {r.positive_patients} pt" if c else "")
        for r, c in zip(rows.itertuples(), caution, strict=True)
    ]
    rows["column"] = rows["attribute"].str.replace("_band", "") + " " + rows["group"].astype(str)
    wide = rows.pivot(index="finding", columns="column", values="cell")
    order = list(dict.fromkeys(rows["column"]))
    wide = wide.reindex(index=metrics["findings"], columns=order).reset_index()
    wide.columns.name = None
    return wide


def data_summary(
    metrics: dict, scored: dict[str, pd.DataFrame] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per split: images, patients, images per patient, AP share, sex, age; and prevalence.

    From the prepared folder's labels and the run's split file (cached images only; a box
    fold's moves are not shown); for a predictions file, from ``scored`` (split name ->
    the predictions tables written: the scored rows, and those thresholds were fitted on).
    ``None`` when neither is there.
    """
    from cxrkit.data.prepare import load_prepared
    from cxrkit.data.splits import load_split

    if metrics.get("prepared") and metrics.get("split_file"):
        try:
            prepared = load_prepared(metrics["prepared"])
            split = load_split(metrics["split_file"])
        except (OSError, ValueError, KeyError):
            return None
        t = prepared.labels.merge(split[["image_id", "split"]], on="image_id", how="inner")
        groups = [
            (name, t[t["split"] == name])
            for name in ("train", "val", "test")
            if (t["split"] == name).any()
        ]
    elif scored:
        groups = [(name, t) for name, t in scored.items() if len(t)]
    else:
        return None
    overview = pd.DataFrame(
        [
            {
                "split": name,
                "images": len(g),
                "patients": g["patient_id"].nunique(),
                "images per patient": len(g) / max(1, g["patient_id"].nunique()),
                "AP view %": 100 * (g["view"] == "AP").mean(),
                "male %": 100 * (g["sex"] == "M").mean(),
                "median age": g["age"].median(),
                "no finding %": 100 * (g[metrics["findings"]].fillna(0).sum(axis=1) == 0).mean(),
            }
            for name, g in groups
        ]
    )
    prevalence = pd.DataFrame(
        [
            {"finding": f, **{f"{name} %": 100 * g[f].mean() for name, g in groups}}
            for f in metrics["findings"]
        ]
    )
    return overview, prevalence

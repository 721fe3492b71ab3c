"""The audit's measures, each on plain arrays (the orchestration is :mod:`cxrkit.audit.core`).

Every interval is a 95% patient-bootstrap percentile interval from :mod:`cxrkit.metrics`
(AUROC through :func:`~cxrkit.metrics.bootstrap_ranking`, means through the same
:func:`~cxrkit.metrics.patient_resamples`), so the audit's AUROC is evaluate's AUROC.

``region_reliance``   AUROC as is, chest only, outside only, and chest only minus as is
``region_influence``  label-free: the logit's shift with the outside blanked vs the chest
``occlusion_peaks``   the largest occlusion drop outside vs inside the chest, in score SDs
``saliency_share``    saliency (occlusion sensitivity, Grad-CAM) energy inside the chest region vs the region's area share
``feature_probes``    logistic probes on the pooled features, patient-grouped CV
``view_strata``       AUROC within AP and within PA against the pooled AUROC
``size_detection``    detection rate at a threshold per box-area quartile
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrkit.artefacts import finite_or_none as _f
from cxrkit.metrics import (
    bootstrap_ci,
    bootstrap_mean,
    bootstrap_ranking,
    paired_auroc_difference,
    patient_resamples,
)

LEVEL = 0.95
#: Follow-up number bands for the probe (NIH's run from 0 to 183).
FOLLOW_UP_BANDS = ((0, 1, "0"), (1, 5, "1-4"), (5, 20, "5-19"), (20, 10_000, "20+"))


def _ci(value, lo, hi) -> dict:
    return {"value": _f(value), "lo": _f(lo), "hi": _f(hi)}


def _mean_interval(values: np.ndarray, groups, *, n: int, seed: int) -> dict:
    """Mean of per-image ``values`` with its patient-bootstrap percentile interval."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return _ci(None, None, None)
    reps = np.array([values[idx].mean() for idx in patient_resamples(groups, n, seed)])
    lo, hi = np.quantile(reps, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return _ci(values.mean(), lo, hi)


# -- region reliance ---------------------------------------------------------------------
def region_reliance(
    labels, full, chest, outside, groups, findings, *, n: int, seed: int
) -> dict[str, dict]:
    """Per finding: ``auroc``, ``auroc_chest_only``, ``auroc_outside_only`` (each
    value/lo/hi, all three from one set of patient resamples), ``chest_only_gain`` (chest
    only minus as is, paired interval) and the counts."""
    f = len(findings)
    y = np.asarray(labels, np.float64)
    roc, _ = bootstrap_ranking(
        np.hstack([y, y, y]), np.hstack([full, chest, outside]), groups, n=n, seed=seed, level=LEVEL
    )
    gain = paired_auroc_difference(y, full, chest, groups, n=n, seed=seed, level=LEVEL)
    out = {}
    for j, name in enumerate(findings):
        known = ~np.isnan(y[:, j])
        pos = int((y[known, j] == 1).sum())
        out[name] = {
            "positives": pos,
            "negatives": int(known.sum()) - pos,
            **{
                key: _ci(roc.value[j + k * f], roc.lo[j + k * f], roc.hi[j + k * f])
                for k, key in enumerate(("auroc", "auroc_chest_only", "auroc_outside_only"))
            },
            "chest_only_gain": _ci(gain["value"][j], gain["lo"][j], gain["hi"][j]),
        }
    return out


def _share_interval(part: np.ndarray, other: np.ndarray, groups, *, n: int, seed: int) -> dict:
    """``sum(part) / (sum(part) + sum(other))`` over the images, with its patient-bootstrap
    percentile interval (a ratio of sums: images where both are ~0 weigh ~nothing)."""
    part, other = np.asarray(part, np.float64), np.asarray(other, np.float64)

    def share(idx):
        total = part[idx].sum() + other[idx].sum()
        return part[idx].sum() / total if total > 0 else np.nan

    if len(part) == 0:
        return _ci(None, None, None)
    reps = np.array([share(idx) for idx in patient_resamples(groups, n, seed)])
    reps = reps[~np.isnan(reps)]
    lo, hi = np.quantile(reps, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]) if len(reps) else (None,) * 2
    return _ci(share(np.arange(len(part))), lo, hi)


def region_influence(
    full, chest, outside, area_inside, groups, findings, *, n: int, seed: int
) -> dict[str, dict]:
    """Per finding, label-free, over every image of the split: what happens to the
    finding's logit when the outside is blanked (the chest-only image ``chest``) and when
    the chest is blanked (``outside``).

    ``evidence_outside`` / ``evidence_chest``: the mean **drop** of the logit (positive part
    of ``full - chest`` / ``full - outside``: the evidence for the finding that blanking
    removed) in standard deviations of the logit over the split (``logit_sd``); the flag
    reads these. ``mean_shift_outside_blanked`` / ``mean_shift_chest_blanked``: the mean
    absolute changes in logits, and ``outside_share`` (ratio of sums) against
    ``outside_area`` (1 - the chest region's mean area): reported, not flagged (blanking
    either side is unusual for a model and moves its logit whichever way; measured, a
    mean-grey chest *raises* a phantom model's score). All with patient-bootstrap
    intervals. Needs no labels, so a shortcut on random images of the split (invisible to
    any AUROC) still shows: hiding it lowers the score.
    """
    full, chest, outside = (np.asarray(a, np.float64) for a in (full, chest, outside))
    d_out, d_in = full - chest, full - outside
    area_out = 1.0 - float(np.mean(area_inside))
    out = {}
    for j, name in enumerate(findings):
        sd = float(np.std(full[:, j]))
        scale = sd if sd > 0 else np.nan
        drop_out, drop_in = d_out[:, j].clip(0) / scale, d_in[:, j].clip(0) / scale
        nothing = np.isnan(scale)
        out[name] = {
            "images": int(len(full)),
            "logit_sd": _f(sd),
            "evidence_outside": _ci(None, None, None)
            if nothing
            else _mean_interval(drop_out, groups, n=n, seed=seed),
            "evidence_chest": _ci(None, None, None)
            if nothing
            else _mean_interval(drop_in, groups, n=n, seed=seed),
            "mean_shift_outside_blanked": _mean_interval(
                np.abs(d_out[:, j]), groups, n=n, seed=seed
            ),
            "mean_shift_chest_blanked": _mean_interval(np.abs(d_in[:, j]), groups, n=n, seed=seed),
            "outside_share": _share_interval(
                np.abs(d_out[:, j]), np.abs(d_in[:, j]), groups, n=n, seed=seed
            ),
            "outside_area": _f(area_out),
        }
    return out


# -- saliency ----------------------------------------------------------------------------
def energy_shares(maps: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: share of the map's total inside the region (NaN for an all-zero map) and
    the region's share of the image area."""
    maps = np.asarray(maps, np.float64)
    total = maps.sum((1, 2))
    inside = (maps * regions).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, inside / total, np.nan)
    return share, regions.mean((1, 2))


def saliency_share(maps: np.ndarray, regions: np.ndarray, groups, *, n: int, seed: int) -> dict:
    """Mean energy share inside the chest over the images (the split's positives of one
    finding) and the mean area share, each with a patient-bootstrap interval; ``excess``:
    share minus area (> 0: the map concentrates in the chest more than a uniform map)."""
    share, area = energy_shares(maps, regions)
    ok = ~np.isnan(share)
    g = np.asarray(groups)[ok]
    if not ok.any():
        return {
            "images": int(len(share)),
            "empty_maps": int(len(share)),
            "energy_inside": _ci(None, None, None),
            "area_inside": _ci(None, None, None),
            "excess": _ci(None, None, None),
        }
    return {
        "images": int(len(share)),
        "empty_maps": int((~ok).sum()),
        "energy_inside": _mean_interval(share[ok], g, n=n, seed=seed),
        "area_inside": _mean_interval(area[ok], g, n=n, seed=seed),
        "excess": _mean_interval(share[ok] - area[ok], g, n=n, seed=seed),
    }


def occlusion_peaks(
    maps: np.ndarray, regions: np.ndarray, scale: float, groups, *, n: int, seed: int
) -> dict:
    """Per image, the largest value of an occlusion map (the biggest drop of the finding's
    logit one patch causes) outside the chest region and inside it, divided by ``scale``
    (the standard deviation of the finding's logit over the split, so 1 = one spread of
    the model's own score); the means over the images with patient-bootstrap intervals."""
    maps = np.asarray(maps, np.float64)
    regions = np.asarray(regions, bool)
    scale = float(scale) if scale and np.isfinite(scale) and scale > 0 else np.nan
    outside = np.where(regions, 0.0, maps).max((1, 2), initial=0.0) / scale
    inside = np.where(regions, maps, 0.0).max((1, 2), initial=0.0) / scale
    if np.isnan(scale) or len(maps) == 0:
        return {"peak_outside": _ci(None, None, None), "peak_inside": _ci(None, None, None)}
    return {
        "peak_outside": _mean_interval(outside, groups, n=n, seed=seed),
        "peak_inside": _mean_interval(inside, groups, n=n, seed=seed),
        "logit_sd": _f(scale),
    }


# -- feature probes ----------------------------------------------------------------------
def band(values, bands) -> pd.Series:
    """Numbers -> band labels (``(lo inclusive, hi exclusive, label)``); NaN outside."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").reset_index(drop=True)
    out = pd.Series(np.nan, index=v.index, dtype=object)
    for lo, hi, name in bands:
        out[(v >= lo) & (v < hi)] = name
    return out


def probe_targets(table: pd.DataFrame, age_bands) -> dict[str, pd.Series]:
    """The acquisition variables a diagnosis must not rest on, one label per image."""
    t = table.reset_index(drop=True)
    sex = t["sex"].where(t["sex"].isin(["M", "F"]))
    view = t["view"].where(t["view"].isin(["AP", "PA"]))
    return {
        "view": view,
        "sex": sex,
        "age_band": band(t["age"], age_bands),
        "follow_up": band(t["follow_up"], FOLLOW_UP_BANDS),
    }


def probe(
    features: np.ndarray, target: pd.Series, groups, *, folds: int = 5, seed: int = 0, n: int = 1000
) -> dict:
    """How well a logistic regression on ``features`` predicts ``target`` under
    patient-grouped, stratified ``folds``-fold cross-validation.

    The out-of-fold probabilities are scored by AUROC (one-vs-rest, macro over classes
    with both kinds present; chance 0.5) with a patient-bootstrap interval, and by
    balanced accuracy (chance ``1/classes``). Classes with fewer patients than ``folds``
    are dropped (named in ``dropped``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y = pd.Series(target).reset_index(drop=True)
    g = pd.Series(np.asarray(groups)).reset_index(drop=True)
    known = y.notna()
    patients = g[known].groupby(y[known]).nunique()
    keep = patients[patients >= folds].index
    dropped = sorted(set(patients.index) - set(keep))
    use = known & y.isin(keep)
    classes = sorted(keep)
    base = {
        "classes": [str(c) for c in classes],
        "dropped": [str(c) for c in dropped],
        "images": int(use.sum()),
        "chance_auroc": 0.5,
        "chance_balanced_accuracy": _f(1 / len(classes)) if classes else None,
    }
    if len(classes) < 2:
        return {
            **base,
            "auroc": _ci(None, None, None),
            "balanced_accuracy": None,
            "note": "fewer than two classes with enough patients",
        }
    x, yy, gg = features[use.to_numpy()], y[use].to_numpy(), g[use].to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(1):  # small fits: BLAS threads only contend (10x slower here)
        proba = cross_val_predict(model, x, yy, groups=gg, cv=cv, method="predict_proba")
    onehot = (yy[:, None] == np.array(classes)[None, :]).astype(np.float64)
    if len(classes) == 2:  # one AUROC: the second class's probability
        onehot, proba = onehot[:, 1:], proba[:, 1:]
    ci = bootstrap_ci(onehot, proba, gg, "auroc", n=n, seed=seed, level=LEVEL)
    mean = bootstrap_mean(ci)
    predicted = (
        np.array(classes)[proba.argmax(1)]
        if proba.shape[1] > 1
        else np.where(proba[:, 0] >= 0.5, classes[1], classes[0])
    )
    return {
        **base,
        "auroc": _ci(mean["value"], mean["lo"], mean["hi"]),
        "balanced_accuracy": _f(balanced_accuracy_score(yy, predicted)),
    }


def feature_probes(
    features, table: pd.DataFrame, groups, age_bands, *, n: int, seed: int
) -> dict[str, dict]:
    """:func:`probe` for view, sex, age band and follow-up number."""
    return {
        name: probe(features, target, groups, seed=seed, n=n)
        for name, target in probe_targets(table, age_bands).items()
    }


# -- view strata ---------------------------------------------------------------------------
def view_strata(labels, probs, groups, views, findings, *, n: int, seed: int) -> dict:
    """Per finding: pooled AUROC and the AUROC within AP only and PA only (value/lo/hi,
    positives, images; NaN values where a stratum has one class)."""
    views = np.asarray(views)
    groups = np.asarray(groups)
    out: dict[str, dict] = {f: {} for f in findings}
    for name, rows in (
        ("pooled", np.ones(len(views), bool)),
        ("AP", views == "AP"),
        ("PA", views == "PA"),
    ):
        if not rows.any():
            for f in findings:
                out[f][name] = {**_ci(None, None, None), "positives": 0, "images": 0}
            continue
        y = np.asarray(labels, np.float64)[rows]
        ci = bootstrap_ci(
            y, np.asarray(probs)[rows], groups[rows], "auroc", n=n, seed=seed, level=LEVEL
        )
        for j, f in enumerate(findings):
            known = ~np.isnan(y[:, j])
            out[f][name] = {
                **_ci(ci.value[j], ci.lo[j], ci.hi[j]),
                "positives": int((y[known, j] == 1).sum()),
                "images": int(known.sum()),
            }
    return out


# -- size ------------------------------------------------------------------------------------
def size_detection(pairs: pd.DataFrame, *, n: int, seed: int) -> dict:
    """Detection rate per quartile of box area.

    ``pairs``: one row per (image, finding) with a box: ``patient_id``, ``finding``,
    ``area`` (share of the image the finding's boxes cover), ``detected`` (probability
    >= the finding's threshold). Quartiles are of all pairs pooled (few boxes per
    finding); the rates get patient-bootstrap intervals, as does the difference between
    the largest and the smallest quartile.
    """
    if len(pairs) < 8:
        return {"pairs": int(len(pairs)), "quartiles": [], "note": "fewer than 8 box pairs"}
    p = pairs.reset_index(drop=True)
    edges = np.quantile(p["area"], [0, 0.25, 0.5, 0.75, 1])
    q = np.clip(np.searchsorted(edges[1:-1], p["area"], side="right"), 0, 3)
    det = p["detected"].to_numpy(bool).astype(np.float64)
    groups = p["patient_id"].to_numpy()
    reps = np.full((n, 4), np.nan)
    for r, idx in enumerate(patient_resamples(groups, n, seed)):
        for k in range(4):
            sel = idx[q[idx] == k]
            if len(sel):
                reps[r, k] = det[sel].mean()
    rows = []
    for k in range(4):
        sel = q == k
        col = reps[:, k][~np.isnan(reps[:, k])]
        lo, hi = np.quantile(col, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]) if len(col) else (None,) * 2
        rows.append(
            {
                "quartile": k + 1,
                "area_from": _f(edges[k]),
                "area_to": _f(edges[k + 1]),
                "pairs": int(sel.sum()),
                **_ci(det[sel].mean() if sel.any() else None, lo, hi),
            }
        )
    diff = reps[:, 3] - reps[:, 0]
    diff = diff[~np.isnan(diff)]
    lo, hi = np.quantile(diff, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]) if len(diff) else (None,) * 2
    largest_minus_smallest = _ci(det[q == 3].mean() - det[q == 0].mean(), lo, hi)
    per_finding = {
        f: {
            "pairs": int(len(t)),
            "detected": _f(t["detected"].mean()),
            "median_area": _f(t["area"].median()),
        }
        for f, t in p.groupby("finding", sort=True)
    }
    return {
        "pairs": int(len(p)),
        "quartiles": rows,
        "largest_minus_smallest": largest_minus_smallest,
        "per_finding": per_finding,
    }


__all__ = [
    "FOLLOW_UP_BANDS",
    "band",
    "energy_shares",
    "feature_probes",
    "occlusion_peaks",
    "probe",
    "probe_targets",
    "region_influence",
    "region_reliance",
    "saliency_share",
    "size_detection",
    "view_strata",
]

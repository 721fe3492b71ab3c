"""The metric sections of an evaluation (:func:`cxrkit.evaluate.scoring.score` puts them
together): ranking (AUROC/AUPRC with patient-bootstrap intervals), thresholds fitted on one
table and applied to another, calibration before and after temperature scaling, subgroups
(sex, age band, view) and the out-of-distribution section. Pure functions of
:class:`~cxrkit.evaluate.predictions.Predictions`; undefined values are ``None``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrkit.artefacts import finite_or_none as _f
from cxrkit.evaluate.predictions import Predictions
from cxrkit.evaluate.threshold_choice import THRESHOLD_METHODS, ThresholdChoice, fit_threshold
from cxrkit.metrics import (
    bootstrap_ci,
    bootstrap_mean,
    bootstrap_ranking,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    mean_defined,
    reliability_curve,
    sigmoid,
    threshold_metrics,
)

CALIBRATION_BINS = 10
#: (lower bound inclusive, upper bound exclusive, label) in years.
AGE_BANDS = (
    (0, 20, "<20"),
    (20, 40, "20-39"),
    (40, 60, "40-59"),
    (60, 80, "60-79"),
    (80, 121, "80+"),
)
#: Fewer positives than this in the evaluated split earns a small-sample note; a subgroup
#: AUROC resting on fewer positive *patients* than this is marked "caution" (greyed).
FEW_POSITIVES = 10
#: A subgroup AUROC with fewer positive patients than this gets no interval: a patient
#: bootstrap of one to four positive patients only reshuffles the same few images, and
#: its interval looks tight (Hernia, sex M: [0.843, 0.913] from one positive image).
MIN_INTERVAL_PATIENTS = 5


def _counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (labels == 1).sum(0).astype(int), (labels == 0).sum(0).astype(int)


def ranking_section(pred: Predictions, findings, *, n: int, seed: int, level: float = 0.95):
    """AUROC and AUPRC per finding with patient-bootstrap CIs, and the mean AUROC."""
    roc, prc = bootstrap_ranking(
        pred.labels, pred.probs, pred.patients, n=n, seed=seed, level=level
    )
    pos, neg = _counts(pred.labels)
    auroc = {
        f: {
            "value": _f(roc.value[j]),
            "lo": _f(roc.lo[j]),
            "hi": _f(roc.hi[j]),
            "positives": int(pos[j]),
            "negatives": int(neg[j]),
        }
        for j, f in enumerate(findings)
    }
    auprc = {
        f: {
            "value": _f(prc.value[j]),
            "lo": _f(prc.lo[j]),
            "hi": _f(prc.hi[j]),
            "prevalence": _f(pos[j] / (pos[j] + neg[j]) if pos[j] + neg[j] else None),
        }
        for j, f in enumerate(findings)
    }
    m = bootstrap_mean(roc)
    mean = {
        "value": _f(m["value"]),
        "lo": _f(m["lo"]),
        "hi": _f(m["hi"]),
        "defined": m["defined"],
        "undefined": [f for j, f in enumerate(findings) if np.isnan(roc.value[j])],
    }
    return auroc, auprc, mean


def threshold_section(
    fit: Predictions, test: Predictions, findings, used: ThresholdChoice | None = None
) -> tuple[dict, dict]:
    """Thresholds chosen on ``fit`` (validation) per method, and their metrics on ``test``;
    ``used``: the thresholds written for predict (:mod:`cxrkit.evaluate.threshold_choice`),
    applied too, as ``"used"``."""
    thresholds: dict = {}
    applied: dict = {}
    for method in THRESHOLD_METHODS:
        thresholds[method] = {
            f: _f(fit_threshold(fit.labels[:, j], fit.probs[:, j], method))
            for j, f in enumerate(findings)
        }
    if used is not None:
        thresholds["used"] = used.values
    for method in thresholds:
        applied[method] = {}
        for j, f in enumerate(findings):
            t = thresholds[method][f]
            m = threshold_metrics(
                test.labels[:, j], test.probs[:, j], float("nan") if t is None else t
            )
            applied[method][f] = {k: v if isinstance(v, int) else _f(v) for k, v in m.items()}
    return thresholds, applied


def _calibration(labels: np.ndarray, probs: np.ndarray, findings) -> dict:
    cols = range(len(findings))
    brier = np.array([brier_score(labels[:, j], probs[:, j]) for j in cols])
    ece = np.array(
        [expected_calibration_error(labels[:, j], probs[:, j], CALIBRATION_BINS) for j in cols]
    )
    return {
        "brier": dict(zip(findings, map(_f, brier), strict=True)),
        "ece": dict(zip(findings, map(_f, ece), strict=True)),
        "mean_brier": _f(mean_defined(brier)),
        "mean_ece": _f(mean_defined(ece)),
    }


def calibration_section(
    fit: Predictions, test: Predictions, findings, *, temperature: bool = True
) -> dict:
    """Brier, ECE and reliability on ``test``; temperature fitted on ``fit``, before/after."""
    before = _calibration(test.labels, test.probs, findings)
    out = {
        "bins": CALIBRATION_BINS,
        **before,
        "temperature": None,
        "after_temperature": None,
        "reliability": {
            f: reliability_curve(test.labels[:, j], test.probs[:, j], CALIBRATION_BINS)
            for j, f in enumerate(findings)
        },
    }
    if temperature:
        t = fit_temperature(fit.logits, fit.labels)
        if math.isfinite(t):
            out["temperature"] = t
            out["after_temperature"] = _calibration(test.labels, sigmoid(test.logits / t), findings)
    return out


def age_band(age) -> pd.Series:
    """Age in years -> band label (:data:`AGE_BANDS`); NaN for missing or impossible ages."""
    age = pd.to_numeric(pd.Series(age), errors="coerce")
    out = pd.Series(np.nan, index=age.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        out[(age >= lo) & (age < hi)] = name
    return out


def subgroup_rows(pred: Predictions, findings, *, n: int, seed: int) -> list[dict]:
    """Per-finding AUROC with patient-bootstrap CI in each sex, age band and view.

    Each row counts its positive images and the patients they belong to; with fewer than
    :data:`MIN_INTERVAL_PATIENTS` positive patients the interval is left out (None), and
    with fewer than :data:`FEW_POSITIVES` the row is marked ``caution``, as the main
    table's notes do for findings."""
    attributes = {
        "sex": (pred.table["sex"], ("M", "F")),
        "age_band": (age_band(pred.table["age"]), [b[2] for b in AGE_BANDS]),
        "view": (pred.table["view"], ("PA", "AP")),
    }
    rows = []
    for attribute, (values, groups) in attributes.items():
        values = values.to_numpy()
        for group in groups:
            rows_in = np.flatnonzero(values == group)
            if len(rows_in) == 0:
                continue
            y, p = pred.labels[rows_in], pred.probs[rows_in]
            ci = bootstrap_ci(y, p, pred.patients[rows_in], "auroc", n=n, seed=seed)
            pos, neg = _counts(y)
            patients = pred.patients[rows_in]
            for j, f in enumerate(findings):
                pos_patients = int(len(np.unique(patients[y[:, j] == 1])))
                interval = pos_patients >= MIN_INTERVAL_PATIENTS
                rows.append(
                    {
                        "attribute": attribute,
                        "group": group,
                        "finding": f,
                        "n": int(pos[j] + neg[j]),
                        "positives": int(pos[j]),
                        "positive_patients": pos_patients,
                        "auroc": _f(ci.value[j]),
                        "lo": _f(ci.lo[j]) if interval else None,
                        "hi": _f(ci.hi[j]) if interval else None,
                        "caution": pos_patients < FEW_POSITIVES,
                    }
                )
    return rows


def ood_section(pred: Predictions, findings, record: dict) -> dict:
    """How many evaluated images the OOD score flags, and the mean AUROC with and without
    them (per finding too): a model should not be judged on images it calls foreign, and a
    flag that removes mostly hard cases would show here as a jump."""
    from cxrkit.metrics import auroc_per_finding
    from cxrkit.ood import record_summary

    flag: np.ndarray = pred.ood_flag  # type: ignore[assignment]  # the caller checks ood_score is not None
    keep = ~flag
    all_auc = auroc_per_finding(pred.labels, pred.probs)
    kept_auc = (
        auroc_per_finding(pred.labels[keep], pred.probs[keep])
        if keep.sum() >= 2
        else np.full(len(findings), np.nan)
    )
    return {
        "n_images": int(len(flag)),
        "n_flagged": int(flag.sum()),
        "fraction_flagged": _f(flag.mean()) if len(flag) else None,
        "flagged_images": pred.table.loc[flag, "image_id"].tolist()[:200],
        "score_quantiles": {
            q: _f(np.percentile(pred.ood_score, float(q)))  # type: ignore[arg-type]
            for q in ("50", "90", "99")
        },
        "mean_auroc_all": _f(mean_defined(all_auc)),
        "mean_auroc_without_flagged": _f(mean_defined(kept_auc)),
        "auroc_all": dict(zip(findings, map(_f, all_auc), strict=True)),
        "auroc_without_flagged": dict(zip(findings, map(_f, kept_auc), strict=True)),
        "record": record_summary(record),
    }

"""Per-finding ranking metrics (pure numpy + scikit-learn): the one place AUROC is computed.

Training (validation AUROC for early stopping) and evaluation both call these functions,
so the number a run selects its best epoch on is the number its report shows.

Labels may contain NaN (unknown): those entries are ignored per finding. A finding whose
known labels are all one class has no AUROC: it is NaN, never 0.5 or 0, and the mean over
findings skips it (and says how many it skipped).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _per_finding(fn, y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} must both be (N, F)")
    out = np.full(y_true.shape[1], np.nan)
    for j in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, j])
        t = y_true[known, j]
        if t.size == 0 or t.min() == t.max():
            continue  # undefined: one class only
        out[j] = fn(t, y_score[known, j])
    return out


def auroc_per_finding(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """AUROC per column of ``(N, F)`` arrays; NaN where a column has one class only."""
    return _per_finding(roc_auc_score, y_true, y_score)


def auprc_per_finding(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Average precision (area under the PR curve) per column; NaN where undefined."""
    return _per_finding(average_precision_score, y_true, y_score)


def mean_defined(values: np.ndarray) -> float:
    """Mean over defined (non-NaN) entries; NaN if none is defined."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else float("nan")

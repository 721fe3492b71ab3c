"""Per-finding ranking metrics (pure numpy + scikit-learn): the one place AUROC is computed.

Training (validation AUROC for early stopping) and evaluation both call these functions,
so the number a run selects its best epoch on is the number its report shows.

Labels may contain NaN (unknown): those entries are ignored per finding. A finding whose
known labels are all one class has no AUROC: it is NaN, never 0.5 or 0, and the mean over
findings skips it (and says how many it skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


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
    from sklearn.metrics import roc_auc_score  # late: importing scikit-learn costs ~2 s

    return _per_finding(roc_auc_score, y_true, y_score)


def auprc_per_finding(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Average precision (area under the PR curve) per column; NaN where undefined."""
    from sklearn.metrics import average_precision_score

    return _per_finding(average_precision_score, y_true, y_score)


def mean_defined(values: np.ndarray) -> float:
    """Mean over defined (non-NaN) entries; NaN if none is defined."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else float("nan")


# -- evaluation: patient bootstrap, decision thresholds, calibration ---------------------
#
# The bootstrap resamples *patients*, not images: ChestX-ray14 has up to 184 images per
# patient, and images of one patient are not independent, so an image-level bootstrap
# gives intervals that are too narrow. A replicate draws as many patients as there are,
# with replacement, and keeps every image of each drawn patient (twice if drawn twice).
#
# AUROC and average precision of the replicates are computed by hand (a weighted
# Mann-Whitney count and a weighted precision sum over one sort per finding) because
# calling scikit-learn 14 x 1000 times on 25k images takes minutes; the point estimates
# still come from scikit-learn (auroc_per_finding / auprc_per_finding) and the tests
# check the replicates against scikit-learn on the same index sets.


def _patient_draws(groups, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient code per image ``(N,)`` and the drawn patient codes ``(n, P)``."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    n_patients = int(codes.max()) + 1 if codes.size else 0
    if n_patients == 0:
        raise ValueError("bootstrap needs at least one image")
    rng = np.random.default_rng(seed)
    return codes, rng.integers(0, n_patients, size=(int(n), n_patients))


def patient_resamples(groups, n: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """Image index sets of a patient-level bootstrap (one array per replicate).

    ``groups``: patient id per image. Each replicate draws the patients with
    replacement and keeps all images of each drawn patient, as many times as drawn.
    """
    codes, draws = _patient_draws(groups, n, seed)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(draws.shape[1] + 1))
    members = [order[starts[p] : starts[p + 1]] for p in range(draws.shape[1])]
    for row in draws:
        yield np.concatenate([members[p] for p in row])


def _replicate_weights(codes: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """How often each image appears in each replicate: ``(n, N)`` float64."""
    r, p = draws.shape
    counts = np.bincount((draws + p * np.arange(r)[:, None]).ravel(), minlength=r * p)
    return counts.reshape(r, p)[:, codes].astype(np.float64)


def weighted_auroc_ap(
    y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision of one finding under many image weightings.

    ``y_true`` ``(N,)`` 1 = positive, 0 = negative, NaN = unknown (ignored);
    ``y_score`` ``(N,)``; ``weights`` ``(R, N)``: integer multiplicities give exactly the
    metrics of the repeated data. AUROC is the weighted Mann-Whitney statistic (ties
    count one half); average precision is scikit-learn's ``sum_k (R_k - R_{k-1}) P_k``
    over distinct scores. One sort per class, then prefix sums: ``O(R N)``. NaN where a
    weighting leaves one class only. Returns two ``(R,)`` arrays.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    pos = pos[np.argsort(s[pos], kind="stable")]
    neg = neg[np.argsort(s[neg], kind="stable")]
    s_pos, s_neg = s[pos], s[neg]
    w_pos = w[:, pos]
    zero = np.zeros((len(w), 1))
    cum_neg = np.concatenate([zero, np.cumsum(w[:, neg], 1)], 1)  # negative weight below
    cum_pos = np.concatenate([zero, np.cumsum(w_pos, 1)], 1)
    n_pos, n_neg = cum_pos[:, -1], cum_neg[:, -1]
    below = cum_neg[:, np.searchsorted(s_neg, s_pos, "left")]  # negatives scored lower
    tied = cum_neg[:, np.searchsorted(s_neg, s_pos, "right")] - below
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (w_pos * (below + 0.5 * tied)).sum(1) / (n_pos * n_neg)
        # at the threshold s_i: true positives = positive weight scored >= s_i, etc.
        tp = n_pos[:, None] - cum_pos[:, np.searchsorted(s_pos, s_pos, "left")]
        fp = n_neg[:, None] - below
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (w_pos * precision).sum(1) / n_pos
    undefined = (n_pos == 0) | (n_neg == 0)
    auroc[undefined] = np.nan
    ap[undefined] = np.nan
    return auroc, ap


@dataclass
class BootstrapCI:
    """A metric per finding with its patient-bootstrap percentile interval.

    ``value``, ``lo``, ``hi``, ``valid``: ``(F,)``; ``samples``: ``(n, F)`` replicate
    values (NaN where a replicate left a finding with one class). ``lo``/``hi`` are NaN
    when the value is undefined or fewer than ``min_valid`` of the replicates were valid.
    """

    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    valid: np.ndarray
    samples: np.ndarray
    n: int
    level: float
    min_valid: float


def _percentile_ci(samples: np.ndarray, value: np.ndarray, level: float, min_valid: float):
    alpha = (1.0 - level) / 2.0
    n, f = samples.shape
    valid = (~np.isnan(samples)).sum(0)
    lo, hi = np.full(f, np.nan), np.full(f, np.nan)
    for j in range(f):
        if np.isnan(value[j]) or n == 0 or valid[j] < min_valid * n:
            continue
        col = samples[~np.isnan(samples[:, j]), j]
        lo[j], hi[j] = np.quantile(col, [alpha, 1.0 - alpha])
    return lo, hi, valid


def bootstrap_ci(
    y_true,
    y_score,
    groups,
    metric_fn: str | Callable = "auroc",
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_valid: float = 0.5,
    chunk: int = 50,
) -> BootstrapCI:
    """Patient-bootstrap percentile CI of a per-finding metric.

    ``y_true`` ``(N, F)`` (or ``(N,)``) 0/1 with NaN = unknown, ``y_score`` the same
    shape, ``groups`` the patient id per image. ``metric_fn``: "auroc" or "auprc"
    (vectorised, see :func:`weighted_auroc_ap`) or any ``fn(y, s) -> float`` called on
    each replicate (slow). Replicates in which a finding has one class are skipped for
    that finding; ``valid`` says how many were used. Same ``seed``, same replicates
    (:func:`patient_resamples` lists them).
    """
    y, s = _check_bootstrap_input(y_true, y_score, groups, level)
    if metric_fn in ("auroc", "auprc"):
        roc, prc = bootstrap_ranking(
            y, s, groups, n=n, seed=seed, level=level, min_valid=min_valid, chunk=chunk
        )
        return roc if metric_fn == "auroc" else prc
    if callable(metric_fn):
        value = _per_finding(metric_fn, y, s)
        samples = np.full((n, y.shape[1]), np.nan)
        for i, idx in enumerate(patient_resamples(groups, n, seed)):
            samples[i] = _per_finding(metric_fn, y[idx], s[idx])
    else:
        raise ValueError(f"metric_fn must be 'auroc', 'auprc' or a callable, got {metric_fn!r}")
    lo, hi, valid = _percentile_ci(samples, value, level, min_valid)
    return BootstrapCI(
        value=value,
        lo=lo,
        hi=hi,
        valid=valid,
        samples=samples,
        n=int(n),
        level=level,
        min_valid=min_valid,
    )


def _check_bootstrap_input(y_true, y_score, groups, level):
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must both be (N, F)")
    if len(groups) != len(y):
        raise ValueError(f"{len(groups)} patient ids for {len(y)} images")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return y, s


def bootstrap_ranking(
    y_true,
    y_score,
    groups,
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_valid: float = 0.5,
    chunk: int = 50,
) -> tuple[BootstrapCI, BootstrapCI]:
    """AUROC and AUPRC intervals from one pass over the same patient resamples.

    Same replicates as ``bootstrap_ci(..., "auroc")`` / ``"auprc"`` for the same seed;
    point values from scikit-learn. Weights are built ``chunk`` replicates at a time.
    """
    y, s = _check_bootstrap_input(y_true, y_score, groups, level)
    codes, draws = _patient_draws(groups, n, seed)
    roc = np.full((n, y.shape[1]), np.nan)
    prc = np.full((n, y.shape[1]), np.nan)
    known = ~np.isnan(y)
    for a in range(0, n, chunk):
        w = _replicate_weights(codes, draws[a : a + chunk])
        for j in range(y.shape[1]):
            t = y[known[:, j], j]
            if t.size == 0 or t.min() == t.max():
                continue  # undefined on the full data, so in every replicate
            roc[a : a + chunk, j], prc[a : a + chunk, j] = weighted_auroc_ap(y[:, j], s[:, j], w)
    out = []
    for value, samples in ((auroc_per_finding(y, s), roc), (auprc_per_finding(y, s), prc)):
        lo, hi, valid = _percentile_ci(samples, value, level, min_valid)
        out.append(
            BootstrapCI(
                value=value,
                lo=lo,
                hi=hi,
                valid=valid,
                samples=samples,
                n=int(n),
                level=level,
                min_valid=min_valid,
            )
        )
    return out[0], out[1]


def bootstrap_mean(ci: BootstrapCI) -> dict:
    """Mean over the findings defined on the full data, with its bootstrap interval.

    A replicate counts only if every one of those findings is defined in it (otherwise
    the mean would be over a different set of findings). Returns ``value``, ``lo``,
    ``hi`` (NaN if under ``min_valid`` of replicates are usable), ``valid``, ``defined``.
    """
    defined = ~np.isnan(ci.value)
    value = mean_defined(ci.value)
    if not defined.any():
        return {"value": value, "lo": float("nan"), "hi": float("nan"), "valid": 0, "defined": 0}
    per_rep = ci.samples[:, defined]
    ok = ~np.isnan(per_rep).any(1)
    means = np.full(len(per_rep), np.nan)
    means[ok] = per_rep[ok].mean(1)
    lo, hi, _ = _percentile_ci(means[:, None], np.array([value]), ci.level, ci.min_valid)
    return {
        "value": value,
        "lo": float(lo[0]),
        "hi": float(hi[0]),
        "valid": int(ok.sum()),
        "defined": int(defined.sum()),
    }


def paired_auroc_difference(
    y_true,
    score_a,
    score_b,
    groups,
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_valid: float = 0.5,
) -> dict:
    """AUROC of ``score_b`` minus ``score_a`` on the same images, with a paired CI.

    Both models are scored on the *same* patient resamples (one draw, both score sets),
    so the interval reflects the difference between the models, not the two models'
    separate sampling noise (which mostly cancels). Returns per-finding ``value``,
    ``lo``, ``hi`` ``(F,)`` and the same for the mean over findings defined for both
    (``mean``: dict), NaN where undefined or under ``min_valid`` valid replicates.
    """
    a, _ = bootstrap_ranking(
        y_true, score_a, groups, n=n, seed=seed, level=level, min_valid=min_valid
    )
    b, _ = bootstrap_ranking(
        y_true, score_b, groups, n=n, seed=seed, level=level, min_valid=min_valid
    )
    value = b.value - a.value
    samples = b.samples - a.samples
    lo, hi, _ = _percentile_ci(samples, value, level, min_valid)
    defined = ~np.isnan(value)
    mean = {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
    if defined.any():
        per_rep = samples[:, defined]
        ok = ~np.isnan(per_rep).any(1)
        means = np.full(len(per_rep), np.nan)
        means[ok] = per_rep[ok].mean(1)
        m_value = float(value[defined].mean())
        m_lo, m_hi, _ = _percentile_ci(means[:, None], np.array([m_value]), level, min_valid)
        mean = {"value": m_value, "lo": float(m_lo[0]), "hi": float(m_hi[0])}
    return {"value": value, "lo": lo, "hi": hi, "mean": mean}


def auroc_reference_difference(
    y_a,
    y_b,
    y_score,
    groups,
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_valid: float = 0.5,
) -> dict:
    """One score's AUROC against reference ``y_a`` minus its AUROC against ``y_b``.

    The counterpart of :func:`paired_auroc_difference` for one model and two label sets
    on the same images (e.g. radiologists vs NIH's text-mined labels): both AUROCs come
    from one :func:`bootstrap_ranking` call on the two label columns, so they share every
    patient resample and the interval is that of the paired difference. Returns ``a`` and
    ``b`` (:class:`BootstrapCI` with one column each) and ``value``, ``lo``, ``hi`` of
    the difference (NaN where undefined).
    """
    y = np.column_stack([np.asarray(y_a, np.float64), np.asarray(y_b, np.float64)])
    s = np.asarray(y_score, np.float64)
    roc, _ = bootstrap_ranking(
        y, np.column_stack([s, s]), groups, n=n, seed=seed, level=level, min_valid=min_valid
    )
    value = roc.value[:1] - roc.value[1:]
    lo, hi, _ = _percentile_ci(roc.samples[:, :1] - roc.samples[:, 1:], value, level, min_valid)

    def one(j: int) -> BootstrapCI:
        return BootstrapCI(
            value=roc.value[j : j + 1],
            lo=roc.lo[j : j + 1],
            hi=roc.hi[j : j + 1],
            valid=roc.valid[j : j + 1],
            samples=roc.samples[:, j : j + 1],
            n=roc.n,
            level=level,
            min_valid=min_valid,
        )

    return {
        "a": one(0),
        "b": one(1),
        "value": float(value[0]),
        "lo": float(lo[0]),
        "hi": float(hi[0]),
    }


def _known(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """1-D labels and scores with unknown (NaN) labels dropped."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    keep = ~np.isnan(y)
    return y[keep], s[keep]


def youden_threshold(y_true, y_score) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1.

    From scikit-learn's ROC curve (every distinct score is a candidate; a case is called
    positive when its score is >= the threshold). Ties: the highest such threshold.
    NaN if the labels have one class.
    """
    from sklearn.metrics import roc_curve

    y, s = _known(y_true, y_score)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thr)  # the first point (nothing called) is +inf
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])  # argmax: first = highest threshold


def max_f1_threshold(y_true, y_score) -> float:
    """The score threshold maximising F1 on scikit-learn's precision-recall curve.

    Ties: the highest such threshold. NaN if the labels have one class.
    """
    from sklearn.metrics import precision_recall_curve

    y, s = _known(y_true, y_score)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    precision, recall, thr = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = np.flatnonzero(f1 == f1.max())  # thresholds ascending: take the last
    return float(thr[best[-1]])


def target_threshold(
    y_true, y_score, *, sensitivity: float | None = None, specificity: float | None = None
) -> float:
    """The threshold reaching a target ``sensitivity`` (the highest such threshold: fewest
    false positives) or ``specificity`` (the lowest such: most true positives) on these
    labels, from scikit-learn's ROC curve (positive when score >= threshold). NaN if the
    labels have one class."""
    from sklearn.metrics import roc_curve

    if (sensitivity is None) == (specificity is None):
        raise ValueError("give one of sensitivity= or specificity=")
    y, s = _known(y_true, y_score)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)  # thresholds descending
    if sensitivity is not None:
        return float(thr[int(np.argmax(tpr >= sensitivity))])  # first reaching it
    ok = np.flatnonzero(1.0 - fpr >= specificity)  # a prefix of the curve
    i = int(ok[-1])
    # only "call nothing" reaches it: just above the highest score
    return float(thr[i]) if np.isfinite(thr[i]) else float(np.nextafter(s.max(), np.inf))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def threshold_metrics(y_true, y_score, threshold: float) -> dict:
    """Confusion counts and rates when ``score >= threshold`` is called positive.

    Keys: threshold, sensitivity, specificity, ppv, npv, f1, accuracy, tp, fp, tn, fn.
    A rate whose denominator is zero (e.g. PPV when nothing is called positive) is NaN;
    everything is NaN when the threshold is NaN (undefined).
    """
    from sklearn.metrics import confusion_matrix

    keys = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "tp", "fp", "tn", "fn")
    if threshold is None or np.isnan(threshold):
        return {"threshold": float("nan"), **{k: float("nan") for k in keys}}
    y, s = _known(y_true, y_score)
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y.astype(int), pred, labels=[0, 1]).ravel())
    return {
        "threshold": float(threshold),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def brier_score(y_true, y_prob) -> float:
    """Mean squared error of probabilities (scikit-learn); NaN without known labels."""
    from sklearn.metrics import brier_score_loss

    y, p = _known(y_true, y_prob)
    if y.size == 0:
        return float("nan")
    return float(brier_score_loss(y, p, pos_label=1))


def reliability_curve(y_true, y_prob, bins: int = 10) -> dict:
    """Reliability diagram data over ``bins`` equal-width bins of predicted probability.

    ``mean_predicted`` and ``fraction_positive`` come from scikit-learn's
    ``calibration_curve`` (which drops empty bins); ``count`` is the images per
    non-empty bin, binned by the same rule (``(0.1, 0.2]``-style, the first bin
    ``[0, 0.1]``). Lists of equal length; empty without known labels.
    """
    from sklearn.calibration import calibration_curve

    y, p = _known(y_true, y_prob)
    if y.size == 0:
        return {"mean_predicted": [], "fraction_positive": [], "count": []}
    frac, mean = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    counts = np.bincount(_bin_ids(p, bins), minlength=bins)
    counts = counts[counts > 0]
    return {
        "mean_predicted": mean.tolist(),
        "fraction_positive": frac.tolist(),
        "count": counts.astype(int).tolist(),
    }


def _bin_ids(p: np.ndarray, bins: int) -> np.ndarray:
    """scikit-learn's uniform binning (``calibration_curve``): bin of each probability."""
    return np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], p)


def expected_calibration_error(y_true, y_prob, bins: int = 10) -> float:
    """ECE = sum over equal-width bins of |fraction positive - mean probability| x n_bin / N.

    Hand-written because scikit-learn has no ECE; bins as in :func:`reliability_curve`.
    NaN without known labels.
    """
    y, p = _known(y_true, y_prob)
    if y.size == 0:
        return float("nan")
    ids = _bin_ids(p, bins)
    conf = np.bincount(ids, weights=p, minlength=bins)
    acc = np.bincount(ids, weights=y, minlength=bins)
    return float(np.abs(acc - conf).sum() / y.size)  # |sum y - sum p| per bin = n_bin |acc-conf|


def sigmoid(logits) -> np.ndarray:
    """Numerically stable logistic function (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def fit_temperature(logits, labels, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """One temperature ``T`` for all findings, minimising the masked mean BCE of ``sigmoid(z / T)``.

    ``logits``, ``labels``: ``(N, F)`` (NaN labels ignored). Fitted on validation
    predictions only; ``T > 1`` softens over-confident outputs. A 1-D bounded search on
    ``log T`` (scipy's ``minimize_scalar``); ranking metrics are unchanged by ``T``.
    NaN when no label is known.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.shape != y.shape:
        raise ValueError(f"{z.size} logits but {y.size} labels")
    keep = ~np.isnan(y)
    z, y = z[keep], y[keep]
    if z.size == 0:
        return float("nan")

    def loss(log_t: float) -> float:
        x = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, x) - y * x))  # BCE with logits

    res = minimize_scalar(
        loss,
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))

"""Evaluation metrics on hand-computed cases: bootstrap, thresholds, calibration, temperature."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrkit.metrics import (
    auroc_per_finding,
    bootstrap_ci,
    bootstrap_mean,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    max_f1_threshold,
    patient_resamples,
    reliability_curve,
    sigmoid,
    threshold_metrics,
    weighted_auroc_ap,
    youden_threshold,
)


# -- AUROC --------------------------------------------------------------------------------
def test_auroc_by_hand():
    # pairs (positive, negative): 0.35>0.1 yes, 0.35>0.4 no, 0.8>both -> 3 of 4
    y = np.array([0, 0, 1, 1.0])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc_per_finding(y[:, None], s[:, None])[0] == pytest.approx(0.75)
    auroc, _ = weighted_auroc_ap(y, s, np.ones((1, 4)))
    assert auroc[0] == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (1 + 0.5 + 2) / 4
    s_tie = np.array([0.1, 0.4, 0.4, 0.8])
    assert weighted_auroc_ap(y, s_tie, np.ones((1, 4)))[0][0] == pytest.approx(0.875)


def test_weights_are_repetitions():
    # weight 2 on the low-scored positive = that image twice: pairs 2x(0.35 vs 0.1, 0.4)
    # + (0.8 vs both) -> (2*1 + 2) / (3 * 2) = 4/6
    y = np.array([0, 0, 1, 1.0])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    auroc, ap = weighted_auroc_ap(y, s, np.array([[1, 1, 2, 1.0]]))
    assert auroc[0] == pytest.approx(4 / 6)
    dup_y, dup_s = np.r_[y, 1.0], np.r_[s, 0.35]
    assert ap[0] == pytest.approx(average_precision_score(dup_y, dup_s))


def test_fast_replicates_equal_sklearn_on_the_same_patient_resamples():
    rng = np.random.default_rng(0)
    n, f = 240, 3
    groups = rng.integers(0, 50, n)
    y = (rng.random((n, f)) < 0.25).astype(float)
    y[rng.random((n, f)) < 0.1] = np.nan  # unknown labels
    s = np.round(rng.random((n, f)) + 0.4 * np.nan_to_num(y), 1)  # many ties
    roc = bootstrap_ci(y, s, groups, "auroc", n=25, seed=3)
    prc = bootstrap_ci(y, s, groups, "auprc", n=25, seed=3)
    slow = bootstrap_ci(y, s, groups, roc_auc_score, n=25, seed=3)
    for i, idx in enumerate(patient_resamples(groups, 25, seed=3)):
        for j in range(f):
            k = ~np.isnan(y[idx, j])
            assert roc.samples[i, j] == pytest.approx(roc_auc_score(y[idx, j][k], s[idx, j][k]))
            assert prc.samples[i, j] == pytest.approx(
                average_precision_score(y[idx, j][k], s[idx, j][k])
            )
    np.testing.assert_allclose(slow.samples, roc.samples)


# -- patient bootstrap --------------------------------------------------------------------
def _one_big_patient():
    """Patient 0: 50 identical positive images; 25 more patients with one image each."""
    y = np.r_[np.ones(50), [1, 1, 1, 1, 1], np.zeros(20)]
    s = np.r_[np.full(50, 0.9), [0.2, 0.3, 0.45, 0.6, 0.7], np.linspace(0.05, 0.8, 20)]
    groups = np.r_[np.zeros(50, int), np.arange(1, 26)]
    return y, s, groups


def test_resamples_keep_each_patient_whole():
    _, _, groups = _one_big_patient()
    sizes = np.bincount(groups)
    reps = list(patient_resamples(groups, n=40, seed=1))
    assert len(reps) == 40
    big_counts = set()
    for idx in reps:
        per_patient = np.bincount(groups[idx], minlength=len(sizes))
        assert np.all(per_patient % sizes == 0)  # whole patients only
        assert (per_patient // sizes).sum() == len(sizes)  # as many draws as patients
        big_counts.add(int(per_patient[0] // 50))
    assert len(big_counts) > 1  # patient 0 drawn 0, 1, 2... times
    again = list(patient_resamples(groups, n=40, seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(reps, again, strict=True))


def test_patient_interval_is_wider_than_an_image_interval():
    y, s, groups = _one_big_patient()
    by_patient = bootstrap_ci(y, s, groups, "auroc", n=400, seed=0)
    by_image = bootstrap_ci(y, s, np.arange(len(y)), "auroc", n=400, seed=0)
    assert by_patient.value[0] == by_image.value[0]
    width = lambda ci: ci.hi[0] - ci.lo[0]  # noqa: E731
    assert width(by_patient) > 1.5 * width(by_image)


def test_undefined_finding_is_nan_never_half():
    y = np.c_[[0, 1, 0, 1.0], [0, 0, 0, 0.0]]
    s = np.c_[[0.1, 0.9, 0.2, 0.8], [0.1, 0.9, 0.2, 0.8]]
    ci = bootstrap_ci(y, s, np.arange(4), "auroc", n=50)
    assert ci.value[0] == 1.0
    assert np.isnan(ci.value[1]) and np.isnan(ci.lo[1]) and np.isnan(ci.hi[1])
    assert ci.valid[1] == 0
    mean = bootstrap_mean(ci)
    assert mean["value"] == 1.0 and mean["defined"] == 1


def test_no_interval_when_most_resamples_have_one_class():
    # 10 patients, the finding known on two of them (one positive, one negative): a
    # resample has both with probability 1 - 2*0.9^10 + 0.8^10 = 0.41 < 0.5
    y = np.full(10, np.nan)
    y[0], y[1] = 1, 0
    s = np.linspace(0.9, 0.1, 10)
    ci = bootstrap_ci(y, s, np.arange(10), "auroc", n=500, seed=0)
    assert ci.value[0] == 1.0
    assert 0.3 < ci.valid[0] / 500 < 0.5
    assert np.isnan(ci.lo[0]) and np.isnan(ci.hi[0])


# -- thresholds ---------------------------------------------------------------------------
NEG = [0.05, 0.1, 0.12, 0.15, 0.2, 0.25, 0.4, 0.45, 0.5, 0.55]
POS = [0.9, 0.3]
Y = np.r_[np.zeros(len(NEG)), np.ones(len(POS))]
S = np.r_[NEG, POS]


def test_youden_and_max_f1_by_hand():
    # Youden J: t=0.9 -> 0.5 - 0 = 0.5; t=0.3 -> 1 - 4/10 = 0.6 (the best)
    assert youden_threshold(Y, S) == pytest.approx(0.3)
    # F1: t=0.9 -> 2/(2+0+1) = 0.667; t=0.3 -> 4/(4+4+0) = 0.5
    assert max_f1_threshold(Y, S) == pytest.approx(0.9)
    assert np.isnan(youden_threshold(np.zeros(4), [0.1, 0.2, 0.3, 0.4]))
    assert np.isnan(max_f1_threshold(np.ones(4), [0.1, 0.2, 0.3, 0.4]))


def test_threshold_metrics_by_hand():
    m = threshold_metrics(Y, S, 0.3)  # called: 0.9, 0.3 and negatives 0.4 0.45 0.5 0.55
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 4, 6, 0)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(0.6)
    assert m["ppv"] == pytest.approx(1 / 3) and m["npv"] == 1.0
    assert m["f1"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(8 / 12)
    none_called = threshold_metrics(Y, S, 0.95)
    assert np.isnan(none_called["ppv"])  # 0/0, not 0
    assert none_called["sensitivity"] == 0 and none_called["npv"] == pytest.approx(10 / 12)
    assert np.isnan(threshold_metrics(Y, S, float("nan"))["sensitivity"])
    with_unknown = threshold_metrics(np.r_[Y, np.nan], np.r_[S, 0.99], 0.3)
    assert with_unknown["tp"] == 2 and with_unknown["fp"] == 4


# -- calibration --------------------------------------------------------------------------
def test_brier_and_ece_by_hand():
    assert brier_score([0, 1, 1], [0.2, 0.6, 0.9]) == pytest.approx((0.04 + 0.16 + 0.01) / 3)
    # bins: 0.05 -> [0, .1] acc 0 conf .05; 0.15 x2 -> acc .5 conf .15; 0.95 -> acc 1
    y, p = [0, 0, 1, 1], [0.05, 0.15, 0.15, 0.95]
    assert expected_calibration_error(y, p) == pytest.approx((0.05 + 2 * 0.35 + 0.05) / 4)
    # scikit-learn's binning: 0.1 belongs to the first bin [0, 0.1] with 0.05
    assert expected_calibration_error([0, 1], [0.05, 0.1]) == pytest.approx(0.425)
    curve = reliability_curve(y + [np.nan], p + [0.5])
    assert curve["count"] == [1, 2, 1]
    np.testing.assert_allclose(curve["mean_predicted"], [0.05, 0.15, 0.95])
    np.testing.assert_allclose(curve["fraction_positive"], [0, 0.5, 1])
    assert np.isnan(brier_score([np.nan], [0.3]))


@pytest.mark.parametrize("true_t", [1.0, 2.5, 0.5])
def test_temperature_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=(20000, 2))
    y = (rng.random(z.shape) < sigmoid(z)).astype(float)
    y[:500, 0] = np.nan
    t = fit_temperature(z * true_t, y)  # logits made over/under-confident by true_t
    assert t == pytest.approx(true_t, rel=0.05)

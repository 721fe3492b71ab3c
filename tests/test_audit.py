"""cxrkit audit: each measure against an independent computation, the flag logic, the CLI
and the report section, and the planted-shortcut proof on phantoms."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrkit.audit.measures import (
    energy_shares,
    probe,
    saliency_share,
    size_detection,
    view_strata,
)


# -- measures against independent computations --------------------------------------------
def test_energy_share_by_hand():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0], maps[0, 2, 2] = 3.0, 1.0     # 1 of 4 units inside
    regions = np.zeros((2, 4, 4), bool)
    regions[:, 1:3, 1:3] = True                  # 4 of 16 pixels
    share, area = energy_shares(maps, regions)
    assert share[0] == pytest.approx(0.25) and np.isnan(share[1])   # an empty map: no share
    assert area == pytest.approx([0.25, 0.25])
    s = saliency_share(maps, regions, ["a", "b"], n=50, seed=0)
    assert s["empty_maps"] == 1 and s["energy_inside"]["value"] == pytest.approx(0.25)
    assert s["excess"]["value"] == pytest.approx(0.0)


def test_probe_matches_scikit_learn_run_directly():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), 2)
    view = np.where(rng.uniform(size=60) < 0.4, "AP", "PA")[patients]
    x = rng.normal(size=(120, 6))
    x[:, 0] += 1.5 * (view == "AP")                 # the features know the view
    got = probe(x, pd.Series(view), patients, seed=3, n=200)
    # by hand: the same folds, a fresh model per fold, AUROC of the out-of-fold P(PA)
    oof = np.zeros(120)
    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=3).split(x, view,
                                                                                     patients):
        m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        m.fit(x[train], view[train])
        oof[test] = m.predict_proba(x[test])[:, list(m.classes_).index("PA")]
    assert got["auroc"]["value"] == pytest.approx(roc_auc_score(view == "PA", oof), abs=1e-9)
    assert got["auroc"]["lo"] < got["auroc"]["value"] < got["auroc"]["hi"]
    assert got["auroc"]["value"] > 0.75 and got["classes"] == ["AP", "PA"]
    # a target the features do not know stays near chance
    noise = probe(x[:, 1:], pd.Series(view), patients, seed=3, n=200)
    assert noise["auroc"]["lo"] < 0.5 < noise["auroc"]["hi"] + 0.05


def test_probe_drops_classes_with_too_few_patients():
    rng = np.random.default_rng(1)
    y = pd.Series(["a"] * 30 + ["b"] * 30 + ["c"] * 2)
    got = probe(rng.normal(size=(62, 3)), y, np.arange(62), n=20)
    assert got["dropped"] == ["c"] and got["classes"] == ["a", "b"] and got["images"] == 60


def test_view_strata_match_scikit_learn_within_each_view():
    rng = np.random.default_rng(2)
    n = 200
    views = np.where(rng.uniform(size=n) < 0.5, "AP", "PA")
    y = (rng.uniform(size=(n, 1)) < 0.3).astype(float)
    p = y * 0.3 + rng.uniform(size=(n, 1)) + 0.5 * (views == "AP")[:, None]
    got = view_strata(y, p, np.arange(n), views, ["Mass"], n=100, seed=0)["Mass"]
    for name, rows in (("pooled", slice(None)), ("AP", views == "AP"), ("PA", views == "PA")):
        assert got[name]["value"] == pytest.approx(roc_auc_score(y[rows, 0], p[rows, 0]))
        assert got[name]["positives"] == int(y[rows, 0].sum())


def test_size_detection_rates_by_hand():
    area = np.arange(1, 17) / 100.0
    detected = np.array([0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1], bool)
    pairs = pd.DataFrame({"patient_id": np.arange(16), "finding": "Mass", "area": area,
                          "detected": detected})
    got = size_detection(pairs, n=200, seed=0)
    assert [q["pairs"] for q in got["quartiles"]] == [4, 4, 4, 4]
    assert [q["value"] for q in got["quartiles"]] == [0.25, 0.5, 0.75, 1.0]
    assert got["largest_minus_smallest"]["value"] == pytest.approx(0.75)
    assert size_detection(pairs.head(5), n=10, seed=0)["quartiles"] == []


# -- flags -----------------------------------------------------------------------------------
def _ci(v, lo, hi):
    return {"value": v, "lo": lo, "hi": hi}


def _record(outside=(0.5, 0.4, 0.6), gain=(0.0, -0.02, 0.02), follows=(-0.5, -0.6, -0.4),
            excess=(0.2, 0.1, 0.3), area=0.4, positives=30, ap=(0.8, 0.7, 0.9)):
    return {
        "chest_region": {"area_share": area}, "min_positives": 10,
        "region_reliance": {"Mass": {
            "positives": positives, "negatives": 200, "auroc": _ci(0.8, 0.7, 0.9),
            "auroc_chest_only": _ci(0.8 + gain[0], 0.7, 0.9), "auroc_outside_only": _ci(*outside),
            "chest_only_gain": _ci(*gain),
            "rank_agreement": {"with_chest_only": _ci(0.9, 0.8, 0.95),
                               "with_outside_only": _ci(0.4, 0.3, 0.5),
                               "outside_minus_chest": _ci(*follows)}}},
        "saliency": {"Mass": {"energy_inside": _ci(0.5, 0.4, 0.6), "area_inside": _ci(area, area, area),
                              "excess": _ci(*excess)}},
        "view_strata": {"Mass": {"pooled": {**_ci(0.8, 0.7, 0.9), "positives": 30, "images": 230},
                                 "AP": {**_ci(*ap), "positives": 15, "images": 100},
                                 "PA": {**_ci(0.8, 0.7, 0.9), "positives": 15, "images": 130}}},
        "size": {"quartiles": []},
    }


def test_flags_follow_the_stated_thresholds():
    from cxrkit.audit import flags_for

    def measures(**kw):
        return sorted(f["measure"] for f in flags_for(_record(**kw)))

    assert measures() == []
    assert measures(outside=(0.75, 0.65, 0.85)) == ["auroc_outside_only"]
    assert measures(outside=(0.62, 0.52, 0.72)) == []          # keeps < half the margin
    assert measures(gain=(0.05, 0.01, 0.09)) == ["chest_only_gain"]
    assert measures(gain=(0.05, -0.01, 0.09)) == []             # interval includes 0
    assert measures(follows=(0.3, 0.1, 0.5)) == ["score_follows_outside"]
    assert measures(excess=(-0.2, -0.3, -0.1)) == ["saliency_energy_inside"]
    assert measures(ap=(0.6, 0.5, 0.7)) == ["auroc_AP_only"]
    assert measures(ap=(0.6, 0.5, 0.85)) == []                  # interval reaches the pooled
    # too few positives, or a region that is the whole image: no region or saliency flags
    assert measures(outside=(0.75, 0.65, 0.85), positives=5) == []
    assert measures(excess=(-0.2, -0.3, -0.1), area=0.95) == []
    flag = flags_for(_record(outside=(0.75, 0.65, 0.85)))[0]
    assert flag["finding"] == "Mass" and "0.75" in flag["action"] and flag["numbers"]

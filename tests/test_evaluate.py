"""``cxrkit evaluate`` on the shared phantom run: files, schema, honesty checks, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrkit.evaluate import SplitChangedError, evaluate_checkpoint
from cxrkit.evaluate.core import age_band
from cxrkit.inference.heldout import load_held_out
from cxrkit.evaluate.published import (
    OFFICIAL_TEST_IMAGES,
    RunProtocol,
    published_rows,
)
from cxrkit.labels import FINDINGS

FAST = {
    "bootstrap": 50,
    "subgroup_bootstrap": 10,
    "progress": False,
    "report": False,
    "gallery": 0,
}  # the gallery is tested in test_radiologists.py
TOP_KEYS = {
    "format",
    "created",
    "versions",
    "checkpoint",
    "checkpoint_sha256",
    "run_dir",
    "prepared",
    "split",
    "split_file",
    "split_protocol",
    "tta",
    "tta_mirror",
    "precision",
    "n_images",
    "n_patients",
    "findings",
    "model",
    "epoch",
    "bootstrap",
    "auroc",
    "auprc",
    "mean_auroc",
    "thresholds",
    "threshold_metrics",
    "calibration",
    "subgroups",
    "published",
    "notes",
    "ood",
    "source",
    "protocol",
}
RATE_KEYS = {
    "threshold",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "accuracy",
    "tp",
    "fp",
    "tn",
    "fn",
}


@pytest.fixture
def run(phantom_run, tmp_path):
    """A writable copy of the shared phantom run (evaluate writes beside the checkpoint)."""
    return shutil.copytree(phantom_run, tmp_path / "run")


@pytest.fixture(scope="module")
def evaluated(phantom_run, tmp_path_factory):
    """One default evaluation (test split, no TTA), shared by the schema tests."""
    run = shutil.copytree(phantom_run, tmp_path_factory.mktemp("eval") / "run")
    metrics = evaluate_checkpoint(run, **FAST)
    return run, metrics


def _no_nan(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in metrics.json")

    return json.loads(text, parse_constant=refuse)


def test_writes_every_file_with_the_schema(evaluated, phantom_prepared):
    run, metrics = evaluated
    out = run / "eval" / "test"
    for name in (
        "metrics.json",
        "predictions_test.csv",
        "predictions_val.csv",
        "auroc.csv",
        "thresholds.csv",
        "calibration.csv",
        "subgroups.csv",
        "published.csv",
        "thresholds.json",
    ):
        assert (out / name).exists(), name
    assert (run / "thresholds.json").exists()
    m = _no_nan((out / "metrics.json").read_text())
    assert set(m) == TOP_KEYS and m == metrics
    assert m["format"] == "cxrkit-eval/1" and m["split"] == "test" and m["tta"] == "none"
    assert (
        m["split_protocol"] == "official"
        and m["model"] == "cnn4"
        and m["findings"] == list(FINDINGS)
    )
    test_ids = phantom_prepared.table("test")
    assert m["n_images"] == len(test_ids) == 39
    assert m["n_patients"] == test_ids["patient_id"].nunique()
    assert m["bootstrap"] == {"replicates": 50, "unit": "patient", "seed": 0, "level": 0.95}
    for f in FINDINGS:
        assert set(m["auroc"][f]) == {"value", "lo", "hi", "positives", "negatives"}
        assert set(m["auprc"][f]) == {"value", "lo", "hi", "prevalence"}
        for method in ("youden", "max_f1"):
            assert set(m["threshold_metrics"][method][f]) == RATE_KEYS
    assert set(m["mean_auroc"]) == {"value", "lo", "hi", "defined", "undefined"}
    assert m["mean_auroc"]["defined"] + len(m["mean_auroc"]["undefined"]) == len(FINDINGS)
    assert set(m["thresholds"]) == {"chosen_on", "youden", "max_f1", "used", "written", "meaning"}
    assert m["thresholds"]["used"] == m["thresholds"]["youden"]  # the default rule
    assert m["thresholds"]["chosen_on"] == "val"
    cal = m["calibration"]
    assert {
        "bins",
        "brier",
        "ece",
        "mean_brier",
        "mean_ece",
        "temperature",
        "after_temperature",
        "reliability",
    } == set(cal)
    assert cal["temperature"] > 0 and set(cal["after_temperature"]) == {
        "brier",
        "ece",
        "mean_brier",
        "mean_ece",
    }
    for row in m["published"]:
        assert set(row) == {"finding", "source", "auroc", "split", "protocol", "comparable", "note"}
        assert row["comparable"] is False and "phantom" in row["note"]
    assert any("Phantom" in n for n in m["notes"])


def test_undefined_findings_are_null(evaluated):
    _, m = evaluated
    for f in m["mean_auroc"]["undefined"]:
        a = m["auroc"][f]
        assert a["value"] is None and a["lo"] is None and a["hi"] is None
        assert a["positives"] == 0 or a["negatives"] == 0
    for f, a in m["auroc"].items():
        if a["positives"] == 0 or a["negatives"] == 0:
            assert f in m["mean_auroc"]["undefined"]


def test_predictions_and_tables_agree_with_metrics(evaluated):
    run, m = evaluated
    out = run / "eval" / "test"
    pred = pd.read_csv(out / "predictions_test.csv")
    assert list(pred.columns[:5]) == ["image_id", "patient_id", "age", "sex", "view"]
    assert list(pred.columns[5:]) == (
        list(FINDINGS) + [f"p_{f}" for f in FINDINGS] + ["ood_score", "ood_flag"]
    )
    assert pred[[f"p_{f}" for f in FINDINGS]].stack().between(0, 1).all()
    for f in FINDINGS:
        assert m["auroc"][f]["positives"] == int((pred[f] == 1).sum())
    auroc = pd.read_csv(out / "auroc.csv")
    assert list(auroc.columns) == [
        "finding",
        "auroc",
        "auroc_lo",
        "auroc_hi",
        "auprc",
        "auprc_lo",
        "auprc_hi",
        "positives",
        "negatives",
    ]
    # subgroup counts, recounted from the predictions file
    sub = pd.read_csv(out / "subgroups.csv", keep_default_na=False, na_values=[""])
    pred["age_band"] = age_band(pred["age"])
    assert set(sub["attribute"]) == {"sex", "age_band", "view"}
    for attribute in ("sex", "view", "age_band"):
        for group, part in pred.groupby(attribute):
            for f in FINDINGS:
                row = sub[
                    (sub["attribute"] == attribute)
                    & (sub["group"] == group)
                    & (sub["finding"] == f)
                ]
                assert int(row["n"].iloc[0]) == part[f].notna().sum()
                assert int(row["positives"].iloc[0]) == int((part[f] == 1).sum())


def test_age_bands():
    got = age_band([19.9, 20, 39, 40, 79, 80, 95, 414, np.nan]).tolist()
    assert got[:7] == ["<20", "20-39", "20-39", "40-59", "60-79", "80+", "80+"]
    assert pd.isna(got[7]) and pd.isna(got[8])  # impossible and missing ages: no band


def test_thresholds_sidecar_is_used_by_load(evaluated):
    import cxrkit

    run, m = evaluated
    lm = cxrkit.load(run)
    chosen = {f: t for f, t in m["thresholds"]["youden"].items() if t is not None}
    assert lm.thresholds == pytest.approx(chosen)
    assert lm.thresholds_tta == "none" and lm.thresholds_mismatch("none") is None
    assert "'none' but predictions use 'flip'" in lm.thresholds_mismatch("flip")


def test_changed_split_file_is_refused(phantom_run, phantom_prepared, tmp_path):
    import cxrkit

    prep = shutil.copytree(phantom_prepared.root, tmp_path / "prep")
    lm = cxrkit.load(phantom_run)
    assert load_held_out(lm, prep).split_sha256 == lm.checkpoint_info["split"]["sha256"]
    split = pd.read_csv(prep / "split.csv")
    split.loc[split["split"] == "test", "split"] = "val"  # test patients moved, say
    split.to_csv(prep / "split.csv", index=False)
    run = shutil.copytree(phantom_run, tmp_path / "run")
    with pytest.raises(SplitChangedError, match="split changed since training"):
        evaluate_checkpoint(run, prepared=prep, **FAST)
    assert not (run / "eval").exists()


def test_box_fold_is_reproduced(phantom_run, phantom_prepared, tmp_path):
    import cxrkit
    from cxrkit.data.splits import box_fold

    lm = cxrkit.load(phantom_run)
    lm.checkpoint_info = json.loads(json.dumps(lm.checkpoint_info))
    lm.checkpoint_info["config"]["data"]["box_fold"] = 0.5
    data = load_held_out(lm)
    seed = lm.checkpoint_info["config"]["train"]["seed"]
    _, expected = box_fold(phantom_prepared.split, phantom_prepared.boxes, fraction=0.5, seed=seed)
    assert set(data.moved["image_id"]) == set(expected["image_id"]) and len(expected) > 0
    test_ids = set(data.table("test")["image_id"])
    assert not test_ids & set(expected["image_id"])
    assert len(test_ids) == 39 - len(expected)


def test_tta_runs(run, evaluated, phantom_release):
    from cxrkit.inference.predictor import MirroredTTAWarning

    # the shared run trained with data.hflip=false: mirrored views warn and are on record
    with pytest.warns(MirroredTTAWarning, match="trained without flips"):
        m = evaluate_checkpoint(
            run, tta="flip", bootstrap=20, subgroup_bootstrap=5, progress=False, report=False
        )
    out = run / "eval" / "test-flip"
    assert m["tta"] == "flip" and (out / "metrics.json").exists()
    assert any("'flip'" in n for n in m["notes"])
    assert m["tta_mirror"]["decision"] == "warned: model trained without flips"
    assert m["tta_mirror"]["trained_with_hflip"] is False
    assert any(
        n.startswith("Warning: test-time augmentation 'flip' shows the model mirrored")
        for n in m["notes"]
    )
    assert evaluated[1]["tta_mirror"]["mirrored_views"] is False
    plain = pd.read_csv(evaluated[0] / "eval" / "test" / "predictions_test.csv")
    flipped = pd.read_csv(out / "predictions_test.csv")
    assert list(plain["image_id"]) == list(flipped["image_id"])
    assert not np.allclose(plain["p_Atelectasis"], flipped["p_Atelectasis"])
    # the sidecar now holds thresholds chosen on flipped logits, and says so
    import cxrkit
    from cxrkit.inference.predict import NoThresholdsWarning, predict_files

    lm = cxrkit.load(run)
    assert lm.thresholds_tta == "flip"
    image = next(phantom_release.rglob("*.png"))
    with pytest.warns(NoThresholdsWarning, match="chosen with test-time augmentation 'flip'"):
        predict_files(lm, [image], progress=False)


def test_published_comparability():
    def rows(**kw):
        base = {
            "data": "nih",
            "protocol": "official",
            "split": "test",
            "n_images": OFFICIAL_TEST_IMAGES,
        }
        return {r["source"]: r for r in published_rows(["Hernia"], RunProtocol(**{**base, **kw}))}

    official = rows()
    assert official["Wang et al. 2017 (ResNet-50, ChestX-ray14)"]["comparable"] is True
    assert official["CheXNet (Rajpurkar et al. 2017, DenseNet-121)"]["comparable"] is False
    assert official["CheXNet (Rajpurkar et al. 2017, DenseNet-121)"]["auroc"] == 0.9164
    random = rows(protocol="random", n_images=22_000)
    assert random["CheXNet (Rajpurkar et al. 2017, DenseNet-121)"]["comparable"] is True
    assert random["Wang et al. 2017 (ResNet-50, ChestX-ray14)"]["comparable"] is False
    subset = rows(n_images=785)
    assert "785 of the official" in subset["Wang et al. 2017 (ResNet-50, ChestX-ray14)"]["note"]
    assert not any(r["comparable"] for r in rows(box_fold=0.5).values())
    assert not any(r["comparable"] for r in rows(data="phantom").values())
    assert not any(r["comparable"] for r in rows(split="val").values())
    # ChestX-ray8 numbers exist only for the first 8 findings and never compare
    cvpr = published_rows(
        list(FINDINGS), RunProtocol("nih", "official", "test", OFFICIAL_TEST_IMAGES)
    )
    cvpr = [r for r in cvpr if "ChestX-ray8" in r["source"]]
    assert len(cvpr) == 8 and not any(r["comparable"] for r in cvpr)


def test_cli_evaluate(run, tmp_path):
    from cxrkit.cli import app

    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(run),
            "--bootstrap",
            "20",
            "--subgroup-bootstrap",
            "5",
            "--no-progress",
            "--no-report",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "mean AUROC" in r.output and (tmp_path / "ev" / "metrics.json").exists()
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    r = runner.invoke(app, ["evaluate", str(bad)])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.pt" in lines[0]

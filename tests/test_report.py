"""The HTML report, its figures and ``cxrkit compare`` on the shared phantom run."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrkit.artefacts import read_csv
from cxrkit.evaluate import evaluate_checkpoint
from cxrkit.evaluate.compare import compare_runs
from cxrkit.evaluate.plots import FIGURES
from cxrkit.evaluate.report import RESEARCH_USE, write_report
from cxrkit.metrics import paired_auroc_difference, patient_resamples

FAST = {"bootstrap": 40, "subgroup_bootstrap": 5, "progress": False}
CMP = {"bootstrap": 40, "progress": False}


@pytest.fixture(scope="module")
def reported(phantom_run, tmp_path_factory):
    run = shutil.copytree(phantom_run, tmp_path_factory.mktemp("report") / "run")
    metrics = evaluate_checkpoint(run, report=True, **FAST)
    return run, metrics


def test_report_is_self_contained_and_complete(reported):
    run, metrics = reported
    out = run / "eval" / "test"
    page = (out / "report.html").read_text()
    # opens offline: no external resources of any kind
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # every figure (training curves included), plus one ROC figure per expert set of the
    # "Against radiologists" section (phantom releases carry expert files)
    extra = sorted((out / "figures").glob("roc_radiologists_*.png"))
    assert len(images) == len(FIGURES) + len(extra) and len(extra) == 2
    for name in FIGURES:
        with Image.open(out / "figures" / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    for heading in (
        "Data",
        "Per-finding AUROC and AUPRC",
        "Figures",
        "Decision thresholds",
        "Calibration",
        "Subgroups",
        "Training",
        "Configuration and provenance",
    ):
        assert f">{heading}<" in page, heading
    assert RESEARCH_USE in page and "yes/no call" in page
    for note in metrics["notes"]:
        assert note.replace("'", "&#x27;") in page
    # the headline number in the page is the one in metrics.json
    m = metrics["mean_auroc"]
    assert f"{m['value']:.3f}" in page
    for f in metrics["findings"]:
        assert f in page


def test_summary_markdown_matches_metrics(reported):
    run, metrics = reported
    md = (run / "eval" / "test" / "summary.md").read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    for f in metrics["findings"]:
        a = metrics["auroc"][f]
        cell = "undefined" if a["value"] is None else f"{a['value']:.3f}"
        assert cell in rows[f] and str(a["positives"]) in rows[f]


def test_report_shows_explanations_and_localisation_when_present(reported, tmp_path):
    run, _ = reported
    run2 = shutil.copytree(run, tmp_path / "run")
    (run2 / "explain").mkdir()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(run2 / "explain" / "a.png")
    pd.DataFrame(
        [{"image_id": "x.png", "finding": "Effusion", "probability": 0.9, "overlay": "a.png"}]
    ).to_csv(run2 / "explain" / "index.csv", index=False)
    (run2 / "localize").mkdir()
    pd.DataFrame([{"finding": "Effusion", "iobb@0.5": 0.4}]).to_csv(
        run2 / "localize" / "accuracy.csv", index=False
    )
    page = write_report(run2 / "eval" / "test", run2).read_text()
    assert ">Explanations<" in page and "Effusion" in page and "x.png" in page
    assert ">Localisation against NIH's boxes<" in page and "iobb@0.5" in page


def test_report_without_training_records(reported, tmp_path):
    run, _ = reported
    ev = shutil.copytree(run / "eval" / "test", tmp_path / "ev")
    page = write_report(ev, tmp_path).read_text()  # a run folder with no metrics.csv/run.json
    assert ">Training<" not in page and ">Figures<" in page


def test_paired_difference_is_the_difference_on_each_resample():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 3)
    y = (rng.random((120, 2)) < 0.3).astype(float)
    a = y + rng.normal(0, 0.8, y.shape)
    b = y + rng.normal(0, 0.5, y.shape)
    d = paired_auroc_difference(y, a, b, patients, n=30, seed=4)
    for j in range(2):
        assert d["value"][j] == pytest.approx(
            roc_auc_score(y[:, j], b[:, j]) - roc_auc_score(y[:, j], a[:, j])
        )
    diffs = []
    for idx in patient_resamples(patients, 30, 4):
        diffs.append(roc_auc_score(y[idx, 0], b[idx, 0]) - roc_auc_score(y[idx, 0], a[idx, 0]))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    assert d["lo"][0] == pytest.approx(lo) and d["hi"][0] == pytest.approx(hi)
    same = paired_auroc_difference(y, a, a, patients, n=30, seed=4)
    assert np.all(same["value"] == 0) and np.all(same["lo"] == 0) and np.all(same["hi"] == 0)


def test_compare_runs_and_cli(reported, phantom_run, tmp_path):
    run, metrics = reported
    other = shutil.copytree(phantom_run, tmp_path / "other")  # not evaluated yet
    out = compare_runs([run, other], out=tmp_path / "cmp", **CMP)
    summary = read_csv(out / "comparison.csv")
    assert list(summary["entry"]) == ["run", "other"]
    assert summary.loc[0, "mean AUROC [95% CI]"].startswith(f"{metrics['mean_auroc']['value']:.3f}")
    # the same weights on the same images: a paired difference of exactly zero
    assert summary.loc[1, "Δ mean vs run (shared images)"].startswith("+0.000")
    assert (other / "eval" / "test" / "metrics.json").exists()  # evaluated on demand
    per = read_csv(out / "per_finding.csv")
    assert len(per) == len(metrics["findings"]) and "Δ other - run (shared images)" in per
    for name in ("comparison.png", "comparison.md", "comparison.html"):
        assert (out / name).exists()
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["rank"]) == [1, 2] and (board["images"] == metrics["n_images"]).all()
    # different images: paired on the images both scored, and it says how many
    pred = other / "eval" / "test" / "predictions_test.csv"
    pd.read_csv(pred).iloc[1:].to_csv(pred, index=False)  # one image fewer
    out2 = compare_runs([run, other], out=tmp_path / "cmp2", **CMP)
    s2 = read_csv(out2 / "comparison.csv")
    assert s2.loc[1, "Δ mean vs run (shared images)"].startswith("+0.000")
    assert f"use the {metrics['n_images'] - 1:,} images" in (out2 / "comparison.md").read_text()
    assert (read_csv(out2 / "leaderboard.csv")["images"] == metrics["n_images"] - 1).all()
    from cxrkit.cli import app

    r = CliRunner().invoke(
        app,
        [
            "compare",
            str(run),
            str(other),
            "--out",
            str(tmp_path / "c3"),
            "--bootstrap",
            "20",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "Δ mean vs run" in r.output
    r = CliRunner().invoke(app, ["compare", str(run)])
    assert r.exit_code == 2 and "at least two runs" in r.output
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text()) == metrics


def test_report_with_real_explain_and_localize_outputs(reported, tmp_path):
    from cxrkit.explain import explain_split, localize_checkpoint

    run, _ = reported
    run2 = shutil.copytree(run, tmp_path / "run")
    explain_split(run2, run2 / "explain", split="test", limit=2, progress=False)
    loc = localize_checkpoint(run2, progress=False)
    page = write_report(run2 / "eval" / "test", run2).read_text()
    assert page.count("<figure><img") >= len(FIGURES) + 2  # overlays embedded too
    assert "Pointing game" in page and "Wang et al. 2017, as published" in page
    assert f"{loc['overall']['pairs']} (image, finding) pairs" in page
    assert "nan [" not in page  # undefined, never 'nan'

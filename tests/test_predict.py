"""``cxrkit predict``: inputs, the checkpoint's own preprocessing, thresholds, outputs, errors."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cxrkit
from cxrkit.cli import app
from cxrkit.data.images import preprocess, read_xray
from cxrkit.inference import write_thresholds
from cxrkit.inference.predict import NoThresholdsWarning, collect_inputs, predict_files
from test_dicom import write_dicom


@pytest.fixture(scope="module")
def pngs(phantom_release):
    return sorted(phantom_release.rglob("*.png"))[:6]


@pytest.fixture
def run(phantom_run, tmp_path):
    return shutil.copytree(phantom_run, tmp_path / "run")


def test_collect_inputs(tmp_path, pngs):
    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i, p in enumerate(pngs[:3]):
        shutil.copy(p, root / ("a/b" if i else "") / p.name)
    shutil.copy(pngs[3], root / ".hidden" / "x.png")
    (root / "notes.txt").write_text("hello")
    write_dicom(root / "a" / "IM0001", np.zeros((8, 8), np.uint8))  # DICOM without extension
    (tmp_path / "empty").mkdir()
    got = collect_inputs(
        [
            root,
            str(root / "a" / "**" / "*.png"),
            tmp_path / "nope.png",
            str(tmp_path / "*.jpg"),
            tmp_path / "empty",
            pngs[4],
        ]
    )
    names = [p.name for p in got.files]
    assert names == [pngs[0].name, "IM0001", pngs[1].name, pngs[2].name, pngs[4].name]
    assert [why for _, why in got.problems] == [
        "no such file or folder",
        "no file matches this pattern",
        "folder holds no PNG, JPEG or DICOM files",
    ]
    assert [p.name for p in got.skipped] == ["notes.txt"]


def test_cli_numbers_equal_python_api(run, pngs, tmp_path):
    dcm = write_dicom(
        tmp_path / "x.dcm",
        (255 - np.asarray(Image.open(pngs[0]))).astype(np.uint16) * 16,
        bits_stored=12,
        photometric="MONOCHROME1",
    )
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    inputs = [*map(str, pngs), str(dcm), str(bad), str(tmp_path / "missing.png")]
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    res = CliRunner().invoke(
        app, ["predict", str(run), *inputs, "--out", str(out_csv), "--batch-size", "4"]
    )
    assert res.exit_code == 1, res.output  # two inputs failed, and said so
    assert "broken.png" in res.output and "missing.png" in res.output
    assert f"{len(pngs) + 1} predicted, 2 failed" in res.output
    table = pd.read_csv(out_csv).set_index("image")
    good = [*map(str, pngs), str(dcm)]
    lm = cxrkit.load(run)
    want = lm.predict(good)
    np.testing.assert_allclose(
        table.loc[good, list(lm.findings)].to_numpy(),
        want[list(lm.findings)].to_numpy(),
        rtol=0,
        atol=1e-6,
    )
    # the OOD score and flag: the same numbers in the CSV and the Python API
    np.testing.assert_allclose(
        table.loc[good, "ood_score"].to_numpy(float), want["ood_score"].to_numpy(float), rtol=1e-6
    )
    assert (
        table.loc[good, "ood_flag"].astype(bool).to_numpy()
        == want["ood_flag"].astype(bool).to_numpy()
    ).all()
    assert table.loc[good, "error"].isna().all()
    assert "truncated" in table.loc[str(bad), "error"]
    assert table.loc[str(tmp_path / "missing.png"), "error"] == "no such file or folder"
    # JSON carries the same numbers
    res = CliRunner().invoke(app, ["predict", str(run), *good, "--out", str(out_json)])
    assert res.exit_code == 0, res.output
    rec = json.loads(out_json.read_text())
    got = np.array([[r["probabilities"][f] for f in lm.findings] for r in rec["predictions"]])
    np.testing.assert_allclose(got, want[list(lm.findings)].to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        [r["ood_score"] for r in rec["predictions"]], want["ood_score"].to_numpy(float), rtol=1e-6
    )
    assert [r["ood_flag"] for r in rec["predictions"]] == want["ood_flag"].tolist()
    assert rec["thresholds_source"].startswith("none chosen") and rec["n_failed"] == 0


def test_checkpoint_preprocessing_is_used(run, nih_sample):
    """A checkpoint made on 64 px CLAHE images gets 64 px CLAHE images from a 1024 px file."""
    ck = torch.load(run / "best.pt", weights_only=True)
    ck["preprocess"]["cache"]["clahe"] = True
    torch.save(ck, run / "best.pt")
    original = sorted((nih_sample / "originals").rglob("*.png"))[0]
    lm = cxrkit.load(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoThresholdsWarning)
        p = predict_files(lm, [original], progress=False).probabilities[0]
    cached = preprocess(read_xray(original), size=64, clahe=True)
    x = lm.transform(torch.from_numpy(cached)[None, None])
    with torch.no_grad():
        want = torch.sigmoid(lm.model(x, None)).numpy()[0]
    np.testing.assert_allclose(p, want, atol=1e-6)
    plain = preprocess(read_xray(original), size=64, clahe=False)
    with torch.no_grad():
        other = torch.sigmoid(
            lm.model(lm.transform(torch.from_numpy(plain)[None, None]), None)
        ).numpy()[0]
    assert np.abs(other - p).max() > 1e-4  # CLAHE made a difference: the test can fail


def test_thresholds_from_evaluation_flag_findings(run, pngs):
    lm = cxrkit.load(run)
    with pytest.warns(NoThresholdsWarning, match="flagged at probability >= 0.5"):
        default = predict_files(lm, pngs[:2], progress=False)
    assert (default.thresholds == 0.5).all()
    probs = default.probabilities[0]
    chosen = {f: float(probs[i]) for i, f in enumerate(lm.findings)}  # each at image 0's p
    chosen[lm.findings[0]] = float(probs[0]) + 1e-3  # one just above it
    write_thresholds(lm, chosen, method="youden", chosen_on="val")
    lm = cxrkit.load(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoThresholdsWarning)
        result = predict_files(lm, pngs[:2], progress=False)
    assert "thresholds.json" in result.thresholds_source
    assert set(result.flagged(0)) == set(lm.findings[1:])
    row = result.frame().iloc[0]
    assert set(row["flagged"].split(";")) == set(lm.findings[1:])
    summary = result.summary(top=2)
    assert "+11 more" in summary and pngs[0].name in summary


def test_unsupported_tta_and_out_format(run, pngs, tmp_path):
    res = CliRunner().invoke(app, ["predict", str(run), str(pngs[0]), "--tta", "bogus"])
    assert res.exit_code == 2 and "tta must be one of" in res.output
    res = CliRunner().invoke(
        app, ["predict", str(run), str(pngs[0]), "--out", str(tmp_path / "x.xlsx")]
    )
    assert res.exit_code == 2 and ".csv or .json" in res.output


@pytest.mark.parametrize("batch_size", [0, -4, 2.5])
def test_batch_size_must_be_a_positive_count(phantom_run, pngs, batch_size):
    """0 crashed inside range(); a negative one silently predicted nothing."""
    from cxrkit.inference.predict import load_model, predict_files

    lm = load_model(phantom_run)
    with pytest.raises(
        ValueError, match=f"batch_size must be a whole number of images >= 1, got {batch_size}"
    ):
        predict_files(lm, pngs[:3], batch_size=batch_size, progress=False)
    with pytest.raises(ValueError, match="batch_size must be"):
        lm.predict(pngs[:3], batch_size=batch_size)


def test_png_and_dicom_of_the_same_real_pixels_predict_the_same(run, nih_sample, tmp_path):
    """The 0.011 shift: an NIH image as DICOM with identity rescale tags predicted
    differently from the PNG and from the DICOM without them."""
    png = nih_sample / "originals/images_001/images/00000032_037.png"
    pixels = read_xray(png)
    bare = write_dicom(tmp_path / "bare.dcm", pixels)
    tagged = write_dicom(tmp_path / "tagged.dcm", pixels, RescaleSlope=1, RescaleIntercept=0)
    lm = cxrkit.load(run)
    df = lm.predict([png, bare, tagged])
    p = df[list(lm.findings)].to_numpy()
    np.testing.assert_allclose(df["ood_score"].iloc[1:], df["ood_score"].iloc[0], rtol=1e-6)
    np.testing.assert_allclose(p[1], p[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(p[2], p[0], rtol=0, atol=1e-6)

"""Out-of-distribution score: the record, its place in checkpoints and exports, and what it flags.

Two models are trained once per session (cnn4, 64 px, a few epochs): one on phantoms, one
on the real sample's train_val images. ``bench/bench_ood.py`` prints the full tables.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import cxrkit
from cxrkit.ood import OodScorer, fit_record
from cxrkit.ood.gaussian import Gaussian, decode, encode, fit_gaussian
from cxrkit.ood.probes import noise_images, phantom_images, photographs, probe_table, transformed

#: Allowed flag rate on a model's own held-out images: the 5 % the issue asks for, plus a
#: tolerance for how few images fix the thresholds: the real model's feature threshold is
#: the 97.5th percentile of ~200 validation images, whose flag rate on new images of the
#: same kind is Beta-distributed with sd ~ 1.1 %; and NIH's test list is not drawn like
#: train_val (sicker, more AP and follow-up films). 3 points = about 2.5 sd.
REAL_TEST_TOLERANCE = 0.03
#: The same for the phantom model's ~94 test images: a 5 % rate counted on 94 images has a
#: binomial sd of 2.2 points on its own (5 of 94 = 5.3 % is no failure), before the
#: threshold's own estimation noise; 5 points = about 2 sd of the two together.
PHANTOM_TEST_TOLERANCE = 0.05


def _train(prepared, out, epochs):
    from cxrkit.config import load_config
    from cxrkit.engine.train import fit

    cfg = load_config(
        None,
        [
            f"data.prepared={prepared}",
            f"out={out}",
            "model.name=cnn4",
            "data.batch_size=32",
            f"train.epochs={epochs}",
            "train.lr=3e-3",
            "train.threads=2",
            "train.amp=none",
            "train.patience=100",
        ],
    )
    fit(cfg, show_progress=False)
    return out


@pytest.fixture(scope="session")
def ood_phantom_run(tmp_path_factory):
    """cnn4 on 150 phantom patients at 64 px (a fifth of the patients for validation)."""
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.phantoms import make_phantoms
    from cxrkit.data.prepare import prepare

    root = tmp_path_factory.mktemp("ood_phantoms")
    make_phantoms(root / "release", n_patients=150, image_size=64, seed=3, progress=False)
    prepared = prepare(
        root / "release",
        root / "prepared",
        settings=PreprocessSettings(size=64),
        workers=0,
        progress=False,
        val_fraction=0.2,
    )
    return _train(prepared.root, root / "run", epochs=3)


@pytest.fixture(scope="session")
def ood_real_run(nih_sample, tmp_path_factory):
    """cnn4 on the real sample's ~800 train images at 64 px (official split, 20 % val)."""
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.prepare import prepare

    root = tmp_path_factory.mktemp("ood_real")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # label-file images absent from the sample
        prepared = prepare(
            nih_sample,
            root / "prepared",
            images_root=nih_sample / "images_256",
            label_file=nih_sample / "meta" / "Data_Entry_2017.csv",
            on_missing="drop",
            settings=PreprocessSettings(size=64),
            workers=0,
            progress=False,
            val_fraction=0.2,
        )
    return _train(prepared.root, root / "run", epochs=4)


def _split_images(lm, split):
    from cxrkit.inference.heldout import load_held_out

    data = load_held_out(lm)
    cache = data.prepared.cache
    return [np.asarray(cache.images[r]) for r in cache.rows(data.table(split)["image_id"].tolist())]


# -- the pieces ------------------------------------------------------------------------------
def test_mahalanobis_equals_scikit_learn_at_full_rank():
    """At full rank the low-rank form is the ordinary Mahalanobis distance (scikit-learn's
    EmpiricalCovariance, whose covariance divides by n where PCA's divides by n - 1)."""
    from sklearn.covariance import EmpiricalCovariance

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    g = Gaussian(fit_gaussian(x, rank=6))
    new = rng.normal(size=(20, 6)) * 3
    want = EmpiricalCovariance().fit(x).mahalanobis(new) * (len(x) - 1) / len(x)
    np.testing.assert_allclose(g.mahalanobis2(new), want, rtol=1e-6)
    a = rng.normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(decode(encode(a)), a)


def test_record_is_plain_data_and_small():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (120, 1, 32, 32), dtype=np.uint8)
    feats = rng.normal(size=(120, 256))
    rec = fit_record(feats[:100], images[:100], feats[100:], images[100:])
    buf = io.BytesIO()
    torch.save({"ood": rec}, buf)
    assert buf.tell() < 400_000
    buf.seek(0)
    back = torch.load(buf, weights_only=True)["ood"]
    json.dumps(back)  # the same dict goes into ONNX metadata
    r = OodScorer(back).score(feats[100:], images[100:])
    assert r.score.shape == (20,) and r.flag.dtype == bool
    with pytest.raises(ValueError, match="format"):
        OodScorer({"format": "something else"})


# -- the phantom-trained model -----------------------------------------------------------------
def test_training_writes_the_record_and_phantom_model_flags_real_films(ood_phantom_run, nih_sample):
    ck = torch.load(ood_phantom_run / "best.pt", weights_only=True)
    assert ck["ood"]["format"] == "cxrkit-ood/1"
    lm = cxrkit.load(ood_phantom_run)
    assert lm.ood_source == "recorded in best.pt"
    real = sorted((nih_sample / "images_256").glob("*.png"))[::4] + sorted(
        (nih_sample / "originals").rglob("*.png")
    )
    rows = probe_table(lm, ("phantom test", _split_images(lm, "test")), {"real": real})
    by = {r["set"]: r for r in rows}
    print(rows)
    assert by["real"]["flagged"] >= 0.95
    assert by["phantom test"]["flagged"] <= 0.05 + PHANTOM_TEST_TOLERANCE
    assert by["real"]["auroc"] >= 0.95


# -- the real-trained model --------------------------------------------------------------------
def test_real_model_flags_phantoms_noise_photographs(ood_real_run):
    lm = cxrkit.load(ood_real_run)
    test = _split_images(lm, "test")
    sets = {
        "phantoms": phantom_images(100),
        "noise": noise_images(40),
        "photographs": photographs(),
    }
    sets.update(
        {how: transformed(test[:200], how) for how in ("rotated 90", "upside down", "inverted")}
    )
    rows = probe_table(lm, ("real test", test), sets)
    by = {r["set"]: r for r in rows}
    for r in rows:  # the transformed films are reported, not asserted
        print(f"{r['set']:>12}: {r['n']:4d} images, {r['flagged']:.1%} flagged, AUROC {r['auroc']}")
    assert by["real test"]["flagged"] <= 0.05 + REAL_TEST_TOLERANCE
    for name in ("phantoms", "noise", "photographs"):
        assert by[name]["flagged"] >= 0.95, (name, by[name])
        assert by[name]["auroc"] >= 0.9, (name, by[name])


# -- old checkpoints, predict, evaluate, export, serve -------------------------------------------
@pytest.fixture(scope="module")
def old_run(ood_phantom_run, tmp_path_factory):
    """A copy of the phantom run whose checkpoint has no record (as before this existed)."""
    from cxrkit.engine.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path_factory.mktemp("old") / "run"
    shutil.copytree(ood_phantom_run, run)
    ck = load_checkpoint(run / "best.pt")
    del ck["ood"], ck["format"]
    save_checkpoint(ck, run / "best.pt")
    return run


def test_old_checkpoint_says_so_then_cxrkit_ood_computes_it(old_run, tmp_path):
    from typer.testing import CliRunner

    from cxrkit.cli import app
    from cxrkit.inference.predictor import OodMissingWarning

    lm = cxrkit.load(old_run)
    assert lm.ood_record is None
    image = noise_images(1, size=64)[0]
    with pytest.warns(OodMissingWarning, match="cxrkit ood"):
        df = lm.predict(image)
    assert np.isnan(df["ood_score"].iloc[0]) and df["ood_flag"].isna().all()

    res = CliRunner().invoke(app, ["ood", str(old_run), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "computed" in res.output and (old_run / "best.ood.json").exists()
    lm = cxrkit.load(old_run)
    assert lm.ood_source.endswith("best.ood.json")
    assert bool(lm.predict(image)["ood_flag"].iloc[0])  # noise is no radiograph
    # a sidecar for another checkpoint is refused, not used
    shutil.copy(old_run / "best.pt", tmp_path / "best.pt")
    shutil.copy(old_run / "best.ood.json", tmp_path / "best.ood.json")
    doc = json.loads((tmp_path / "best.ood.json").read_text())
    doc["checkpoint_sha256"] = "0" * 64
    (tmp_path / "best.ood.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="another checkpoint"):
        assert cxrkit.load(tmp_path / "best.pt").ood_record is None


def test_refitted_record_is_the_one_predict_scores_with(phantom_run, tmp_path, monkeypatch):
    """``cxrkit ood RUN --force`` writes best.ood.json and says so; from then on predict
    (the default torch-free path and --backend torch) scores with it, not with the record
    inside best.pt (it kept using that one)."""
    from typer.testing import CliRunner

    from cxrkit.cli import app

    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXRKIT_PRECISION", raising=False)
    run = shutil.copytree(phantom_run, tmp_path / "run")
    image = tmp_path / "noise.png"
    from PIL import Image

    Image.fromarray(noise_images(1, size=64)[0]).save(image)
    before = cxrkit.load(run)
    assert before.ood_source == "recorded in best.pt"
    embedded = before.predict(image)["ood_score"].iloc[0]

    res = CliRunner().invoke(app, ["ood", str(run), "--force", "--no-progress"])
    side = run / "best.ood.json"
    assert res.exit_code == 0, res.output
    assert f"computed, written to {side}" in res.output and "predict, serve" in res.output
    # the refit is deterministic; scale its thresholds so that its scores are told apart
    doc = json.loads(side.read_text())
    for part in doc["record"]["parts"].values():
        part["threshold_d2"] *= 1000.0
    side.write_text(json.dumps(doc))
    assert cxrkit.load(run).ood_source == str(side)

    def predicted(*backend):
        out = tmp_path / f"p{len(backend)}.csv"
        args = ["predict", str(run), str(image), "--out", str(out), "--no-progress", *backend]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        return pd.read_csv(out)["ood_score"].iloc[0]

    for backend in ([], ["--backend", "torch"]):
        np.testing.assert_allclose(predicted(*backend), embedded / 1000.0, rtol=2e-3)
    assert "ood" in doc["record"]["provenance"]["made_by"]


def test_evaluate_reports_flagged_and_auroc_without_them(old_run, tmp_path):
    from cxrkit.evaluate import evaluate_checkpoint

    run = tmp_path / "run"
    shutil.copytree(old_run, run)
    (run / "best.ood.json").unlink(missing_ok=True)
    m = evaluate_checkpoint(run, bootstrap=20, subgroup_bootstrap=5, progress=False)
    assert (run / "best.ood.json").exists()  # computed because it was missing
    ood = m["ood"]
    assert ood["n_images"] == m["n_images"] and 0 <= ood["n_flagged"] <= ood["n_images"]
    assert "mean_auroc_without_flagged" in ood and ood["mean_auroc_all"] is not None
    html = (run / "eval" / "test" / "report.html").read_text()
    assert "Out-of-distribution images" in html and "without them" in html
    preds = (run / "eval" / "test" / "predictions_test.csv").read_text().splitlines()[0]
    assert "ood_score" in preds and "ood_flag" in preds


def test_onnx_export_carries_the_score(ood_phantom_run, tmp_path, nih_sample):
    from cxrkit.inference.export import export_onnx
    from cxrkit.inference.onnx_backend import load_onnx

    run = tmp_path / "run"
    shutil.copytree(ood_phantom_run, run)
    real = sorted((nih_sample / "images_256").glob("*.png"))[:4]
    r = export_onnx(run, parity_images=real, n_phantoms=4)
    assert r["parity"]["ood_score"]["max_rel_diff_score"] <= 1e-3
    assert r["parity"]["ood_score"]["flags_agree"]
    om, lm = load_onnx(run), cxrkit.load(run)
    assert om.ood_record is not None
    images = [*real, *noise_images(2, size=64)]
    a, b = om.predict(images), lm.predict(images)
    np.testing.assert_allclose(a["ood_score"], b["ood_score"], rtol=1e-3)
    assert a["ood_flag"].tolist() == b["ood_flag"].tolist()


def test_serve_returns_score_and_warning(ood_phantom_run):
    from fastapi.testclient import TestClient
    from PIL import Image

    from cxrkit.serve import create_app

    client = TestClient(create_app(ood_phantom_run))
    buf = io.BytesIO()
    Image.fromarray(noise_images(1)[0]).save(buf, format="PNG")
    r = client.post("/predict", files={"file": ("noise.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ood_flag"] is True and body["ood_score"] > 1
    assert "does not look like the images this model was trained on" in body["ood_warning"]

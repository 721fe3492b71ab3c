"""The OOD record's features come from the engine ``predict`` uses (issue 20, item 7).

On a CPU the end of training and ``cxrkit ood`` compute the record with the checkpoint's
cached ONNX graph in the engine ``auto`` picks (OpenVINO bf16 or onnxruntime), name it in
the record's provenance, and leave the graph for ``predict``; without onnxruntime and
OpenVINO they fall back to torch fp32 and say so. ``bench/bench_ood_record.py`` times it.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cxrkit
from cxrkit.cli import app
from cxrkit.ood import OodScorer
from cxrkit.ood.gaussian import decode

#: Agreement of predict's OOD scores (auto's features) between the record made with auto's
#: engine and one made in torch fp32, on held-out images: onnxruntime is within 1e-4 of
#: fp32, so the two records are near equal; OpenVINO bf16 rounds features to 8-bit
#: mantissas (bench/bench_ood_record.py on the real sample: max relative score difference
#: 0.0067 for a trained cnn4, 0.016 for DenseNet121, all flags equal). The bounds leave room
#: for an untrained 32 px model and other CPUs.
MAX_REL_SCORE_DIFF = 0.1
MIN_FLAG_AGREEMENT = 0.95


def _train(prepared, out):
    res = CliRunner().invoke(
        app,
        [
            "train",
            f"data.prepared={prepared.root}",
            f"out={out}",
            "model.name=cnn4",
            "data.image_size=32",
            "data.batch_size=32",
            "train.epochs=1",
            "train.threads=1",
            "train.amp=none",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    return out


def _held_out(lm):
    from cxrkit.inference.heldout import load_held_out

    data = load_held_out(lm)
    cache = data.prepared.cache
    return np.stack([cache.images[r] for r in cache.rows(data.table("test")["image_id"].tolist())])[
        :, None
    ]


@pytest.fixture(scope="module")
def auto_run(phantom_prepared, tmp_path_factory):
    """A cnn4 trained with the default precision (auto), its own graph cache."""
    root = tmp_path_factory.mktemp("ood_engine")
    mp = pytest.MonkeyPatch()
    mp.setenv("CXRKIT_CACHE", str(root / "cache"))
    mp.delenv("CXRKIT_PRECISION", raising=False)
    try:
        yield _train(phantom_prepared, root / "run")
    finally:
        mp.undo()


def test_record_is_computed_by_predicts_engine_and_its_graph_is_reused(
    auto_run, tmp_path_factory, monkeypatch
):
    monkeypatch.setenv("CXRKIT_CACHE", str(auto_run.parent / "cache"))
    monkeypatch.delenv("CXRKIT_PRECISION", raising=False)
    ck = torch.load(auto_run / "best.pt", weights_only=True, map_location="cpu")
    engine = ck["ood"]["provenance"]["features_engine"]
    lm = cxrkit.load(auto_run)  # what predict and serve load
    assert engine["used"] == lm.precision["used"] != "fp32"  # a CPU graph engine
    assert engine["ran_by"] == lm.ran_by
    # the graph exported for the record is the one predict loads: the checkpoint gained the
    # record since (another sha256), its network did not
    assert lm.precision["exported_now"] is False and lm.precision["onnx"] == engine["onnx"]

    # the same checkpoint's record in torch fp32 (as before), through `cxrkit ood`
    ref_run = tmp_path_factory.mktemp("fp32") / "run"
    import shutil

    shutil.copytree(auto_run, ref_run)
    monkeypatch.setenv("CXRKIT_PRECISION", "fp32")
    res = CliRunner().invoke(app, ["ood", str(ref_run), "--force", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "features by torch" in res.output  # the engine, said
    ref = json.loads((ref_run / "best.ood.json").read_text())["record"]
    assert ref["provenance"]["features_engine"]["used"] == "fp32"
    assert ref["provenance"]["features_engine"]["ran_by"].startswith("torch")

    # predict's scores (auto's features) of held-out images: the two records agree
    images = _held_out(lm)
    _, features = lm.forward_cached(images)
    a = OodScorer(ck["ood"]).score(features, images)
    b = OodScorer(ref).score(features, images)
    rel = np.abs(a.score - b.score) / np.maximum(1.0, np.abs(b.score))
    assert len(images) >= 20 and rel.max() <= MAX_REL_SCORE_DIFF, rel.max()
    assert (a.flag == b.flag).mean() >= MIN_FLAG_AGREEMENT


def test_without_graph_engines_the_record_falls_back_to_torch_fp32(
    phantom_prepared, tmp_path, monkeypatch
):
    """No onnxruntime, no OpenVINO: auto falls back (with a warning), and so does the
    record, which says so; training and `cxrkit ood` alike."""
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXRKIT_PRECISION", raising=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    monkeypatch.setitem(sys.modules, "openvino", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = _train(phantom_prepared, tmp_path / "run")
    ck = torch.load(run / "best.pt", weights_only=True, map_location="cpu")
    engine = ck["ood"]["provenance"]["features_engine"]
    assert engine["used"] == "fp32" and engine["ran_by"].startswith("torch")
    assert engine["why"] == "onnxruntime and OpenVINO failed"
    assert not list((tmp_path / "cache").rglob("*.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(app, ["ood", str(run), "--force", "--no-progress"])
    assert res.exit_code == 0, res.output
    side = json.loads((run / "best.ood.json").read_text())["record"]
    assert side["provenance"]["features_engine"]["used"] == "fp32"
    np.testing.assert_allclose(  # the same numbers as training's (float rounding aside)
        decode(side["parts"]["features"]["mean"]),
        decode(ck["ood"]["parts"]["features"]["mean"]),
        rtol=1e-4,
        atol=1e-6,
    )

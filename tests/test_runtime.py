"""Inference precision (cxrkit.inference.runtime): fp32 reference, onnxruntime and bf16 fast paths.

The suite runs with ``CXRKIT_PRECISION=fp32`` (conftest); these tests ask for each path
explicitly, ``auto`` included, with the ONNX cache in a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cxrkit
from cxrkit.cli import app
from cxrkit.inference.runtime import PRECISION_ENV, cpu_has_bf16, default_precision

from test_export import make_checkpoint


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One ONNX cache for the module (each checkpoint is exported once)."""
    folder = tmp_path_factory.mktemp("onnx_cache")
    old = os.environ.get("CXRKIT_CACHE")
    os.environ["CXRKIT_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("CXRKIT_CACHE")
    else:
        os.environ["CXRKIT_CACHE"] = old


@pytest.fixture(scope="module")
def meta_checkpoint(tmp_path_factory):
    """A random cnn4 that takes patient metadata (the export has two inputs)."""
    return make_checkpoint(
        tmp_path_factory.mktemp("rt"),
        "cnn4",
        cache=48,
        input_size=40,
        model_kw={"meta_features": 4},
    )


def _images(n=5, size=48):
    return np.random.default_rng(0).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


def test_onnxruntime_matches_fp32_for_every_tta_and_is_cached(meta_checkpoint, onnx_cache):
    x, meta = _images(), np.array([[0.6, 1, 0, 1]] * 5, np.float32)
    ref = cxrkit.load(meta_checkpoint, precision="fp32")
    fast = cxrkit.load(meta_checkpoint, precision="onnxruntime")
    assert ref.precision == {"requested": "fp32", "used": "fp32"}
    rec = fast.precision
    assert rec["used"] == "onnxruntime" and rec["exported_now"] is True
    assert rec["parity_max_abs_diff_probability"] <= 1e-4
    for tta in ("none", "flip", "tencrop"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mirrored TTA on a model trained without flips
            a = ref.logits_from_cached(x, meta, tta=tta)
            b = fast.logits_from_cached(x, meta, tta=tta)
        np.testing.assert_allclose(b, a, atol=1e-5)
        assert not np.allclose(a[0], a[1])  # the images differ, so the check means something
    again = cxrkit.load(meta_checkpoint)  # CXRKIT_PRECISION=fp32 (conftest) ...
    assert again.precision["used"] == "fp32"
    auto = cxrkit.load(meta_checkpoint, precision="auto")  # ... auto: the cached export
    assert auto.precision["used"] in ("onnxruntime", "openvino-bf16")  # per machine (runtime)
    assert auto.precision["exported_now"] is False
    assert auto.precision["onnx"] == rec["onnx"]
    assert list(onnx_cache.rglob("*.onnx")) and not list(onnx_cache.rglob("*.tmp"))
    manifest = json.loads(open(rec["onnx"] + ".json").read())
    assert manifest["checkpoint_sha256"] == fast.checkpoint_sha256


def test_a_changed_checkpoint_gets_its_own_export(meta_checkpoint, onnx_cache, tmp_path):
    """The cache is keyed by the network's weights (not the file): other weights, other graph."""
    other = make_checkpoint(
        tmp_path, "cnn4", cache=48, input_size=40, model_kw={"meta_features": 4}
    )
    ck = torch.load(other, weights_only=True)
    ck["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, other)
    a = cxrkit.load(meta_checkpoint, precision="onnxruntime")
    b = cxrkit.load(other, precision="onnxruntime")
    assert a.precision["onnx"] != b.precision["onnx"] and b.precision["exported_now"]
    x = _images(2)
    m = np.zeros((2, 4), np.float32)
    np.testing.assert_allclose(
        b.logits_from_cached(x, m),
        cxrkit.load(other, precision="fp32").logits_from_cached(x, m),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions")
def test_bf16_is_close_to_fp32_and_saliency_stays_fp32(meta_checkpoint):
    from cxrkit.explain.saliency import saliency_maps

    x, meta = _images(4), np.zeros((4, 4), np.float32)
    ref = cxrkit.load(meta_checkpoint, precision="fp32")
    bf = cxrkit.load(meta_checkpoint, precision="bf16")
    assert bf.precision["used"] == "bf16"
    a, b = ref.logits_from_cached(x, meta), bf.logits_from_cached(x, meta)
    assert not np.array_equal(a, b)  # it really ran in bf16 ...
    np.testing.assert_allclose(b, a, atol=0.05)  # ... and stays close (bf16: 8-bit mantissa)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(
        saliency_maps(bf, xt, 0, meta=meta), saliency_maps(ref, xt, 0, meta=meta), atol=1e-5
    )


def test_precision_names_are_checked(meta_checkpoint, monkeypatch):
    with pytest.raises(ValueError, match="precision must be one of"):
        cxrkit.load(meta_checkpoint, precision="fp16")
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match=r"\$CXRKIT_PRECISION"):
        default_precision()
    monkeypatch.delenv(PRECISION_ENV)
    assert default_precision() == "auto" and default_precision("bf16") == "bf16"


def test_evaluate_records_precision_and_auroc_is_unchanged(phantom_run, onnx_cache, tmp_path):
    from cxrkit.evaluate import evaluate_checkpoint

    run = shutil.copytree(phantom_run, tmp_path / "run")
    fast = {"bootstrap": 20, "subgroup_bootstrap": 5, "progress": False, "report": False}
    m32 = evaluate_checkpoint(run, precision="fp32", out=tmp_path / "e32", **fast)
    mort = evaluate_checkpoint(run, precision="onnxruntime", out=tmp_path / "eort", **fast)
    assert m32["precision"] == {"requested": "fp32", "used": "fp32"}
    assert mort["precision"]["used"] == "onnxruntime"
    assert (
        json.loads((tmp_path / "eort" / "metrics.json").read_text())["precision"]["used"]
        == "onnxruntime"
    )
    assert round(mort["mean_auroc"]["value"], 3) == round(m32["mean_auroc"]["value"], 3)
    for f, v in m32["auroc"].items():
        if v["value"] is not None:
            assert mort["auroc"][f]["value"] == pytest.approx(v["value"], abs=1e-3)


def test_cli_precision_option(phantom_run, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", "--help"])
    assert "--precision" in res.output
    res = CliRunner().invoke(app, ["predict", str(phantom_run), "x.png", "--precision", "half"])
    assert res.exit_code == 2 and "precision must be one of" in res.output


def test_cli_help_imports_no_torch():
    """``cxrkit --help`` and a command's ``--help`` register the CLI without torch."""
    code = (
        "import sys\nfrom cxrkit.cli import app\n"
        "for argv in (['--help'], ['predict', '--help'], ['evaluate', '--help']):\n"
        "    try:\n        app(argv)\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'onnxruntime', 'sklearn')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


def test_onnx_predict_path_imports_neither_torch_nor_pandas(tmp_path):
    """What ``cxrkit predict MODEL.onnx ... --out x.csv`` imports (start-up time)."""
    code = (
        "import sys, numpy as np\n"
        "import cxrkit.cli, cxrkit.inference.predict, cxrkit.inference.onnx_backend, cxrkit.inference.thresholds\n"
        "from cxrkit.inference.predict import Predictions\n"
        "p = Predictions(findings=('A', 'B'), images=['x.png', 'bad.png'],\n"
        "    probabilities=np.array([[0.25, 1/3], [np.nan, np.nan]]), errors={'bad.png': 'no'},\n"
        "    thresholds=np.array([0.5, 0.3]), thresholds_source=None)\n"
        f"p.save({str(tmp_path / 'x.csv')!r})\n"
        "print('HEAVY', [m for m in ('torch', 'pandas', 'matplotlib', 'sklearn')"
        " if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    import pandas as pd

    df = pd.read_csv(tmp_path / "x.csv", keep_default_na=False)
    assert list(df.columns) == ["image", "error", "flagged", "ood_score", "ood_flag", "A", "B"]
    assert df.loc[0, "ood_score"] == "" and df.loc[0, "ood_flag"] == ""  # no OOD record given
    assert df.loc[0, "flagged"] == "B" and float(df.loc[0, "B"]) == 1 / 3  # full precision
    assert df.loc[1, "error"] == "no" and df.loc[1, "A"] == ""

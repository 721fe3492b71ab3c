"""The OpenVINO precisions (cxrkit.inference.openvino_engine, cxrkit.runtime): parity with torch fp32
on phantoms and real images, what ``auto`` picks and says, OpenVINO missing, no bf16.

The suite runs with ``CXRKIT_PRECISION=fp32`` (conftest); these tests ask for each path
explicitly, with the graph cache in a temporary folder.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import cxrkit
from cxrkit.cli import app
from cxrkit.inference.runtime import BF16_PARITY_TOLERANCE

from test_export import real_images
from test_runtime import _images, meta_checkpoint, onnx_cache  # noqa: F401 (fixtures)

openvino = pytest.importorskip("openvino", reason="OpenVINO is an optional extra")


def _ov_bf16() -> bool:
    from cxrkit.inference.openvino_engine import cpu_has_bf16

    return cpu_has_bf16()


needs_bf16 = pytest.mark.skipif(not _ov_bf16(), reason="this CPU has no native bf16")


pytestmark = pytest.mark.usefixtures("onnx_cache")  # graphs in a temporary folder


@pytest.mark.parametrize("precision", ["openvino", pytest.param("openvino-bf16", marks=needs_bf16)])
def test_openvino_matches_fp32_with_features_for_every_tta(meta_checkpoint, precision):
    x, meta = _images(), np.array([[0.6, 1, 0, 1]] * 5, np.float32)
    ref = cxrkit.load(meta_checkpoint, precision="fp32")
    fast = cxrkit.load(meta_checkpoint, precision=precision)
    rec = fast.precision
    assert rec["used"] == precision
    assert rec["openvino_precision"] == ("bf16" if precision.endswith("bf16") else "fp32")
    bound = BF16_PARITY_TOLERANCE if precision.endswith("bf16") else 1e-4
    assert rec["parity_max_abs_diff_probability"] <= bound
    for tta in ("none", "flip", "tencrop"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mirrored TTA on a model trained without flips
            za, fa = ref.forward_cached(x, meta, tta=tta)
            zb, fb = fast.forward_cached(x, meta, tta=tta)
        pa, pb = 1 / (1 + np.exp(-za)), 1 / (1 + np.exp(-zb))
        assert np.abs(pb - pa).max() <= bound
        assert not np.allclose(za[0], za[1])  # the images differ, so the check means something
        np.testing.assert_allclose(fb, fa, atol=0.05 if precision.endswith("bf16") else 1e-4)
    if precision.endswith("bf16"):
        assert not np.array_equal(ref.logits_from_cached(x, meta), fast.logits_from_cached(x, meta))


@needs_bf16
def test_openvino_bf16_parity_on_real_images(phantom_run, nih_sample):
    """A trained phantom cnn4 on real NIH images (256 px and a 1024 px original)."""
    files = real_images(nih_sample, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cxrkit.load(phantom_run, precision="fp32").predict(files)
        fast = cxrkit.load(phantom_run, precision="openvino-bf16").predict(files)
        exact = cxrkit.load(phantom_run, precision="openvino").predict(files)
    findings = list(ref.columns[:-2])
    assert np.abs(fast[findings].to_numpy() - ref[findings].to_numpy()).max() <= 5e-3
    assert np.abs(exact[findings].to_numpy() - ref[findings].to_numpy()).max() <= 1e-4
    # the OOD score comes from the same pass (features output), close to fp32's
    np.testing.assert_allclose(exact["ood_score"], ref["ood_score"], rtol=1e-3)
    assert (fast["ood_flag"] == ref["ood_flag"]).all()


@needs_bf16
def test_auto_picks_openvino_bf16_and_says_so(meta_checkpoint, caplog):
    from cxrkit.inference import openvino_engine

    openvino_engine._SAID.clear()
    with caplog.at_level(logging.INFO, logger="cxrkit.inference.openvino_engine"):
        lm = cxrkit.load(meta_checkpoint, precision="auto")
    assert lm.precision["used"] == "openvino-bf16" and lm.precision["requested"] == "auto"
    assert "OpenVINO bf16" in lm.precision["why"]
    assert "precision auto: OpenVINO bf16" in caplog.text and "0.005" in caplog.text


def _no_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError


def test_openvino_missing_is_a_clear_message_and_auto_falls_back(
    meta_checkpoint, monkeypatch, caplog
):
    from cxrkit.inference import openvino_engine
    from cxrkit.inference.openvino_engine import OpenVinoUnavailable

    _no_openvino(monkeypatch)
    with pytest.raises(OpenVinoUnavailable, match=r"not installed.*cxrkit\[openvino\]"):
        cxrkit.load(meta_checkpoint, precision="openvino")
    openvino_engine._SAID.clear()
    monkeypatch.setattr(openvino_engine, "cpuinfo_has_bf16", lambda: True)
    with caplog.at_level(logging.INFO, logger="cxrkit.inference.openvino_engine"):
        lm = cxrkit.load(meta_checkpoint, precision="auto")
    assert lm.precision["used"] == "onnxruntime"
    assert "OpenVINO is not installed" in lm.precision["why"]
    assert "pip install 'cxrkit[openvino]'" in caplog.text  # the slower choice is said
    res = CliRunner().invoke(
        app, ["predict", str(meta_checkpoint), "x.png", "--precision", "openvino-bf16"]
    )
    assert res.exit_code == 2 and "OpenVINO is not installed" in res.output
    assert "Traceback" not in res.output


def test_cpu_without_bf16_is_refused_clearly_and_auto_stays_exact(meta_checkpoint, monkeypatch):
    from cxrkit.inference import openvino_engine

    monkeypatch.setattr(openvino_engine, "cpuinfo_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="no native bf16"):
        cxrkit.load(meta_checkpoint, precision="openvino-bf16")
    lm = cxrkit.load(meta_checkpoint, precision="auto")
    assert lm.precision["used"] == "onnxruntime"
    assert lm.precision["parity_max_abs_diff_probability"] <= 1e-4


@pytest.fixture(scope="module")
def exported(phantom_run, tmp_path_factory):
    """The shared phantom cnn4 run, exported once (``cxrkit export``)."""
    import shutil

    from cxrkit.inference.export import export_onnx

    run = shutil.copytree(phantom_run, tmp_path_factory.mktemp("ov_export") / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(run, n_phantoms=1)["path"]


@pytest.mark.parametrize("engine", ["openvino", pytest.param("openvino-bf16", marks=needs_bf16)])
def test_onnx_backend_on_openvino_matches_onnxruntime_with_ood(exported, nih_sample, engine):
    """``cxrkit predict MODEL.onnx --precision openvino[-bf16]``: the exported file (its
    preprocessing, thresholds, OOD record) run by OpenVINO, within its bound."""
    from cxrkit.inference.predict import load_model

    path = exported
    files = real_images(nih_sample, 3)
    ort_model = load_model(path)
    ov_model = load_model(path, precision=engine)
    assert ov_model.engine == engine and ov_model.engine_record["openvino_precision"] == (
        "bf16" if engine.endswith("bf16") else "fp32"
    )
    assert ov_model.ood_record is not None and ov_model.findings == ort_model.findings
    # what `cxrkit predict` prints as the engine that ran (it raised AttributeError on OpenVINO)
    assert (
        ov_model.ran_by.startswith("OpenVINO ")
        and engine.removeprefix("openvino").lstrip("-") in ov_model.ran_by
    )
    assert ort_model.ran_by.startswith("onnxruntime ")
    a, b = ort_model.predict(files), ov_model.predict(files)
    f = list(ort_model.findings)
    bound = BF16_PARITY_TOLERANCE if engine.endswith("bf16") else 1e-4
    assert np.abs(a[f].to_numpy() - b[f].to_numpy()).max() <= bound
    assert (a["ood_flag"] == b["ood_flag"]).all()
    assert np.isfinite(b["ood_score"]).all()


def test_onnx_backend_on_openvino_imports_no_torch(exported, tmp_path):
    import subprocess

    path = exported
    code = (
        "import sys, numpy as np\n"
        "from cxrkit.inference.predict import load_model\n"
        f"m = load_model({path!r}, precision='openvino')\n"
        "z = m.logits_from_cached(np.zeros((2, 1) + (m.preprocessing.cache.size,) * 2, np.uint8))\n"
        "print('SHAPE', z.shape, 'HEAVY', [k for k in ('torch', 'onnxruntime') if k in sys.modules])\n"
    )
    env = {**os.environ, "CXRKIT_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_predict_on_a_checkpoint_runs_torch_free_after_its_first_run(
    phantom_run, nih_sample, tmp_path, monkeypatch, caplog
):
    """The defaults (auto, CPU, no TTA): the first run builds the cached export and says so;
    later runs load it in auto's engine without torch, within auto's bound of fp32."""
    import shutil
    import subprocess

    from cxrkit.inference.fast_predict import graph_path, load_fast
    from cxrkit.inference.predict import load_model

    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXRKIT_PRECISION")
    run = shutil.copytree(phantom_run, tmp_path / "run")
    with caplog.at_level(logging.INFO):
        fast = load_model(run)
    assert "first run of" in caplog.text and "without torch" in caplog.text
    assert fast.source == run / "best.pt" and "torch-free" in fast.backend
    assert fast.ran_by.split()[0] in ("OpenVINO", "onnxruntime"), fast.ran_by
    assert graph_path(fast.record["checkpoint_sha256"]).exists()
    files = real_images(nih_sample, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cxrkit.load(run, precision="fp32").predict(files)
        got = fast.predict(files)
    f = list(fast.findings)
    assert np.abs(got[f].to_numpy() - ref[f].to_numpy()).max() <= BF16_PARITY_TOLERANCE
    assert (got["ood_flag"] == ref["ood_flag"]).all()
    assert load_model(run, tta="flip").backend == "torch"  # TTA: the torch path
    assert load_model(run, precision="onnxruntime").backend == "torch"
    code = (
        "import sys\nfrom cxrkit.inference.predict import load_model\n"
        f"m = load_model({str(run)!r})\n"
        f"m.predict([{str(files[0])!r}])\n"
        "print('BACKEND', m.backend, 'HEAVY', [k for k in ('torch', 'timm') if k in sys.modules])\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout and "torch-free" in proc.stdout, proc.stdout
    # a damaged cached export is built again, and said (issue 19, item 14)
    from cxrkit.inference.openvino_engine import CacheRebuiltWarning

    path = graph_path(fast.record["checkpoint_sha256"])
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(CacheRebuiltWarning, match="cached export .* is unusable"):
        again = load_fast(run)
    assert np.abs(again.predict(files)[f].to_numpy() - got[f].to_numpy()).max() <= 1e-6


def test_predict_cli_on_a_checkpoint_names_the_engine_that_ran(
    phantom_run, nih_sample, tmp_path, monkeypatch
):
    """``cxrkit predict RUN IMAGE`` with the defaults: the torch-free path's summary names
    the engine (it crashed with AttributeError when that engine was OpenVINO)."""
    import shutil

    from typer.testing import CliRunner

    from cxrkit.cli import app

    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXRKIT_PRECISION", raising=False)
    run = shutil.copytree(phantom_run, tmp_path / "run")
    image = real_images(nih_sample, 1)[0]
    res = CliRunner().invoke(
        app, ["predict", str(run), str(image), "--out", str(tmp_path / "p.csv"), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert "forward pass: OpenVINO" in res.output or "forward pass: onnxruntime" in res.output, (
        res.output
    )

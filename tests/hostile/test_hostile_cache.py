"""Issue 19, item 14: a corrupted cached graph is detected, rebuilt, and the user told.

The fast CPU path caches each checkpoint's network as an ONNX graph (cxrkit.inference.runtime) and
OpenVINO's compiled model beside it. A truncated graph used to break every later
``predict``/``evaluate`` with onnxruntime's ``InvalidProtobuf``; a graph with flipped bytes
would have loaded and silently given other probabilities.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import cxrkit
from cxrkit.cli import app
from cxrkit.inference.openvino_engine import CacheRebuiltWarning

from test_export import make_checkpoint


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cache"))
    return make_checkpoint(tmp_path, "cnn4", cache=48, input_size=40)


def _images(n=3):
    return np.random.default_rng(1).integers(0, 256, (n, 1, 48, 48), dtype=np.uint8)


def _graph(lm):
    from pathlib import Path

    return Path(lm.precision["onnx"])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped"])
def test_a_damaged_onnx_graph_is_rebuilt_and_said(checkpoint, damage):
    x = _images()
    ref = cxrkit.load(checkpoint, precision="fp32").logits_from_cached(x)
    graph = _graph(cxrkit.load(checkpoint, precision="onnxruntime"))
    data = bytearray(graph.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 3]
    elif damage == "garbage":
        data = bytearray(b"\x00not a protobuf\xff" * 64)
    else:  # same size, a weight's bytes changed: loads fine, would silently change results
        i = len(data) - 2000
        data[i : i + 64] = bytes(b ^ 0x5A for b in data[i : i + 64])
    graph.write_bytes(bytes(data))
    with pytest.warns(CacheRebuiltWarning, match=r"cached ONNX graph .* is unusable"):
        lm = cxrkit.load(checkpoint, precision="onnxruntime")
    assert lm.precision["exported_now"] is True
    np.testing.assert_allclose(lm.logits_from_cached(x), ref, atol=1e-5)
    manifest = json.loads(graph.with_name(graph.name + ".json").read_text())
    from cxrkit.artefacts import file_sha256

    assert manifest["graph_sha256"] == file_sha256(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRebuiltWarning)  # rebuilt once, then quiet
        cxrkit.load(checkpoint, precision="onnxruntime")


def test_predict_cli_on_a_damaged_cache_tells_the_user_and_succeeds(
    checkpoint, tmp_path, phantom_release, caplog
):
    graph = _graph(cxrkit.load(checkpoint, precision="onnxruntime"))
    graph.write_bytes(graph.read_bytes()[:500])
    image = next(phantom_release.rglob("*.png"))
    with warnings.catch_warnings(record=True) as caught:  # the CLI logs warnings to stderr
        res = CliRunner().invoke(
            app,
            [
                "predict",
                str(checkpoint),
                str(image),
                "--precision",
                "onnxruntime",
                "--out",
                str(tmp_path / "p.csv"),
                "--no-progress",
            ],
        )
    assert res.exit_code == 0, res.output
    said = res.output + caplog.text + " ".join(str(w.message) for w in caught)
    assert "unusable" in said and "exporting it again" in said
    assert (tmp_path / "p.csv").exists()


def test_a_damaged_openvino_cache_is_rebuilt_and_said(checkpoint):
    pytest.importorskip("openvino")
    x = _images()
    ref = cxrkit.load(checkpoint, precision="fp32").logits_from_cached(x)
    lm = cxrkit.load(checkpoint, precision="openvino")
    from pathlib import Path

    blobs = list(Path(lm.precision["openvino_cache"]).glob("*.blob"))
    assert blobs and lm.precision["compiled_from_cache"] is False
    assert cxrkit.load(checkpoint, precision="openvino").precision["compiled_from_cache"]
    for b in blobs:
        b.write_bytes(b"\x00garbage" * 100)
    with pytest.warns(CacheRebuiltWarning, match="cached OpenVINO model .* could not be loaded"):
        lm = cxrkit.load(checkpoint, precision="openvino")
    assert lm.precision["cache_rebuilt"] is True
    np.testing.assert_allclose(lm.logits_from_cached(x), ref, atol=1e-5)
    assert cxrkit.load(checkpoint, precision="openvino").precision["compiled_from_cache"]

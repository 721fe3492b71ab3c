"""ONNX export: preprocessing in the graph, parity with PyTorch, the contract, the torch-free backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

import cxrkit
from cxrkit.cli import app
from cxrkit.data.images import PreprocessSettings
from cxrkit.engine.checkpoint import save_checkpoint
from cxrkit.inference.export import ParityError, export_onnx, resize_matrix
from cxrkit.inference.onnx_backend import load_onnx


def make_checkpoint(
    folder: Path,
    name: str,
    *,
    cache: int,
    input_size: int,
    eval_resize: int | None = None,
    clahe: bool = False,
    model_kw: dict | None = None,
) -> Path:
    """A randomly initialised model saved as a cxrkit checkpoint (no training needed)."""
    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    from cxrkit.models import create_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, **(model_kw or {}))
    c = model.cxr_config
    return save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": c.to_dict(),
            "findings": list(c.findings),
            "preprocess": {
                "cache": PreprocessSettings(size=cache, clahe=clahe).to_dict(),
                "input_size": input_size,
                "eval_resize": eval_resize,
                "mean": c.mean,
                "std": c.std,
                "channels": c.in_chans,
            },
        },
        folder / name / "best.pt",
    )


def real_images(nih: Path, n: int = 3) -> list[Path]:
    return (
        sorted((nih / "images_256").glob("*.png"))[:n]
        + sorted((nih / "originals").rglob("*.png"))[:1]
    )


@pytest.fixture(scope="module")
def exported(phantom_run, nih_sample, tmp_path_factory):
    """The shared cnn4 run, exported (with real NIH images in the parity check)."""
    run = shutil.copytree(phantom_run, tmp_path_factory.mktemp("export") / "run")
    return run, export_onnx(run, parity_images=real_images(nih_sample), n_phantoms=2)


@pytest.mark.parametrize(
    "in_size,resize,crop", [(64, 64, 56), (64, 72, 64), (256, 256, 224), (64, 48, 40)]
)
def test_resize_matrix_is_torchs_eval_transform(in_size, resize, crop):
    from cxrkit.data.transforms import EvalTransform

    x = torch.randint(0, 256, (2, 1, in_size, in_size), dtype=torch.uint8)
    w = resize_matrix(in_size, resize, crop)
    got = w @ (x.float() / 255) @ w.T
    want = EvalTransform(crop, resize=resize, mean=0.0, std=1.0)(x)
    assert (got - want).abs().max() < 1e-6


def test_export_writes_contract_and_passes_parity(exported):
    run, r = exported
    onnx_path, sidecar = Path(r["path"]), Path(r["sidecar"])
    assert onnx_path == run / "best.onnx" and sidecar.exists()
    lm = cxrkit.load(run)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_path)).metadata_props}
    assert props["cxrkit.preprocess"] == json.loads(json.dumps(lm.preprocess_record()))
    assert props["cxrkit.findings"] == list(lm.findings)
    assert props["cxrkit.model"]["name"] == "cnn4" and props["cxrkit.opset"] == 18
    assert {"torch", "onnxruntime", "cxrkit"} <= set(props["cxrkit.versions"])
    from cxrkit.artefacts import file_sha256

    assert props["cxrkit.checkpoint_sha256"] == file_sha256(lm.checkpoint)
    parity = json.loads(sidecar.read_text())["parity"]
    assert parity["passed"] and parity["max_abs_diff_probability"] <= 1e-4
    assert set(parity["by_kind"]) == {"phantom", "real 256x256", "real 1024x1024"}


def test_onnx_backend_matches_torch_on_any_batch(exported, phantom_release):
    run, r = exported
    images = sorted(phantom_release.rglob("*.png"))[:5]
    lm, om = cxrkit.load(run), load_onnx(r["path"])
    np.testing.assert_array_equal(om.load_images(images), lm.load_images(images).numpy())
    want = lm.predict(images)[list(lm.findings)].to_numpy()
    np.testing.assert_allclose(
        om.predict(images, batch_size=2)[list(lm.findings)].to_numpy(), want, atol=1e-5
    )
    np.testing.assert_allclose(
        om.predict(images[0])[list(lm.findings)].to_numpy(), want[:1], atol=1e-5
    )
    with pytest.raises(ValueError, match="test-time augmentation"):
        om.logits_from_cached(om.load_images(images[:1]), tta="flip")


def test_a_wrong_graph_fails_parity(phantom_run, tmp_path, monkeypatch):
    import cxrkit.inference.export as ex

    run = shutil.copytree(phantom_run, tmp_path / "run")
    monkeypatch.setattr(ex, "resize_matrix", lambda n, r, c: torch.eye(n).flip(0)[:c])
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_onnx(run, n_phantoms=2)


@pytest.mark.parametrize(
    "name,geometry,model_kw",
    [
        pytest.param(
            "mobilenet_v2",
            {"cache": 40, "input_size": 32, "eval_resize": 36, "clahe": True},
            {"input_size": 32},
            marks=pytest.mark.slow,
        ),  # timm-backed; its export takes ~6 s
        ("gaussian_attention", {"cache": 32, "input_size": 32}, {}),
        ("cnn4", {"cache": 32, "input_size": 32}, {"meta_features": 4}),
    ],
)
def test_export_other_models(name, geometry, model_kw, tmp_path):
    ck = make_checkpoint(tmp_path, name, **geometry, model_kw=model_kw)
    r = export_onnx(ck, n_phantoms=3)
    assert r["parity"]["passed"], r["parity"]
    om = load_onnx(ck.parent)
    assert om.metadata == ("meta_features" in model_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = cxrkit.load(ck)
        x = lm.load_images([np.full((50, 60), 128, np.uint8), np.eye(70, dtype=np.uint8) * 255])
        np.testing.assert_allclose(om.logits_from_cached(x), lm.logits_from_cached(x), atol=1e-4)


def test_cli_export_and_torch_free_onnx_predict(exported, phantom_release, tmp_path):
    run, r = exported
    images = [str(p) for p in sorted(phantom_release.rglob("*.png"))[:4]]
    (tmp_path / "bad.png").write_text("not a png")
    images.append(str(tmp_path / "bad.png"))
    torch_csv, onnx_csv = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    res = CliRunner().invoke(app, ["predict", str(run), *images, "--out", str(torch_csv)])
    assert res.exit_code == 1, res.output
    # onnx backend in a fresh interpreter where importing torch fails
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from cxrkit.cli import app\n"
        f"app(['predict', {r['path']!r}, *{images!r}, '--out', {str(onnx_csv)!r}])"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1, proc.stderr[-2000:]  # 1: bad.png, and nothing else failed
    assert "onnx backend" in proc.stdout and "bad.png" in proc.stdout
    import pandas as pd

    a, b = pd.read_csv(torch_csv), pd.read_csv(onnx_csv)
    assert list(a["image"]) == list(b["image"]) and a["error"].notna().sum() == 1
    findings = list(cxrkit.load(run).findings)
    np.testing.assert_allclose(b[findings].to_numpy(), a[findings].to_numpy(), atol=1e-5)
    assert np.isfinite(a[findings].to_numpy()[:4]).all()

    res = CliRunner().invoke(
        app,
        [
            "export",
            str(run),
            "--out",
            str(tmp_path / "m.onnx"),
            "--phantoms",
            "2",
            "--parity-images",
            images[0],
        ],
    )
    assert res.exit_code == 0, res.output
    assert "max |dp|" in res.output and "passed" in res.output
    assert (tmp_path / "m.onnx.json").exists()


def test_thresholds_are_recorded_and_travel_with_the_onnx_file(tmp_path):
    from cxrkit.inference import write_thresholds

    ck = make_checkpoint(tmp_path, "cnn4", cache=32, input_size=32)
    lm = cxrkit.load(ck)
    chosen = {f: 0.1 + 0.05 * i for i, f in enumerate(lm.findings)}
    write_thresholds(lm, chosen, method="youden", chosen_on="val")
    r = export_onnx(ck, n_phantoms=1)
    assert r["thresholds"] == pytest.approx(chosen)
    moved = tmp_path / "elsewhere" / "model.onnx"
    moved.parent.mkdir()
    shutil.copy(r["path"], moved)  # without the run folder's thresholds.json
    om = load_onnx(moved)
    assert (
        om.thresholds == pytest.approx(chosen) and "recorded in model.onnx" in om.thresholds_source
    )
    np.testing.assert_allclose(om.threshold_vector(), [chosen[f] for f in lm.findings])
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        load_onnx(bogus)


def test_default_parity_images_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    from cxrkit.inference.export import NIH_SAMPLE_ENV, default_parity_images, nih_sample_folder

    sample = tmp_path / "sample"
    (sample / "images_256").mkdir(parents=True)
    (sample / "originals" / "a").mkdir(parents=True)
    for i in range(10):
        (sample / "images_256" / f"{i:02d}.png").write_bytes(b"")
    (sample / "originals" / "a" / "big.png").write_bytes(b"")
    monkeypatch.setenv(NIH_SAMPLE_ENV, str(sample))
    got = default_parity_images()
    assert [p.name for p in got] == [f"{i:02d}.png" for i in range(8)] + ["big.png"]
    monkeypatch.delenv(NIH_SAMPLE_ENV)
    here = nih_sample_folder()
    monkeypatch.chdir(tmp_path)  # the old default, ../shared/nih, moved with the directory
    assert nih_sample_folder() == here

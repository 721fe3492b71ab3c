"""Every CUDA path of cxrkit, on a real GPU (``pytest -m cuda``; skipped without CUDA).

``bench/gpu/check.sh`` runs this file on a borrowed GPU. Where the same logic can run on
the CPU (the device-generic augmentation path, torchrun's process group with gloo) a CPU
twin without the ``cuda`` marker runs in ``make test``, so the comparison itself is tested
here even though the GPU is not.

Tolerances, and why they are not zero:

* augmentation: the CPU path warps ``uint8`` with OpenCV, the device path warps float with
  ``grid_sample``; same random parameters (drawn from the CPU generator), values within
  ``AUG_ATOL`` (intensity 0..1; uint8 rounding plus OpenCV's fixed-point bilinear weights);
* evaluate / predict / serve / Grad-CAM: the same fp32 weights, but cuDNN may run
  convolutions in TF32 (``torch.backends.cudnn.allow_tf32`` is on by default), about 1e-3
  relative: probabilities within ``PROB_ATOL``, AUROC within ``AUROC_ATOL``;
* SmoothGrad adds Gaussian noise drawn from the *device's* RNG, which differs between CPU
  and CUDA, so the maps agree in distribution, not pixel by pixel: Pearson r >= ``SG_R``
  (two CPU runs with different seeds gave r 0.88-0.95 with 32 samples: see the CPU twin).
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

from cxrkit.config import load_config
from cxrkit.data.transforms import AugmentSettings, TrainTransform
from cxrkit.engine import train as engine
from cxrkit.engine.checkpoint import load_checkpoint
from cxrkit.models import create_model, list_models
from test_train import kill_and_resume

HAS_CUDA = torch.cuda.is_available()
#: ``CXRKIT_CUDA_TESTS_ON=cpu`` rehearses the CUDA tests' own code on the CPU (the
#: comparisons are then CPU against CPU, so it proves the tests run, not the GPU); used
#: once by hand before the first GPU run, never in make test.
DEV = os.environ.get("CXRKIT_CUDA_TESTS_ON", "cuda")
REHEARSAL = DEV == "cpu"
needs_cuda = pytest.mark.skipif(
    not (HAS_CUDA or REHEARSAL), reason="needs a CUDA GPU (bench/gpu/check.sh)"
)

AUG_ATOL = 1.5 / 255  # intensity units (0..1), after crop/affine/jitter, before normalising
AUG_MEAN_ATOL = 0.5 / 255
PROB_ATOL = 5e-3
AUROC_ATOL = 0.02
CAM_ATOL = 0.05  # Grad-CAM maps are normalised to [0, 1]
SG_R = 0.8  # two CPU seeds gave r 0.88-0.95 (32 samples) on two phantom models


def cuda(fn):
    return pytest.mark.cuda(needs_cuda(fn))


def run_config(prepared, out, *overrides):
    base = [
        f"data.prepared={prepared.root}",
        f"out={out}",
        "data.batch_size=16",
        "model.name=cnn4",
        "train.epochs=3",
        "train.scheduler=plateau",
        "train.lr=2e-3",
        "train.patience=10",
    ]
    return load_config(None, [*base, *overrides])


# -- augmentation ----------------------------------------------------------------------------
def _aug_batch(n=6, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth images (like radiographs), not noise: bilinear differences stay interpretable
    low = torch.rand(n, 1, 12, 12, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _augment_on(images: torch.Tensor, seed: int) -> torch.Tensor:
    tf = TrainTransform(64, mean=0.0, std=1.0, augment=AugmentSettings(hflip=True))
    return tf(images, torch.Generator().manual_seed(seed)).cpu()


def _check_augmentation_agrees(device_images: torch.Tensor):
    images = _aug_batch()
    ref = _augment_on(images, 7)  # CPU uint8 path (OpenCV)
    got = _augment_on(device_images, 7)  # device path (grid_sample)
    diff = (ref - got).abs()
    assert ref.shape == got.shape == (6, 1, 64, 64)
    assert float(diff.max()) <= AUG_ATOL, f"max |cpu - device| = {float(diff.max()) * 255:.2f}/255"
    assert float(diff.mean()) <= AUG_MEAN_ATOL, f"mean {float(diff.mean()) * 255:.3f}/255"
    other = _augment_on(images, 8)  # a different seed really differs
    assert float((ref - other).abs().mean()) > 10 * AUG_MEAN_ATOL


def test_device_augmentation_path_equals_opencv_path_on_cpu():
    """CPU twin: the float grid_sample path (the one CUDA runs) vs the uint8 OpenCV path."""
    _check_augmentation_agrees(_aug_batch().float().div(255))


@cuda
def test_gpu_augmentation_equals_cpu_for_the_same_seed():
    _check_augmentation_agrees(_aug_batch().float().div(255).to(DEV))
    _check_augmentation_agrees(
        _aug_batch().to(DEV) if not REHEARSAL else _aug_batch().float().div(255)
    )  # uint8 on the GPU too
    # the engine's own per-epoch CPU generator drives a CUDA batch (it used to raise)
    tf = TrainTransform(64)
    out = tf(_aug_batch().to(DEV), engine._epoch_generator(0, 1))
    assert out.device.type == DEV and torch.isfinite(out).all()


# -- every registered model trains on CUDA ---------------------------------------------------
class _Batches(list):
    """Three ready batches standing in for a DataLoader (the engine reads ``.sampler``)."""

    sampler = None


@cuda
@pytest.mark.parametrize("amp", ["bf16"] if REHEARSAL else ["bf16", "fp16"])
@pytest.mark.parametrize(
    "name",
    os.environ.get("CXRKIT_CUDA_TEST_MODELS", "").split(",")
    if os.environ.get("CXRKIT_CUDA_TEST_MODELS")
    else list_models(),
)
def test_every_model_trains_three_steps(name, amp, tmp_path):
    """Three optimiser steps through the engine's own loop: autocast (+ GradScaler for
    fp16), channels_last, the CPU generator driving CUDA augmentation, finite loss."""
    dev = torch.device(DEV)
    size = 128
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, **({"img_size": size} if name.startswith("vit") else {}))
    model = model.to(dev).to(memory_format=torch.channels_last)
    cfg = load_config(
        None,
        [
            f"data.prepared={tmp_path}",
            f"out={tmp_path / 'run'}",
            f"model.name={name}",
            f"train.amp={amp}",
            "train.epochs=1",
            "train.channels_last=true",
            "train.lr=1e-4",
        ],
    )
    precision = engine.Precision.choose(amp, dev)
    assert precision.dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    assert precision.scaler == (amp == "fp16")
    scaler = torch.amp.GradScaler(DEV) if precision.scaler else None
    g = torch.Generator().manual_seed(0)
    n = 8
    batches = _Batches(
        [
            {
                "image": torch.randint(0, 256, (n, 1, 144, 144), dtype=torch.uint8, generator=g),
                "labels": (torch.rand(n, 14, generator=g) < 0.3).float(),
                "meta": torch.zeros(n, 4),
                "index": torch.arange(n),
            }
            for _ in range(3)
        ]
    )
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = engine.make_loss("bce").to(dev)
    tf = TrainTransform(
        size,
        mean=model.cxr_config.mean,
        std=model.cxr_config.std,
        channels=model.cxr_config.in_chans,
    )
    loss, rate, step = engine.train_one_epoch(
        model,
        loss_fn,
        opt,
        batches,
        tf,
        device=dev,
        precision=precision,
        scaler=scaler,
        epoch=0,
        cfg=cfg,
        show_progress=False,
    )
    assert np.isfinite(loss) and step == 3 and rate > 0
    moved = sum(
        not torch.equal(before[k], p.detach()) for k, p in model.named_parameters() if k in before
    )
    assert moved > 0.5 * len(before), f"only {moved}/{len(before)} parameters changed"
    if scaler is not None:
        assert scaler.get_scale() > 0


# -- evaluate, explain, predict, serve on cuda equal the CPU ---------------------------------
@pytest.fixture(scope="module")
def run_copy(phantom_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_run") / "cnn4"
    shutil.copytree(phantom_run, out)
    return out


@cuda
def test_evaluate_on_cuda_equals_cpu(run_copy, tmp_path):
    from cxrkit.evaluate.core import evaluate_checkpoint

    kw = dict(split="test", bootstrap=50, subgroup_bootstrap=20, progress=False, report=False)
    cpu = evaluate_checkpoint(run_copy, out=tmp_path / "cpu", device="cpu", **kw)
    gpu = evaluate_checkpoint(run_copy, out=tmp_path / "cuda", device=DEV, **kw)
    for f in cpu["findings"]:
        a, b = cpu["auroc"][f]["value"], gpu["auroc"][f]["value"]
        if a is None:
            assert b is None, f
        else:
            assert abs(a - b) <= AUROC_ATOL, (f, a, b)
    pc = sorted((tmp_path / "cpu").glob("predictions*test*.csv"))
    pg = sorted((tmp_path / "cuda").glob("predictions*test*.csv"))
    assert pc and [p.name for p in pc] == [p.name for p in pg]
    import pandas as pd

    a, b = pd.read_csv(pc[0]), pd.read_csv(pg[0])
    num = [c for c in a.columns if a[c].dtype.kind == "f"]
    assert num and np.abs(a[num].to_numpy() - b[num].to_numpy()).max() <= PROB_ATOL


@pytest.fixture(scope="module")
def loaded_pair(run_copy):
    from cxrkit.inference import load

    return load(run_copy, device="cpu"), (
        load(run_copy, device=DEV) if HAS_CUDA or REHEARSAL else None
    )


@pytest.fixture(scope="module")
def pngs(phantom_release):
    return sorted(phantom_release.rglob("*.png"))[:8]


@cuda
def test_predict_on_cuda_equals_cpu(loaded_pair, pngs):
    from cxrkit.inference.predict import predict_files

    cpu, gpu = loaded_pair
    assert next(gpu.model.parameters()).device.type == DEV
    a = predict_files(cpu, pngs, progress=False)
    b = predict_files(gpu, pngs, progress=False)
    assert a.n_failed == b.n_failed == 0
    assert np.abs(a.probabilities - b.probabilities).max() <= PROB_ATOL
    for tta in ("flip", "tencrop"):
        za = cpu.predict(pngs[:2], tta=tta).to_numpy()
        zb = gpu.predict(pngs[:2], tta=tta).to_numpy()
        assert np.abs(za - zb).max() <= PROB_ATOL, tta


@cuda
def test_explain_on_cuda_equals_cpu(loaded_pair, pngs):
    from cxrkit.explain.saliency import saliency_maps

    cpu, gpu = loaded_pair
    images = cpu.load_images(pngs[:4])
    a = saliency_maps(cpu, images, "Effusion", method="gradcam")
    b = saliency_maps(gpu, images, "Effusion", method="gradcam")
    assert np.abs(a - b).max() <= CAM_ATOL
    torch.manual_seed(0)
    a = saliency_maps(cpu, images, "Effusion", method="smoothgrad", samples=32)
    torch.manual_seed(0)
    b = saliency_maps(gpu, images, "Effusion", method="smoothgrad", samples=32)
    r = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b, strict=True)]
    assert min(r) >= SG_R, r


def test_smoothgrad_tolerance_holds_between_two_cpu_seeds(loaded_pair, pngs):
    """CPU twin of the SmoothGrad comparison: independent noise, same model -> r >= SG_R."""
    from cxrkit.explain.saliency import saliency_maps

    cpu, _ = loaded_pair
    images = cpu.load_images(pngs[:4])
    torch.manual_seed(0)
    a = saliency_maps(cpu, images, "Effusion", method="smoothgrad", samples=32)
    torch.manual_seed(1)
    b = saliency_maps(cpu, images, "Effusion", method="smoothgrad", samples=32)
    assert not np.array_equal(a, b)
    r = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b, strict=True)]
    assert min(r) >= SG_R, r


@cuda
def test_serve_on_cuda_equals_cpu(loaded_pair, pngs):
    from fastapi.testclient import TestClient

    from cxrkit.serve import create_app

    cpu, gpu = loaded_pair
    client = TestClient(create_app(gpu))
    for p in pngs[:3]:
        r = client.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        got = {x["finding"]: x["probability"] for x in r.json()["findings"]}
        want = cpu.predict(p).iloc[0].to_dict()
        assert list(got) == list(want)
        assert max(abs(got[k] - want[k]) for k in want) <= PROB_ATOL
    r = client.post("/explain", files={"file": (pngs[0].name, pngs[0].read_bytes(), "image/png")})
    assert r.status_code == 200, r.text


# -- training: exact resume, torch.compile, DDP ----------------------------------------------
@cuda
def test_kill_and_resume_on_cuda_equals_uninterrupted(phantom_prepared, tmp_path, monkeypatch):
    """As tests/test_train.py's CPU test, on CUDA in bf16, deterministic kernels on."""
    if REHEARSAL:  # the CPU twin of this test is tests/test_train.py's
        pytest.skip("rehearsal: covered on the CPU by test_train.py")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        kill_and_resume(
            run_config(phantom_prepared, tmp_path / "full", "train.amp=bf16"),
            run_config(phantom_prepared, tmp_path / "part", "train.amp=bf16"),
            monkeypatch,
        )
    finally:
        torch.use_deterministic_algorithms(False)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert json.loads((tmp_path / "full" / "run.json").read_text())["device"].startswith(DEV)
    assert a["epoch"] == b["epoch"] == 2
    worst = max(
        float((a["model"][k].float() - b["model"][k].float()).abs().max())
        for k in a["model"]
        if a["model"][k].is_floating_point()
    )
    assert worst == 0.0, f"resumed weights differ from uninterrupted by up to {worst:g}"
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]


@cuda
def test_torch_compile_of_a_train_step(phantom_prepared, tmp_path):
    cfg = run_config(
        phantom_prepared,
        tmp_path / "run",
        "train.compile=true",
        "train.epochs=1",
        "train.max_steps_per_epoch=3",
        "train.amp=bf16",
    )
    summary = engine.fit(cfg, show_progress=False)
    assert summary["status"] == "completed" and summary["device"].startswith(DEV)
    row = json.loads((tmp_path / "run" / "run.json").read_text())
    assert np.isfinite(row["best_val_mean_auroc"])
    # the checkpoint holds plain (un-prefixed) weights that load into a fresh model
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    create_model(**ck["model_config"]).load_state_dict(ck["model"])


def _torchrun_one_process(prepared, out, port: int):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "1",
        "--master_port",
        str(port),
        "-m",
        "cxrkit.cli",
        "train",
        f"data.prepared={prepared.root}",
        f"out={out}",
        "data.batch_size=16",
        "model.name=cnn4",
        "train.epochs=1",
        "train.max_steps_per_epoch=3",
        "train.threads=1",
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "run.json").read_text())


def test_torchrun_one_process_uses_a_gloo_group_on_cpu(phantom_prepared, tmp_path):
    """CPU twin of the NCCL test: one torchrun process still gets a group and DDP."""
    if HAS_CUDA or REHEARSAL:
        pytest.skip("with CUDA, torchrun picks nccl: see the cuda test")
    run = _torchrun_one_process(phantom_prepared, tmp_path / "run", 29531)
    assert run["status"] == "completed"
    assert run["backend"] == "gloo" and run["world_size"] == 1 and run["device"] == "cpu"


@cuda
def test_ddp_through_torchrun_one_process_on_nccl(phantom_prepared, tmp_path):
    run = _torchrun_one_process(phantom_prepared, tmp_path / "run", 29532)
    assert run["status"] == "completed"
    assert run["backend"] == ("gloo" if REHEARSAL else "nccl") and run["world_size"] == 1
    assert run["device"] == ("cpu" if REHEARSAL else "cuda:0")

"""The training engine end to end on a tiny phantom release (CPU, seconds per run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit.config import load_config
from cxrkit.engine import train as engine
from cxrkit.engine.checkpoint import load_checkpoint


def config(prepared, out, *overrides):
    base = [
        f"data.prepared={prepared.root}",
        f"out={out}",
        "data.batch_size=16",
        "model.name=cnn4",
        "train.epochs=3",
        "train.scheduler=plateau",
        "train.lr=2e-3",
        "train.threads=1",
        "train.amp=none",
        "train.patience=10",
    ]
    return load_config(None, [*base, *overrides])


def test_loss_falls_and_run_folder_is_complete(phantom_prepared, tmp_path):
    cfg = config(phantom_prepared, tmp_path / "run", "train.epochs=4", "data.augment=false")
    summary = engine.fit(cfg, show_progress=False)
    hist = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert summary["status"] == "completed" and summary["epochs_run"] == 4
    for name in ("config.yaml", "run.json", "metrics.csv", "curves.png", "best.pt", "last.pt"):
        assert (tmp_path / "run" / name).exists(), name
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_checkpoint_rebuilds_model_alone(phantom_prepared, tmp_path):
    from cxrkit.models import create_model

    engine.fit(config(phantom_prepared, tmp_path / "run", "train.epochs=1"), show_progress=False)
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck["preprocess"]["input_size"] == 64 and ck["findings"]
    assert ck["split"]["sha256"] and ck["versions"]["torch"] == torch.__version__
    model = create_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    model.eval()
    x = torch.rand(2, 1, 64, 64)
    assert model(x).shape == (2, len(ck["findings"]))


def kill_and_resume(full, part, monkeypatch) -> None:
    """Train ``full`` through; train ``part`` (same config, another folder) until it is
    killed in its third epoch (KeyboardInterrupt, as if the process were killed), check
    that its last.pt holds the second epoch (epoch 1), then resume it to the end."""
    engine.fit(full, show_progress=False)
    real = engine.train_one_epoch
    calls = {"n": 0}

    def killed_in_epoch_three(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the process were killed mid-epoch
        return real(*a, **k)

    monkeypatch.setattr(engine, "train_one_epoch", killed_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(part, show_progress=False)
    assert load_checkpoint(Path(part.out) / "last.pt")["epoch"] == 1
    monkeypatch.setattr(engine, "train_one_epoch", real)
    engine.fit(part, show_progress=False)  # resumes from last.pt


def test_kill_and_resume_equals_uninterrupted(phantom_prepared, tmp_path, monkeypatch):
    kill_and_resume(
        config(phantom_prepared, tmp_path / "full"),
        config(phantom_prepared, tmp_path / "part"),
        monkeypatch,
    )
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]


def test_nan_loss_stops_with_usable_checkpoint(phantom_prepared, tmp_path, monkeypatch):
    from cxrkit.engine import losses

    real = losses.MaskedBCE.forward
    calls = {"n": 0}
    n_batches = None

    def nan_later(self, logits, labels):
        calls["n"] += 1
        out = real(self, logits, labels)
        return out * float("nan") if calls["n"] > n_batches else out

    cfg = config(phantom_prepared, tmp_path / "run")
    data = engine.load_data(cfg)
    n_batches = len(data.train) // 16 + 2  # past the first epoch (and its validation)
    monkeypatch.setattr(losses.MaskedBCE, "forward", nan_later)
    with pytest.raises(engine.TrainingDiverged, match="last good checkpoint"):
        engine.fit(cfg, show_progress=False)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert "diverged" in (tmp_path / "run" / "run.json").read_text()


def test_no_train_baseline_only_evaluates(phantom_prepared, tmp_path):
    from cxrkit.models import create_model

    cfg = config(phantom_prepared, tmp_path / "run", "model.freeze=no-train")
    summary = engine.fit(cfg, show_progress=False)
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    torch.manual_seed(cfg.train.seed)
    assert summary["trainable_parameters"] == 0 and summary["epochs_run"] == 1
    fresh = create_model(**ck["model_config"])
    assert fresh.state_dict().keys() == ck["model"].keys()


def test_box_priors_refuse_test_images(phantom_prepared, tmp_path):
    cfg = config(phantom_prepared, tmp_path / "run", "model.name=gaussian_attention")
    with pytest.raises(ValueError, match="box_fold"):
        engine.fit(cfg, show_progress=False)
    cfg = config(
        phantom_prepared,
        tmp_path / "fold",
        "model.name=gaussian_attention",
        "data.box_fold=0.5",
        "train.epochs=1",
    )
    engine.fit(cfg, show_progress=False)
    moved = pd.read_csv(tmp_path / "fold" / "box_fold_moved.csv")
    assert len(moved) > 0 and set(moved["old_split"]) == {"test"}
    boxed = set(phantom_prepared.boxes["image_id"])
    assert set(moved["image_id"]) & boxed
    run = load_checkpoint(tmp_path / "fold" / "best.pt")
    assert run["model_config"]["name"] == "gaussian_attention"


def test_metadata_fusion_and_focal(phantom_prepared, tmp_path):
    cfg = config(
        phantom_prepared,
        tmp_path / "run",
        "model.metadata=true",
        "train.loss=focal",
        "train.epochs=1",
        "train.amp=bf16",
        "train.grad_accum=2",
    )
    summary = engine.fit(cfg, show_progress=False)
    assert np.isfinite(summary["best_val_mean_auroc"])


@pytest.mark.slow
def test_ddp_two_processes_match_one(phantom_prepared, tmp_path):
    """torchrun with 2 CPU processes (gloo) ends close to one process on the same data."""
    common = [
        f"data.prepared={phantom_prepared.root}",
        "data.batch_size=16",
        "model.name=cnn4",
        "train.epochs=2",
        "train.threads=1",
        "train.amp=none",
        "data.augment=false",
        "train.scheduler=none",
        "train.lr=1e-3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrkit.cli",
            "train",
            *common,
            f"out={tmp_path / 'one'}",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "cxrkit.cli",
            "train",
            *common,
            f"out={tmp_path / 'two'}",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    h1 = pd.read_csv(tmp_path / "one" / "metrics.csv")
    h2 = pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert len(h1) == len(h2) == 2
    # same global batch, different shuffles and per-rank batch norm: close, not identical
    assert abs(h1["val_loss"].iloc[-1] - h2["val_loss"].iloc[-1]) < 0.15 * h1["val_loss"].iloc[-1]
    assert (
        abs(h1["train_loss"].iloc[-1] - h2["train_loss"].iloc[-1])
        < 0.15 * h1["train_loss"].iloc[-1]
    )
    import json

    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2

    # metrics gathered across ranks equal a single-process evaluation of the same weights
    from cxrkit.data.transforms import EvalTransform
    from cxrkit.models import create_model

    ck = load_checkpoint(tmp_path / "two" / "last.pt")
    model = create_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    cfg = load_config(None, common + [f"out={tmp_path / 'two'}"])
    data = engine.load_data(cfg)
    pre = ck["preprocess"]
    loader = engine.make_loader(data.val, batch_size=8, shuffle=False)
    val = engine.evaluate(
        model,
        engine.make_loss("bce", pos_weight=engine.positive_weights(data.train.labels.numpy())),
        loader,
        EvalTransform(pre["input_size"], mean=pre["mean"], std=pre["std"]),
        device=torch.device("cpu"),
        precision=engine.Precision(None, False),
        metadata=False,
    )
    assert val["mean_auroc"] == pytest.approx(h2["val_mean_auroc"].iloc[-1], abs=1e-6)
    assert val["loss"] == pytest.approx(h2["val_loss"].iloc[-1], rel=1e-5)


def test_box_supervision_runs_on_folded_boxes(phantom_prepared, tmp_path):
    cfg = config(
        phantom_prepared,
        tmp_path / "run",
        "model.name=gaussian_attention",
        "data.box_fold=0.5",
        "model.box_supervision=1.0",
        "data.augment=false",
        "train.epochs=1",
    )
    summary = engine.fit(cfg, show_progress=False)
    assert summary["box_fold_moved"] > 0 and np.isfinite(summary["best_val_mean_auroc"])
    with pytest.raises(ValueError, match="augment"):
        engine.fit(
            config(
                phantom_prepared,
                tmp_path / "r2",
                "model.name=gaussian_attention",
                "data.box_fold=0.5",
                "model.box_supervision=1.0",
            ),
            show_progress=False,
        )


def test_rerun_of_an_early_stopped_run_does_not_train_on(phantom_prepared, tmp_path):
    cfg = config(phantom_prepared, tmp_path / "run", "train.patience=0")
    first = engine.fit(cfg, show_progress=False)
    assert first["status"] == "early-stopped" and first["epochs_run"] == 1
    again = engine.fit(cfg, show_progress=False)
    assert again["status"] == "early-stopped" and again["epochs_run"] == 1

"""What `cxrkit train` does with its run folder: resume rules, --fresh, --show-config,
nothing written for a refused config, full disks and unwritable outputs, frozen counts."""

from __future__ import annotations

import errno
import json
import logging

import pytest
from typer.testing import CliRunner

from cxrkit.cli import app
from cxrkit.config import RESUMABLE, DataConfig, ModelConfig, RunConfig, TrainConfig, field_docs
from cxrkit.engine import train as engine
from cxrkit.engine.checkpoint import load_checkpoint

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def base(prepared, out, *more):
    return [
        f"data.prepared={prepared.root}",
        f"out={out}",
        "data.batch_size=16",
        "model.name=cnn4",
        "train.epochs=1",
        "train.threads=1",
        "train.amp=none",
        "train.max_steps_per_epoch=2",
        "--no-progress",
        *more,
    ]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_rerun_with_other_settings_is_refused_before_anything_is_written(
    phantom_prepared, tmp_path
):
    run = tmp_path / "run"
    r = cli("train", *base(phantom_prepared, run))
    assert r.exit_code == 0, r.output
    before = snapshot(run)
    for change, key in (("train.lr=0.01", "train.lr"), ("model.name=resnet18", "model.name")):
        r = cli("train", *base(phantom_prepared, run, change))
        assert r.exit_code == 2, r.output
        line = r.output.strip()
        assert "\n" not in line and key in line and "other settings" in line
        assert "--fresh" in line and "out=" in line and "train.epochs" in line
        assert snapshot(run) == before  # config.yaml, last.pt, run.json untouched


def test_resumable_keys_extend_a_run(phantom_prepared, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *base(phantom_prepared, run)).exit_code == 0
    r = cli(
        "train",
        *base(phantom_prepared, run, "train.epochs=2", "train.threads=2", "train.log_every=5"),
    )
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(run / "last.pt")
    assert ck["epoch"] == 1 and len(ck["history"]) == 2
    assert ck["config"]["train"]["epochs"] == 2
    assert {"train.epochs", "data.workers", "train.threads"} <= set(RESUMABLE)


def test_fresh_starts_again_with_the_new_settings(phantom_prepared, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *base(phantom_prepared, run, "train.epochs=2")).exit_code == 0
    r = cli("train", *base(phantom_prepared, run, "train.lr=0.01", "--fresh"))
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(run / "last.pt")
    assert ck["config"]["train"]["lr"] == 0.01 and ck["epoch"] == 0 and len(ck["history"]) == 1
    assert load_checkpoint(run / "best.pt")["config"]["train"]["lr"] == 0.01
    assert "lr: 0.01" in (run / "config.yaml").read_text()
    assert json.loads((run / "run.json").read_text())["epochs_run"] == 1


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.epochs=1.5", "train.epochs must be int"),
        ("data.batch_size=0.5", "data.batch_size must be int"),
        ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch must be >= 1"),
        ("data.findings=Pneumonai", "unknown finding 'Pneumonai'"),
        ("data.findings=No Finding", "'No Finding' is a column, not a target"),
        ("data.prepared=/nonexistent/prepared", "not a prepared folder"),
    ],
)
def test_a_refused_config_writes_nothing(phantom_prepared, tmp_path, override, message):
    out = tmp_path / "run"
    r = cli("train", *base(phantom_prepared, out, override))
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()


def test_show_config_prints_each_field_with_its_meaning(phantom_prepared, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "configs/demo.yaml", "data.image_size=48", f"out={out}", "--show-config")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("  image_size:"))
    assert "48" in line and "model input side" in line
    assert not out.exists()
    import yaml

    from cxrkit.config import load_config

    assert RunConfig.from_dict(yaml.safe_load(r.output)) == load_config(
        "configs/demo.yaml", ["data.image_size=48", f"out={out}"]
    )


def test_every_field_is_documented():
    for klass in (DataConfig, ModelConfig, TrainConfig, RunConfig):
        docs = field_docs(klass)
        missing = [f for f in klass.__dataclass_fields__ if not docs.get(f)]
        assert missing == [], f"{klass.__name__}: no #: comment for {missing}"


def test_frozen_and_trainable_counts_are_logged_and_recorded(phantom_prepared, tmp_path, caplog):
    from cxrkit.config import load_config

    cfg = load_config(
        None,
        [
            a
            for a in base(phantom_prepared, tmp_path / "run", "model.freeze=classifier-only")
            if not a.startswith("--")
        ],
    )
    with caplog.at_level(logging.INFO, logger="cxrkit.engine.train"):
        summary = engine.fit(cfg, show_progress=False)
    frozen, trainable = summary["frozen_parameters"], summary["trainable_parameters"]
    assert frozen > 0 and trainable > 0 and frozen + trainable == summary["parameters"]
    assert f"{trainable:,} trainable, {frozen:,} frozen" in caplog.text
    assert json.loads((tmp_path / "run" / "run.json").read_text())["frozen_parameters"] == frozen


def test_unwritable_run_folder_is_one_line(phantom_prepared, tmp_path):
    (tmp_path / "file").write_text("")
    r = cli("train", *base(phantom_prepared, tmp_path / "file" / "run"))
    assert r.exit_code == 2 and "cannot write" in r.output and "is a file" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 3


def test_full_disk_during_training_is_one_line_and_leaves_no_temporaries(
    phantom_prepared, tmp_path, monkeypatch
):
    import torch

    def full(obj, f, *a, **k):
        f.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    r = cli("train", *base(phantom_prepared, run))
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "best.pt" in err[0] and "no space left" in err[0]
    assert "Traceback" not in r.output
    assert [p for p in run.rglob("*") if ".tmp" in p.name] == []
    assert json.loads((run / "run.json").read_text())["status"].startswith("failed")


def test_predict_out_unwritable_or_full(phantom_run, phantom_release, tmp_path, monkeypatch):
    png = sorted(phantom_release.rglob("*.png"))[0]
    (tmp_path / "file").write_text("")
    r = cli("predict", phantom_run, png, "--out", tmp_path / "file" / "p.csv", "--no-progress")
    assert r.exit_code == 2 and "cannot write" in r.output and "Traceback" not in r.output
    assert "predicted" not in r.output  # refused before the work

    from cxrkit import artefacts

    real = artefacts.os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artefacts.os, "replace", full)
    r = cli("predict", phantom_run, png, "--out", tmp_path / "p.json", "--no-progress")
    monkeypatch.setattr(artefacts.os, "replace", real)
    assert r.exit_code == 2 and "no space left" in r.output and "p.json" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]

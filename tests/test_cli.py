"""The command line end to end on a tiny phantom release (and its error messages)."""

from __future__ import annotations

from typer.testing import CliRunner

from cxrkit.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_pipeline_commands(tmp_path):
    rel, prep = tmp_path / "nih", tmp_path / "prep"
    r = run("phantoms", rel, "--patients", 12, "--size", 32, "--seed", 2)
    assert r.exit_code == 0, r.output
    r = run("validate", rel)
    assert r.exit_code == 0, r.output
    assert "NIH '2017' form" in r.output and "no patient in both" in r.output
    r = run("prepare", rel, "--out", prep, "--size", 32, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert "cache:" in r.output and (prep / "images.npy").exists()
    r = run("split", prep, "--out", tmp_path / "random.csv", "--protocol", "random")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "random.csv").exists() and (tmp_path / "random.json").exists()
    r = run("stats", prep, "--out", tmp_path / "stats")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "stats" / "prevalence.png").exists()
    r = run("train", f"data.prepared={prep}", f"out={tmp_path / 'run'}", "train.epochs=1",
            "data.batch_size=8", "train.threads=1", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "best validation mean AUROC" in r.output


def test_errors_are_one_clear_line(tmp_path):
    r = run("validate", tmp_path / "nowhere")
    assert r.exit_code == 2 and "release folder not found" in r.output
    r = run("train", "train.optimizer=lion")
    assert r.exit_code == 2 and "train.optimizer must be one of" in r.output
    (tmp_path / "rel").mkdir()
    r = run("prepare", tmp_path / "rel", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "no label file" in r.output

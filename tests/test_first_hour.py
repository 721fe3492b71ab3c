"""The first hour of a new user, through the command line (issue 20, "The first hour").

Each test walks one step a newcomer took on the real sample or a phantom release and
checks what stood in the way is gone; every command a message suggests is run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from cxrkit.cli import app
from conftest import REPO

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def cli_process(*args, env=None, cwd=None):
    """``python -m cxrkit.cli ...`` in a fresh process (what a user's shell sees)."""
    return subprocess.run(
        [sys.executable, "-m", "cxrkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def suggested_options(message: str) -> list[str]:
    """The options a message tells the user to pass (``pass --on-missing drop``,
    ``e.g. --images-root DIR``), as argument lists."""
    found = []
    for m in re.finditer(r"(?:pass|e\.g\.)\s+(--[a-z-]+)(?:\s+([^\s,;()]+))?", message):
        opt, value = m.group(1), m.group(2)
        found.append([opt] if value is None or value.startswith("--") else [opt, value])
    return found


def follow_suggestions(args: list, *, steps: int = 4):
    """Run ``args``; while it fails with a suggestion, add the first suggested option and run
    again. Returns the last result and the options added."""
    added = []
    for _ in range(steps):
        r = run(*args, *added)
        if r.exit_code == 0:
            return r, added
        options = suggested_options(r.output)
        assert options, f"failed without a suggestion: {r.output}"
        added += options[0]
    raise AssertionError(f"still failing after {steps} suggestions: {r.output}")


# -- 1: validate and prepare find things the same way; every suggestion works --------------
def test_suggestions_of_validate_and_prepare_are_commands_that_work(nih_sample, tmp_path):
    r, added = follow_suggestions(["validate", nih_sample])
    assert added == ["--images-root", str(nih_sample / "images_256"), "--on-missing", "drop"]
    assert "images: 1,789 of 112,120 on disk" in r.output, r.output
    r, added = follow_suggestions(
        ["prepare", nih_sample, "--out", tmp_path / "p", "--size", 32, "--workers", 0]
    )
    assert added == ["--images-root", str(nih_sample / "images_256"), "--on-missing", "drop"]
    assert "cache: 1,789 images" in r.output
    # the images folder as root with an explicit label file: boxes and lists are said to be
    # missing, with the options that point at them, and passing those works
    images, meta = nih_sample / "images_256", nih_sample / "meta"
    r = run("validate", images, "--labels", meta / "Data_Entry_2017.csv", "--no-images")
    assert r.exit_code == 0, r.output
    assert "pass --boxes FILE" in r.output and "--train-val-list FILE --test-list FILE" in r.output
    assert "images: not checked (--no-images)" in r.output
    r = run(
        "validate",
        images,
        "--labels",
        meta / "Data_Entry_2017.csv",
        "--boxes",
        meta / "BBox_List_2017.csv",
        "--train-val-list",
        meta / "train_val_list.txt",
        "--test-list",
        meta / "test_list.txt",
        "--on-missing",
        "drop",
    )
    assert r.exit_code == 0, r.output
    assert "boxes: 984 on 880 images" in r.output and "no patient in both" in r.output


def test_prepare_takes_the_lists_boxes_and_several_image_roots(phantom_release, tmp_path):
    rel = tmp_path / "rel"
    shutil.copytree(phantom_release, rel)
    meta = tmp_path / "elsewhere"
    meta.mkdir()
    for name in ("BBox_List_2017.csv", "train_val_list.txt", "test_list.txt"):
        shutil.move(next(rel.rglob(name)), meta / name)
    r = run("prepare", rel, "--out", tmp_path / "p", "--size", 32, "--workers", 0)
    assert r.exit_code == 2 and "--train-val-list FILE --test-list FILE" in r.output
    pngs = sorted(rel.rglob("*.png"))
    second = tmp_path / "second"
    second.mkdir()
    for p in pngs[::2]:
        shutil.move(p, second / p.name)
    common = [
        "--images-root",
        rel,
        "--images-root",
        second,
        "--boxes",
        meta / "BBox_List_2017.csv",
        "--train-val-list",
        meta / "train_val_list.txt",
        "--test-list",
        meta / "test_list.txt",
    ]
    r = run("validate", rel, *common)
    assert r.exit_code == 0, r.output
    assert f"images: all {len(pngs):,} on disk" in r.output and "no patient in both" in r.output
    r = run("prepare", rel, "--out", tmp_path / "p", "--size", 32, "--workers", 0, *common)
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "p" / "boxes.csv")) > 0
    # the same name under two roots is refused, naming the option that resolves it
    shutil.copy(second / pngs[0].name, rel / pngs[0].name)
    r = run("validate", rel, *common)
    assert r.exit_code == 2 and "occur in two image roots" in r.output
    assert "remove the copies" in r.output and not suggested_options(r.output)


# -- 9: the basics ---------------------------------------------------------------------------
def test_on_missing_is_checked_before_anything_is_read(phantom_release, tmp_path, monkeypatch):
    import cxrkit.data.release as release

    def must_not_read(*a, **k):
        raise AssertionError("the label file was read")

    monkeypatch.setattr(release, "read_data_entry", must_not_read)
    for command in (
        ["validate", phantom_release],
        ["prepare", phantom_release, "--out", tmp_path / "p"],
    ):
        r = run(*command, "--on-missing", "skip")
        assert r.exit_code == 2 and "(--on-missing) must be 'error' or 'drop'" in r.output
    assert not (tmp_path / "p").exists()


def test_a_failed_prepare_leaves_no_empty_out_folder(tmp_path):
    (tmp_path / "empty-release").mkdir()
    out = tmp_path / "new" / "prepared"
    r = run("prepare", tmp_path / "empty-release", "--out", out)
    assert r.exit_code == 2 and "no label file" in r.output
    assert not out.exists()
    kept = tmp_path / "mine"
    kept.mkdir()
    r = run("prepare", tmp_path / "empty-release", "--out", kept)
    assert r.exit_code == 2 and kept.is_dir()  # a folder the user made stays


def test_version_licence_and_citation():
    from cxrkit import __version__

    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"cxrkit {__version__}"
    project = (REPO / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in project
    licence = (REPO / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence  # the full text, not a stub
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == __version__
    assert cff["license"] == "Apache-2.0" and cff["title"] == "cxrkit"
    assert "## How to cite" in (REPO / "README.md").read_text()


def test_warnings_are_one_line(phantom_release, tmp_path):
    rel = tmp_path / "rel"
    shutil.copytree(phantom_release, rel)
    next(rel.rglob("test_list.txt")).unlink()  # a warning: the official split is gone
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = cli_process("validate", rel, env=env)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "test_list.txt" in ln]
    assert lines == [
        f"warning: test_list.txt not found under {rel}: the official split is unavailable"
    ], r.stderr
    assert "UserWarning" not in r.stderr and "warnings.warn" not in r.stderr


def test_predict_names_the_runtime_that_ran(phantom_run, phantom_release, tmp_path):
    png = sorted(phantom_release.rglob("*.png"))[0]
    run_dir = tmp_path / "run"
    shutil.copytree(phantom_run, run_dir)
    r = run("predict", run_dir, png, "--precision", "fp32", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "forward pass: torch" in r.output and "fp32 eager on cpu" in r.output
    r = run("export", run_dir, "--phantoms", 2, "--parity-images", png)
    assert r.exit_code == 0, r.output
    r = run("predict", run_dir / "best.onnx", png, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "forward pass: onnxruntime" in r.output and "CPUExecutionProvider" in r.output


def test_explain_keeps_earlier_results(phantom_run, phantom_release, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(phantom_run, run_dir)
    pngs = sorted(phantom_release.rglob("*.png"))[:3]
    for images, method in ((pngs[:2], "gradcam"), (pngs[1:], "gradcam"), (pngs[:1], "smoothgrad")):
        r = run(
            "explain",
            run_dir,
            *images,
            "--finding",
            "Effusion",
            "--method",
            method,
            "--no-progress",
        )
        assert r.exit_code == 0, r.output
    index = pd.read_csv(run_dir / "explain" / "index.csv")
    got = sorted(zip(index["image"], index["method"], strict=True))
    want = sorted([(str(p), "gradcam") for p in pngs] + [(str(pngs[0]), "smoothgrad")])
    assert got == want  # merged, pngs[1] not twice
    assert index["overlay"].is_unique
    assert all((run_dir / "explain" / p).exists() for p in index["overlay"])


def test_localize_shows_the_best_and_worst_pair_of_each_finding(phantom_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(phantom_run, run_dir)
    r = run("localize", run_dir, "--no-progress")
    assert r.exit_code == 0, r.output
    pairs = pd.read_csv(run_dir / "localize" / "details" / "pairs.csv")
    shown = sorted(p.name for p in (run_dir / "localize" / "examples").glob("*.png"))
    for finding, rows in pairs.groupby("finding"):
        best = rows.sort_values(["iobb", "probability"], ascending=False).iloc[0]
        assert f"{finding}__best__{Path(best.image_id).stem}.png" in shown, shown
        worst = rows.sort_values(["iobb", "probability"], ascending=[True, False]).iloc[0]
        if worst.image_id != best.image_id:  # one pair is both: shown once
            assert f"{finding}__worst__{Path(worst.image_id).stem}.png" in shown


def test_counts_agree_with_their_nouns():
    from cxrkit.messages import count

    assert [count(1, "image"), count(2, "image"), count(1789, "image"), count(1, "patient")] == [
        "1 image",
        "2 images",
        "1,789 images",
        "1 patient",
    ]


def test_evaluate_describes_the_expert_images_it_scored(phantom_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(phantom_run, run_dir)
    r = run(
        "evaluate",
        run_dir,
        "--bootstrap",
        20,
        "--subgroup-bootstrap",
        10,
        "--gallery",
        0,
        "--no-report",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    note = next(ln for ln in r.output.splitlines() if "Against radiologists" in ln)
    assert re.search(r"\d+ all_findings \(of its [\d,]+ images\)", note), note
    assert re.search(r"among [\d,]+ evaluated images", note), note


# -- 5 and 8: weights -----------------------------------------------------------------------
def _fake_hub_cache(cache: Path, repo: str) -> None:
    """A Hugging Face cache holding ``repo``'s model.safetensors (random weights of the
    right architecture), as a download would leave it."""
    from safetensors.torch import save_file

    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    net = timm.create_model(repo.split("/", 1)[1], pretrained=False)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(snap / "model.safetensors")
    )


def test_offline_weights_message_suggests_commands_that_work(
    phantom_prepared, tmp_path, monkeypatch
):
    from cxrkit.models import backbones

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbones, "cached_hub_file", lambda hub_id: None)
    monkeypatch.chdir(tmp_path)
    train = [
        "train",
        f"data.prepared={phantom_prepared.root}",
        "model.name=mobilenet_v3_large",
        "data.image_size=32",
        "train.epochs=1",
        "data.batch_size=16",
        "train.threads=1",
        "--no-progress",
    ]
    r = run(*train, "model.pretrained=true", f"out={tmp_path / 'a'}")
    assert r.exit_code == 2 and "could not download ImageNet weights" in r.output, r.output
    command = next(ln.strip() for ln in r.output.splitlines() if ln.strip().startswith("python "))
    argv = shlex.split(command)
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "timm/mobilenetv3_large_100.ra_in1k")
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO / "src"),
    }
    done = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    override = re.search(r"model\.weights=(\S+\.pth)", r.output).group(1)
    assert (tmp_path / override).is_file()
    r = run(*train, f"model.weights={override}", f"out={tmp_path / 'b'}")
    assert r.exit_code == 0, r.output
    r = run(*train, "model.pretrained=false", f"out={tmp_path / 'c'}")
    assert r.exit_code == 0, r.output


def test_a_chexnet_style_file_gets_a_summary_not_a_dump(phantom_prepared, tmp_path):
    import torch

    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    net = timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=14)
    path = tmp_path / "chexnet_style.pth"
    torch.save({"state_dict": {f"mobilenet.{k}": v for k, v in net.state_dict().items()}}, path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = cli_process(
        "train",
        f"data.prepared={phantom_prepared.root}",
        "model.name=mobilenet_v3_large",
        f"model.weights={path}",
        f"out={tmp_path / 'run'}",
        "train.epochs=1",
        "--no-progress",
        env=env,
    )
    assert r.returncode == 2
    assert len(r.stdout + r.stderr) < 3000, (r.stdout + r.stderr)[:3000]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: {path} does not fit mobilenet_v3_large")
    assert "closest prefix: the file's keys start with 'mobilenet.'" in err
    assert re.search(r"\d+ of the model's \d+ keys missing from the file \(e\.g\. ", err)


# -- 2: the evaluation resize follows the input size ----------------------------------------
def test_eval_resize_follows_the_input_size(phantom_prepared, tmp_path):
    import torch

    from cxrkit.config import load_config
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.preprocessing import Preprocessing

    cfg = load_config(REPO / "configs" / "mobilenet_v3_large.yaml", ["data.image_size=128"])
    p = Preprocessing.build(
        cache=PreprocessSettings(size=256),
        model_name="mobilenet_v3_large",
        model_input_size=224,
        mean=0.5,
        std=0.25,
        channels=1,
        image_size=cfg.data.image_size,
        eval_resize=cfg.data.eval_resize,
        eval_crop_pct=cfg.data.eval_crop_pct,
    )
    assert (p.input_size, p.eval_resize) == (128, 146)  # not 256: a 25 % centre crop
    train = [
        "train",
        f"data.prepared={phantom_prepared.root}",
        "train.epochs=1",
        "data.batch_size=16",
        "train.threads=1",
        "--no-progress",
        "data.image_size=32",
    ]
    r = run(*train, "data.eval_crop_pct=0.875", f"out={tmp_path / 'a'}")
    assert r.exit_code == 0, r.output
    ck = torch.load(tmp_path / "a" / "best.pt", weights_only=True, map_location="cpu")
    assert (ck["preprocess"]["input_size"], ck["preprocess"]["eval_resize"]) == (32, 37)
    r = run(*train, "data.eval_resize=64", f"out={tmp_path / 'b'}")
    assert r.exit_code == 2, r.output
    assert "data.eval_resize=64 with a 32 px input" in r.output
    assert "central 25%" in r.output and "set data.eval_resize=37 or less" in r.output
    assert not (tmp_path / "b" / "best.pt").exists()


# -- 4: thresholds: where they came from, warned when thin, the modes people use ------------
def test_thresholds_record_their_positives_and_take_targets_and_overrides(phantom_run, tmp_path):
    import json

    from cxrkit.evaluate.threshold_choice import MIN_POSITIVES
    from cxrkit.labels import FINDINGS

    run_dir = tmp_path / "run"
    shutil.copytree(phantom_run, run_dir)
    bad = run("evaluate", run_dir, "--threshold-method", "sensitivity=1.5")
    assert bad.exit_code == 2 and "sensitivity=T or specificity=T" in bad.output
    bad = run("evaluate", run_dir, "--threshold", "Pneumonitis=0.3")
    assert bad.exit_code == 2 and "'Pneumonitis' is not one of" in bad.output
    r = run(
        "evaluate",
        run_dir,
        "--threshold-method",
        "sensitivity=0.9",
        "--threshold",
        "Effusion=0.3",
        "--bootstrap",
        20,
        "--subgroup-bootstrap",
        10,
        "--gallery",
        0,
        "--no-report",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    sidecar = json.loads((run_dir / "thresholds.json").read_text())
    assert sidecar["method"] == "sensitivity=0.9"
    prov = sidecar["provenance"]
    val = pd.read_csv(run_dir / "eval" / "test" / "predictions_val.csv")
    assert prov["positives"] == {f: int((val[f] == 1).sum()) for f in FINDINGS}
    assert (
        prov["positive_patients"]["Effusion"]
        == val.loc[val["Effusion"] == 1, "patient_id"].nunique()
    )
    assert sidecar["thresholds"]["Effusion"] == 0.3 and prov["overrides"] == {"Effusion": 0.3}
    for f, t in sidecar["thresholds"].items():
        if f != "Effusion" and (val[f] == 1).any():
            called = val.loc[val[f] == 1, f"p_{f}"] >= t
            assert called.mean() >= 0.9, f
    few = [f for f in FINDINGS if f != "Effusion" and prov["positives"][f] < MIN_POSITIVES]
    assert few and prov["few_positives"] == few
    warned = [ln for ln in r.output.splitlines() if "fewer than" in ln and "positive val" in ln]
    assert warned and all(f in warned[0] for f in few)


# -- 3: subgroup intervals from a handful of positive patients -----------------------------
def test_subgroups_count_positive_patients_and_drop_hollow_intervals(phantom_run, tmp_path):
    from cxrkit.evaluate.core import FEW_POSITIVES, MIN_INTERVAL_PATIENTS

    run_dir = tmp_path / "run"
    shutil.copytree(phantom_run, run_dir)
    r = run(
        "evaluate",
        run_dir,
        "--bootstrap",
        20,
        "--subgroup-bootstrap",
        20,
        "--gallery",
        0,
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    out = run_dir / "eval" / "test"
    sub = pd.read_csv(out / "subgroups.csv")
    test = pd.read_csv(out / "predictions_test.csv")
    checked = 0
    for row in sub[sub["attribute"] == "sex"].itertuples():
        group = test[(test["sex"] == row.group) & (test[row.finding] == 1)]
        assert row.positives == len(group)
        assert row.positive_patients == group["patient_id"].nunique()
        assert bool(row.caution) == (row.positive_patients < FEW_POSITIVES)
        if row.positive_patients < MIN_INTERVAL_PATIENTS:
            assert pd.isna(row.lo) and pd.isna(row.hi)
            checked += 1
    assert checked, "the phantom test split should have thin subgroups"
    assert any(ln.startswith("note: Subgroups:") for ln in r.output.splitlines())
    assert "fewer than 10 positive patients" in (out / "report.html").read_text()


# -- 6: export says what its parity check covered ------------------------------------------
def test_export_says_what_parity_checked_and_what_it_could_not(
    phantom_run, phantom_release, tmp_path, monkeypatch
):
    import json

    run_dir = tmp_path / "run"
    shutil.copytree(phantom_run, run_dir)
    nowhere = tmp_path / "no-sample"
    monkeypatch.setenv("CXRKIT_NIH_SAMPLE", str(nowhere))  # the sample is not there
    r = run("export", run_dir, "--phantoms", 2)
    assert r.exit_code == 0, r.output
    assert (
        f"not checked: real radiographs: the NIH sample was not found at {nowhere}; "
        "set CXRKIT_NIH_SAMPLE (pass --parity-images DIR)"
    ) in r.output
    folder = tmp_path / "real"
    folder.mkdir()
    for p in sorted(phantom_release.rglob("*.png"))[:3]:
        shutil.copy(p, folder / p.name)
    r = run("export", run_dir, "--phantoms", 2, "--parity-images", folder)
    assert r.exit_code == 0, r.output
    assert (
        "checked: 2 phantom image(s); 3 real 64x64 image(s); real images from "
        f"--parity-images {folder}" in r.output
    )
    assert "not checked: real radiographs" not in r.output
    sidecar = json.loads((run_dir / "best.onnx.json").read_text())
    assert sidecar["parity"]["checked"][1] == "3 real 64x64 image(s)"
    assert any("test-time augmentation" in x for x in sidecar["parity"]["not_checked"])


# -- 7: the OOD record can be switched off and says what it does -----------------------------
def test_ood_record_can_be_switched_off_and_says_what_it_does(phantom_prepared, tmp_path):
    import torch

    train = [
        "train",
        f"data.prepared={phantom_prepared.root}",
        "train.epochs=1",
        "data.batch_size=16",
        "train.threads=1",
        "--no-progress",
        "data.image_size=32",
    ]
    r = run(*train, "train.ood_record=false", f"out={tmp_path / 'off'}")
    assert r.exit_code == 0, r.output
    ck = torch.load(tmp_path / "off" / "best.pt", weights_only=True, map_location="cpu")
    assert ck.get("ood") is None
    r = run(
        "evaluate",
        tmp_path / "off",
        "--bootstrap",
        10,
        "--subgroup-bootstrap",
        10,
        "--gallery",
        0,
        "--no-report",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    assert "out of distribution: no record" in r.output
    assert not (tmp_path / "off" / "best.ood.json").exists()  # the choice is kept
    r = run("ood", tmp_path / "off")  # what the skip message suggests
    assert r.exit_code == 0 and (tmp_path / "off" / "best.ood.json").exists(), r.output
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = cli_process(*train, f"out={tmp_path / 'on'}", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(
        r"ood record: features of \d+ train \+ \d+ val images "
        r"\(train.ood_record=false skips this\)",
        done.stderr,
    ), done.stderr
    ck = torch.load(tmp_path / "on" / "best.pt", weights_only=True, map_location="cpu")
    assert ck["ood"]["provenance"]["features_precision"] == "fp32"  # predict's numerics

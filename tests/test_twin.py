"""The phantom twin of NIH's release (``cxrkit phantoms --like``) on 1 % of its patients,
through prepare -> train one epoch -> evaluate -> localize, as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrkit.cli import app
from cxrkit.data.nih import read_bbox_list, read_data_entry, read_image_list
from cxrkit.data.phantoms.twin import ARCHIVE_SIZES, archive_of, select_patients
from cxrkit.labels import FINDINGS

from conftest import META, _need

runner = CliRunner()
FRACTION = 0.01


def run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_archive_layout_is_nihs():
    assert archive_of(0) == 1 and archive_of(4_998) == 1 and archive_of(4_999) == 2
    assert archive_of(14_998) == 2 and archive_of(14_999) == 3
    assert archive_of(104_998) == 11 and archive_of(104_999) == 12 and archive_of(112_119) == 12
    assert sum(ARCHIVE_SIZES) == 104_999


def test_fractions_are_nested_and_seeded():
    patients = pd.Series(np.repeat(np.arange(1, 501), 3))
    small, large = select_patients(patients, 0.1, 0), select_patients(patients, 0.3, 0)
    assert len(small) == 50 and len(large) == 150 and small <= large
    assert small == select_patients(patients, 0.1, 0) != select_patients(patients, 0.1, 1)
    with pytest.raises(ValueError, match="fraction"):
        select_patients(patients, 0.0, 0)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    out = tmp_path_factory.mktemp("twin") / "nih"
    run(
        "phantoms", out, "--like", _need(META), "--fraction", FRACTION, "--size", 32, "--workers", 0
    )
    return out


def test_twin_rows_are_the_real_rows(twin, real_labels):
    real, _ = real_labels
    mine, report = read_data_entry(twin / "Data_Entry_2017.csv")
    assert report.form == "2017"
    keep = set(mine["patient_id"])
    assert abs(len(keep) - FRACTION * real["patient_id"].nunique()) <= 1
    expected = real[real["patient_id"].isin(keep)].reset_index(drop=True)  # all their images
    cols = ["image_id", "patient_id", "follow_up", "sex", "view", *FINDINGS]
    pd.testing.assert_frame_equal(mine[cols], expected[cols])
    # the real boxes of those images; every image on disk in its NIH archive
    boxes, real_boxes = (
        read_bbox_list(twin / "BBox_List_2017.csv"),
        read_bbox_list(META / "BBox_List_2017.csv"),
    )
    pd.testing.assert_frame_equal(
        boxes, real_boxes[real_boxes["image_id"].isin(mine["image_id"])].reset_index(drop=True)
    )
    assert len(boxes) > 0
    position = {n: i for i, n in enumerate(sorted(real["image_id"]))}
    for name in mine["image_id"]:
        assert (twin / f"images_{archive_of(position[name]):03d}" / "images" / name).exists()
    manifest = json.loads((twin / "phantoms_manifest.json").read_text())
    assert manifest["complete"] and manifest["n_images"] == len(mine)


def test_twin_prepare_train_evaluate_localize(twin, tmp_path):
    """The official split is the real one restricted to the twin; the stages run on it."""
    prep, runs = tmp_path / "prep", tmp_path / "run"
    run("prepare", twin, "--out", prep, "--size", 32, "--workers", 0)
    split = pd.read_csv(prep / "split.csv")
    names = set(split["image_id"])
    real_tv, real_test = (
        set(read_image_list(META / n)) for n in ("train_val_list.txt", "test_list.txt")
    )
    assert set(split.loc[split["split"].isin(["train", "val"]), "image_id"]) == real_tv & names
    assert set(split.loc[split["split"] == "test", "image_id"]) == real_test & names
    assert set(read_image_list(twin / "test_list.txt")) == real_test & names
    by_split = split.groupby("patient_id")["split"].nunique()
    assert (by_split == 1).all(), "a patient is in more than one split"
    boxed = set(read_bbox_list(twin / "BBox_List_2017.csv")["image_id"])
    assert boxed <= set(split.loc[split["split"] == "test", "image_id"])

    run(
        "train",
        f"data.prepared={prep}",
        f"out={runs}",
        "model.name=cnn4",
        "train.epochs=1",
        "data.batch_size=64",
        "train.threads=1",
        "--no-progress",
    )
    run(
        "evaluate",
        runs,
        "--bootstrap",
        50,
        "--subgroup-bootstrap",
        10,
        "--no-report",
        "--no-progress",
    )
    metrics = json.loads((runs / "eval" / "test" / "metrics.json").read_text())
    assert metrics["n_images"] == (split["split"] == "test").sum()
    run("localize", runs, "--no-progress")
    loc = list((runs / "localize").glob("*.json"))
    assert loc, "localize wrote no results"


def test_twin_resumes_with_the_same_bytes(twin, tmp_path):
    """A smaller fraction is a subset with identical images; a killed run resumes."""
    small = tmp_path / "small"
    run("phantoms", small, "--like", META, "--fraction", FRACTION / 4, "--size", 32, "--workers", 0)
    pngs = sorted(small.glob("images_*/images/*.png"))
    assert pngs
    for p in pngs:
        assert p.read_bytes() == (twin / p.relative_to(small)).read_bytes()
    # as if killed: some images missing, the manifest not complete
    gone = {p: p.read_bytes() for p in pngs[::3]}
    for p in gone:
        p.unlink()
    m = json.loads((small / "phantoms_manifest.json").read_text())
    (small / "phantoms_manifest.json").write_text(json.dumps({**m, "complete": False}))
    run("phantoms", small, "--like", META, "--fraction", FRACTION / 4, "--size", 32, "--workers", 0)
    assert all(p.read_bytes() == b for p, b in gone.items())

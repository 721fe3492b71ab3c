"""cxrkit.data.eda: hand-counted tables on a synthetic label table, then the real metadata."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import META
from cxrkit.data.nih import read_bbox_list, read_image_list
from cxrkit.data.splits import official_split
from cxrkit.data.eda import describe
from cxrkit.labels import FINDINGS, NO_FINDING, PUBLISHED_COUNTS

N = 300  # image i belongs to patient i // 3; patients 0-59 train, 60-79 val, 80-99 test


def _synthetic() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Atelectasis on i % 10 == 0 (30 images), Effusion on i % 15 == 0 (20), both on
    i % 30 == 0 (10), Hernia on images 0-4 (patients 0 and 1); everything else negative."""
    i = np.arange(N)
    labels = pd.DataFrame(
        {
            "image_id": [f"{k:08d}_000.png" for k in i],
            "patient_id": i // 3,
            "follow_up": i % 3,
            "age": np.where(i % 50 == 49, np.nan, 5.0 + i % 90),
            "sex": np.where(i % 2, "F", "M"),
            "view": np.where(i % 3 == 0, "PA", "AP"),
        }
    )
    for f in FINDINGS:
        labels[f] = np.zeros(N, dtype=np.uint8)
    labels["Atelectasis"] = (i % 10 == 0).astype(np.uint8)
    labels["Effusion"] = (i % 15 == 0).astype(np.uint8)
    labels["Hernia"] = (i < 5).astype(np.uint8)
    labels[NO_FINDING] = (labels[list(FINDINGS)].sum(axis=1) == 0).astype(np.uint8)
    patient = i // 3
    split = pd.DataFrame(
        {
            "image_id": labels["image_id"],
            "patient_id": patient,
            "split": np.select([patient < 60, patient < 80], ["train", "val"], "test"),
        }
    )
    boxes = pd.DataFrame(
        {
            "image_id": labels["image_id"].iloc[[0, 0, 10, 15]].tolist(),
            "finding": ["Atelectasis", "Effusion", "Atelectasis", "Effusion"],
            "x": [100.0, 600.0, 200.0, 700.0],
            "y": [300.0, 500.0, 350.0, 550.0],
            "w": [80.0, 150.0, 60.0, 120.0],
            "h": [90.0, 200.0, 50.0, 100.0],
        }
    )
    return labels, split, boxes


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    labels, split, boxes = _synthetic()
    out = tmp_path_factory.mktemp("eda")
    return describe(labels, split, out, boxes=boxes, title="synthetic"), out


def _prev(result, finding, split):
    p = result.prevalence
    return p[(p["finding"] == finding) & (p["split"] == split)].iloc[0]


def test_prevalence_counts_and_percentages_match_hand_counts(synthetic):
    result, _ = synthetic
    # (images, patients) per split; split sizes: 180/60, 60/20, 60/20, 300/100 images/patients
    expected = {
        "Atelectasis": {"train": (18, 18), "val": (6, 6), "test": (6, 6), "all": (30, 30)},
        "Effusion": {"train": (12, 12), "val": (4, 4), "test": (4, 4), "all": (20, 20)},
        "Hernia": {"train": (5, 2), "val": (0, 0), "test": (0, 0), "all": (5, 2)},
        NO_FINDING: {"all": (256, 99)},  # 300 - |A u E u H|; patient 0 has no clear image
    }
    sizes = {"train": (180, 60), "val": (60, 20), "test": (60, 20), "all": (300, 100)}
    for finding, per_split in expected.items():
        for split, (images, patients) in per_split.items():
            row = _prev(result, finding, split)
            assert (row["images"], row["patients"]) == (images, patients), (finding, split)
            assert row["pct_images"] == pytest.approx(100 * images / sizes[split][0])
            assert row["pct_patients"] == pytest.approx(100 * patients / sizes[split][1])
    assert _prev(result, "Mass", "all")["images"] == 0


def test_per_split_columns_and_csv(synthetic):
    result, out = synthetic
    p = result.prevalence
    assert list(p.columns) == [
        "finding",
        "split",
        "images",
        "pct_images",
        "patients",
        "pct_patients",
    ]
    assert list(dict.fromkeys(p["split"])) == ["train", "val", "test", "all"]
    assert len(p) == 4 * (len(FINDINGS) + 1)
    on_disk = pd.read_csv(out / "prevalence.csv")
    pd.testing.assert_frame_equal(
        on_disk[["finding", "split", "images", "patients"]],
        p[["finding", "split", "images", "patients"]],
        check_dtype=False,
    )


def test_cooccurrence_is_symmetric_with_counts_on_diagonal(synthetic):
    result, out = synthetic
    c = result.cooccurrence
    assert c.shape == (14, 14) and list(c.index) == list(FINDINGS)
    assert (c.to_numpy() == c.to_numpy().T).all()
    assert np.diag(c).tolist() == [int(_prev(result, f, "all")["images"]) for f in FINDINGS]
    assert c.loc["Atelectasis", "Effusion"] == 10  # i % 30 == 0
    assert c.loc["Atelectasis", "Hernia"] == 1  # image 0
    assert result.conditional.loc["Atelectasis", "Effusion"] == pytest.approx(10 / 30)
    assert result.conditional.loc["Effusion", "Atelectasis"] == pytest.approx(10 / 20)
    assert result.conditional.loc["Mass"].isna().all()  # no Mass image: undefined, not 0
    on_disk = pd.read_csv(out / "cooccurrence.csv", index_col=0)
    assert (on_disk.to_numpy() == c.to_numpy()).all()


def test_demographics_table(synthetic):
    result, _ = synthetic
    d = result.demographics.set_index(["split", "quantity", "category"])["value"]
    assert d[("all", "sex", "M")] == 150 and d[("all", "sex", "F")] == 150
    assert d[("all", "view", "PA")] == 100 and d[("train", "view", "AP")] == 120
    assert d[("all", "images_per_patient", "3-5")] == 100
    assert d[("all", "age_decade", "missing")] == 6  # i % 50 == 49
    assert d[("all", "findings_per_image", "2")] == 9  # Atelectasis + Effusion
    assert d[("all", "findings_per_image", "3")] == 1  # image 0: + Hernia


def test_files_written_and_pngs_are_real_images(synthetic):
    result, out = synthetic
    names = {
        "prevalence.csv",
        "prevalence.png",
        "cooccurrence.csv",
        "cooccurrence.png",
        "demographics.csv",
        "demographics.png",
        "boxes.csv",
        "boxes.png",
        "summary.md",
        "manifest.json",
    }
    assert {f.name for f in result.files} == names
    assert all(f.exists() for f in result.files)
    for png in (f for f in result.files if f.suffix == ".png"):
        assert png.stat().st_size > 20_000, png
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert min(im.size) >= 600 and len(np.unique(np.asarray(im.convert("L")))) > 10
    b = result.boxes.set_index("finding")
    assert b.loc["Atelectasis", "boxes"] == 2 and b.loc["Effusion", "images"] == 2
    assert b.loc["Atelectasis", "mean_cx"] == pytest.approx((140 + 230) / 2)
    summary = (out / "summary.md").read_text()
    assert "| images | 180 | 60 | 60 | 300 |" in summary
    assert "| ages missing or impossible (> 120 y) | 3 | 1 | 2 | 6 |" in summary


def test_without_split_reports_all_only_and_rejects_unsplit_images(tmp_path):
    labels, split, _ = _synthetic()
    result = describe(labels.drop(columns=[NO_FINDING]), None, tmp_path / "a")
    assert set(result.prevalence["split"]) == {"all"}
    assert _prev(result, NO_FINDING, "all")["images"] == 256  # derived when absent
    assert not (tmp_path / "a" / "boxes.png").exists()
    with pytest.raises(ValueError, match="2 labelled image"):
        describe(labels, split.iloc[2:], tmp_path / "b")


def test_real_metadata_matches_published_counts(real_labels, tmp_path):
    table, _ = real_labels
    split = official_split(
        table, read_image_list(META / "train_val_list.txt"), read_image_list(META / "test_list.txt")
    )
    boxes = read_bbox_list(META / "BBox_List_2017.csv")
    start = time.perf_counter()
    result = describe(table, split, tmp_path, boxes=boxes, title="NIH ChestX-ray14")
    seconds = time.perf_counter() - start
    print(f"describe() on {len(table):,} images: {seconds:.2f} s")  # reported, not asserted
    everything = result.prevalence[result.prevalence["split"] == "all"].set_index("finding")
    assert everything["images"].to_dict() == PUBLISHED_COUNTS
    assert int(result.boxes["boxes"].sum()) == 984 and int(result.boxes["images"].sum()) >= 880
    assert "| images | " in result.summary and "112,120" in result.summary
    demo = pd.read_csv(tmp_path / "demographics.csv")  # counts exact on disk, not 1.12e+05
    assert demo.query("split == 'all' and quantity == 'sex'")["value"].sum() == len(table)

"""Patient-disjoint splits on the real metadata and on small hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import META
from cxrkit.data.nih import read_image_list
from cxrkit.data.splits import (
    LeakageError,
    check_leakage,
    load_split,
    official_split,
    random_split,
    save_split,
    split_provenance,
)
from cxrkit.labels import FINDINGS


@pytest.fixture(scope="module")
def official(real_labels):
    table, _ = real_labels
    tv = read_image_list(META / "train_val_list.txt")
    te = read_image_list(META / "test_list.txt")
    return table, official_split(table, tv, te, val_fraction=0.1, seed=0)


def test_official_split_counts_and_no_shared_patient(official):
    table, split = official
    counts = split["split"].value_counts()
    assert counts["test"] == 25_596
    assert counts["train"] + counts["val"] == 86_524
    assert counts["val"] == pytest.approx(8_652, rel=0.01)
    check_leakage(split)  # no patient in two splits
    patients = split.groupby("split")["patient_id"].apply(set)
    assert not (patients["train"] & patients["val"]) and not (patients["val"] & patients["test"])


def test_validation_is_stratified(official):
    table, split = official
    merged = table.merge(split, on=["image_id", "patient_id"])
    tv = merged[merged["split"] != "test"]
    for f in FINDINGS:
        share = tv.loc[tv["split"] == "val", f].sum() / tv[f].sum()
        assert 0.07 < share < 0.13, (f, share)


def test_split_is_deterministic_and_seeded(official):
    table, split = official
    tv = read_image_list(META / "train_val_list.txt")
    te = read_image_list(META / "test_list.txt")
    state = np.random.get_state()
    again = official_split(table, tv, te, val_fraction=0.1, seed=0)
    other = official_split(table, tv, te, val_fraction=0.1, seed=1)
    assert (again["split"] == split["split"]).all()
    assert (other["split"] != split["split"]).any()
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG untouched


def test_random_split_fractions_and_grouping(real_labels):
    table, _ = real_labels
    split = random_split(table, fractions=(0.7, 0.1, 0.2), seed=3)
    share = split["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.01)
    assert share["val"] == pytest.approx(0.1, abs=0.01)
    assert share["test"] == pytest.approx(0.2, abs=0.01)
    check_leakage(split)


def test_leakage_is_detected_and_named():
    bad = pd.DataFrame(
        {
            "image_id": ["a.png", "b.png", "c.png"],
            "patient_id": [7, 7, 8],
            "split": ["train", "test", "test"],
        }
    )
    with pytest.raises(LeakageError, match=r"1 patient\(s\) cross splits: patient 7"):
        check_leakage(bad)


def test_lists_sharing_an_image_are_refused():
    table = pd.DataFrame(
        {"image_id": ["a.png", "b.png"], "patient_id": [1, 2], **{f: [0, 0] for f in FINDINGS}}
    )
    with pytest.raises(ValueError, match="both train_val and test"):
        official_split(table, ["a.png", "b.png"], ["b.png"])
    with pytest.raises(ValueError, match="neither list"):
        official_split(table, ["a.png"], [])
    with pytest.raises(LeakageError):
        official_split(table.assign(patient_id=[1, 1]), ["a.png"], ["b.png"], val_fraction=0)


def test_save_and_load_roundtrip(tmp_path, official):
    _, split = official
    path = save_split(split, tmp_path / "split.csv", protocol="official", seed=0)
    back = load_split(path)
    assert back.equals(split[["image_id", "patient_id", "split"]])
    prov = split_provenance(path)
    assert prov["protocol"] == "official" and prov["counts"]["test"] == 25_596
    text = path.read_text().replace(",val\n", ",validation\n", 1)
    path.write_text(text)
    with pytest.raises(ValueError, match=r"field 'split': 'validation'"):
        load_split(path)

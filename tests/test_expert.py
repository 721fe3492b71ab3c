"""Google's radiologists' labels: the real files (counts, splits, NIH disagreement) and the
reader's errors on bad input."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from cxrkit.data.expert import (
    AIRSPACE,
    ALL,
    FOUR,
    ExpertFormatError,
    find_expert_folders,
    load_expert_labels,
    read_expert_set,
)
from cxrkit.data.nih import read_image_list
from cxrkit.data.phantoms.labels import MEASURED_NOISE
from cxrkit.evaluate.radiologists import nih_agreement
from cxrkit.labels import FINDINGS

from conftest import META, NIH


@pytest.fixture(scope="module")
def real(real_labels):
    labels, _ = real_labels
    expert = load_expert_labels(
        NIH,
        nih=labels,
        label_file=str(META / "Data_Entry_2017.csv"),
        train_val=read_image_list(META / "train_val_list.txt"),
        test=read_image_list(META / "test_list.txt"),
    )
    if expert is None:
        pytest.skip(f"no expert labels under {NIH}")
    return expert, labels


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _names(path):
    return set((META / path).read_text().split())


def test_real_row_counts_and_files_recorded(real):
    expert, _ = real
    four, every = expert.sets[FOUR], expert.sets[ALL]
    assert (four.labels["part"] == "test").sum() == 1962
    assert (four.labels["part"] == "val").sum() == 2414
    assert four.labels["image_id"].nunique() == 4376
    assert four.files["readers"]["rows"] == 13081
    assert four.files["readers"]["repeated_reads_dropped"] == 4  # a reader read twice
    assert len(four.readers) == 13077 and four.readers["image_id"].nunique() == 4376
    assert len(every.labels) == 810 and every.files["readers"]["rows"] == 4050
    assert every.readers.groupby("image_id").size().eq(5).all()
    for s in (four, every):
        assert all(len(f["sha256"]) == 64 for f in s.files.values())
    assert expert.checked_against["official_lists"] == "checked"


def test_real_ids_in_label_file_and_on_the_right_side_of_the_split():
    """Independently of cxrkit (csv module): ids, patients and list membership."""
    entry = {r["Image Index"]: r for r in _rows(META / "Data_Entry_2017.csv")}
    test, train_val = _names("test_list.txt"), _names("train_val_list.txt")
    four = NIH / "expert" / "four_findings"
    for name, side in (("test_labels.csv", test), ("validation_labels.csv", train_val)):
        rows = _rows(four / name)
        ids = [r["Image Index"] for r in rows]
        assert set(ids) <= side and set(ids) <= set(entry)
        assert all(entry[r["Image Index"]]["Patient ID"] == r["Patient ID"] for r in rows)
    every = _rows(NIH / "expert" / "all_findings" / "test_labels.csv")
    four_test = {r["Image Index"] for r in _rows(four / "test_labels.csv")}
    ids = {r["Image ID"] for r in every}
    assert len(ids) == 810 and ids <= test and ids <= four_test
    assert {entry[i]["View Position"] for i in ids} == {"PA"}


def _independent_disagreements():
    """NIH (Data_Entry's Finding Labels) vs radiologists on all 4,376 images, by hand."""
    entry = {
        r["Image Index"]: set(r["Finding Labels"].split("|"))
        for r in _rows(META / "Data_Entry_2017.csv")
    }
    four = NIH / "expert" / "four_findings"
    counts = {}
    for column, nih in (
        ("Pneumothorax", {"Pneumothorax"}),
        ("Nodule or mass", {"Nodule", "Mass"}),
        ("Airspace opacity", set(AIRSPACE)),
    ):
        nih_yes_rad_no = nih_no_rad_yes = 0
        for name in ("test_labels.csv", "validation_labels.csv"):
            for r in _rows(four / name):
                n, e = bool(entry[r["Image Index"]] & nih), r[column] == "YES"
                nih_yes_rad_no += n and not e
                nih_no_rad_yes += e and not n
        counts[column] = (nih_yes_rad_no, nih_no_rad_yes)
    return counts


def test_real_nih_vs_radiologist_disagreement_over_4376_images(real):
    expert, labels = real
    ours = {r["finding"]: r for r in nih_agreement(expert.sets[FOUR], labels)}
    for finding, (fp, fn) in _independent_disagreements().items():
        assert ours[finding]["n"] == 4376
        assert (ours[finding]["fp"], ours[finding]["fn"]) == (fp, fn), finding
    # the "one pneumothorax label in seventeen, one nodule/mass label in eight"
    assert (ours["Pneumothorax"]["fp"], ours["Pneumothorax"]["fn"]) == (129, 129)
    assert ours["Pneumothorax"]["disagreements"] / 4376 == pytest.approx(1 / 17, abs=0.003)
    assert (ours["Nodule or mass"]["fp"], ours["Nodule or mass"]["fn"]) == (199, 349)
    assert ours["Nodule or mass"]["disagreements"] / 4376 == pytest.approx(1 / 8, abs=0.002)
    assert "Fracture" not in ours  # NIH has no such finding


def test_airspace_union_is_the_best_of_the_unions_tried(real):
    """The documented choice: kappa 0.32 for the five-finding union, above the others."""
    expert, labels = real
    four = expert.sets[FOUR].labels
    nih = labels.set_index("image_id").loc[four["image_id"]]
    y = four["Airspace opacity"].to_numpy()

    def kappa(findings):
        return cohen_kappa_score(y, nih[list(findings)].to_numpy().max(1))

    ours = kappa(AIRSPACE)
    assert ours == pytest.approx(0.316, abs=0.001)
    for other in (
        ["Infiltration"],
        ["Consolidation", "Infiltration", "Pneumonia"],
        ["Consolidation", "Infiltration", "Pneumonia", "Edema"],
        ["Consolidation", "Infiltration", "Pneumonia", "Atelectasis"],
    ):
        assert kappa(other) < ours, other


def test_measured_noise_constants_match_the_real_files(real):
    expert, labels = real
    every = expert.sets[ALL].labels
    nih = labels.set_index("image_id").loc[every["image_id"]]
    for f in FINDINGS:
        rad = every[f.replace("_", " ")].to_numpy() == 1
        n = nih[f].to_numpy() == 1
        miss, fa, positives = MEASURED_NOISE[f]
        assert positives == rad.sum(), f
        assert (~n & rad).sum() / rad.sum() == pytest.approx(miss, abs=5e-4), f
        assert (n & ~rad).sum() / (~rad).sum() == pytest.approx(fa, abs=5e-4), f


# -- the reader's errors --------------------------------------------------------------------
NIH_TABLE = pd.DataFrame(
    {
        "image_id": ["00000001_000.png", "00000002_000.png", "00000003_000.png"],
        "patient_id": [1, 2, 3],
        "view": ["PA", "AP", "PA"],
    }
)
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View "
    "Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Fracture,"
    "Pneumothorax,Airspace opacity,Nodule or mass,Set Id\n"
)


def _row(image, patient, values="NO,YES,NO,NO", part="test"):
    return f"{image},No Finding,0,{patient},50,M,PA,2500,2048,0.168,0.168,{values},{part}\n"


def _four(folder, test_rows, val_rows, readers=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_labels.csv").write_text(HEADER + "".join(test_rows))
    (folder / "validation_labels.csv").write_text(HEADER + "".join(val_rows))
    readers = readers if readers is not None else ["1,00000001_000.png,11,NO,HEDGE,NO,NO,test\n"]
    (folder / "individual_readers.csv").write_text(
        "Patient ID,Image ID,Reader ID,Fracture,Pneumothorax,Airspace opacity,Nodule/mass,"
        "Set ID\n" + "".join(readers)
    )
    return folder


def _read(folder):
    return read_expert_set(
        folder,
        FOUR,
        nih=NIH_TABLE,
        label_file="Data_Entry_2017.csv",
        train_val=["00000002_000.png", "00000003_000.png"],
        test=["00000001_000.png"],
    )


def test_reader_reads_a_good_set(tmp_path):
    s = _read(
        _four(
            tmp_path / "four_findings_expert_labels",
            [_row("00000001_000.png", 1)],
            [_row("00000002_000.png", 2, "NO,NO,YES,NO", part="val")],
        )
    )
    assert s.labels["Pneumothorax"].tolist() == [1.0, 0.0]
    assert np.isnan(s.readers["Pneumothorax"].iloc[0])  # HEDGE: no call
    assert find_expert_folders(tmp_path) == {FOUR: tmp_path / "four_findings_expert_labels"}


@pytest.mark.parametrize(
    "case, match",
    [
        ("maybe", r"test_labels.csv, line 2, field 'Pneumothorax': 'MAYBE' is not one of YES, NO"),
        (
            "unknown_image",
            r"line 2, field 'Image Index': image id '00000009_000.png' is not in the "
            r"label file Data_Entry_2017.csv",
        ),
        (
            "wrong_side",
            r"validation_labels.csv, line 2, field 'Image Index': image id "
            r"'00000001_000.png' is not in train_val_list.txt",
        ),
        ("patient", r"line 2, field 'Patient ID': patient 7 of '00000001_000.png' differs"),
        ("hedge_fracture", r"individual_readers.csv, line 2, field 'Fracture': 'HEDGE' is not one"),
        (
            "reader_image",
            r"individual_readers.csv, line 2, field 'Image ID': image id "
            r"'00000003_000.png' has reader labels but is not in the set",
        ),
        ("set_id", r"test_labels.csv, line 2, field 'Set Id': 'val' should be 'test'"),
        ("missing_column", r"test_labels.csv: missing column\(s\) \['Nodule or mass'\]"),
    ],
)
def test_reader_errors_name_file_line_and_field(tmp_path, case, match):
    test = [_row("00000001_000.png", 1)]
    val = [_row("00000002_000.png", 2, part="val")]
    readers = None
    if case == "maybe":
        test = [_row("00000001_000.png", 1, "NO,MAYBE,NO,NO")]
    elif case == "unknown_image":
        test = [_row("00000009_000.png", 9)]
    elif case == "wrong_side":
        val = [_row("00000001_000.png", 1, part="val")]
    elif case == "patient":
        test = [_row("00000001_000.png", 7)]
    elif case == "hedge_fracture":
        readers = ["1,00000001_000.png,11,HEDGE,NO,NO,NO,test\n"]
    elif case == "reader_image":
        readers = ["3,00000003_000.png,11,NO,NO,NO,NO,val\n"]
    elif case == "set_id":
        test = [_row("00000001_000.png", 1, part="val")]
    folder = _four(tmp_path / "f", test, val, readers)
    if case == "missing_column":
        text = (folder / "test_labels.csv").read_text().replace(",Nodule or mass", ",Nodule")
        (folder / "test_labels.csv").write_text(text)
    with pytest.raises(ExpertFormatError, match=match):
        _read(folder)

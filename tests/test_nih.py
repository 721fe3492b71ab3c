"""The NIH metadata readers, on the real release files and on broken copies of them."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import META, NIH, _need
from cxrkit.data.nih import (
    META_COLUMNS,
    NIHFormatError,
    read_bbox_list,
    read_data_entry,
    read_image_list,
    scale_boxes,
)
from cxrkit.labels import FINDINGS, NO_FINDING, PUBLISHED_COUNTS

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,M,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia,0,3,414,F,PA,2582,2905,0.143,0.143",
]


def write_csv(tmp_path, header=HEADER, rows=ROWS, name="Data_Entry_2017.csv", eol="\r\n"):
    p = tmp_path / name
    p.write_bytes((eol.join([header, *rows]) + eol).encode())
    return p


def test_real_2017_form(real_labels):
    table, report = real_labels
    assert report.form == "2017"
    assert len(table) == 112_120 and table["patient_id"].nunique() == 30_805
    assert list(table.columns) == [*META_COLUMNS, *FINDINGS, NO_FINDING]
    for name, count in PUBLISHED_COUNTS.items():
        assert int(table[name].sum()) == count, name
    assert len(report.impossible_ages) == 16
    assert table["age"].max() <= 120 and table["age"].isna().sum() == 16
    assert set(table["view"]) == {"PA", "AP"} and set(table["sex"]) == {"M", "F"}
    row = table.iloc[1]
    assert row["image_id"] == "00000001_001.png" and row["Emphysema"] == 1
    assert row["orig_width"] == 2894 and row["spacing_x"] == pytest.approx(0.143)


@pytest.mark.parametrize(
    "name,form",
    [("Data_Entry_2017_early_form.csv.gz", "early"), ("Data_Entry_2017_v2020.csv.gz", "v2020")],
)
def test_other_published_forms(real_labels, name, form):
    table, report = read_data_entry(_need(NIH / "meta_variants" / name))
    ref, _ = real_labels
    assert report.form == form and len(table) == 112_120
    assert set(table["image_id"]) == set(ref["image_id"])
    table = table.set_index("image_id").loc[ref["image_id"]].reset_index()
    assert (table["patient_id"] == ref["patient_id"]).all()
    differ = (table[list(FINDINGS)].to_numpy() != ref[list(FINDINGS)].to_numpy()).any(1)
    if form == "early":
        assert differ.sum() == 181  # the early form lacks findings added later
        test_list = set(read_image_list(META / "test_list.txt"))
        assert set(table.loc[differ, "image_id"]) <= test_list
        # 011M is eleven months, not eleven years
        age = table.set_index("image_id").loc["00013378_000.png", "age"]
        assert age == pytest.approx(11 / 12)
    else:
        assert differ.sum() == 0
        assert report.impossible_ages == [] and table["age"].max() <= 95


def test_crlf_and_trailing_comma_are_accepted(tmp_path):
    table, report = read_data_entry(write_csv(tmp_path))
    assert report.form == "2017" and len(table) == 4
    assert table.loc[2, NO_FINDING] == 1 and table.loc[2, list(FINDINGS)].sum() == 0
    assert np.isnan(table.loc[3, "age"]) and report.impossible_ages == ["00000003_000.png"]
    assert table.loc[1, ["Cardiomegaly", "Emphysema"]].tolist() == [1, 1]


def test_missing_column_names_file_and_column(tmp_path):
    p = write_csv(tmp_path, header=HEADER.replace("Patient Gender", "Sex"))
    with pytest.raises(NIHFormatError, match=r"Data_Entry_2017\.csv.*Patient Gender"):
        read_data_entry(p)


def test_unknown_finding_names_line_and_field(tmp_path):
    rows = [*ROWS[:2], ROWS[2].replace("No Finding", "Pneumonitis"), ROWS[3]]
    with pytest.raises(NIHFormatError, match=r"line 4, field 'Finding Labels'.*Pneumonitis"):
        read_data_entry(write_csv(tmp_path, rows=rows))


def test_duplicate_image_ids(tmp_path):
    with pytest.raises(
        NIHFormatError, match=r"duplicate image id '00000001_000.png' on lines \[2, 6\]"
    ):
        read_data_entry(write_csv(tmp_path, rows=[*ROWS, ROWS[0]]))


@pytest.mark.parametrize(
    "bad,field,line",
    [
        (ROWS[1].replace(",M,PA,", ",X,PA,"), "Patient Gender", 3),
        (ROWS[1].replace(",M,PA,", ",M,LL,"), "View Position", 3),
        (ROWS[1].replace(",58,M", ",fifty,M"), "Patient Age", 3),
        (ROWS[1].replace(",1,1,58", ",one,1,58"), "Follow-up #", 3),
    ],
)
def test_malformed_fields(tmp_path, bad, field, line):
    rows = [ROWS[0], bad, *ROWS[2:]]
    with pytest.raises(NIHFormatError, match=rf"line {line}, field '{field}'"):
        read_data_entry(write_csv(tmp_path, rows=rows))


def test_no_finding_mixed_with_finding(tmp_path):
    rows = [ROWS[0], "00000001_001.png,No Finding|Mass,1,1,58,M,PA,1,1,0.1,0.1"]
    with pytest.raises(NIHFormatError, match="line 3.*No Finding"):
        read_data_entry(write_csv(tmp_path, rows=rows))


def test_not_a_csv(tmp_path):
    p = tmp_path / "Data_Entry_2017.csv"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00 binary junk")
    with pytest.raises(NIHFormatError, match="Data_Entry_2017.csv"):
        read_data_entry(p)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_data_entry(tmp_path / "nope.csv")


def test_real_boxes():
    boxes = read_bbox_list(_need(META / "BBox_List_2017.csv"))
    assert len(boxes) == 984 and boxes["image_id"].nunique() == 880
    assert "Infiltrate" not in set(boxes["finding"])
    assert (boxes["finding"] == "Infiltration").sum() == 123
    assert set(boxes["finding"]) <= set(FINDINGS)
    test_list = set(read_image_list(META / "test_list.txt"))
    assert set(boxes["image_id"]) <= test_list
    scaled = scale_boxes(boxes, 256)
    assert np.allclose(
        scaled[["x", "y", "w", "h"]].to_numpy() * 4, boxes[["x", "y", "w", "h"]].to_numpy()
    )


def test_bad_boxes(tmp_path):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "a.png,Infiltrate,1,2,3,4\nb.png,Covid,1,2,3,4\n"
    )
    with pytest.raises(NIHFormatError, match=r"line 3, field 'Finding Label'.*Covid"):
        read_bbox_list(p)
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,x,4\n")
    with pytest.raises(NIHFormatError, match=r"line 2, field 'w'"):
        read_bbox_list(p)
    p.write_text("name,label,x,y,w,h\na.png,Mass,1,2,3,4\n")
    with pytest.raises(NIHFormatError, match="header"):
        read_bbox_list(p)


def test_official_lists(real_labels):
    tv = read_image_list(META / "train_val_list.txt")
    te = read_image_list(META / "test_list.txt")
    assert len(tv) == 86_524 and len(te) == 25_596
    table, _ = real_labels
    assert set(table["image_id"]) - set(tv) == set(te)


def test_list_with_duplicate(tmp_path):
    p = tmp_path / "test_list.txt"
    p.write_text("a.png\nb.png\na.png\n")
    with pytest.raises(NIHFormatError, match=r"'a.png' listed twice \(lines 1, 3\)"):
        read_image_list(p)


# ---------------------------------------------------------------- hostile input

HUGE = "A" * 5_000_000  # a 5 MB field (the report found a 50 MB one quoted whole)


@pytest.mark.parametrize(
    "row,field",
    [
        (ROWS[1].replace("Cardiomegaly|Emphysema", "Mass|" + HUGE), "Finding Labels"),
        (ROWS[1].replace(",58,M", f",{HUGE},M"), "Patient Age"),
        (ROWS[1].replace(",M,PA,", f",{HUGE},PA,"), "Patient Gender"),
        (ROWS[1].replace(",1,1,58", f",1,{HUGE},58"), "Patient ID"),
    ],
)
def test_errors_cut_a_huge_quoted_field(tmp_path, row, field):
    with pytest.raises(NIHFormatError) as info:
        read_data_entry(write_csv(tmp_path, rows=[ROWS[0], row]))
    msg = str(info.value)
    assert f"line 3, field '{field}'" in msg and len(msg) < 1000, msg[:300]
    assert "5,000,0" in msg  # says how long the cut value was


def test_box_and_list_errors_cut_huge_values(tmp_path):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text(f"Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,{HUGE},1,2,3,4\n")
    with pytest.raises(NIHFormatError) as info:
        read_bbox_list(p)
    assert len(str(info.value)) < 1000 and "line 2" in str(info.value)
    p.write_text(f"Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,{HUGE},2,3,4\n")
    with pytest.raises(NIHFormatError) as info:
        read_bbox_list(p)
    assert len(str(info.value)) < 1000 and "field 'x'" in str(info.value)
    lst = tmp_path / "test_list.txt"
    lst.write_text(f"{HUGE}\nb.png\n{HUGE}\n")
    with pytest.raises(NIHFormatError) as info:
        read_image_list(lst)
    assert len(str(info.value)) < 1000 and "lines 1, 3" in str(info.value)


def test_quote_helper():
    from cxrkit.messages import QUOTE_LIMIT, quote, shorten

    assert quote("Mass") == "'Mass'"
    assert quote(12) == "12"
    cut = quote("x" * 10_000)
    assert len(cut) < QUOTE_LIMIT + 40 and "10,000 characters" in cut
    long = "start " + "y" * 100_000 + " end"
    s = shorten(long, 500)
    assert len(s) < 600 and s.startswith("start ") and s.endswith(" end")


@pytest.mark.parametrize("content", ["", "\r\n", "   \n\n"])
def test_empty_files_name_the_file(tmp_path, content):
    label = tmp_path / "Data_Entry_2017.csv"
    label.write_text(content)
    with pytest.raises(NIHFormatError, match=f"{label}.*empty"):
        read_data_entry(label)
    box = tmp_path / "BBox_List_2017.csv"
    box.write_text(content)
    with pytest.raises(NIHFormatError, match=f"{box}.*empty"):
        read_bbox_list(box)
    lst = tmp_path / "test_list.txt"
    lst.write_text(content)
    with pytest.raises(NIHFormatError, match=f"{lst}.*no image names"):
        read_image_list(lst)


def test_header_only_files_name_the_file(tmp_path):
    with pytest.raises(NIHFormatError, match="Data_Entry_2017.csv: no data rows"):
        read_data_entry(write_csv(tmp_path, rows=[]))
    box = tmp_path / "BBox_List_2017.csv"  # a header-only box file: a release without boxes
    box.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    boxes = read_bbox_list(box)
    assert boxes.empty and list(boxes.columns) == ["image_id", "finding", "x", "y", "w", "h"]


def test_box_checks_count_outside_and_unlabelled_boxes(tmp_path):
    from cxrkit.data.nih import check_boxes

    labels, _ = read_data_entry(write_csv(tmp_path))
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Cardiomegaly,10,20,300,400\n"  # fine
        "00000001_000.png,Cardiomegaly,-5,20,300,400\n"  # negative x
        "00000001_001.png,Emphysema,900,20,200,100\n"  # x + w > 1024
        "00000001_001.png,Emphysema,10,1000,20,30\n"  # y + h > 1024
        "00000002_000.png,Mass,10,20,30,40\n"  # 'No Finding' image
        "00000003_000.png,Nodule,10,20,30,40\n"
    )  # labelled Hernia
    boxes = read_bbox_list(p)
    with pytest.warns(UserWarning) as record:
        report = check_boxes(boxes, labels, p)
    text = "\n".join(str(w.message) for w in record)
    assert report.n_boxes == 6
    assert report.outside_lines == [3, 4, 5]
    assert report.unlabelled_lines == [6, 7]
    assert "line 3" in text and "line 6" in text and "Nodule" in text and "1024" in text
    assert report.to_dict()["n_outside"] == 3 and report.to_dict()["n_unlabelled"] == 2
    assert "3 box(es) reach outside" in report.summary()
    assert "2 box(es) name a finding" in report.summary()


def test_real_boxes_pass_the_checks(real_labels):
    from cxrkit.data.nih import check_boxes

    import warnings

    boxes = read_bbox_list(_need(META / "BBox_List_2017.csv"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_boxes(boxes, real_labels[0], META / "BBox_List_2017.csv")
    assert report.outside_lines == [] and report.unlabelled_lines == []

import pytest

from cxrkit.labels import (
    FINDINGS,
    NO_FINDING,
    UnknownFindingError,
    canonical_finding,
    parse_finding_labels,
    resolve_findings,
)


def test_fourteen_findings_in_canonical_order():
    assert len(FINDINGS) == 14 and len(set(FINDINGS)) == 14
    assert FINDINGS[0] == "Atelectasis" and FINDINGS[-1] == "Hernia"


def test_aliases_and_case():
    assert canonical_finding("Infiltrate") == "Infiltration"
    assert canonical_finding("pleural thickening") == "Pleural_Thickening"
    assert canonical_finding("no finding") == NO_FINDING


def test_parse_cells():
    assert parse_finding_labels("Emphysema|Cardiomegaly") == ["Cardiomegaly", "Emphysema"]
    assert parse_finding_labels("No Finding") == []
    with pytest.raises(UnknownFindingError, match="Pneumonitis"):
        parse_finding_labels("Pneumonitis")
    with pytest.raises(UnknownFindingError, match="together"):
        parse_finding_labels("No Finding|Mass")


def test_resolve_subsets_keep_canonical_order():
    assert resolve_findings(None) == FINDINGS
    assert resolve_findings("all") == FINDINGS
    assert resolve_findings("Pneumonia") == ("Pneumonia",)
    assert resolve_findings(["Hernia", "atelectasis"]) == ("Atelectasis", "Hernia")
    with pytest.raises(UnknownFindingError, match="No Finding"):
        resolve_findings(["No Finding"])
    with pytest.raises(UnknownFindingError, match="Covid"):
        resolve_findings("Covid")


def test_boxed_findings_are_those_in_nih_box_file():
    from conftest import META, _need
    from cxrkit.data.nih import read_bbox_list
    from cxrkit.labels import BOXED_FINDINGS

    boxes = read_bbox_list(_need(META / "BBox_List_2017.csv"))
    assert set(boxes["finding"]) == set(BOXED_FINDINGS)

"""The 14 ChestX-ray14 findings: names, canonical order and label parsing.

This module is the single source of truth for finding names. Every table, tensor and
report in cxrkit orders findings as :data:`FINDINGS` does (the order of Wang et al. 2017
and CheXNet), spelled as NIH spells them in ``Data_Entry_2017.csv``.

"No Finding" is not a finding: NIH writes it when none of the 14 was mined from the
report. cxrkit keeps it as a separate 0/1 column (``NO_FINDING``) so that it can be
counted and plotted, but never predicts it: an image whose 14 labels are all 0 *is* a
"No Finding" image, so a 15th output would be redundant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cxrkit.messages import quote

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"

#: Other spellings seen in NIH files and in the literature -> canonical name.
#: ``BBox_List_2017.csv`` writes "Infiltrate" for Infiltration.
ALIASES: dict[str, str] = {
    "Infiltrate": "Infiltration",
    "Pleural Thickening": "Pleural_Thickening",
    "Pleural-Thickening": "Pleural_Thickening",
    "No_Finding": NO_FINDING,
    "NoFinding": NO_FINDING,
}

#: Findings that NIH drew bounding boxes for: 8 of the 14, which are the first 8 in
#: the canonical order (Atelectasis ... Pneumothorax).
BOXED_FINDINGS: tuple[str, ...] = FINDINGS[:8]

#: Per-finding image counts in the full 2017 release (112,120 images), as published.
PUBLISHED_COUNTS: dict[str, int] = {
    "Atelectasis": 11559,
    "Cardiomegaly": 2776,
    "Effusion": 13317,
    "Infiltration": 19894,
    "Mass": 5782,
    "Nodule": 6331,
    "Pneumonia": 1431,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Edema": 2303,
    "Emphysema": 2516,
    "Fibrosis": 1686,
    "Pleural_Thickening": 3385,
    "Hernia": 227,
    NO_FINDING: 60361,
}


class UnknownFindingError(ValueError):
    """A finding name that is neither one of the 14, "No Finding", nor a known alias."""


def canonical_finding(name: str, *, allow_no_finding: bool = True) -> str:
    """Return the canonical spelling of ``name`` (case-insensitive; aliases resolved).

    Raises :class:`UnknownFindingError` naming the value and the accepted names.
    """
    key = name.strip()
    key = ALIASES.get(key, key)
    lowered = {f.lower(): f for f in (*FINDINGS, NO_FINDING)}
    lowered.update({a.lower(): c for a, c in ALIASES.items()})
    found = lowered.get(key.lower())
    if found == NO_FINDING and not allow_no_finding:
        raise UnknownFindingError(
            f"{name!r} is a column, not a target: NIH writes it when none of the 14 findings "
            "is present, so it is what a model says when all 14 probabilities are low. "
            f"Choose targets from: {', '.join(FINDINGS)} (or 'all')"
        )
    if found is None:
        accepted = ", ".join(FINDINGS) + (f", {NO_FINDING}" if allow_no_finding else "")
        raise UnknownFindingError(f"unknown finding {quote(name)}; expected one of: {accepted}")
    return found


def parse_finding_labels(cell: str) -> list[str]:
    """Split a ``Finding Labels`` cell such as ``"Cardiomegaly|Emphysema"``.

    Returns canonical names; "No Finding" alone gives ``[]``. Unknown names raise
    :class:`UnknownFindingError`; "No Finding" mixed with a finding raises too, since
    that contradicts NIH's own convention.
    """
    parts = [p.strip() for p in str(cell).split("|") if p.strip()]
    if not parts:
        raise UnknownFindingError("empty Finding Labels cell (NIH writes 'No Finding')")
    names = [canonical_finding(p) for p in parts]
    if NO_FINDING in names:
        if len(names) > 1:
            raise UnknownFindingError(f"'No Finding' together with findings in {quote(cell)}")
        return []
    return sorted(set(names), key=FINDINGS.index)


def resolve_findings(selection: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn a user's choice of targets into canonical findings, in canonical order.

    ``None``, ``"all"`` or ``[]`` -> all 14. A single name (``"Pneumonia"``) -> a binary
    task. A comma-separated string or a list -> that subset. Order follows
    :data:`FINDINGS` whatever order the user wrote, so outputs line up across runs.
    """
    if selection is None:
        return FINDINGS
    if isinstance(selection, str):
        if selection.strip().lower() in ("", "all"):
            return FINDINGS
        selection = [s for s in selection.split(",") if s.strip()]
    if len(selection) == 0:
        return FINDINGS
    chosen = {canonical_finding(s, allow_no_finding=False) for s in selection}
    return tuple(f for f in FINDINGS if f in chosen)


def finding_indices(findings: Iterable[str]) -> list[int]:
    """Positions of ``findings`` within :data:`FINDINGS`."""
    return [FINDINGS.index(canonical_finding(f, allow_no_finding=False)) for f in findings]

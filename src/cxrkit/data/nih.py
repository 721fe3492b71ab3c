"""Read and validate the NIH ChestX-ray14 release exactly as NIH ships it.

Dataset card
------------
NIH ChestX-ray14 (Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and
Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax
Diseases", CVPR 2017): 112,120 frontal chest radiographs (PA or AP) of 30,805 patients,
released as 1024x1024 8-bit PNGs (a few are RGBA). Download:
https://nihcc.app.box.com/v/ChestXray-NIHCC (please cite the paper and acknowledge the
NIH Clinical Center as the data provider).

Files this module reads:

``Data_Entry_2017.csv``
    one row per image. ``Finding Labels`` holds findings text-mined from the report,
    ``|``-separated, or "No Finding". Three published forms exist and all are read:

    * ``2017``: NIH's file, CRLF line ends, a header with a trailing comma (so a trailing
      empty column), ``OriginalImage[Width,Height]`` split over two columns, ages as
      integers in years (16 impossible ones, up to 414);
    * ``early``: the earliest form, ages like ``058Y`` / ``011M`` / ``003D``, zero-padded
      ids; its labels differ on 181 test images (it lacks findings added later);
    * ``v2020``: ``Data_Entry_2017_v2020.csv``, no trailing column, corrected ages.

    ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing`` describe the scan
    *before* NIH shrank it to 1024x1024, not the PNG.
``BBox_List_2017.csv``
    984 boxes on 880 images, ``x, y, w, h`` in the 1024x1024 pixel space of the released
    PNGs whatever an image's real size; the label is spelled ``Infiltrate``. All 880 images
    are in the official test list.
``train_val_list.txt`` / ``test_list.txt``
    the official patient-disjoint split: 86,524 and 25,596 image names.

Errors name the file, the line (1-based, as an editor shows it; the header is line 1)
and the field. Nothing is filtered silently: every view, follow-up and patient is kept.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import file_sha256
from cxrkit.labels import FINDINGS, NO_FINDING, UnknownFindingError, canonical_finding
from cxrkit.messages import quote

#: Upper bound for a plausible age in years; larger values become missing (NaN).
MAX_AGE_YEARS = 120.0
#: Side of the released PNGs, the pixel space of NIH's boxes.
NIH_IMAGE_SIZE = 1024

_REQUIRED = {
    "Image Index": "image_id",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}
# pandas splits "OriginalImage[Width,Height]" at the comma into two header cells.
_OPTIONAL = {
    "OriginalImage[Width": "orig_width",
    "Height]": "orig_height",
    "OriginalImagePixelSpacing[x": "spacing_x",
    "y]": "spacing_y",
}
#: Columns of the table :func:`read_data_entry` returns, before the finding columns.
META_COLUMNS = (
    "image_id",
    "patient_id",
    "follow_up",
    "age",
    "sex",
    "view",
    "orig_width",
    "orig_height",
    "spacing_x",
    "spacing_y",
)
BOX_COLUMNS = ("image_id", "finding", "x", "y", "w", "h")


class NIHFormatError(ValueError):
    """A release file that does not have the shape NIH ships (names file, line, field)."""


@dataclass
class LabelFileReport:
    """What :func:`read_data_entry` found; kept in manifests and printed by the CLI."""

    path: str
    form: str
    sha256: str
    n_images: int
    n_patients: int
    impossible_ages: list[str] = field(default_factory=list)
    finding_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"{self.path}: NIH '{self.form}' form, {self.n_images:,} images of "
            f"{self.n_patients:,} patients",
        ]
        if self.impossible_ages:
            shown = ", ".join(self.impossible_ages[:5])
            more = "" if len(self.impossible_ages) <= 5 else ", ..."
            lines.append(
                f"  {len(self.impossible_ages)} impossible ages (> {MAX_AGE_YEARS:g} years) "
                f"set to missing: {shown}{more}"
            )
        return "\n".join(lines)


def _line(row_index: int | np.integer) -> int:
    """1-based line number of a data row in a file with one header line."""
    return int(row_index) + 2


def location(path: Path, row: int | None = None, field_name: str | None = None) -> str:
    """``"FILE, line N, field 'F'"`` for an error about data row ``row`` (0-based) of a CSV
    with one header line: how every reader of NIH-style tables names where input is bad."""
    where = str(path)
    if row is not None:
        where += f", line {_line(row)}"
    if field_name is not None:
        where += f", field {field_name!r}"
    return where


def _fail(path: Path, msg: str, row: int | None = None, field_name: str | None = None):
    raise NIHFormatError(f"{location(path, row, field_name)}: {msg}")


def _short(error: Exception) -> str:
    """An exception's text for a message, its quoted input already cut (pandas quotes lines)."""
    from cxrkit.messages import shorten

    return shorten(" ".join(str(error).split()), 300)


def _read_csv(path: Path, what: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` whose failures name the file: empty, unreadable or not a CSV."""
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise NIHFormatError(f"{path}: the {what} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:
        raise NIHFormatError(f"{path}: not a readable CSV ({_short(e)})") from None


def _parse_ages(raw: pd.Series, path: Path) -> tuple[np.ndarray, str]:
    """Ages in years as float. Handles ``58`` and the early form's ``058Y``/``011M``/``003D``."""
    text = raw.astype(str).str.strip()
    parts = text.str.extract(r"^(\d+(?:\.\d+)?)([YMD]?)$")
    bad = parts[0].isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        _fail(
            path,
            f"age {quote(text.iloc[i])} is not a number of years (or 058Y/011M/003D)",
            i,
            "Patient Age",
        )
    value = parts[0].astype(float).to_numpy()
    unit = parts[1].to_numpy()
    value = np.where(unit == "M", value / 12.0, np.where(unit == "D", value / 365.25, value))
    form = "early" if (unit != "").any() else ""
    return value, form


def _read_columns(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The label file's rows as text, its columns renamed to ours; refuses a missing
    column, a value in the trailing empty column (2017 form) and a file without rows.
    Also returns the names of the trailing columns (the 2017 form has one)."""
    raw = _read_csv(path, "label file", dtype=str, keep_default_na=False, skipinitialspace=True)
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        found = ", ".join(quote(c) for c in raw.columns[:20])
        raise NIHFormatError(
            f"{path}: missing column(s) {missing}; found [{found}"
            f"{', ...' if len(raw.columns) > 20 else ''}]. "
            "Expected NIH's Data_Entry_2017.csv header: " + ", ".join(_REQUIRED)
        )
    trailing = [c for c in raw.columns if c.startswith("Unnamed:")]
    for c in trailing:
        nonempty = raw[c].str.strip() != ""
        if nonempty.any():
            i = int(np.flatnonzero(nonempty.to_numpy())[0])
            _fail(path, f"unexpected value {quote(raw[c].iloc[i])} in the trailing empty column", i)
    df = raw.rename(columns={**_REQUIRED, **_OPTIONAL})
    if len(df) == 0:
        raise NIHFormatError(f"{path}: no data rows")
    return df, trailing


def _identifiers(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``image_id`` (non-empty, unique), ``patient_id`` and ``follow_up`` (integers)."""
    df["image_id"] = df["image_id"].str.strip()
    empty = df["image_id"] == ""
    if empty.any():
        _fail(path, "empty image name", int(np.flatnonzero(empty.to_numpy())[0]), "Image Index")
    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        first = df.loc[dup, "image_id"].iloc[0]
        rows = np.flatnonzero((df["image_id"] == first).to_numpy())
        raise NIHFormatError(
            f"{path}: duplicate image id {quote(first)} on lines {[_line(r) for r in rows]} "
            f"({int(dup.sum())} rows share an id with another row)"
        )
    out = pd.DataFrame({"image_id": df["image_id"].to_numpy()})
    for col, src in (("patient_id", "Patient ID"), ("follow_up", "Follow-up #")):
        num = pd.to_numeric(df[_REQUIRED[src]], errors="coerce")
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            _fail(path, f"{quote(df[_REQUIRED[src]].iloc[i])} is not an integer", i, src)
        out[col] = num.astype(np.int64).to_numpy()

    return out


def _finding_matrix(df: pd.DataFrame, path: Path) -> np.ndarray:
    """The ``Finding Labels`` as a uint8 0/1 matrix (rows x :data:`FINDINGS`): vectorised
    one-hot, then every distinct token name-checked (aliases merged); refuses an unknown
    finding, an empty cell and "No Finding" together with findings."""
    labels = df["finding_labels"].str.strip()
    dummies = labels.str.get_dummies(sep="|")
    rename = {}
    for token in dummies.columns:
        try:
            rename[token] = canonical_finding(token)
        except UnknownFindingError as e:
            i = int(np.flatnonzero(dummies[token].to_numpy())[0])
            _fail(path, str(e), i, "Finding Labels")
    dummies = dummies.T.groupby(pd.Series(rename)).max().T  # merge aliases
    if (labels == "").any():
        i = int(np.flatnonzero((labels == "").to_numpy())[0])
        _fail(path, "empty finding labels (NIH writes 'No Finding')", i, "Finding Labels")
    no_finding = dummies[NO_FINDING] if NO_FINDING in dummies else pd.Series(0, index=df.index)
    positives = np.zeros((len(df), len(FINDINGS)), dtype=np.uint8)
    for j, f in enumerate(FINDINGS):
        if f in dummies:
            positives[:, j] = dummies[f].to_numpy()
    both = (no_finding.to_numpy() == 1) & (positives.sum(1) > 0)
    if both.any():
        i = int(np.flatnonzero(both)[0])
        _fail(
            path,
            f"'No Finding' together with findings in {quote(labels.iloc[i])}",
            i,
            "Finding Labels",
        )
    return positives


def read_data_entry(path: str | Path) -> tuple[pd.DataFrame, LabelFileReport]:
    """Read any published form of ``Data_Entry_2017.csv`` (optionally ``.gz``).

    Returns ``(table, report)``. ``table`` has one row per image, in file order, with
    :data:`META_COLUMNS` (``age`` in years, NaN where missing or > 120; ``sex`` "M"/"F";
    ``view`` "PA"/"AP"), then one uint8 0/1 column per finding in :data:`FINDINGS` order,
    then a ``No Finding`` column. ``report.form`` says which form was read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {path}")
    df, trailing = _read_columns(path)
    out = _identifiers(df, path)
    ages, age_form = _parse_ages(df["age"], path)
    impossible = ages > MAX_AGE_YEARS
    out["age"] = np.where(impossible, np.nan, ages)
    for col, src, allowed in (
        ("sex", "Patient Gender", ("M", "F")),
        ("view", "View Position", ("PA", "AP")),
    ):
        values = df[_REQUIRED[src]].str.strip().str.upper()
        bad = ~values.isin(allowed)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            _fail(
                path, f"{quote(df[_REQUIRED[src]].iloc[i])} is not one of {list(allowed)}", i, src
            )
        out[col] = values.to_numpy()
    for col in ("orig_width", "orig_height", "spacing_x", "spacing_y"):
        out[col] = pd.to_numeric(df[col], errors="coerce").to_numpy() if col in df else np.nan

    positives = _finding_matrix(df, path)
    for j, f in enumerate(FINDINGS):
        out[f] = positives[:, j]
    out[NO_FINDING] = (positives.sum(1) == 0).astype(np.uint8)

    form = age_form or ("2017" if trailing else "v2020")
    report = LabelFileReport(
        path=str(path),
        form=form,
        sha256=file_sha256(path),
        n_images=len(out),
        n_patients=int(out["patient_id"].nunique()),
        impossible_ages=out.loc[impossible, "image_id"].tolist(),
        finding_counts={f: int(out[f].sum()) for f in (*FINDINGS, NO_FINDING)},
    )
    return out, report


def read_bbox_list(path: str | Path) -> pd.DataFrame:
    """Read ``BBox_List_2017.csv``: columns :data:`BOX_COLUMNS`, canonical finding names.

    Coordinates stay in NIH's 1024x1024 space (float pixels, ``x, y`` the top-left
    corner); use :func:`scale_boxes` to move them to another image size.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"box file not found: {path}")
    header = _read_csv(path, "box file", nrows=0).columns
    if len(header) < 3 or header[0].strip() != "Image Index" or not header[1].startswith("Finding"):
        shown = ", ".join(quote(c) for c in header[:8])
        raise NIHFormatError(
            f"{path}: header [{shown}{', ...' if len(header) > 8 else ''}] is not NIH's "
            "'Image Index,Finding Label,Bbox [x,y,w,h],,,'"
        )
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, header=None, skiprows=1)
    except pd.errors.EmptyDataError:  # only the header: a release without boxes
        raw = pd.DataFrame({c: pd.Series([], dtype=str) for c in range(6)})
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:
        raise NIHFormatError(f"{path}: not a readable CSV ({_short(e)})") from None
    if raw.shape[1] < 6:
        raise NIHFormatError(
            f"{path}: expected 6 fields per row (name, label, x, y, w, h), found {raw.shape[1]}"
        )
    raw = raw.iloc[:, :6]
    raw.columns = list(BOX_COLUMNS)
    boxes = pd.DataFrame({"image_id": raw["image_id"].str.strip()})
    findings = []
    for i, name in enumerate(raw["finding"]):
        try:
            findings.append(canonical_finding(name, allow_no_finding=False))
        except UnknownFindingError as e:
            _fail(path, str(e), i, "Finding Label")
    boxes["finding"] = findings
    for col in ("x", "y", "w", "h"):
        num = pd.to_numeric(raw[col], errors="coerce")
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            _fail(path, f"{quote(raw[col].iloc[i])} is not a number", i, col)
        boxes[col] = num.astype(float).to_numpy()
    bad = (boxes["w"] <= 0) | (boxes["h"] <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        _fail(path, "box width and height must be positive", i, "w/h")
    return boxes


@dataclass
class BoxReport:
    """What :func:`check_boxes` found in a box file; kept in ``dataset.json``, printed by
    ``cxrkit validate``. Lines are 1-based file lines (the header is line 1)."""

    path: str
    n_boxes: int
    n_images: int
    outside_lines: list[int] = field(default_factory=list)
    unlabelled_lines: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "n_outside": len(self.outside_lines),
            "n_unlabelled": len(self.unlabelled_lines),
        }

    def summary(self) -> str:
        lines = [f"boxes: {self.n_boxes:,} on {self.n_images:,} images"]
        if self.outside_lines:
            lines.append(
                f"  warning: {len(self.outside_lines)} box(es) reach outside NIH's "
                f"{NIH_IMAGE_SIZE}x{NIH_IMAGE_SIZE} pixel space, lines "
                f"{_lines(self.outside_lines)}"
            )
        if self.unlabelled_lines:
            lines.append(
                f"  warning: {len(self.unlabelled_lines)} box(es) name a finding "
                f"their image's labels lack, lines {_lines(self.unlabelled_lines)}"
            )
        return "\n".join(lines)


def _lines(lines: list[int], n: int = 10) -> str:
    return ", ".join(map(str, lines[:n])) + (", ..." if len(lines) > n else "")


def check_boxes(boxes: pd.DataFrame, labels: pd.DataFrame, path: str | Path) -> BoxReport:
    """Check boxes (from :func:`read_bbox_list`, in file order) against the 1024 space and
    the labels; warn naming each suspicious row, and count them.

    Two checks, both warnings (the boxes are kept: nothing is dropped silently):
    a box with a negative ``x``/``y`` or with ``x + w`` / ``y + h`` beyond
    :data:`NIH_IMAGE_SIZE` lies (partly) outside the pixel space NIH's boxes live in;
    a box whose finding the image's ``Finding Labels`` lack contradicts the label file
    (or belongs to another image). NIH's own 984 boxes pass both.
    """
    x, y = boxes["x"].to_numpy(float), boxes["y"].to_numpy(float)
    w, h = boxes["w"].to_numpy(float), boxes["h"].to_numpy(float)
    outside = (x < 0) | (y < 0) | (x + w > NIH_IMAGE_SIZE) | (y + h > NIH_IMAGE_SIZE)
    pos = pd.Index(labels["image_id"]).get_indexer(boxes["image_id"])
    cols = np.array([FINDINGS.index(f) for f in boxes["finding"]], dtype=np.int64)
    positives = labels[list(FINDINGS)].to_numpy()
    has = np.zeros(len(boxes), bool)
    known = pos >= 0
    has[known] = positives[pos[known], cols[known]] == 1
    report = BoxReport(
        path=str(path),
        n_boxes=len(boxes),
        n_images=int(boxes["image_id"].nunique()),
        outside_lines=[_line(i) for i in np.flatnonzero(outside)],
        unlabelled_lines=[_line(i) for i in np.flatnonzero(~has)],
    )

    def rows(mask) -> str:
        shown = [
            f"line {_line(i)} ({quote(boxes['image_id'].iloc[i])}, "
            f"{boxes['finding'].iloc[i]}, x={x[i]:g} y={y[i]:g} w={w[i]:g} h={h[i]:g})"
            for i in np.flatnonzero(mask)[:5]
        ]
        return "; ".join(shown) + ("; ..." if mask.sum() > 5 else "")

    if outside.any():
        warnings.warn(
            f"{path}: {int(outside.sum())} box(es) reach outside NIH's "
            f"{NIH_IMAGE_SIZE}x{NIH_IMAGE_SIZE} pixel space (negative x/y, or "
            f"x+w / y+h over {NIH_IMAGE_SIZE}): {rows(outside)}",
            stacklevel=2,
        )
    if (~has).any():
        warnings.warn(
            f"{path}: {int((~has).sum())} box(es) name a finding that their "
            f"image's Finding Labels lack: {rows(~has)}",
            stacklevel=2,
        )
    return report


def scale_boxes(boxes: pd.DataFrame, size: int | float, *, source_size: int = NIH_IMAGE_SIZE):
    """Boxes moved from NIH's 1024 space to an image of side ``size`` (a copy)."""
    out = boxes.copy()
    s = float(size) / float(source_size)
    out[["x", "y", "w", "h"]] = out[["x", "y", "w", "h"]] * s
    return out


def read_image_list(path: str | Path) -> list[str]:
    """Read ``train_val_list.txt`` / ``test_list.txt``: one image name per line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image list not found: {path}")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    seen: dict[str, int] = {}
    for i, n in enumerate(lines):
        if not n:
            continue
        if n in seen:
            raise NIHFormatError(
                f"{path}: image {quote(n)} listed twice (lines {seen[n] + 1}, {i + 1})"
            )
        seen[n] = i
    if not seen:
        raise NIHFormatError(f"{path}: no image names (the list is empty)")
    return list(seen)


def check_list_against_labels(names: list[str], labels: pd.DataFrame, path: str | Path) -> None:
    """Raise if a list names images absent from the label file (names a few)."""
    known = set(labels["image_id"])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NIHFormatError(
            f"{path}: {len(unknown)} listed image(s) not in the label file, e.g. "
            f"[{', '.join(quote(n) for n in unknown[:5])}]"
        )

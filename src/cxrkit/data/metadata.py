"""Patient metadata (age, sex, view) for models trained with ``model.metadata=true``.

The model's ``meta`` vector (:data:`META_FEATURES`) is built here from a label table for
training and evaluation, and for prediction from whatever the user has:

* a CSV (``--metadata FILE``, or ``metadata.csv`` beside the images) with the columns
  ``image`` (file name, or path as given on the command line), ``age`` (years, or DICOM's
  ``058Y`` / ``011M`` / ``006W`` / ``003D``), ``sex`` (``M``/``F``, ``male``/``female``)
  and ``view`` (``PA``/``AP``); NIH's own names (``Image Index``, ``Patient Age``,
  ``Patient Gender``, ``View Position``) are accepted too, so ``Data_Entry_2017.csv``
  works as it is. Empty cells are missing values.
* DICOM tags ``PatientAge``, ``PatientSex`` and ``ViewPosition``, where present.

A value that is missing becomes the training default for it: age marked missing (the
model has an "age missing" input for this), sex female, view PA; :func:`resolve_metadata`
reports which images lacked which field. Torch-free (the ONNX backend uses it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrkit.data.dicom import dicom_tags, read_dataset  # noqa: F401 (dicom_tags re-exported)
from cxrkit.data.images import ImageReadError

if TYPE_CHECKING:  # annotations only: pandas is imported where a table is read
    import pandas as pd

#: Names of the ``meta`` vector's entries, in order.
META_FEATURES = ("age_years_div100", "age_missing", "sex_male", "view_ap")
#: The vector of an image whose age, sex and view are unknown: age missing, female, PA.
DEFAULT_META = (0.0, 1.0, 0.0, 0.0)
#: Oldest plausible age; older values (NIH has some up to 414) are treated as missing.
MAX_AGE_YEARS = 120.0
#: The fields a metadata source may give.
FIELDS = ("age", "sex", "view")
#: Column names accepted per field (first: cxrkit's own; then NIH's and DICOM's).
COLUMNS = {
    "image": ("image", "Image Index", "file", "path"),
    "age": ("age", "Patient Age", "PatientAge"),
    "sex": ("sex", "Patient Gender", "PatientSex"),
    "view": ("view", "View Position", "ViewPosition"),
}
#: File name looked for beside the images when no ``--metadata`` file is given.
BESIDE_FILE = "metadata.csv"

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def parse_age(value) -> float:
    """Age in years from ``58``, ``"58"``, DICOM's ``"058Y"``/``"011M"``/``"006W"``/``"003D"``;
    NaN for missing, unreadable or impossible (> :data:`MAX_AGE_YEARS`) values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        years = float(value)
    else:
        m = _AGE.match(str(value))
        if not m:
            return math.nan
        years = float(m.group(1)) * _UNIT_YEARS[m.group(2).upper()]
    return years if 0 <= years <= MAX_AGE_YEARS else math.nan


def parse_sex(value) -> str | None:
    """``"M"``/``"F"`` from M/F/male/female (any case); None otherwise (DICOM's ``O``, empty)."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    text = text.strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(text)


def parse_view(value) -> str | None:
    """``"PA"``/``"AP"`` (any case); None otherwise (LL, empty, ...)."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    text = text.strip().upper()
    return text if text in ("PA", "AP") else None


def metadata_vector(table: pd.DataFrame) -> np.ndarray:
    """``(N, 4)`` float32 patient metadata from a table with ``age``, ``sex``, ``view``
    columns (see :data:`META_FEATURES`); missing values get :data:`DEFAULT_META`'s."""
    age = np.array([parse_age(a) for a in table["age"]], dtype=np.float64)
    missing = np.isnan(age)
    sex = np.array([parse_sex(s) for s in table["sex"]], dtype=object)
    view = np.array([parse_view(v) for v in table["view"]], dtype=object)
    return (
        np.stack(
            [
                np.where(missing, 0.0, age / 100.0),
                missing.astype(np.float64),
                (sex == "M").astype(np.float64),
                (view == "AP").astype(np.float64),
            ],
            1,
        )
        .astype(np.float32)
        .reshape(len(table), len(META_FEATURES))
    )


def as_meta_matrix(meta, n: int) -> np.ndarray:
    """What a caller passed as ``meta`` -> ``(n, 4)`` float32.

    Accepted: an ``(n, 4)`` array of :data:`META_FEATURES`; a DataFrame with ``age``,
    ``sex``, ``view`` columns (any of :data:`COLUMNS`' names; missing columns or cells are
    missing values); a sequence of ``n`` dicts with those keys.
    """
    import pandas as pd  # late: the ONNX predict path never needs pandas

    if (
        isinstance(meta, Sequence)
        and not isinstance(meta, str)
        and meta
        and isinstance(meta[0], dict)
    ):
        meta = pd.DataFrame(list(meta))
    if isinstance(meta, pd.DataFrame):
        table = _standard_columns(meta, "meta")
        out = metadata_vector(table)
    else:
        out = np.asarray(meta, dtype=np.float32)
        if out.ndim == 1 and out.shape[0] == len(META_FEATURES):
            out = np.tile(out, (n, 1))
        if out.ndim != 2 or out.shape[1] != len(META_FEATURES):
            raise ValueError(
                f"meta must be ({n}, {len(META_FEATURES)}) ({', '.join(META_FEATURES)}),"
                f" a table with age/sex/view columns, or dicts; got shape "
                f"{out.shape}"
            )
    if len(out) != n:
        raise ValueError(f"meta has {len(out)} rows for {n} images")
    return out


def _standard_columns(table: pd.DataFrame, where) -> pd.DataFrame:
    """Rename accepted column names to ``image``/``age``/``sex``/``view`` (missing -> empty)."""
    import pandas as pd  # late: the ONNX predict path never needs pandas

    out = pd.DataFrame(index=table.index)
    for name, aliases in COLUMNS.items():
        found = [c for c in aliases if c in table.columns]
        out[name] = table[found[0]] if found else None
    if not any(any(c in table.columns for c in COLUMNS[f]) for f in FIELDS):
        raise ValueError(
            f"{where}: no age, sex or view column (accepted: "
            f"{', '.join(a for f in FIELDS for a in COLUMNS[f])})"
        )
    return out


def read_metadata_csv(path: str | Path) -> pd.DataFrame:
    """A metadata CSV (columns in the module docstring) -> table ``image, age, sex, view``."""
    import pandas as pd  # late: the ONNX predict path never needs pandas

    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable metadata CSV ({e})") from e
    if not any(c in raw.columns for c in COLUMNS["image"]):
        raise ValueError(f"{path}: no image column (accepted: {', '.join(COLUMNS['image'])})")
    table = _standard_columns(raw.replace({"": None}), path)
    dup = table["image"][table["image"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: image {dup.iloc[0]!r} has two rows")
    return table


def dicom_metadata(path: str | Path) -> dict:
    """``{"age", "sex", "view"}`` from a DICOM file's tags (None where absent); header only
    (a deflated file is inflated only as far as its header, see
    :func:`cxrkit.data.dicom.read_dataset`)."""
    try:
        ds = read_dataset(path, stop_before_pixels=True)
    except ImageReadError:  # not DICOM, or unreadable: the image reader says why
        return {"age": None, "sex": None, "view": None}
    return dicom_tags(ds)


@dataclass
class ResolvedMetadata:
    """``meta`` rows for a list of images and, per image, the fields no source gave."""

    vectors: np.ndarray  #: (N, 4) float32
    missing: dict[str, list[str]] = field(default_factory=dict)  #: image -> missing fields
    sources: dict[str, str] = field(default_factory=dict)  #: image -> where found

    def summary(self, limit: int = 5) -> str | None:
        """One line naming the images that lacked fields (None when none lacked any)."""
        if not self.missing:
            return None
        items = list(self.missing.items())
        shown = "; ".join(f"{Path(k).name}: {', '.join(v)}" for k, v in items[:limit])
        more = f"; and {len(items) - limit} more" if len(items) > limit else ""
        return (
            f"{len(items)} image(s) lacked patient metadata, so the training defaults "
            f"were used (age missing, sex F, view PA): {shown}{more}"
        )


def resolve_metadata(
    files: Sequence[str | Path],
    table: pd.DataFrame | None = None,
    *,
    beside: bool = True,
    dicom: bool = True,
) -> ResolvedMetadata:
    """Age, sex and view for each of ``files``, from (first found wins, per field):
    ``table`` (rows matched by the path as given, else by file name), ``metadata.csv``
    beside the image (when ``beside``), and the file's DICOM tags (when ``dicom``)."""
    import pandas as pd  # late: the ONNX predict path never needs pandas

    from cxrkit.data.dicom import is_dicom

    by_key = _index(table) if table is not None else {}
    beside_tables: dict[Path, dict] = {}
    rows, missing, sources = [], {}, {}
    for f in files:
        path = Path(f)
        values: dict = {k: None for k in FIELDS}
        found: list[str] = []
        candidates = [("table", by_key)]
        if beside:
            folder = path.parent
            if folder not in beside_tables:
                csv = folder / BESIDE_FILE
                beside_tables[folder] = _index(read_metadata_csv(csv)) if csv.exists() else {}
            candidates.append((str(path.parent / BESIDE_FILE), beside_tables[folder]))
        for name, index in candidates:
            row = index.get(str(f)) or index.get(path.name)
            if row is not None:
                _fill(values, row, found, name)
        if dicom and any(values[k] is None for k in FIELDS) and path.exists() and is_dicom(path):
            _fill(values, dicom_metadata(path), found, "DICOM tags")
        clean = {
            "age": parse_age(values["age"]),
            "sex": parse_sex(values["sex"]),
            "view": parse_view(values["view"]),
        }
        lacking = [k for k in FIELDS if clean[k] is None or (k == "age" and math.isnan(clean[k]))]  # type: ignore[arg-type]
        if lacking:
            missing[str(f)] = lacking
        if found:
            sources[str(f)] = ", ".join(dict.fromkeys(found))
        rows.append(clean)
    vectors = (
        metadata_vector(pd.DataFrame(rows, columns=list(FIELDS)))
        if rows
        else np.zeros((0, len(META_FEATURES)), np.float32)
    )
    return ResolvedMetadata(vectors=vectors, missing=missing, sources=sources)


def _index(table: pd.DataFrame) -> dict[str, dict]:
    if "image" not in table.columns or not set(FIELDS) <= set(table.columns):
        if not any(c in table.columns for c in COLUMNS["image"]):
            raise ValueError(
                f"metadata table: no image column (accepted: {', '.join(COLUMNS['image'])})"
            )
        table = _standard_columns(table, "metadata table")
    return {str(r["image"]): r for r in table.to_dict("records") if r.get("image") is not None}


def _fill(values: dict, row: dict, found: list[str], source: str) -> None:
    for k in FIELDS:
        v = row.get(k)
        ok = {"age": lambda x: not math.isnan(parse_age(x)), "sex": parse_sex, "view": parse_view}[
            k
        ](v)
        if values[k] is None and ok:
            values[k] = v
            found.append(source)


__all__ = [
    "BESIDE_FILE",
    "COLUMNS",
    "DEFAULT_META",
    "META_FEATURES",
    "ResolvedMetadata",
    "as_meta_matrix",
    "dicom_metadata",
    "metadata_vector",
    "parse_age",
    "parse_sex",
    "parse_view",
    "read_metadata_csv",
    "resolve_metadata",
]

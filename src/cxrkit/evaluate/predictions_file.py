"""Reading a model's predictions, strictly: any model's CSV (or DataFrame) in, checked values out.

A predictions table has one row per image: an id column (``Image Index``, as NIH spells
it, or ``image_id``) and one column per finding the model predicts. A finding column is
named as NIH spells the finding, case aside, with or without a ``prob_`` / ``p_`` prefix,
and with a space or an underscore (``Pleural Thickening``, ``prob_Pleural_Thickening``).
cxrkit's own ``predictions_<split>.csv`` reads as it is: it holds NIH's labels under the
bare names and the probabilities under ``p_<finding>``, so when prefixed columns exist only
they are read. A table with a subset of the 14 findings is scored on those; which are
absent is said.

Values are probabilities in [0, 1] (``logits=False``) or raw scores (``logits=True``;
any finite number, turned into probabilities by a sigmoid). Every problem is an error
naming the file, its line (the header is line 1) and its column: an empty, non-numeric,
NaN or out-of-range value, an id that is not an image of the release, an image given
twice, a header without an id column or without a finding column, two columns for one
finding. An id written with a path prefix or in another case (``images/00000001_000.PNG``)
is matched to the release's image by its file name, and how many were is said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from cxrkit.artefacts import file_sha256, read_csv
from cxrkit.labels import FINDINGS, NO_FINDING
from cxrkit.messages import quote, quote_list

ID_COLUMNS = ("Image Index", "image_id")
PREFIXES = ("prob_", "p_")


class PredictionsFormatError(ValueError):
    """A predictions table cxrkit cannot score as it is (the message says where)."""


@dataclass
class PredictionTable:
    """A checked predictions table: image ids (the release's spelling) and values."""

    source: str  #: the file, or "DataFrame"
    image_ids: np.ndarray  #: (N,) str, as the release spells them
    findings: list[str]  #: in cxrkit's order
    values: np.ndarray  #: (N, F) float64: probabilities, or logits with ``logits``
    logits: bool
    columns: dict[str, str]  #: finding -> the column it was read from
    lines: np.ndarray  #: (N,) the line (file) or row (DataFrame) of each image
    absent: list[str] = field(default_factory=list)  #: findings with no column
    notes: list[str] = field(default_factory=list)
    sha256: str | None = None  #: of the file

    @property
    def probabilities(self) -> np.ndarray:
        if not self.logits:
            return self.values
        from cxrkit.metrics import sigmoid

        return sigmoid(self.values)


class _Source:
    """Names places in the table: ``FILE, line N, column 'C'`` (a file: the header is
    line 1) or ``DataFrame, row I, column 'C'`` (a frame: its index label)."""

    def __init__(self, name: str, index, is_file: bool):
        self.name, self.index, self.is_file = name, index, is_file

    def line(self, i: int):
        return int(i) + 2 if self.is_file else self.index[i]

    def at(self, i: int | None = None, column: str | None = None) -> str:
        where = self.name
        if i is not None:
            where += f", {'line' if self.is_file else 'row'} {self.line(i)}"
        elif self.is_file:
            where += ", line 1 (header)"
        if column is not None:
            where += f", column {quote(column)}"
        return where

    def fail(self, msg: str, i: int | None = None, column: str | None = None):
        raise PredictionsFormatError(f"{self.at(i, column)}: {msg}")


def _read_frame(source) -> tuple[pd.DataFrame, _Source, str | None]:
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
        frame.columns = [str(c) for c in frame.columns]
        return frame, _Source("DataFrame", list(frame.index), False), None
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"predictions file not found: {path}")
    try:
        # every cell as text: the checks below say which cell is wrong, not pandas' guess
        frame = read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError as e:
        raise PredictionsFormatError(f"{path}: empty file (no header line)") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise PredictionsFormatError(
            f"{path}: not a readable CSV: {' '.join(str(e).split())[:300]}"
        ) from e
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, _Source(str(path), None, True), file_sha256(path)


def _key(column: str) -> tuple[str, bool]:
    """A column name without its prefix, in one spelling (lower case, underscores)."""
    name = column.strip()
    prefixed = False
    for p in PREFIXES:
        if name.lower().startswith(p):
            name, prefixed = name[len(p) :], True
            break
    return name.strip().replace(" ", "_").lower(), prefixed


def finding_of(column: str) -> tuple[str | None, bool]:
    """``(finding, prefixed)`` a column names, or ``(None, prefixed)`` for another column.

    ``prob_Pleural_Thickening``, ``p_pleural thickening`` and ``Pleural Thickening`` all name
    ``Pleural_Thickening``; "No Finding" is not a finding a model is scored on (None).
    """
    key, prefixed = _key(column)
    return next((f for f in FINDINGS if f.lower() == key), None), prefixed


def _columns(frame: pd.DataFrame, src: _Source) -> tuple[str, dict[str, str], list[str]]:
    """The id column, finding -> column, and notes on columns not read."""
    ids = [c for c in frame.columns if c in ID_COLUMNS]
    if not ids:
        src.fail(
            f"no id column: expected one of {list(ID_COLUMNS)}; the header has "
            f"{quote_list(frame.columns, 8)}"
        )
    if len(ids) > 1:
        src.fail(f"two id columns {ids}: keep one", column=ids[1])
    named = [(c, *finding_of(c)) for c in frame.columns if c != ids[0]]
    prefixed = any(p and f for _, f, p in named)
    found: dict[str, str] = {}
    ignored = []
    for column, finding, has_prefix in named:
        if finding is None or (prefixed and not has_prefix):
            if has_prefix and _key(column)[0] != NO_FINDING.replace(" ", "_").lower():
                src.fail(
                    f"{quote(column)} is not one of the 14 findings ({', '.join(FINDINGS)})",
                    column=column,
                )
            ignored.append(column)
            continue
        if finding in found:
            src.fail(
                f"columns {quote(found[finding])} and {quote(column)} both name "
                f"{finding}: keep one",
                column=column,
            )
        found[finding] = column
    if not found:
        src.fail(
            f"no finding column: expected columns named as NIH spells the findings "
            f"(e.g. 'Atelectasis', 'prob_Atelectasis', 'Pleural Thickening'); the "
            f"header has {quote_list(frame.columns, 8)}"
        )
    notes = []
    if ignored:
        why = "its labels, or other columns" if prefixed else "not findings"
        notes.append(f"{len(ignored)} column(s) not read ({why}): {quote_list(ignored, 8)}.")
    return ids[0], {f: found[f] for f in FINDINGS if f in found}, notes


def _values(frame: pd.DataFrame, column: str, src: _Source, logits: bool) -> np.ndarray:
    raw = frame[column]
    textual = raw.dtype == object or pd.api.types.is_string_dtype(raw)
    text = raw.astype(str).str.strip() if textual else None
    if text is not None:
        empty = raw.isna().to_numpy() | (text == "").to_numpy()
        if empty.any():
            src.fail("empty value", int(np.flatnonzero(empty)[0]), column)
        values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
        bad = np.isnan(values) & ~text.str.lower().isin(["nan", "-nan", "+nan"]).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            src.fail(f"{quote(raw.iloc[i])} is not a number", i, column)
    else:
        try:
            values = raw.to_numpy(np.float64)
        except (TypeError, ValueError):
            values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
            i = int(np.flatnonzero(np.isnan(values))[0])
            src.fail(f"{quote(raw.iloc[i])} is not a number", i, column)
    nan = np.isnan(values)
    if nan.any():
        src.fail(
            "NaN is not a prediction (every image needs a value for every finding it is scored on)",
            int(np.flatnonzero(nan)[0]),
            column,
        )
    if logits:
        inf = ~np.isfinite(values)
        if inf.any():
            src.fail(
                f"{float(values[inf][0])!r} is not a finite logit",
                int(np.flatnonzero(inf)[0]),
                column,
            )
    else:
        out = (values < 0) | (values > 1)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            src.fail(
                f"{float(values[i])!r} is not a probability in [0, 1] (raw scores? pass --logits)",
                i,
                column,
            )
    return values


def _file_name(image_id: str) -> str:
    return PureWindowsPath(PurePosixPath(image_id).name).name


def _match_ids(raw: pd.Series, column: str, src: _Source, known) -> tuple[np.ndarray, list[str]]:
    """Ids as the release spells them; by file name (any case) where the exact id is not
    one; unknown and repeated images are errors."""
    empty = pd.isna(raw).to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
    ids = raw.astype(str).str.strip().to_numpy(dtype=object)
    if empty.any():
        src.fail("empty image id", int(np.flatnonzero(empty)[0]), column)
    notes = []
    if known is not None:
        known = pd.Index(known)
        exact = known.get_indexer(ids) >= 0
        if not exact.all():
            by_name = dict(zip(known.str.lower(), known, strict=True))
            fixed = 0
            for i in map(int, np.flatnonzero(~exact)):
                name = by_name.get(_file_name(ids[i]).lower())
                if name is None:
                    n_unknown = sum(by_name.get(_file_name(x).lower()) is None for x in ids[~exact])
                    src.fail(
                        f"image id {quote(ids[i])} is not an image of the release's label "
                        f"file ({n_unknown:,} such row(s))",
                        i,
                        column,
                    )
                ids[i] = name
                fixed += 1
            notes.append(
                f"{fixed:,} image id(s) were written with a path prefix or in another "
                f"case (e.g. {quote(raw.iloc[int(np.flatnonzero(~exact)[0])])}) and "
                "were matched to the release's images by file name."
            )
    seen: dict[str, int] = {}
    for k, x in enumerate(ids):
        if x in seen:
            src.fail(
                f"image {quote(x)} appears twice (first at "
                f"{'line' if src.is_file else 'row'} {src.line(seen[x])})",
                k,
                column,
            )
        seen[x] = k
    return ids.astype(str), notes


def read_predictions(source, *, known_ids=None, logits: bool = False) -> PredictionTable:
    """A predictions CSV (path) or DataFrame, checked (see the module docstring).

    ``known_ids``: the release's image ids; every row must be one of them (matched by file
    name when spelled otherwise). Raises :class:`PredictionsFormatError` naming the file,
    line and column of the first problem.
    """
    frame, src, sha = _read_frame(source)
    if frame.empty:
        src.fail("no data rows")
    id_col, columns, notes = _columns(frame, src)
    ids, id_notes = _match_ids(frame[id_col], id_col, src, known_ids)
    values = np.column_stack([_values(frame, c, src, logits) for c in columns.values()])
    absent = [f for f in FINDINGS if f not in columns]
    if absent:
        notes.append(
            f"No column for {len(absent)} of the 14 findings ({', '.join(absent)}): "
            f"scored on the {len(columns)} given."
        )
    lines = np.array([src.line(i) for i in range(len(frame))], dtype=object)
    return PredictionTable(
        source=src.name,
        image_ids=ids,
        findings=list(columns),
        values=values,
        logits=logits,
        columns=columns,
        lines=lines,
        absent=absent,
        notes=notes + id_notes,
        sha256=sha,
    )


__all__ = [
    "ID_COLUMNS",
    "PredictionTable",
    "PredictionsFormatError",
    "finding_of",
    "read_predictions",
]

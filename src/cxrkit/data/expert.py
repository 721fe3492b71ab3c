"""Radiologists' labels for ChestX-ray14 images, as Google published them: read + validate.

Two sets, each kept by users exactly as downloaded (same file names, same folders):

* **Four findings** (Majkowska et al., *Radiology* 2019), folder
  ``four_findings_expert_labels/`` (the sample in ``../shared/nih`` keeps it as
  ``expert/four_findings/``): ``test_labels.csv`` (1,962 images of NIH's test list),
  ``validation_labels.csv`` (2,414 images of ``train_val_list.txt``) with the NIH
  metadata columns plus ``Fracture, Pneumothorax, Airspace opacity, Nodule or mass``
  (adjudicated by three radiologists), and ``individual_readers.csv`` (each reader's
  own labels; ``HEDGE`` = uncertain, allowed for Pneumothorax and Nodule/mass only, as
  its README says).
* **All findings** (Nabulsi et al., *Scientific Reports* 2021), folder
  ``all_findings_expert_labels/`` (``expert/all_findings/``): ``test_labels.csv`` (810 PA
  test-list images: ``Abnormal``, the 14 NIH findings, ``Other``; majority of three of
  five readers, ``GROUND_TRUTH_READERS``) and ``test_individual_readers.csv`` (five
  readers). Google's reader file writes ``Abnormal`` as ``1``/``0``, not YES/NO; that
  column alone accepts both.

Cite Majkowska et al. / Nabulsi et al. as their LICENSE files ask (see :data:`CITATIONS`).

Every value is checked: adjudicated/majority labels are ``YES`` or ``NO`` (an empty cell,
which the four-findings README defines as "not in the adjudicated set", becomes unknown
and is counted); every image id must be a row of NIH's label file with the same patient
id, on the side of NIH's official split that its file belongs to (test or train_val), and
every reader row must be an image of its set's label file. An error names the file, the
line and the field. :func:`load_expert_labels` returns the labels as 1/0/NaN columns,
plus a manifest (file paths, sha256, rows) that evaluation records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import file_sha256
from cxrkit.data.nih import NIHFormatError, location
from cxrkit.labels import FINDINGS


class ExpertFormatError(NIHFormatError):
    """An expert label file that does not follow Google's published format."""


FOUR = "four_findings"
ALL = "all_findings"
#: The set's folder names: Google's, then the shorter ones of the shared sample.
FOLDER_NAMES = {
    FOUR: ("four_findings_expert_labels", "four_findings"),
    ALL: ("all_findings_expert_labels", "all_findings"),
}
FOUR_FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
#: individual_readers.csv spells "Nodule or mass" as "Nodule/mass".
FOUR_READER_COLUMNS = {
    "Fracture": "Fracture",
    "Pneumothorax": "Pneumothorax",
    "Airspace opacity": "Airspace opacity",
    "Nodule or mass": "Nodule/mass",
}
#: HEDGE (uncertain) is a legal reader value for these two only (four-findings README).
HEDGE_ALLOWED = ("Pneumothorax", "Nodule or mass")
#: The all-findings columns: Abnormal, NIH's 14 as Google spells them, Other.
ALL_FINDINGS = ("Abnormal", *(f.replace("_", " ") for f in FINDINGS), "Other")
#: The three readers whose majority is all_findings/test_labels.csv (its README).
GROUND_TRUTH_READERS = ("4343882785", "4343883593", "4343883996")
REFERENCE = {
    FOUR: "adjudicated by three radiologists (up to five rounds)",
    ALL: "majority of three radiologists (readers 4343882785, 4343883593, 4343883996)",
}
CITATIONS = {
    FOUR: "Majkowska A, Mittal S, Steiner DF, et al. Chest Radiograph Interpretation Using "
    "Deep Learning Models: Assessment Using Radiologist Adjudicated Reference Standards "
    "and Population-Adjusted Evaluation. Radiology, 2019.",
    ALL: "Nabulsi Z, Sellergren A, Jamshy S, et al. Deep Learning for Distinguishing Normal "
    "versus Abnormal Chest Radiographs and Generalization to Two Unseen Diseases "
    "Tuberculosis and COVID-19. Nature Scientific Reports, 2021.",
}
#: file key -> (file name, image id column, patient id column, which official list)
FILES = {
    FOUR: {
        "test": ("test_labels.csv", "Image Index", "Patient ID", "test"),
        "val": ("validation_labels.csv", "Image Index", "Patient ID", "train_val"),
        "readers": ("individual_readers.csv", "Image ID", "Patient ID", None),
    },
    ALL: {
        "test": ("test_labels.csv", "Image ID", "Patient ID", "test"),
        "readers": ("test_individual_readers.csv", "Image ID", "Patient ID", None),
    },
}
_SET_ID = {FOUR: {"test": ("Set Id", "test"), "val": ("Set Id", "val")}}


@dataclass(frozen=True)
class Mapping:
    """How one expert finding is scored by a 14-finding model and labelled by NIH.

    ``nih``: the NIH findings it covers (empty: none, so it is not predicted);
    ``combine``: how the model's probabilities of those findings become one score --
    ``"max"`` (the most probable of them; with OR of their NIH labels: the score rises
    exactly when any of them does) or ``"noisy_or"`` (``1 - prod(1 - p)``: the chance
    that any is present if they were independent; used for Abnormal, where several
    moderate findings should add up, which ``max`` ignores). The NIH label is always
    the OR of the covered findings' labels.
    """

    expert: str
    nih: tuple[str, ...]
    combine: str
    why: str


#: Airspace opacity (Majkowska et al.): opacity of the lung parenchyma, i.e. the lung
#: whiter than it should be where air was. Of NIH's 14, the findings whose radiographic
#: sign is exactly that: Atelectasis (collapsed, airless lung), Consolidation, Edema,
#: Infiltration and Pneumonia. Nodule/Mass (their own category), Effusion and Pleural
#: thickening (pleural, not airspace) are left out. This is our reading of the paper's
#: definition, not a mapping its authors published; on the 4,376 real images this union
#: agrees with the radiologists best of the unions tried (Cohen's kappa 0.32; Infiltration
#: alone 0.23, Consolidation + Infiltration + Pneumonia 0.29; see tests/test_expert.py).
AIRSPACE = ("Atelectasis", "Consolidation", "Edema", "Infiltration", "Pneumonia")
MAPPINGS: dict[str, tuple[Mapping, ...]] = {
    "four_findings": (
        Mapping("Pneumothorax", ("Pneumothorax",), "max", "the same finding"),
        Mapping(
            "Nodule or mass",
            ("Mass", "Nodule"),
            "max",
            "max(Nodule, Mass) score; NIH label: Nodule OR Mass",
        ),
        Mapping(
            "Airspace opacity",
            AIRSPACE,
            "max",
            "max over " + ", ".join(AIRSPACE) + " (opacities that replace lung air); "
            "NIH label: their OR",
        ),
        Mapping("Fracture", (), "none", "NIH has no fracture finding: not predicted"),
    ),
    "all_findings": (
        Mapping(
            "Abnormal",
            FINDINGS,
            "noisy_or",
            "the model's 'any finding' score 1 - prod(1 - p) over its 14 findings; NIH "
            "label: any of the 14 (not 'No Finding'). Radiologists' Abnormal also covers "
            "findings outside the 14",
        ),
        *(Mapping(f.replace("_", " "), (f,), "max", "the same finding") for f in FINDINGS),
        Mapping("Other", (), "none", "findings outside NIH's 14: not predicted"),
    ),
}


def nih_label(mapping: Mapping, labels: pd.DataFrame) -> np.ndarray:
    """NIH's label for an expert finding: the OR of its covered findings (NaN if none
    is 1 and any is unknown; NaN for all when the mapping covers none)."""
    if not mapping.nih:
        return np.full(len(labels), np.nan)
    y = labels[list(mapping.nih)].to_numpy(dtype=np.float64)
    out = np.where(np.isnan(y).any(1), np.nan, 0.0)
    out[(y == 1).any(1)] = 1.0
    return out


def model_score(mapping: Mapping, probs: pd.DataFrame) -> np.ndarray | None:
    """The model's score for an expert finding from per-finding probability columns
    (named as NIH's findings); None when it is not predicted by this model."""
    if not mapping.nih or not set(mapping.nih) <= set(probs.columns):
        return None
    p = probs[list(mapping.nih)].to_numpy(dtype=np.float64)
    if mapping.combine == "max":
        return p.max(1)
    if mapping.combine == "noisy_or":
        return 1.0 - np.prod(1.0 - p, axis=1)
    raise ValueError(f"unknown combine rule {mapping.combine!r}")


@dataclass
class ExpertSet:
    """One set of radiologists' labels, validated.

    ``labels``: one row per image: ``image_id, patient_id, part`` ("test" or "val": the
    file it came from) and one float column per finding (1 = YES, 0 = NO, NaN = empty).
    ``readers``: one row per (image, reader): ``image_id, patient_id, reader_id, part``
    and the same finding columns (NaN = HEDGE). ``files``: key -> path, sha256, rows.
    """

    name: str
    findings: tuple[str, ...]
    labels: pd.DataFrame
    readers: pd.DataFrame
    files: dict[str, dict]
    reference: str
    citation: str
    notes: list[str] = field(default_factory=list)


@dataclass
class ExpertLabels:
    """The sets found (``four_findings`` and/or ``all_findings``) and what was checked."""

    sets: dict[str, ExpertSet]
    checked_against: dict
    nih: pd.DataFrame | None = None  #: NIH's label table they were checked against

    def manifest(self) -> dict:
        return {
            "checked_against": self.checked_against,
            "sets": {
                k: {
                    "files": s.files,
                    "reference": s.reference,
                    "citation": s.citation,
                    "images": len(s.labels),
                    "reader_rows": len(s.readers),
                    "notes": s.notes,
                }
                for k, s in self.sets.items()
            },
        }


# -- finding the files --------------------------------------------------------------------
def find_expert_folders(base: str | Path, max_depth: int = 2) -> dict[str, Path]:
    """The set folders under ``base`` (or ``base`` itself), by Google's or the short names.

    A folder counts when it holds the set's ``test_labels.csv``. Returns ``{}`` when
    none is found.
    """
    base = Path(base)
    found: dict[str, Path] = {}
    if not base.is_dir():
        return found
    for key, names in FOLDER_NAMES.items():
        if base.name in names and (base / "test_labels.csv").exists():
            found[key] = base
            continue
        for depth in range(max_depth + 1):
            prefix = "/".join(["*"] * depth)
            hits = sorted(
                p
                for name in names
                for p in base.glob(f"{prefix}/{name}" if depth else name)
                if (p / "test_labels.csv").exists()
            )
            if hits:
                found[key] = hits[0]
                break
    return found


# -- reading ------------------------------------------------------------------------------
def _fail(path: Path, msg: str, row: int | None = None, column: str | None = None):
    raise ExpertFormatError(f"{location(path, row, column)}: {msg}")


def _read(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"expert label file not found: {path}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise ExpertFormatError(f"{path}: not a readable CSV ({e})") from e
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise ExpertFormatError(
            f"{path}: missing column(s) {missing}; the header has {list(raw.columns)}"
        )
    if raw.empty:
        raise ExpertFormatError(f"{path}: no data rows")
    return raw.apply(lambda s: s.str.strip())


def _values(
    raw: pd.DataFrame, column: str, path: Path, *, allowed: dict[str, float], empty_ok: bool
) -> np.ndarray:
    """A YES/NO column -> 1.0 / 0.0 (NaN for the other allowed values)."""
    cells = raw[column]
    table = dict(allowed)
    if empty_ok:
        table[""] = np.nan
    bad = ~cells.isin(list(table))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        _fail(
            path,
            f"{cells.iloc[i]!r} is not one of {', '.join(k or '(empty)' for k in table)}",
            i,
            column,
        )
    return cells.map(table).to_numpy(dtype=np.float64)


YES_NO = {"YES": 1.0, "NO": 0.0}


def _ids(
    raw: pd.DataFrame, path: Path, image_col: str, patient_col: str, unique: bool
) -> tuple[pd.Series, pd.Series]:
    ids = raw[image_col]
    empty = ids == ""
    if empty.any():
        _fail(path, "empty image id", int(np.flatnonzero(empty.to_numpy())[0]), image_col)
    if unique and ids.duplicated().any():
        i = int(np.flatnonzero(ids.duplicated().to_numpy())[0])
        _fail(path, f"image id {ids.iloc[i]!r} appears twice", i, image_col)
    patients = pd.to_numeric(raw[patient_col], errors="coerce")
    if patients.isna().any():
        i = int(np.flatnonzero(patients.isna().to_numpy())[0])
        _fail(path, f"{raw[patient_col].iloc[i]!r} is not an integer patient id", i, patient_col)
    return ids, patients.astype(np.int64)


def _check_against_nih(
    path: Path,
    ids: pd.Series,
    patients: pd.Series,
    image_col: str,
    patient_col: str,
    nih: pd.DataFrame,
    label_file: str,
    allowed: set[str] | None,
    list_name: str | None,
) -> None:
    """Every id a row of NIH's label file, same patient, on the right side of the split."""
    nih_patient = nih.set_index("image_id")["patient_id"]
    known = ids.isin(nih_patient.index).to_numpy()
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        _fail(
            path,
            f"image id {ids.iloc[i]!r} is not in the label file {label_file} "
            f"({int((~known).sum())} such rows)",
            i,
            image_col,
        )
    other = nih_patient.loc[ids].to_numpy() != patients.to_numpy()
    if other.any():
        i = int(np.flatnonzero(other)[0])
        _fail(
            path,
            f"patient {patients.iloc[i]} of {ids.iloc[i]!r} differs from patient "
            f"{nih_patient.loc[ids.iloc[i]]} in {label_file}",
            i,
            patient_col,
        )
    if allowed is not None:
        outside = ~ids.isin(allowed).to_numpy()
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            _fail(
                path,
                f"image id {ids.iloc[i]!r} is not in {list_name} "
                f"({int(outside.sum())} such rows): this file must hold only "
                f"{list_name} images",
                i,
                image_col,
            )


def _file_record(path: Path, rows: int) -> dict:
    return {"path": str(path), "sha256": file_sha256(path), "rows": int(rows)}


def read_expert_set(
    folder: str | Path,
    name: str,
    *,
    nih: pd.DataFrame,
    label_file: str,
    train_val: list[str] | None,
    test: list[str] | None,
) -> ExpertSet:
    """Read and validate one set (``"four_findings"`` or ``"all_findings"``) in ``folder``.

    ``nih``: NIH's label table (``image_id``, ``patient_id``, ``view``) read from
    ``label_file``; ``train_val`` / ``test``: the official lists (None: not checked).
    """
    if name not in FILES:
        raise ValueError(f"unknown expert set {name!r}: use {FOUR!r} or {ALL!r}")
    folder = Path(folder)
    findings = FOUR_FINDINGS if name == FOUR else ALL_FINDINGS
    lists = {
        "test": None if test is None else set(test),
        "train_val": None if train_val is None else set(train_val),
    }
    parts, notes = [], []
    files: dict[str, dict] = {}
    for part in ("test", "val"):
        if part not in FILES[name]:
            continue
        fname, image_col, patient_col, list_name = FILES[name][part]
        path = folder / fname
        set_col = _SET_ID.get(name, {}).get(part)
        raw = _read(path, [image_col, patient_col, *findings, *([set_col[0]] if set_col else [])])
        ids, patients = _ids(raw, path, image_col, patient_col, unique=True)
        _check_against_nih(
            path,
            ids,
            patients,
            image_col,
            patient_col,
            nih,
            label_file,
            lists[list_name],  # type: ignore[index]  # set for val/test
            f"{list_name}_list.txt",
        )
        if set_col:
            wrong = raw[set_col[0]] != set_col[1]
            if wrong.any():
                i = int(np.flatnonzero(wrong.to_numpy())[0])
                _fail(path, f"{raw[set_col[0]].iloc[i]!r} should be {set_col[1]!r}", i, set_col[0])
        table = pd.DataFrame(
            {"image_id": ids.to_numpy(), "patient_id": patients.to_numpy(), "part": part}
        )
        for f in findings:
            table[f] = _values(raw, f, path, allowed=YES_NO, empty_ok=True)
        unknown = int(table[list(findings)].isna().to_numpy().sum())
        if unknown:
            notes.append(f"{path.name}: {unknown} empty cells (not adjudicated) read as unknown")
        parts.append(table)
        files[part] = _file_record(path, len(raw))
    labels = pd.concat(parts, ignore_index=True)
    dup = labels["image_id"].duplicated()
    if dup.any():
        raise ExpertFormatError(
            f"{folder}: image id {labels.loc[dup, 'image_id'].iloc[0]!r} is "
            "in both test_labels.csv and validation_labels.csv"
        )
    readers, files["readers"] = _read_readers(folder, name, labels, nih, label_file)
    views = nih.set_index("image_id").loc[labels["image_id"], "view"].value_counts()
    notes.append("views of the set's images: " + ", ".join(f"{v} {n}" for v, n in views.items()))
    return ExpertSet(
        name=name,
        findings=tuple(findings),
        labels=labels,
        readers=readers,
        files=files,
        reference=REFERENCE[name],
        citation=CITATIONS[name],
        notes=notes,
    )


def _read_readers(
    folder: Path, name: str, labels: pd.DataFrame, nih: pd.DataFrame, label_file: str
) -> tuple[pd.DataFrame, dict]:
    fname, image_col, patient_col, _ = FILES[name]["readers"]
    path = folder / fname
    findings = FOUR_FINDINGS if name == FOUR else ALL_FINDINGS
    columns = (
        {f: FOUR_READER_COLUMNS[f] for f in findings} if name == FOUR else {f: f for f in findings}
    )
    raw = _read(path, [image_col, patient_col, "Reader ID", *columns.values()])
    ids, patients = _ids(raw, path, image_col, patient_col, unique=False)
    _check_against_nih(path, ids, patients, image_col, patient_col, nih, label_file, None, None)
    outside = ~ids.isin(set(labels["image_id"])).to_numpy()
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        _fail(
            path,
            f"image id {ids.iloc[i]!r} has reader labels but is not in the set's label file(s)",
            i,
            image_col,
        )
    if (raw["Reader ID"] == "").any():
        _fail(
            path,
            "empty reader id",
            int(np.flatnonzero((raw["Reader ID"] == "").to_numpy())[0]),
            "Reader ID",
        )
    # Google's four-findings file has 4 reads that repeat a reader on an image (the
    # image went round again): each (image, reader) keeps its first read, and says so.
    repeat = pd.Series(list(zip(ids, raw["Reader ID"]))).duplicated().to_numpy()
    part = labels.set_index("image_id")["part"].loc[ids].to_numpy()
    if name == FOUR and "Set ID" in raw.columns:
        wrong = raw["Set ID"].to_numpy() != part
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            _fail(
                path,
                f"{raw['Set ID'].iloc[i]!r} but the image is in the {part[i]} labels",
                i,
                "Set ID",
            )
    table = pd.DataFrame(
        {
            "image_id": ids.to_numpy(),
            "patient_id": patients.to_numpy(),
            "reader_id": raw["Reader ID"].to_numpy(),
            "part": part,
        }
    )
    for f, col in columns.items():
        allowed = dict(YES_NO)
        if name == FOUR and f in HEDGE_ALLOWED:
            allowed["HEDGE"] = np.nan
        if name == ALL and f == "Abnormal":
            allowed.update({"1": 1.0, "0": 0.0})  # as Google wrote this column
        table[f] = _values(raw, col, path, allowed=allowed, empty_ok=False)
    record = _file_record(path, len(raw))
    if repeat.any():
        record["repeated_reads_dropped"] = int(repeat.sum())
        table = table.loc[~repeat].reset_index(drop=True)
    return table, record


def load_expert_labels(
    base: str | Path,
    *,
    nih: pd.DataFrame,
    label_file: str,
    train_val: list[str] | None,
    test: list[str] | None,
    folders: dict[str, Path] | None = None,
) -> ExpertLabels | None:
    """Every expert set found under ``base`` (see :func:`find_expert_folders`), validated.

    None when no set is found. ``folders`` overrides the search.
    """
    folders = folders if folders is not None else find_expert_folders(base)
    if not folders:
        return None
    sets = {
        name: read_expert_set(
            path, name, nih=nih, label_file=label_file, train_val=train_val, test=test
        )
        for name, path in sorted(folders.items())
    }
    checked = {
        "label_file": label_file,
        "official_lists": "checked"
        if train_val is not None and test is not None
        else "not available: list membership not checked",
    }
    return ExpertLabels(sets=sets, checked_against=checked, nih=nih)


__all__ = [
    "AIRSPACE",
    "ALL",
    "ALL_FINDINGS",
    "MAPPINGS",
    "Mapping",
    "model_score",
    "nih_label",
    "CITATIONS",
    "ExpertFormatError",
    "ExpertLabels",
    "ExpertSet",
    "FOLDER_NAMES",
    "FOUR",
    "FOUR_FINDINGS",
    "GROUND_TRUTH_READERS",
    "find_expert_folders",
    "load_expert_labels",
    "read_expert_set",
]

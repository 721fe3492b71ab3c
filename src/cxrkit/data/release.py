"""An unpacked NIH release on disk: find its files, read them, match images to rows.

Users keep the release in many shapes: the metadata next to ``images_001/ ...``, in a
``meta/`` folder, the Kaggle layout, or only a flat ``images/`` folder. :func:`load_release`
finds the label file, box file and official lists under a root (or takes explicit paths),
reads and cross-checks them, and :func:`match_images` pairs label rows with image files,
reporting (never silently dropping) images that are absent on disk.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrkit.artefacts import write_csv
from cxrkit.data.nih import (
    BoxReport,
    LabelFileReport,
    NIHFormatError,
    check_boxes,
    check_list_against_labels,
    read_bbox_list,
    read_data_entry,
    read_image_list,
)
from cxrkit.messages import quote, quote_list

LABEL_FILE_NAMES = (
    "Data_Entry_2017.csv",
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_2017_v2020.csv.gz",
)
BOX_FILE_NAME = "BBox_List_2017.csv"
TRAIN_VAL_NAME = "train_val_list.txt"
TEST_NAME = "test_list.txt"

BOX_TEST_NOTE = (
    "{n_test} of the {n_boxed} images with boxes are in the official test list "
    "(in NIH's release: all 880). A model that learns from boxes cannot use "
    "them under the official split without training on test images: a box "
    "fold (data.box_fold in training) moves a patient-grouped part of them "
    "into training and records which."
)


#: What ``on_missing`` may be: stop on label-file images absent on disk, or drop them.
ON_MISSING = ("error", "drop")


class MissingImagesError(FileNotFoundError):
    """Label-file images that are not on disk (``on_missing='error'``)."""


def check_on_missing(on_missing: str) -> str:
    """``on_missing`` if it is one of :data:`ON_MISSING`; a one-line ValueError otherwise.

    Called before anything is read, so a typo costs no pass over 112,120 rows."""
    if on_missing not in ON_MISSING:
        raise ValueError(
            f"on_missing (--on-missing) must be 'error' or 'drop', got {quote(on_missing)}"
        )
    return on_missing


@dataclass(frozen=True)
class ReleaseSources:
    """Where a release's files are: the one set of finding options of ``validate`` and
    ``prepare`` (the CLI builds it from the same flags for both).

    ``root`` is searched for whatever is not given explicitly (up to two folders deep for
    the metadata, any depth for images). ``images_roots``: the folders holding the images
    (default: ``root``); several are indexed together, and an image name in two of them is
    an error. ``on_missing`` is checked here, before any file is read.
    """

    root: str | Path
    images_roots: Sequence[str | Path] | str | Path = ()
    label_file: str | Path | None = None
    box_file: str | Path | None = None
    train_val_list: str | Path | None = None
    test_list: str | Path | None = None
    on_missing: str = "error"

    def __post_init__(self):
        check_on_missing(self.on_missing)
        object.__setattr__(self, "root", Path(self.root))
        roots = self.images_roots
        if isinstance(roots, (str, Path)):
            roots = (roots,)
        object.__setattr__(self, "images_roots", tuple(Path(r) for r in roots or ()))

    @property
    def image_folders(self) -> tuple[Path, ...]:
        """The folders images are looked for in (``images_roots``, else ``root``)."""
        roots = self.images_roots
        return (
            tuple(Path(r) for r in roots)
            if roots and not isinstance(roots, (str, Path))
            else (Path(self.root),)
        )

    def load(self) -> NIHRelease:
        """The release's metadata (:func:`load_release` with the explicit paths)."""
        return load_release(
            self.root,
            label_file=self.label_file,
            box_file=self.box_file,
            train_val_list=self.train_val_list,
            test_list=self.test_list,
        )

    def find_images(self, *, warn: bool = True):
        """One :class:`~cxrkit.data.images.ImageIndex` over every image folder."""
        from cxrkit.data.images import find_images_in

        return find_images_in(self.image_folders, warn=warn)


@dataclass
class NIHRelease:
    """The metadata of a release: labels (one row per image), boxes and official lists."""

    root: Path
    labels: pd.DataFrame
    report: LabelFileReport
    boxes: pd.DataFrame | None
    train_val: list[str] | None
    test: list[str] | None
    files: dict[str, str]
    box_report: BoxReport | None = None  #: what :func:`~cxrkit.data.nih.check_boxes` found

    @property
    def has_official_split(self) -> bool:
        return self.train_val is not None and self.test is not None


def _find(root: Path, names: tuple[str, ...], max_depth: int = 2) -> Path | None:
    """First file named like one of ``names`` at ``root`` or up to ``max_depth`` below."""
    for depth in range(max_depth + 1):
        pattern = "/".join(["*"] * depth)
        for name in names:
            hits = sorted(root.glob(f"{pattern}/{name}" if depth else name))
            if hits:
                return hits[0]
    return None


def load_release(
    root: str | Path,
    *,
    label_file: str | Path | None = None,
    box_file: str | Path | None = None,
    train_val_list: str | Path | None = None,
    test_list: str | Path | None = None,
) -> NIHRelease:
    """Find and read the metadata of a release under ``root``.

    Explicit paths win over discovery. The label file is required; boxes and the official
    lists are optional (a warning says what is missing). The lists are checked against the
    label file: every listed image must be a label-file row.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"release folder not found: {root}")
    label_path = Path(label_file) if label_file else _find(root, LABEL_FILE_NAMES)
    if label_path is None:
        raise FileNotFoundError(
            f"no label file under {root}: expected one of {', '.join(LABEL_FILE_NAMES)} "
            "(pass --labels PATH if it has another name)"
        )
    labels, report = read_data_entry(label_path)
    files = {"labels": str(label_path)}

    box_path = Path(box_file) if box_file else _find(root, (BOX_FILE_NAME,))
    boxes = box_report = None
    if box_path is not None:
        boxes = read_bbox_list(box_path)
        files["boxes"] = str(box_path)
        unknown = set(boxes["image_id"]) - set(labels["image_id"])
        if unknown:
            raise NIHFormatError(
                f"{box_path}: {len(unknown)} boxed image(s) not in the label "
                f"file {label_path}, e.g. {quote_list(sorted(unknown))}"
            )
        box_report = check_boxes(boxes, labels, box_path)

    lists: dict[str, list[str] | None] = {}
    for key, explicit, name in (
        ("train_val", train_val_list, TRAIN_VAL_NAME),
        ("test", test_list, TEST_NAME),
    ):
        p = Path(explicit) if explicit else _find(root, (name,))
        if p is None:
            lists[key] = None
            continue
        names = read_image_list(p)
        check_list_against_labels(names, labels, p)
        lists[key] = names
        files[key] = str(p)
    if (lists["train_val"] is None) != (lists["test"] is None):
        missing = TRAIN_VAL_NAME if lists["train_val"] is None else TEST_NAME
        warnings.warn(
            f"{missing} not found under {root}: the official split is unavailable", stacklevel=2
        )
    return NIHRelease(
        root=root,
        labels=labels,
        report=report,
        boxes=boxes,
        train_val=lists["train_val"],
        test=lists["test"],
        files=files,
        box_report=box_report,
    )


def match_images(
    labels: pd.DataFrame,
    index: dict[str, Path],
    *,
    on_missing: str = "error",
    dropped_path: str | Path | None = None,
) -> pd.DataFrame:
    """Pair label rows with files from ``index`` (name -> path, see ``find_images``).

    Returns the label table with a ``path`` column. Images absent on disk raise
    :class:`MissingImagesError` (how many and which) with ``on_missing='error'``; with
    ``'drop'`` their rows are removed, written to ``dropped_path`` (CSV) and a warning
    says how many. Image files that no label row names are ignored (counted in a warning).
    """
    check_on_missing(on_missing)
    paths = labels["image_id"].map(lambda i: index.get(i))
    missing = paths.isna()
    n_missing = int(missing.sum())
    if n_missing and on_missing == "error":
        examples = labels.loc[missing, "image_id"].head(10).tolist()
        raise MissingImagesError(
            f"{n_missing:,} of {len(labels):,} label-file images are not on disk, e.g. "
            f"{quote_list(examples, 10)}. Point --images-root at the folder that holds them, "
            "or pass --on-missing drop to continue without them (the dropped rows are "
            "written to a file)."
        )
    out = labels.assign(path=paths.map(lambda p: str(p) if p is not None else None))
    if n_missing:
        dropped = out.loc[missing, ["image_id", "patient_id"]]
        if dropped_path is not None:
            write_csv(dropped, dropped_path)
        where = f" (listed in {dropped_path})" if dropped_path else ""
        warnings.warn(f"dropped {n_missing:,} label-file images not on disk{where}", stacklevel=2)
        out = out.loc[~missing].reset_index(drop=True)
    extra = len(set(index) - set(labels["image_id"]))
    if extra:
        warnings.warn(
            f"{extra:,} image files under the root are not in the label file (ignored)",
            stacklevel=2,
        )
    return out

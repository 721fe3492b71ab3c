"""``cxrkit validate``: read and cross-check a release, and say what was found.

:func:`validate_release` composes the readers (:func:`~cxrkit.data.release.load_release`,
the official lists' leakage check, :func:`~cxrkit.data.images.find_images`,
:func:`~cxrkit.data.release.match_images`) and yields its report line by line, so that a
front end prints each line as it comes and an error (raised as the readers raise it)
follows what was already found.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cxrkit.data.images import find_images
from cxrkit.data.release import load_release, match_images
from cxrkit.data.splits import official_split

#: bad image files listed one per line; the rest are counted
BAD_FILES_SHOWN = 20


def validate_release(root: str | Path, *, label_file: str | Path | None = None,
                     images: bool = True) -> Iterator[str]:
    """The report lines of a release's check: labels, boxes, the official split (no patient
    in both lists), and with ``images`` every labelled image on disk (bad files listed).
    Raises what the readers raise (one clear line each) on the first real problem."""
    rel = load_release(root, label_file=label_file)
    yield rel.report.summary()
    if rel.box_report is not None:
        yield rel.box_report.summary()
    if rel.has_official_split:
        official_split(rel.labels, rel.train_val, rel.test, val_fraction=0.0)  # type: ignore[arg-type]  # checks leakage
        yield (f"official split: {len(rel.train_val):,} train_val / {len(rel.test):,} test "  # type: ignore[arg-type]  # both set: has_official_split
               "images, no patient in both")
    if images:
        index = find_images(root, warn=False)
        if index.bad:
            yield (f"warning: {len(index.bad):,} bad file(s) under {root} (not readable "
                   "image files; prepare records labelled ones as errors):")
            for path, reason in list(index.bad.items())[:BAD_FILES_SHOWN]:
                yield f"  {path}: {reason}"
            if len(index.bad) > BAD_FILES_SHOWN:
                yield f"  ... and {len(index.bad) - BAD_FILES_SHOWN:,} more"
        table = match_images(rel.labels, index, on_missing="error")
        n_bad = int(table["path"].isin(index.bad).sum())
        yield (f"images: all {len(table):,} on disk"
               + (f", {n_bad:,} of them bad files (listed above)" if n_bad else ""))


__all__ = ["validate_release"]

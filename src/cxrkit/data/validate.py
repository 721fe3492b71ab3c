"""``cxrkit validate``: read and cross-check a release, and say what was found.

:func:`validate_release` composes the readers (:func:`~cxrkit.data.release.load_release`,
the official lists' leakage check, :func:`~cxrkit.data.images.find_images_in`,
:func:`~cxrkit.data.release.match_images`) and yields its report line by line, so that a
front end prints each line as it comes and an error (raised as the readers raise it)
follows what was already found. It finds things exactly as ``prepare`` does (one
:class:`~cxrkit.data.release.ReleaseSources`), and says what it did not find, each absent
part with the option that points at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cxrkit.data.release import (
    BOX_FILE_NAME,
    TEST_NAME,
    TRAIN_VAL_NAME,
    ReleaseSources,
    match_images,
)
from cxrkit.data.splits import official_split

#: bad image files listed one per line; the rest are counted
BAD_FILES_SHOWN = 20


def validate_release(
    root: str | Path | ReleaseSources, *, label_file: str | Path | None = None, images: bool = True
) -> Iterator[str]:
    """The report lines of a release's check: labels, boxes, the official split (no patient
    in both lists), and with ``images`` every labelled image on disk (bad files listed;
    with ``on_missing='drop'`` the absent ones counted instead of stopping). ``root``: a
    folder, or the :class:`ReleaseSources` ``prepare`` would use (then ``label_file`` is
    not used). Raises what the readers raise (one clear line each) on the first real
    problem."""
    sources = (
        root if isinstance(root, ReleaseSources) else ReleaseSources(root, label_file=label_file)
    )
    rel = sources.load()
    yield rel.report.summary()
    if rel.box_report is not None:
        yield rel.box_report.summary()
    else:
        yield (
            f"boxes: no {BOX_FILE_NAME} under {sources.root} (localisation needs it: pass "
            "--boxes FILE)"
        )
    if rel.has_official_split:
        official_split(rel.labels, rel.train_val, rel.test, val_fraction=0.0)  # type: ignore[arg-type]  # checks leakage
        yield (
            f"official split: {len(rel.train_val):,} train_val / {len(rel.test):,} test "  # type: ignore[arg-type]  # both set: has_official_split
            "images, no patient in both"
        )
    else:
        yield (
            f"official split: {TRAIN_VAL_NAME} and {TEST_NAME} not both found under "
            f"{sources.root} (pass --train-val-list FILE --test-list FILE)"
        )
    if not images:
        yield "images: not checked (--no-images)"
        return
    index = sources.find_images(warn=False)
    if index.bad:
        where = ", ".join(map(str, sources.image_folders))
        yield (
            f"warning: {len(index.bad):,} bad file(s) under {where} (not readable "
            "image files; prepare records labelled ones as errors):"
        )
        for path, reason in list(index.bad.items())[:BAD_FILES_SHOWN]:
            yield f"  {path}: {reason}"
        if len(index.bad) > BAD_FILES_SHOWN:
            yield f"  ... and {len(index.bad) - BAD_FILES_SHOWN:,} more"
    table = match_images(rel.labels, index, on_missing=sources.on_missing)
    n_bad = int(table["path"].isin(index.bad).sum())
    n_absent = len(rel.labels) - len(table)
    yield (
        (
            f"images: {len(table):,} of {len(rel.labels):,} on disk ({n_absent:,} not on "
            "disk: prepare --on-missing drop leaves them out)"
        )
        if n_absent
        else f"images: all {len(table):,} on disk"
    ) + (f", {n_bad:,} of them bad files (listed above)" if n_bad else "")


__all__ = ["validate_release"]

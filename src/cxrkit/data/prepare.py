"""``cxrkit prepare``: release on disk -> one self-describing folder that training reads.

Data flows one way. :func:`prepare` reads and validates the release, makes the split,
decodes every image once into the cache, and writes next to the cache:

``labels.csv``   the typed label table (one row per image on disk; see ``nih.py``)
``split.csv``    ``image_id, patient_id, split`` (+ ``split.json``: how it was made)
``boxes.csv``    NIH's boxes, still in the 1024 space (if the release has them)
``dataset.json`` what was read: file paths and hashes, label-file form and report

:func:`load_prepared` reopens the folder; later stages read nothing else.
"""

from __future__ import annotations

import errno
import logging
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrkit import __version__
from cxrkit.artefacts import (
    PreparedFolder,
    WriteError,
    read_csv,
    read_json,
    write_csv,
    write_json,
)
from cxrkit.data.cache import ImageCache, PreprocessSettings, build_cache
from cxrkit.data.nih import NIH_IMAGE_SIZE
from cxrkit.data.release import BOX_TEST_NOTE, ReleaseSources, load_release, match_images
from cxrkit.data.splits import (
    load_split,
    official_split,
    random_split,
    save_split,
)
from cxrkit.messages import quote

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A prepared folder: the cache plus the tables that describe its images."""

    root: Path
    cache: ImageCache
    labels: pd.DataFrame  #: only images present and decoded in the cache
    split: pd.DataFrame
    boxes: pd.DataFrame | None
    info: dict

    def table(self, split: str | None = None) -> pd.DataFrame:
        """Label rows (with a ``split`` column), optionally of one split."""
        t = self.labels.merge(self.split[["image_id", "split"]], on="image_id", how="left")
        if t["split"].isna().any():
            missing = t.loc[t["split"].isna(), "image_id"].head(5).tolist()
            raise ValueError(
                f"{int(t['split'].isna().sum())} cached image(s) have no split "
                f"in {PreparedFolder(self.root).split}, e.g. {missing}"
            )
        return t if split is None else t.loc[t["split"] == split].reset_index(drop=True)

    def boxes_in_pixels(self) -> pd.DataFrame | None:
        """Boxes moved from NIH's 1024 space to the cache's pixel space (crop included)."""
        if self.boxes is None:
            return None
        cached = self.boxes[self.boxes["image_id"].isin(pd.Index(self.cache.ids))]
        return self.cache.map_boxes(cached, source_size=NIH_IMAGE_SIZE).reset_index(drop=True)


def make_split(
    release,
    *,
    protocol: str = "official",
    val_fraction: float = 0.1,
    fractions=(0.7, 0.1, 0.2),
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """The split of every label-file image, and its provenance."""
    if protocol == "official":
        if not release.has_official_split:
            raise FileNotFoundError(
                f"the official split needs train_val_list.txt and test_list.txt under "
                f"{release.root}: pass --train-val-list FILE --test-list FILE, or use "
                "--protocol random for a patient-grouped random split"
            )
        split = official_split(
            release.labels, release.train_val, release.test, val_fraction=val_fraction, seed=seed
        )
        prov = {"protocol": "official", "val_fraction": val_fraction, "seed": seed}
    elif protocol == "random":
        split = random_split(release.labels, fractions=fractions, seed=seed)
        prov = {"protocol": "random", "fractions": list(fractions), "seed": seed}
    else:
        raise ValueError(f"unknown split protocol {quote(protocol)}: use 'official' or 'random'")
    prov["label_file"] = release.report.path
    prov["label_sha256"] = release.report.sha256
    return split, prov


def resplit(
    prepared: str | Path,
    out: str | Path,
    *,
    protocol: str = "official",
    val_fraction: float = 0.1,
    fractions=(0.7, 0.1, 0.2),
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Another patient-disjoint split of a prepared release's label file, written to ``out``
    with its provenance (``cxrkit split``). Returns ``(split table, labels)``."""
    info = load_prepared(prepared).info
    release = load_release(info["release_root"], label_file=info["files"]["labels"])
    table, prov = make_split(
        release, protocol=protocol, val_fraction=val_fraction, fractions=tuple(fractions), seed=seed
    )
    save_split(table, out, **prov)
    return table, release.labels


def prepare(
    root: str | Path | ReleaseSources,
    out: str | Path,
    *,
    settings: PreprocessSettings | None = None,
    images_root: str | Path | list | tuple | None = None,
    label_file: str | Path | None = None,
    box_file: str | Path | None = None,
    train_val_list: str | Path | None = None,
    test_list: str | Path | None = None,
    on_missing: str = "error",
    protocol: str = "official",
    val_fraction: float = 0.1,
    fractions=(0.7, 0.1, 0.2),
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Prepared:
    """Read, validate, split and cache a release (see the module docstring).

    The finding options (``images_root``, one folder or several, ``label_file``,
    ``box_file``, the two lists, ``on_missing``) are :class:`ReleaseSources`', shared with
    ``cxrkit validate``; ``root`` may be one (then those keywords are not used). A run that
    fails before writing anything leaves no ``out`` folder behind it (one it did not
    create is left as it was).
    """
    sources = (
        root
        if isinstance(root, ReleaseSources)
        else ReleaseSources(
            root,
            images_roots=images_root or (),
            label_file=label_file,
            box_file=box_file,
            train_val_list=train_val_list,
            test_list=test_list,
            on_missing=on_missing,
        )
    )
    root, on_missing = sources.root, sources.on_missing
    settings = settings or PreprocessSettings()
    out = Path(out)
    created = not out.exists()
    _check_writable(out)
    try:
        release = sources.load()
        log.info(release.report.summary())
        index = sources.find_images()
        with _output_errors(out):
            return _write_prepared(
                release,
                index,
                out,
                settings,
                root=root,
                on_missing=on_missing,
                protocol=protocol,
                val_fraction=val_fraction,
                fractions=fractions,
                seed=seed,
                workers=workers,
                progress=progress,
            )
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing written: leave no empty --out folder behind
        raise


def _write_prepared(
    release,
    index,
    out: Path,
    settings,
    *,
    root,
    on_missing,
    protocol,
    val_fraction,
    fractions,
    seed,
    workers,
    progress,
) -> Prepared:
    """The writing half of :func:`prepare`: match, split, cache, tables, dataset.json."""
    layout = PreparedFolder(out)
    table = match_images(release.labels, index, on_missing=on_missing, dropped_path=layout.dropped)
    split, prov = make_split(
        release, protocol=protocol, val_fraction=val_fraction, fractions=fractions, seed=seed
    )
    if release.boxes is not None and protocol == "official":
        boxed = set(release.boxes["image_id"])
        log.info(BOX_TEST_NOTE.format(n_boxed=len(boxed), n_test=len(boxed & set(release.test))))
    fingerprint = {"labels_sha256": release.report.sha256, "files": release.files}
    build_cache(
        list(zip(table["image_id"], table["path"], strict=True)),
        out,
        settings,
        workers=workers,
        progress=progress,
        inputs_fingerprint=fingerprint,
    )
    write_csv(table.drop(columns=["path"]), layout.labels)
    save_split(split, layout.split, **prov)
    if release.boxes is not None:
        write_csv(release.boxes, layout.boxes)
    else:
        layout.boxes.unlink(missing_ok=True)
    write_json(
        {
            "cxrkit_version": __version__,
            "release_root": str(Path(root).resolve()),
            "files": release.files,
            "label_report": release.report.to_dict(),
            "box_report": release.box_report.to_dict() if release.box_report else None,
            "images_on_disk": len(table),
            "images_in_labels": len(release.labels),
            "on_missing": on_missing,
            "split": prov,
        },
        layout.dataset,
    )
    return load_prepared(out)


#: errno -> the words an output failure is reported in
_OUTPUT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a folder",
}


def _check_writable(out: Path) -> None:
    """Create ``out`` and write (and remove) a probe file there, before anything is read."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".cxrkit-write-test-"):
            pass
    except OSError as e:
        why = _OUTPUT_ERRNOS.get(e.errno, e.strerror or type(e).__name__)  # type: ignore[arg-type]
        raise WriteError(
            f"cannot write the prepared folder {out}: {why} (prepare needs a "
            "folder it may create and write; choose another --out)"
        ) from None


@contextmanager
def _output_errors(out: Path):
    """A full disk or a lost write permission while writing ``out``: one line naming the
    file and saying what is left. The image cache is never half-valid: a finished cache
    is kept (a re-run only rewrites the tables), an unfinished build keeps its partial
    files and resumes on a re-run; every temporary file is removed by its writer."""
    try:
        yield
    except OSError as e:
        if e.errno not in _OUTPUT_ERRNOS:
            raise
        if (out / "manifest.json").exists():
            state = "the image cache is complete and kept"
        elif any(out.glob("*.partial*")):
            state = "the unfinished image cache is kept and resumes on a re-run"
        else:
            state = "no image cache was written"
        what = (
            str(e)
            if isinstance(e, WriteError)
            # WriteError names its file already
            else (f"cannot write {e.filename or out}: {_OUTPUT_ERRNOS[e.errno]}")
        )
        raise WriteError(f"{what}; {state} (free space or fix permissions, then re-run)") from None


def load_prepared(path: str | Path) -> Prepared:
    """Reopen a folder written by :func:`prepare` (checks it is complete)."""
    path = Path(path)
    layout = PreparedFolder(path)
    for name in PreparedFolder.REQUIRED:
        if not (path / name).exists():
            raise FileNotFoundError(
                f"{path} is not a prepared folder: {name} is missing (run `cxrkit prepare` first)"
            )
    cache = ImageCache(path)
    labels = read_csv(layout.labels, dtype={"image_id": str, "sex": str, "view": str})
    ok = labels["image_id"].isin(pd.Index(cache.ids))
    if not ok.all():
        bad = labels.loc[~ok, "image_id"].tolist()
        warnings.warn(
            f"{len(bad)} image(s) could not be decoded and are excluded: "
            f"{bad[:5]}{' ...' if len(bad) > 5 else ''} (see {path / 'index.csv'})",
            stacklevel=2,
        )
        labels = labels.loc[ok].reset_index(drop=True)
    split = load_split(layout.split)  # checks columns, values and leakage
    boxes = read_csv(layout.boxes) if layout.boxes.exists() else None
    info = read_json(layout.dataset)
    return Prepared(root=path, cache=cache, labels=labels, split=split, boxes=boxes, info=info)

"""The image cache: every X-ray decoded once into one memory-mapped ``uint8`` array.

Decoding a 1024 px NIH PNG costs ~10-15 ms; reading a row of the cache costs
microseconds. ``cxrkit prepare`` calls :func:`build_cache`, training opens
:class:`ImageCache`. A cache folder holds:

``images.npy``     ``uint8`` ``(N, S, S)``, one row per input item, in input order
                   (rows of images that failed to decode are black and never served);
``index.csv``      ``row, image_id, status ('ok'|'error'), error, height, width,
                   crop_x0, crop_y0, crop_x1, crop_y1, path``: height/width of the
                   decoded file and the source region that was resized (see
                   :class:`~cxrkit.data.images.PixelMap`), in source pixels;
``manifest.json``  what made it: cxrkit and library versions, the
                   :class:`PreprocessSettings`, a fingerprint of the image files (sha256
                   over sorted ``image_id, file name, size, mtime``), the caller's
                   ``inputs`` (e.g. label-file hashes), counts and build time.

Crash safety: a build writes ``images.npy.partial`` plus a per-row status array, and
checkpoints every :data:`CHECKPOINT_SECONDS` (pixels fsynced before the status that
says they are done). A killed build, re-run with the same items and settings, decodes
only the rows not yet done. ``images.npy`` appears by atomic rename when every row is
done, and ``manifest.json`` is written last, atomically; :class:`ImageCache` refuses a
folder without it, so a half-built cache never looks valid. ``cache.lock`` (an
``flock``) stops two builds from sharing a folder. The build machinery (partial files,
checkpoints, worker processes) lives in :mod:`cxrkit.data._cache_build`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import PIL

from cxrkit import __version__
from cxrkit.artefacts import read_csv, write_csv, write_json
from cxrkit.data._cache_build import PartialBuild, decode_rows, fsync_dir
from cxrkit.data.images import PixelMap, PreprocessSettings
from cxrkit.messages import quote

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  #: version of the folder layout described above
IMAGES, INDEX, MANIFEST = "images.npy", "index.csv", "manifest.json"
OK, ERROR = "ok", "error"
_GEOMETRY = ("height", "width", "crop_x0", "crop_y0", "crop_x1", "crop_y1")


class CacheNotReadyError(FileNotFoundError):
    """A folder is not a complete image cache (never built, or the build did not finish)."""


# ---------------------------------------------------------------- building


def images_fingerprint(items) -> dict:
    """sha256 over sorted ``(image_id, file name, size, mtime_ns)``; missing files count.

    Cheap (one ``stat`` per file, no reading) and changes whenever a file is replaced,
    edited or touched. Moving the whole release to another folder keeps it.
    """
    lines = []
    missing = 0
    for image_id, path in items:
        try:
            st = os.stat(path)
            lines.append(f"{image_id}\t{Path(path).name}\t{st.st_size}\t{st.st_mtime_ns}\n")
        except OSError:
            missing += 1
            lines.append(f"{image_id}\t{Path(path).name}\t-1\t-1\n")
    h = hashlib.sha256()
    for line in sorted(lines):
        h.update(line.encode())
    return {"sha256": h.hexdigest(), "n_images": len(lines), "missing_files": missing}


def build_cache(
    items,
    out_dir: str | Path,
    settings: PreprocessSettings,
    *,
    workers: int | None = None,
    progress: bool = True,
    inputs_fingerprint: dict | None = None,
) -> ImageCache:
    """Decode ``items`` (a sequence of ``(image_id, path)``) once into a cache at ``out_dir``.

    ``workers``: processes to decode with; ``None`` = every core this process may use,
    ``0`` = in this process (for debugging; the same code path otherwise). Each worker
    writes pixels into the shared ``images.npy.partial`` and returns only a status.
    Workers start from a ``forkserver`` (see ``_cache_build._pool_context``), so a
    script that calls this with workers must do so under ``if __name__ == "__main__":``,
    as with any multiprocessing outside ``fork``.

    Returns the existing cache untouched when its settings and image fingerprint match
    (only the manifest's ``inputs`` are refreshed if ``inputs_fingerprint`` changed);
    resumes an unfinished build of the same items and settings; otherwise rebuilds,
    removing the old manifest first so the folder is never a mix. Images that fail to
    decode are recorded in ``index.csv``, logged and warned about, and excluded.
    """
    t0 = time.perf_counter()
    if not isinstance(settings, PreprocessSettings):
        raise TypeError(f"settings must be a PreprocessSettings, got {type(settings).__name__}")
    ids, paths = _check_items(items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = images_fingerprint(zip(ids, paths))
    inputs = json.loads(json.dumps(inputs_fingerprint or {}, sort_keys=True, default=str))
    with _BuildLock(out):
        manifest = _read_manifest(out)
        if (
            manifest is not None
            and manifest.get("settings") == settings.to_dict()
            and manifest.get("fingerprint") == fingerprint
            and (out / IMAGES).exists()
            and (out / INDEX).exists()
        ):
            PartialBuild.remove(out)  # leftovers of a build killed after its manifest
            if manifest.get("inputs") != inputs:
                manifest["inputs"] = inputs
                write_json(manifest, out / MANIFEST)
                log.info(
                    "image cache %s: images and settings unchanged, manifest inputs updated", out
                )
            else:
                log.info("image cache %s is up to date (%d images)", out, len(ids))
            return ImageCache(out)
        _invalidate(out)
        identity = {
            "settings": settings.to_dict(),
            "fingerprint": fingerprint,
            "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        }
        build = PartialBuild(out, identity, (len(ids), settings.size, settings.size))
        done = build.open()
        if done:
            log.info(
                "resuming the image cache build in %s: %d of %d images already done",
                out,
                done,
                len(ids),
            )
        n_workers = decode_rows(build, paths, settings, workers, progress)
        _finish(
            build,
            out,
            ids,
            paths,
            settings,
            fingerprint,
            inputs,
            {
                "workers": n_workers,
                "seconds": round(time.perf_counter() - t0, 3),
                "resumed_with": done,
            },
        )
    cache = ImageCache(out)
    if len(cache.errors):
        shown = "; ".join(
            f"{r.image_id} ({r.path}): {r.error}" for r in cache.errors.head(5).itertuples()
        )
        warnings.warn(
            f"{len(cache.errors)} of {len(ids)} image(s) could not be decoded and "
            f"are excluded from the cache: {shown} (all listed in "
            f"{out / INDEX})",
            stacklevel=2,
        )
    return cache


def _check_items(items) -> tuple[list[str], list[str]]:
    ids, paths = [], []
    for k, item in enumerate(items):
        try:
            image_id, path = item
        except (TypeError, ValueError):
            raise ValueError(f"items[{k}] is {quote(item)}, expected (image_id, path)") from None
        if not isinstance(image_id, str) or not image_id:
            raise ValueError(f"items[{k}]: image_id must be a non-empty str, got {quote(image_id)}")
        ids.append(image_id)
        paths.append(os.fspath(path))
    if not ids:
        raise ValueError("no images to cache (items is empty)")
    dup = pd.Index(ids)
    if not dup.is_unique:
        names = dup[dup.duplicated()].unique().tolist()
        raise ValueError(
            f"{len(names)} image_id(s) occur more than once in items, e.g. {names[:5]}"
        )
    return ids, paths


def _finish(
    build: PartialBuild, out: Path, ids, paths, settings, fingerprint, inputs, build_info: dict
) -> None:
    """Index, rename, manifest last: the order that makes a half-done cache invalid."""
    status, errors = build.close()
    ok = status[:, 0] == 1
    index = pd.DataFrame(
        {
            "row": np.arange(len(ids)),
            "image_id": ids,
            "status": np.where(ok, OK, ERROR),
            "error": [errors.get(r, "") for r in range(len(ids))],
            **{c: pd.array(status[:, k], dtype="Int64") for k, c in enumerate(_GEOMETRY, 1)},
            "path": paths,
        }
    )
    index.loc[~ok, list(_GEOMETRY)] = pd.NA  # unknown for files that did not decode
    write_csv(index, out / INDEX)
    os.replace(build.images_path, out / IMAGES)
    fsync_dir(out)
    seconds = build_info["seconds"]
    build_info["images_per_s"] = (
        round((len(ids) - build_info["resumed_with"]) / seconds, 2) if seconds > 0 else None
    )
    write_json(
        {
            "format": "cxrkit-image-cache",
            "format_version": CACHE_FORMAT,
            "cxrkit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": settings.to_dict(),
            "shape": [len(ids), settings.size, settings.size],
            "dtype": "uint8",
            "counts": {"total": len(ids), "ok": int(ok.sum()), "error": int((~ok).sum())},
            "fingerprint": fingerprint,
            "inputs": inputs,
            "versions": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "pillow": PIL.__version__,
                "opencv": cv2.__version__,
                "pandas": pd.__version__,
            },
            "build": build_info,
        },
        out / MANIFEST,
    )
    PartialBuild.remove(out)
    log.info(
        "image cache %s: %d ok, %d error, %.1f s", out, int(ok.sum()), int((~ok).sum()), seconds
    )


def _invalidate(out: Path) -> None:
    """Make ``out`` not-a-cache before touching its contents: manifest first."""
    if (out / MANIFEST).exists():
        (out / MANIFEST).unlink()
        fsync_dir(out)
    for name in (IMAGES, INDEX):
        if (out / name).exists():
            (out / name).unlink()


def _read_manifest(root: Path) -> dict | None:
    try:
        m = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == "cxrkit-image-cache" else None


class _BuildLock:
    """An exclusive ``flock`` on ``out/cache.lock``: two builds must not share a folder."""

    def __init__(self, out: Path):
        self.path = out / "cache.lock"
        self.fd: int | None = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise RuntimeError(
                f"another process is building the image cache in "
                f"{self.path.parent} (it holds {self.path})"
            ) from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock


# ---------------------------------------------------------------- reading


class ImageCache:
    """A finished cache folder, opened read-only.

    ``images`` is the ``(N, S, S)`` ``uint8`` memmap of *all* rows, indexed by the
    ``row`` numbers that :meth:`rows` returns; ``index`` holds only images that decoded
    (``errors`` the others) and ``ids`` their names. Pickling (e.g. into DataLoader
    workers) carries the tables but not the memmap, which each process reopens lazily.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = _read_manifest(self.root)
        if manifest is None:
            raise CacheNotReadyError(_not_ready_message(self.root))
        self.manifest = manifest
        self.settings = PreprocessSettings.from_dict(manifest["settings"])
        index = read_csv(
            self.root / INDEX,
            keep_default_na=False,
            na_values={c: [""] for c in _GEOMETRY},
            dtype={
                "image_id": str,
                "status": str,
                "error": str,
                "path": str,
                **dict.fromkeys(_GEOMETRY, "Int64"),
            },
        )
        n = manifest["shape"][0]
        if len(index) != n or (index["status"] == OK).sum() != manifest["counts"]["ok"]:
            raise ValueError(
                f"image cache {self.root} is inconsistent: {INDEX} has "
                f"{len(index)} rows, the manifest says {n}; rebuild it"
            )
        self.index = (
            index.loc[index["status"] == OK]
            .reset_index(drop=True)
            .astype(dict.fromkeys(_GEOMETRY, np.int64))
        )
        self.errors = index.loc[index["status"] != OK].reset_index(drop=True)
        self.ids = self.index["image_id"].tolist()
        self._rows = self.index["row"].to_numpy(np.int64)
        self._lookup: pd.Index | None = None
        self._images: np.ndarray | None = None
        if self.images.shape != tuple(manifest["shape"]) or self.images.dtype != np.uint8:
            raise ValueError(
                f"{self.root / IMAGES} holds {self.images.dtype} "
                f"{self.images.shape}, the manifest says uint8 "
                f"{tuple(manifest['shape'])}; rebuild the cache"
            )

    @property
    def size(self) -> int:
        """Side of the square cached images, pixels."""
        return self.settings.size

    @property
    def images(self) -> np.ndarray:
        """All rows, ``uint8`` ``(N, S, S)``, memory-mapped read-only (opened on first use)."""
        if self._images is None:
            self._images = np.load(self.root / IMAGES, mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"ImageCache({str(self.root)!r}: {len(self)} images at {self.size}px, "
            f"{len(self.errors)} errors, {self.settings})"
        )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None, "_lookup": None}

    def rows(self, image_ids) -> np.ndarray:
        """Rows of ``images`` for ``image_ids`` (vectorised); unknown ids raise KeyError."""
        return self._rows[self._positions(image_ids)]

    def _positions(self, image_ids) -> np.ndarray:
        """Positions in ``index`` of ``image_ids``; KeyError naming any not cached."""
        if isinstance(image_ids, str):
            image_ids = [image_ids]
        if self._lookup is None:
            self._lookup = pd.Index(self.ids)
        pos = self._lookup.get_indexer(pd.Index(image_ids, dtype=object))
        if (pos < 0).any():
            missing = [i for i, p in zip(image_ids, pos, strict=True) if p < 0]
            failed = dict(zip(self.errors["image_id"], self.errors["error"], strict=True))
            shown = ", ".join(
                f"{quote(m)} (failed to decode: {failed[m]})" if m in failed else repr(m)
                for m in missing[:5]
            )
            raise KeyError(
                f"{len(missing)} image id(s) not in the cache at {self.root}: "
                f"{shown}{' ...' if len(missing) > 5 else ''}"
            )
        return pos

    def image(self, image_id: str) -> np.ndarray:
        """One cached image, ``uint8`` ``(S, S)`` (a copy)."""
        return np.array(self.images[self.rows([image_id])[0]])

    def pixel_map(self, image_id: str, *, source_size: float | None = None) -> PixelMap:
        """Map from the source image's pixels to this cache's (crop and resize).

        ``source_size``: side of the square space the coordinates you map are in, when
        that is not the decoded file's own pixels; for NIH boxes pass 1024 (NIH gives
        them in 1024 space whatever file you decoded, e.g. the 256 px copies).
        """
        r = self.index.iloc[self._positions([image_id])[0]]
        box = np.array([r.crop_x0, r.crop_y0, r.crop_x1, r.crop_y1], dtype=float)
        if source_size is not None:
            box *= np.array([source_size / r.width, source_size / r.height] * 2)
        return PixelMap(box=tuple(float(v) for v in box), size=self.size)  # type: ignore[arg-type]

    def map_boxes(self, boxes: pd.DataFrame, *, source_size: float | None = None):
        """``boxes`` (``image_id, x, y, w, h``) moved into cache pixels (a copy).

        Vectorised :meth:`pixel_map` over rows; ``x, y`` is the top-left corner.
        """
        t = self.index.iloc[self._positions(boxes["image_id"].tolist())]
        fx = (source_size / t["width"].to_numpy()) if source_size else 1.0
        fy = (source_size / t["height"].to_numpy()) if source_size else 1.0
        x0, y0 = t["crop_x0"].to_numpy() * fx, t["crop_y0"].to_numpy() * fy
        sx = self.size / ((t["crop_x1"].to_numpy() - t["crop_x0"].to_numpy()) * fx)
        sy = self.size / ((t["crop_y1"].to_numpy() - t["crop_y0"].to_numpy()) * fy)
        out = boxes.copy()
        out["x"] = (boxes["x"].to_numpy(float) - x0) * sx
        out["y"] = (boxes["y"].to_numpy(float) - y0) * sy
        out["w"] = boxes["w"].to_numpy(float) * sx
        out["h"] = boxes["h"].to_numpy(float) * sy
        return out


def _not_ready_message(root: Path) -> str:
    if not root.exists():
        return f"no image cache at {root}: the folder does not exist (run `cxrkit prepare`)"
    if any(root.glob("*.partial*")):
        return (
            f"{root} holds an unfinished image cache build (no {MANIFEST}): re-run "
            "`cxrkit prepare` with the same settings to resume it"
        )
    return (
        f"{root} is not an image cache: {MANIFEST} is missing or unreadable (run `cxrkit prepare`)"
    )

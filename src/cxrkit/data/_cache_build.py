"""The machinery of one image-cache build: partial files, checkpoints, worker processes.

Private to :mod:`cxrkit.data.cache`, which owns the folder layout and the public API.
Here: :class:`PartialBuild` (the unfinished state on disk and its crash-safe
checkpoints) and :func:`decode_rows` (decode every row not yet done, in this process or
a pool of processes that write pixels straight into the shared memmap).
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import json
import logging
import multiprocessing
import os
import select
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cxrkit.artefacts import WriteError, human_bytes, write_json
from cxrkit.data.images import (
    ImageReadError,
    PreprocessSettings,
    check_min_size,
    preprocess,
    read_xray,
)

log = logging.getLogger("cxrkit.data.cache")  # messages belong to the public module

PARTIAL_IMAGES = "images.npy.partial"
#: Seconds between checkpoints of a running build (what a kill can cost, at most).
CHECKPOINT_SECONDS = 2.0
#: Seconds without a finished chunk after which a running build logs a warning.
STALL_SECONDS = 300

# ---------------------------------------------------------------- on-disk state


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in ``path`` durable (POSIX; a no-op elsewhere)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PartialBuild:
    """An unfinished build in ``out``: partial images, a per-row status, error messages.

    ``status`` is ``int32`` ``(N, 7)``: state (0 todo, 1 ok, 2 error), decoded height
    and width, and the crop box ``x0, y0, x1, y1``. It lives in memory and is copied to
    ``status.partial.npy`` at each checkpoint, after the pixels it vouches for are
    fsynced; error messages go to ``errors.partial.jsonl`` the same way.
    ``build.partial.json`` (settings + fingerprint + id order) is written last when a
    build starts and removed first when it is discarded: no resume without it.
    """

    def __init__(self, out: Path, identity: dict, shape: tuple[int, int, int]):
        self.out, self.identity, self.shape = out, identity, shape
        self.images_path = out / PARTIAL_IMAGES
        self.status_path = out / "status.partial.npy"
        self.errors_path = out / "errors.partial.jsonl"
        self.identity_path = out / "build.partial.json"
        self.status = np.zeros((shape[0], 7), np.int32)
        self.errors: dict[int, str] = {}
        self._new_errors: dict[int, str] = {}
        self._dirty = False
        self._last = time.monotonic()

    @staticmethod
    def remove(out: Path) -> None:
        for name in (
            "build.partial.json",
            "status.partial.npy",
            "errors.partial.jsonl",
            PARTIAL_IMAGES,
        ):
            (out / name).unlink(missing_ok=True)

    def _resumable(self) -> bool:
        try:
            if json.loads(self.identity_path.read_text()) != self.identity:
                return False
            images = np.load(self.images_path, mmap_mode="r")
            status = np.load(self.status_path, mmap_mode="r")
            return images.shape == self.shape and status.shape == self.status.shape
        except (OSError, ValueError):
            return False

    def open(self) -> int:
        """Resume a matching unfinished build or start afresh; returns rows already done."""
        if self._resumable():
            self.status = np.array(np.load(self.status_path))
            lines = self.errors_path.read_text().splitlines() if self.errors_path.exists() else []
            for line in lines:
                try:
                    row, msg = json.loads(line)
                    self.errors[int(row)] = msg
                except ValueError:
                    continue  # a line cut by a kill: its row is redone below
            lost = (self.status[:, 0] == 2) & ~np.isin(np.arange(self.shape[0]), list(self.errors))
            self.status[lost] = 0
        else:
            self.remove(self.out)
            self._check_space()
            images = np.lib.format.open_memmap(self.images_path, "w+", np.uint8, self.shape)
            offset = images.offset
            del images
            self._preallocate(offset + int(np.prod(self.shape)))
            np.save(self.status_path, self.status)
            self.errors_path.write_text("")
            write_json(self.identity, self.identity_path)
        self._status_file = np.load(self.status_path, mmap_mode="r+")
        self._images_fd = os.open(self.images_path, os.O_RDWR)
        return self.n_done()

    def needed_bytes(self) -> int:
        """Disk space a fresh build takes: the image array (+ its 128-byte ``.npy`` header),
        the status array, and 64 KiB for the index, manifest and error log."""
        return int(np.prod(self.shape)) + 128 + self.status.nbytes + 128 + 65536

    def _space_error(self, free: int) -> WriteError:
        n, s = self.shape[0], self.shape[1]
        return WriteError(
            f"not enough disk space in {self.out} for the image cache: it needs "
            f"{human_bytes(self.needed_bytes())} for {n:,} images of {s}x{s} px, "
            f"{human_bytes(free)} are free (free some space, choose another --out, or a "
            "smaller --size); no image data was written"
        )

    def _check_space(self) -> None:
        """Refuse before allocating: a memmap on a disk that fills up dies by SIGBUS."""
        free = shutil.disk_usage(self.out).free
        if free < self.needed_bytes():
            raise self._space_error(free)

    def _preallocate(self, nbytes: int) -> None:
        """Reserve the disk space now: a full disk under a memmap is a SIGBUS later."""
        if not hasattr(os, "posix_fallocate"):
            return
        fd = os.open(self.images_path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                fd = None  # type: ignore[assignment]  # closed: finally must not close it
                self.remove(self.out)
                raise self._space_error(shutil.disk_usage(self.out).free) from None
            # EOPNOTSUPP/EINVAL: this file system cannot preallocate; writes allocate
        finally:
            if fd is not None:
                os.close(fd)

    def n_done(self) -> int:
        return int((self.status[:, 0] != 0).sum())

    def todo_rows(self) -> np.ndarray:
        return np.flatnonzero(self.status[:, 0] == 0)

    def record(self, row: int, ok: bool, h: int, w: int, box, msg: str) -> None:
        self.status[row] = (1 if ok else 2, h, w, *box)
        if not ok:
            self.errors[row] = self._new_errors[row] = msg
        self._dirty = True

    def checkpoint(self, *, force: bool = False) -> None:
        """Persist progress: fsync pixels, then errors, then the status that names them."""
        if not self._dirty or (not force and time.monotonic() - self._last < CHECKPOINT_SECONDS):
            return
        os.fsync(self._images_fd)
        if self._new_errors:
            with open(self.errors_path, "a") as f:
                f.writelines(json.dumps([r, m]) + "\n" for r, m in self._new_errors.items())
                f.flush()
                os.fsync(f.fileno())
            self._new_errors.clear()
        self._status_file[:] = self.status
        self._status_file.flush()
        self._dirty = False
        self._last = time.monotonic()

    def close(self) -> tuple[np.ndarray, dict[int, str]]:
        """Last checkpoint; closes the files. Every row must be done by now."""
        self.checkpoint(force=True)
        del self._status_file
        os.close(self._images_fd)
        if self.n_done() != self.shape[0]:
            raise RuntimeError(
                f"image cache build in {self.out}: "
                f"{self.shape[0] - self.n_done()} rows were never decoded"
            )
        return self.status, self.errors


# ---------------------------------------------------------------- decoding (worker side)

_worker: dict = {}  # per process: the open memmap and the settings (set by _init_worker)


def _init_worker(images_path: str, settings: dict, build_pid: int | None = None) -> None:
    """Open the partial image array read-write in this process (pool initializer).

    ``build_pid`` (pool workers only): the build process, whose death ends this worker.
    """
    if build_pid is not None:
        cv2.setNumThreads(1)  # one process per core already; threads would oversubscribe
        _exit_with(build_pid)
    _worker["images"] = np.load(images_path, mmap_mode="r+")
    _worker["settings"] = PreprocessSettings.from_dict(settings)


def _exit_with(pid: int) -> None:
    """End this worker when process ``pid`` ends, even by ``kill -9``.

    Workers are children of multiprocessing's forkserver, not of the build, and wait on
    a task pipe whose write end they hold themselves: without this watch they would
    outlive a killed build forever (and keep the forkserver alive). A daemon thread
    waits on a pidfd (Linux 5.3+; no CPU) or else polls once a second.
    """

    def watch():
        try:
            fd = os.pidfd_open(pid)
            select.select([fd], [], [])
        except (AttributeError, OSError):
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        os._exit(1)

    threading.Thread(target=watch, name="cxrkit-build-watch", daemon=True).start()


def _cache_chunk(chunk: list[tuple[int, str]]) -> list[tuple]:
    """Decode and write rows; return only ``(row, ok, h, w, box, error)`` per image.

    Pixels go straight into the shared memmap, so nothing large crosses processes.
    Any failure of one image becomes that row's error; it never stops the chunk.
    """
    images, s = _worker["images"], _worker["settings"]
    results = []
    for row, path in chunk:
        try:
            img = check_min_size(read_xray(path), path)
            out, pmap = preprocess(img, size=s.size, clahe=s.clahe, crop=s.crop, return_map=True)
            images[row] = out
            results.append((row, True, img.shape[0], img.shape[1], pmap.box, ""))
        except Exception as e:  # noqa: BLE001 - recorded per image, reported at the end
            msg = e.reason if isinstance(e, ImageReadError) else f"{type(e).__name__}: {e}"
            results.append((row, False, 0, 0, (0, 0, 0, 0), msg))
    return results


def decode_rows(
    build: PartialBuild,
    paths: list[str],
    settings: PreprocessSettings,
    workers: int | None,
    progress: bool,
) -> int:
    """Decode every row not yet done into ``build``; returns the worker count used."""
    todo = build.todo_rows()
    n_total = build.shape[0]
    if workers is None:
        workers = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = in this process), got {workers}")
    # ~32 chunks per worker balance the tail (no worker idles long while another
    # finishes its last chunk); at most 32 images (0.4 s of 1024 px PNGs) per chunk keeps
    # the per-chunk cost (two small pickles, a checkpoint check) under 1 %.
    chunk = max(1, min(32, len(todo) // (32 * max(1, workers))))
    chunks = [[(int(r), paths[r]) for r in todo[i : i + chunk]] for i in range(0, len(todo), chunk)]
    workers = min(workers, len(chunks))
    bar = tqdm(
        total=n_total,
        initial=n_total - len(todo),
        unit="img",
        smoothing=0.1,
        desc="caching images",
        disable=not progress,
        dynamic_ncols=True,
    )
    args = (str(build.images_path), settings.to_dict())
    try:
        if workers == 0:
            _init_worker(*args)
            for c in chunks:
                _record(build, _cache_chunk(c), bar, paths)
        else:
            _decode_pool(build, chunks, workers, args, bar, paths)
    except BaseException:
        log.warning(
            "image cache build in %s stopped with %d of %d images done; re-run to resume",
            build.out,
            build.n_done(),
            n_total,
        )
        raise
    finally:
        _worker.clear()
        bar.close()
        build.checkpoint(force=True)
    return workers


def _decode_pool(build, chunks, workers: int, args: tuple, bar, paths) -> None:
    """Chunks over a process pool, at most ``4 * workers`` in flight, unordered."""
    with cf.ProcessPoolExecutor(
        workers, mp_context=_pool_context(), initializer=_init_worker, initargs=(*args, os.getpid())
    ) as pool:
        pending: set = set()
        queue = iter(chunks)
        try:
            while True:
                while len(pending) < 4 * workers:
                    c = next(queue, None)
                    if c is None:
                        break
                    pending.add(pool.submit(_cache_chunk, c))
                if not pending:
                    break
                finished, pending = cf.wait(
                    pending, timeout=STALL_SECONDS, return_when=cf.FIRST_COMPLETED
                )
                if not finished:
                    log.warning(
                        "image cache build in %s: no image finished in the last %d s "
                        "(a stuck file system, or stuck workers?)",
                        build.out,
                        STALL_SECONDS,
                    )
                for f in finished:
                    _record(build, f.result(), bar, paths)
        except cf.process.BrokenProcessPool as e:
            raise RuntimeError(
                f"an image cache worker process died ({e}); the build can be resumed. "
                "Out of memory? Or, if it died at start: workers start from a forkserver "
                "and import the main module, so a script that builds a cache must do so "
                "under `if __name__ == '__main__':` and be a file (not stdin); workers=0 "
                "decodes in this process instead."
            ) from e
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _pool_context():
    """Workers start from a clean ``forkserver`` process, never by forking the caller.

    Forking the caller copies its threads' locks mid-state: a process that has already
    run OpenCV (whose thread pool is then copied half-alive) or torch can deadlock its
    forked workers, and one such hang was seen in this test suite with plain ``fork``.

    The server is one per process, shared with every other forkserver user in it (the
    decoder's workers, the phantom twin's pool): it is started by the first pool that
    needs it, with the preload list set last before then, imports those modules once
    (~0.5 s), and each later worker forks from it in milliseconds; a preload set after
    the server is running changes nothing. Platforms without forkserver use ``spawn``.

    The caller's main module: each worker imports it itself, as ``__mp_main__`` (from its
    file, or by module name for ``python -m pkg.mod``; not for ``python -m pkg`` or a
    ``-c`` string), because multiprocessing sends its path with every child.
    Hence a script that builds a cache with workers must do so under
    ``if __name__ == "__main__":``, must be a file (a script read from stdin kills every
    worker: its ``<stdin>`` path cannot be opened), and pays its imports once per worker.
    The ``"__main__"`` preload below would import it once in the server instead, but
    CPython 3.10-3.12 ignore it (the server looks for a ``main_path`` that
    ``spawn.get_preparation_data`` stopped sending in 2013: CPython gh-98552, gh-137996);
    the fix (gh-126631) is in 3.14 and later 3.13 releases, where the server runs the
    script once and the workers inherit it. Python 3.11 (this project's) is unfixed:
    checked by a script printing its ``__name__``, imported once per worker.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])  # the server's first start only
    return ctx


def _record(build: PartialBuild, results: list[tuple], bar, paths: list[str]) -> None:
    for row, ok, h, w, box, msg in results:
        if not ok:
            log.warning("image %s cannot be cached (row %d): %s", paths[row], row, msg)
        build.record(row, ok, h, w, box, msg)
    bar.update(len(results))
    build.checkpoint()

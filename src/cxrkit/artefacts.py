"""Artefacts on disk: how every stage writes, hashes and versions its files, and where.

One low-level module (standard library only, the bottom layer) so that each of these is
decided once:

* **Writing.** A file a stage writes appears whole or not at all: :func:`atomic_path`
  hands the writer a new temporary file in the same folder (created exclusively under a
  random name, so a symlink planted at a guessable name is never followed), then fsyncs
  and ``os.replace``\\ s it over the target; on any failure the temporary is removed, so
  a killed run or a full disk never leaves half a file or a stray ``*.tmp``. A missing
  permission, a read-only or full file system becomes :class:`WriteError`: one line that
  names the path and what was needed (the CLI prints it; no traceback).
  :func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`write_csv` and
  :func:`atomic_file` (a binary file object, for ``torch.save``) are thin helpers over it.
* **One writer at a time.** :func:`folder_lock` holds a run folder's ``.cxrkit.lock``
  (an ``flock``) while a stage writes into it; a second writer is refused, naming the
  holder's pid, and a dead holder's lock is simply taken over.
* **CSV for people.** :func:`write_csv` escapes text cells that a spreadsheet would run as
  a formula (``= + - @``, tab, CR: one ``'`` in front, :func:`csv_cell`); :func:`read_csv`
  undoes it for cxrkit's own readers.
* **Hashes** (:func:`file_sha256`) and **versions** (:func:`versions`, read from the
  installed distributions' metadata, so recording them imports nothing heavy).
* **Layouts.** :class:`PreparedFolder` (what ``cxrkit prepare`` writes, what training
  reads) and :class:`RunFolder` (what ``cxrkit train`` writes and ``evaluate``,
  ``explain``, ``localize``, ``predict``, ``export`` and ``serve`` read or add to);
  :func:`resolve_checkpoint` is the one rule for "a run folder or a checkpoint file".
  The CLI never spells a file name of its own.

Why by hand: ``atomicwrites`` is unmaintained and covers neither streaming writers nor
the error translation; the rest is a dozen lines of the standard library each.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

fcntl: Any
try:
    import fcntl
except ImportError:  # Windows: folders are not locked
    fcntl = None


class WriteError(OSError):
    """An output could not be written (permission, read-only or full file system).

    The message is one line: the path, why, and what was needed.
    """


class CheckpointError(ValueError):
    """A file that is not a usable cxrkit checkpoint (names the file and why)."""


# -- writing -------------------------------------------------------------------------------
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_ACCESS = {errno.EACCES, errno.EPERM}


def human_bytes(n: int) -> str:
    """``491,520 bytes (480.0 KiB)``: exact, then readable (binary units)."""
    size, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{int(n):,} bytes" + ("" if unit == "bytes" else f" ({size:.1f} {unit})")


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _explain(path: Path, e: OSError, needed: int | None, written: int = 0) -> WriteError:
    """The one-line :class:`WriteError` for an ``OSError`` met while writing ``path``.

    ``needed``: the full size when known; else ``written``, the bytes that fitted before
    the disk was full (so at least that much more is needed).
    """
    folder = path.parent
    if e.errno in _NO_SPACE:
        free = _free(folder)
        need = (
            f"needs {human_bytes(needed)}"
            if needed
            else f"needs more than the {human_bytes(written)} written"
            if written
            else "needs more space"
        )
        have = f", {human_bytes(free)} free" if free is not None else ""
        why = f"no space left on the device ({need}{have} in {folder})"
    elif e.errno in _NO_ACCESS:
        why = f"permission denied (needs write access to {Path(e.filename or folder)})"
    elif e.errno == errno.EROFS:
        why = f"read-only file system (needs a writable folder instead of {folder})"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in path.parents if p.is_file()), folder)
        why = f"{blocker} is a file, not a folder (needs a folder there)"
    else:
        why = e.strerror or str(e)
    err = WriteError(f"cannot write {path}: {why}")  # str(err) is this one line
    err.errno = e.errno
    return err


def make_folder(folder: str | Path) -> Path:
    """``mkdir -p folder``; a refusal becomes a one-line :class:`WriteError`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _explain(folder / ".", e, None) from None
    return folder


def check_writable(path: str | Path) -> Path:
    """Fail now, before any work, if ``path`` (a file to write) cannot be created.

    Creates the parent folder and a new temporary file there (exclusively: nothing that
    already exists, a planted symlink included, is opened), then removes it.
    """
    path = Path(path)
    with atomic_path(path, commit=False) as tmp:
        tmp.write_bytes(b"")
    return path


@contextmanager
def atomic_path(
    path: str | Path, *, needed: int | None = None, commit: bool = True, durable: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    For writers that want a file name (``savefig``, ``onnx.save``, ``DataFrame.to_csv``).
    ``needed``: the size in bytes when known (checked against the free space first, and
    named in the error). On any exception the temporary is removed; an ``OSError`` about
    permission or space is re-raised as :class:`WriteError`. ``commit=False`` only tests
    that the file could be written (:func:`check_writable`). ``durable=False`` skips the
    fsync (the rename stays atomic): for thousands of small, re-creatable files such as
    saliency overlays, where a power cut may cost a file but a fsync each costs minutes.
    """
    path = Path(path)
    make_folder(path.parent)
    if needed is not None:
        free = _free(path.parent)
        if free is not None and free < needed:
            raise _explain(path, OSError(errno.ENOSPC, "no space"), needed)
    tmp = None
    try:
        tmp = _new_temporary(path)
        yield tmp
        if commit:
            if durable:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, path)
    except OSError as e:
        written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
        _remove(tmp)
        if isinstance(e, WriteError):
            raise
        raise _explain(path, e, needed, written) from None
    except BaseException:
        _remove(tmp)
        raise
    finally:
        if not commit:
            _remove(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process's umask, read once (reading it means setting it).
_UMASK = _umask()


def _new_temporary(path: Path) -> Path:
    """A new, empty file beside ``path``, created exclusively under a random name.

    ``tempfile.mkstemp`` opens with ``O_CREAT | O_EXCL`` (and ``O_NOFOLLOW``), so a file or
    symlink planted at a name an attacker guessed is never followed or truncated; it only
    makes the name be drawn again. The mode is the usual ``0o666 & ~umask`` (mkstemp
    creates ``0o600``), so an output is as readable as one ``open(path, "w")`` would make.
    The suffix stays last: savefig, cv2.imwrite and np.save choose the format by it.
    """
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    return Path(name)


def _remove(tmp: Path | None) -> None:
    if tmp is None:
        return
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    except OSError:  # nothing more can be done; the error being raised says why
        pass


@contextmanager
def atomic_file(path: str | Path, *, needed: int | None = None):
    """A binary file object whose contents replace ``path`` only when the block succeeds."""
    with atomic_path(path, needed=needed) as tmp, open(tmp, "wb") as f:
        yield f


def write_bytes(data: bytes, path: str | Path, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (free space checked first; ``durable``: see
    :func:`atomic_path`)."""
    with atomic_path(path, needed=len(data), durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(text: str, path: str | Path) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(text.encode("utf-8"), path)


def write_json(obj, path: str | Path) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (unknown types via ``str``).

    Always valid JSON (:func:`jsonable`): NaN and infinities are written as ``null``, not
    as the ``NaN`` that Python accepts and every other JSON reader refuses.
    """
    return write_text(
        json.dumps(jsonable(obj), indent=2, sort_keys=True, default=str, allow_nan=False), path
    )


def read_json(path: str | Path, *, missing=None):
    """A JSON object cxrkit wrote (``missing`` when the file does not exist).

    A file that is not UTF-8 JSON, or whose top level is not an object (``{...}``), is a
    ``ValueError`` naming the file, not a ``JSONDecodeError`` naming a line of nothing.
    """
    path = Path(path)
    if not path.exists():
        return missing
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file is "
            "damaged: delete it or write it again"
        ) from None
    if not isinstance(doc, dict):
        # a ValueError, not a TypeError: the CLI says it in one line
        raise ValueError(
            f"{path}: expected a JSON object, "  # noqa: TRY004
            f"found a {type(doc).__name__}"
        )
    return doc


def finite_or_none(x) -> float | None:
    """A finite float, or None (JSON null) for NaN, inf and None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj):
    """Plain JSON types throughout: numpy scalars -> Python, NaN/inf -> None, keys -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


# -- CSV for people ------------------------------------------------------------------------
#: First characters that make a spreadsheet read a cell as a formula (OWASP's list): an
#: image named ``=HYPERLINK(...).png`` would run in Excel or LibreOffice when the CSV opens.
FORMULA_START = frozenset("=+-@\t\r")
#: A plain number (``-0.5``, ``+1e-3``): left as it is, a spreadsheet reads it as a number.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _formula_like(text: str) -> bool:
    """Whether ``text``, once its leading ``'`` are set aside, starts like a formula."""
    rest = text.lstrip("'")
    return rest[:1] in FORMULA_START and not _NUMBER.fullmatch(rest)


def csv_cell(value):
    """``value`` made safe for a spreadsheet: a text starting with ``= + - @``, a tab or a
    carriage return (after any ``'``) gets one ``'`` in front; anything else is returned as
    it is (numbers, including a text such as ``-0.5``, stay numbers).

    Reversible (:func:`csv_plain`): ``'=1+1`` reads back as ``=1+1``, and a text that
    already started with ``'=`` gets a second ``'``, so nothing is ambiguous. Every CSV
    cxrkit writes passes through this (:func:`write_csv`, :func:`csv_row`).
    """
    if isinstance(value, str) and _formula_like(value):
        return "'" + value
    return value


def csv_plain(value):
    """The inverse of :func:`csv_cell`: drop the one ``'`` it added."""
    if isinstance(value, str) and value[:1] == "'" and _formula_like(value[1:]):
        return value[1:]
    return value


def csv_row(values) -> list:
    """:func:`csv_cell` of each value: for writers that stream rows with the csv module."""
    return [csv_cell(v) for v in values]


def _cells(table, fn):
    """``table`` with ``fn`` applied to its text cells, column names and index labels; each
    column keeps its dtype (a blank ``dtype=str`` column stays str, not float64)."""
    import pandas as pd
    from pandas.api.types import is_object_dtype, is_string_dtype

    def text(dtype) -> bool:  # a categorical's categories too (pandas calls it not text)
        return is_object_dtype(dtype) or is_string_dtype(dtype) or text_categories(dtype)

    def text_categories(dtype) -> bool:
        return isinstance(dtype, pd.CategoricalDtype) and text(dtype.categories.dtype)

    table = table.rename(columns=fn, index=fn if text(table.index.dtype) else None)
    columns = [c for c in table.columns if text(table[c].dtype)]
    if columns:
        table = table.copy()
        for c in columns:
            mapped = table[c].map(fn, na_action="ignore")
            categories = isinstance(table[c].dtype, pd.CategoricalDtype)  # map made new ones
            table[c] = mapped if categories else mapped.astype(table[c].dtype)
    return table


def write_csv(table, path: str | Path, *, index: bool = False, **to_csv) -> Path:
    """Write a pandas table (without its index unless ``index``) atomically, text cells
    escaped against formula injection (:func:`csv_cell`). ``to_csv``: more options of
    ``DataFrame.to_csv`` (``float_format``, ...)."""
    return write_text(_cells(table, csv_cell).to_csv(index=index, **to_csv), path)


def read_csv(path: str | Path, **kwargs):
    """``pandas.read_csv`` of a CSV cxrkit wrote, with :func:`csv_cell`'s escapes undone."""
    import pandas as pd

    return _cells(pd.read_csv(path, **kwargs), csv_plain)


# -- hashes and versions ------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(*extra: str) -> dict[str, str]:
    """Versions of python, cxrkit, numpy, torch and the ``extra`` distributions installed.

    Read from package metadata (nothing is imported); a distribution that is not installed
    is left out.
    """
    from cxrkit import __version__

    out = {"python": platform.python_version(), "cxrkit": __version__}
    for name in ("numpy", "torch", *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# -- one writer at a time --------------------------------------------------------------------
#: The lock file of a run folder (see :func:`folder_lock`).
LOCK_FILE = ".cxrkit.lock"
#: The TensorBoard event files ``cxrkit train`` writes into ``tb/`` (SummaryWriter's names).
TENSORBOARD_EVENTS = "events.out.tfevents.*"


class NotARunError(ValueError):
    """A folder that training would write into but that is not a cxrkit run folder."""


class FolderBusyError(RuntimeError):
    """Another cxrkit process is writing into the folder (the message names its pid)."""


_HELD: dict[str, int] = {}  # lock files this process holds -> depth (re-entrant)


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold ``folder/.cxrkit.lock`` while the block writes into ``folder``: one writer at a time.

    An exclusive ``flock`` on the lock file: a second process is refused at once with
    :class:`FolderBusyError`, naming the holder (``pid 1234, cxrkit train, since ...``,
    which the holder writes into the file). The kernel drops the lock when its holder
    exits, killed or not, so a stale lock file costs nothing: the next writer takes it
    over. Released cleanly, the file is removed (and a folder this call created and left
    empty). Re-entrant within a process. Without ``fcntl`` (Windows) nothing is locked.
    """
    folder = Path(folder)
    created = not folder.exists()
    make_folder(folder)
    path = folder / LOCK_FILE
    key = os.path.realpath(path)
    if key in _HELD or fcntl is None:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    fd = _take_lock(path, folder)
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {platform.node()}, {what}, since {stamp}\n".encode(), 0
        )
        _HELD[key] = 1
        try:
            yield path
        finally:
            del _HELD[key]
            _remove(path)  # while still held: a waiting opener re-checks the inode
            if created:  # a writer that wrote nothing leaves no folder behind
                with suppress(OSError):
                    folder.rmdir()
    finally:
        os.close(fd)  # closing drops the flock


def _take_lock(path: Path, folder: Path) -> int:
    """Open ``path`` (never through a symlink) and ``flock`` it, or raise
    :class:`FolderBusyError` naming the holder. Retried when the file was removed by a
    holder releasing it between our open and our lock (then it is not the lock any more)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise _explain(path, e, None) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise FolderBusyError(
                f"{folder} is being written by {holder}; nothing was written. Wait for it to "
                "finish (or stop it), or use another folder."
            ) from None
        try:
            mine, now = os.fstat(fd), os.stat(path, follow_symlinks=False)
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                return fd  # a dead holder's file (kernel dropped its lock) is simply reused
        except FileNotFoundError:
            pass
        os.close(fd)


# -- layouts -------------------------------------------------------------------------------
#: The decision-thresholds sidecar ``cxrkit evaluate`` writes beside the checkpoint.
THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class PreparedFolder:
    """A folder written by ``cxrkit prepare``: the image cache plus the tables describing it."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    labels = property(lambda self: self.root / "labels.csv")  #: typed label table
    split = property(lambda self: self.root / "split.csv")  #: image_id, patient_id, split
    boxes = property(lambda self: self.root / "boxes.csv")  #: NIH boxes (1024 space)
    dataset = property(lambda self: self.root / "dataset.json")  #: what was read
    dropped = property(lambda self: self.root / "dropped_images.csv")  #: on_missing=drop
    images = property(lambda self: self.root / "images.npy")  #: the cache's pixels
    index = property(lambda self: self.root / "index.csv")  #: the cache's rows
    manifest = property(lambda self: self.root / "manifest.json")  #: the cache's manifest
    #: files without which the folder is not a prepared folder
    REQUIRED = ("dataset.json", "labels.csv", "split.csv")


@dataclass(frozen=True)
class RunFolder:
    """A run folder: written by ``cxrkit train``, read and extended by every later stage."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, checkpoint: str | Path) -> RunFolder:
        """The run folder a checkpoint file (or a run folder) belongs to."""
        p = Path(checkpoint)
        return cls(p if p.is_dir() else p.parent)

    best = property(lambda self: self.root / "best.pt")  #: best validation mean AUROC
    last = property(lambda self: self.root / "last.pt")  #: the latest epoch (resume)
    config = property(lambda self: self.root / "config.yaml")  #: the resolved config
    run_json = property(lambda self: self.root / "run.json")  #: manifest and status
    history = property(lambda self: self.root / "metrics.csv")  #: one row per epoch
    curves = property(lambda self: self.root / "curves.png")
    tensorboard = property(lambda self: self.root / "tb")
    box_fold_moved = property(lambda self: self.root / "box_fold_moved.csv")
    thresholds = property(lambda self: self.root / THRESHOLDS_FILE)
    explain = property(lambda self: self.root / "explain")  #: saliency maps
    localize = property(lambda self: self.root / "localize")  #: localisation benchmark
    audit = property(lambda self: self.root / "audit")  #: shortcut audit, per split

    def eval(self, split: str, tta: str = "none") -> Path:
        """``eval/<split>`` (``eval/<split>-<tta>`` with test-time augmentation): the root of
        an :class:`EvaluationFolder`."""
        return self.root / "eval" / (split if tta == "none" else f"{split}-{tta}")

    def checkpoint(self) -> Path:
        """``best.pt``, else ``last.pt``."""
        for p in (self.best, self.last):
            if p.exists():
                return p
        raise CheckpointError(f"{self.root}: a folder without best.pt or last.pt")

    lock_file = property(lambda self: self.root / LOCK_FILE)  #: see :func:`folder_lock`

    def is_run(self) -> bool:
        """Whether the folder is recognisably one ``cxrkit train`` wrote: it holds a
        checkpoint, a ``run.json`` with cxrkit's version in it, or a ``config.yaml`` with
        the ``model:`` and ``train:`` sections of a resolved run config."""
        if self.best.exists() or self.last.exists():
            return True
        try:
            if self.run_json.is_file() and self.run_json.stat().st_size < 1 << 20:
                doc = json.loads(self.run_json.read_text(encoding="utf-8"))
                if isinstance(doc, dict) and "cxrkit" in (doc.get("versions") or {}):
                    return True
            if self.config.is_file() and self.config.stat().st_size < 1 << 20:
                text = self.config.read_text(encoding="utf-8")
                return all(re.search(rf"^{s}:", text, re.MULTILINE) for s in ("model", "train"))
        except (OSError, ValueError, TypeError):
            pass
        return False

    def check_trainable(self) -> None:
        """Refuse (:class:`NotARunError`) a folder that is neither new, empty nor a run.

        Training writes ``metrics.csv``, ``run.json``, ``config.yaml`` and ``tb/`` into its
        folder; in a folder of the user's (``out=$HOME``) that would overwrite their files.
        """
        if not self.root.exists() or self.is_run():
            return
        if not self.root.is_dir():
            raise NotARunError(f"{self.root} is a file, not a run folder")
        found = sorted(p.name for p in self.root.iterdir())
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise NotARunError(
                f"{self.root} is not empty ({shown}) and is not a cxrkit run folder; nothing "
                "was written. Train into a new or empty folder (out=... or --out)."
            )

    def trained_files(self) -> list[Path]:
        """What ``cxrkit train`` wrote here and ``--fresh`` removes: checkpoints, records,
        and its own TensorBoard event files (anything else in ``tb/`` is left)."""
        files = [
            p
            for p in (
                self.best,
                self.last,
                self.history,
                self.curves,
                self.run_json,
                self.box_fold_moved,
                self.config,
            )
            if p.is_file()
        ]
        if self.tensorboard.is_dir():
            files += sorted(p for p in self.tensorboard.glob(TENSORBOARD_EVENTS) if p.is_file())
        return files


@dataclass(frozen=True)
class EvaluationFolder:
    """A folder written by ``cxrkit evaluate``, of a run or of a predictions file alike.

    Every file name of an evaluation is spelled here once; evaluation writes through these
    paths and the report and ``cxrkit compare`` read through them.
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    metrics = property(lambda self: self.root / "metrics.json")  #: everything, as JSON
    auroc = property(lambda self: self.root / "auroc.csv")
    threshold_table = property(lambda self: self.root / "thresholds.csv")
    calibration = property(lambda self: self.root / "calibration.csv")
    subgroups = property(lambda self: self.root / "subgroups.csv")
    published = property(lambda self: self.root / "published.csv")
    thresholds = property(lambda self: self.root / THRESHOLDS_FILE)  #: copy of the sidecar
    radiologists = property(lambda self: self.root / "radiologists.json")
    radiologists_table = property(lambda self: self.root / "radiologists.csv")
    radiologists_images = property(lambda self: self.root / "radiologists_images.csv")
    gallery = property(lambda self: self.root / "gallery")  #: error-gallery images
    gallery_table = property(lambda self: self.root / "gallery.csv")
    figures = property(lambda self: self.root / "figures")
    report = property(lambda self: self.root / "report.html")
    summary = property(lambda self: self.root / "summary.md")

    def predictions(self, split: str) -> Path:
        """``predictions_<split>.csv``: labels and probabilities of every scored image."""
        return self.root / f"predictions_{split}.csv"

    def exists(self) -> bool:
        return self.metrics.exists()

    def read_metrics(self) -> dict:
        if not self.metrics.exists():
            raise FileNotFoundError(
                f"{self.metrics} not found: {self.root} is not an "
                "evaluation folder (run `cxrkit evaluate` first)"
            )
        return read_json(self.metrics)

    def read_predictions(self, split: str):
        """The scored split's predictions table (ids as strings)."""
        return read_csv(self.predictions(split), dtype={"image_id": str, "patient_id": str})


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder -> its ``best.pt`` (else ``last.pt``); a file -> itself (it must exist)."""
    path = Path(path)
    if path.is_dir():
        return RunFolder(path).checkpoint()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def writes_into_run(what: str):
    """Decorator for ``fn(checkpoint, ..., out=None, ...)`` that writes into the run folder
    of ``checkpoint`` unless ``out`` is elsewhere: holds that folder's lock
    (:func:`folder_lock`) while ``fn`` runs, so it never mixes with a training or another
    stage writing there. With ``out`` outside the run nothing of the run is written, so
    nothing is locked."""
    import functools
    import inspect

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def held(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs)
            try:
                target = bound.arguments["checkpoint"]  # a path, or a loaded model
                run = RunFolder.of(resolve_checkpoint(getattr(target, "checkpoint", target)))
            except (OSError, TypeError, CheckpointError):  # fn says what is wrong with it
                return fn(*args, **kwargs)
            out = bound.arguments.get("out")
            if out is not None and not is_inside(out, run.root):
                return fn(*args, **kwargs)
            with folder_lock(run.root, what):
                return fn(*args, **kwargs)

        return held

    return decorate


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (symlinks resolved)."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def onnx_path(checkpoint: str | Path) -> Path:
    """Where ``cxrkit export`` puts a checkpoint's ONNX file: ``run/best.pt`` -> ``run/best.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


__all__ = [
    "FORMULA_START",
    "LOCK_FILE",
    "THRESHOLDS_FILE",
    "CheckpointError",
    "EvaluationFolder",
    "FolderBusyError",
    "NotARunError",
    "PreparedFolder",
    "RunFolder",
    "WriteError",
    "atomic_file",
    "atomic_path",
    "check_writable",
    "csv_cell",
    "csv_plain",
    "csv_row",
    "file_sha256",
    "folder_lock",
    "human_bytes",
    "is_inside",
    "make_folder",
    "onnx_path",
    "read_csv",
    "read_json",
    "resolve_checkpoint",
    "versions",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
    "writes_into_run",
]

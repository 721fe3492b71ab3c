"""Bounded decoding of untrusted image files: worker processes with a deadline and a memory cap.

A hostile file can make a decoder loop for ever (a 628-byte JPEG 2000 DICOM with a
zero-length box spins pydicom's parser), or allocate gigabytes. No check in this process
can stop a loop inside a C or Python decoder, so every file from outside (``cxrkit
predict``, ``cxrkit explain``, the service's uploads) is decoded by :class:`Decoder`:

* each file is decoded (and, optionally, cache-preprocessed) in a **worker process**;
* the caller waits at most :attr:`DecodeLimits.timeout_s` per file; a worker that
  overruns is killed (``SIGKILL``) and replaced, and the file gets a one-line error;
* each worker's address space is capped (``resource.RLIMIT_AS``) at its own start-up size
  plus :attr:`DecodeLimits.memory_mb`, so a decompression bomb ends in ``MemoryError`` (an
  error naming the file) or, inside C code, in the worker's death (also an error), never in
  the caller's memory;
* a worker also caps its own CPU time per file (``RLIMIT_CPU``), so a spinning worker
  dies even if its parent died first; a parent that exits closes the pipe and the idle
  workers exit.

What comes back is a :class:`Decoded`: the image (grey ``uint8`` ``(H, W)``, or the
checkpoint's cache-stage image when ``cache`` settings are given, which keeps the
per-image transfer small) with the file's format, size and DICOM tags, or ``error``: one
line naming why. :meth:`Decoder.decode` never raises for a bad file;
:meth:`Decoder.imap` decodes a list in order, a bounded number of files ahead of the
consumer, so decoding overlaps what the caller does with each result (``predict``'s
forward pass). :meth:`Decoder.call` runs any module-level function under the same bounds
(the service runs its whole upload check there) and re-raises its exception; a bound
that is hit raises :class:`DecodeLimitError`, an :class:`ImageReadError`.

Start-up is kept off the caller's critical path. A decoder made while the caller runs a
single thread and has not imported torch or onnxruntime (``cxrkit predict`` makes it
before loading the model) forks its workers from the caller directly: milliseconds, and
the decoding modules are already imported. Otherwise, and for every replacement, workers
come from a ``forkserver`` (never by forking a caller whose thread pools may hold locks:
see :func:`cxrkit.data._cache_build._pool_context`) that imports only this module and
pydicom; they are started in a background thread, so the first one's interpreter start
(~0.3-0.6 s CPU) overlaps the caller's work; later ones fork in milliseconds. A worker
never imports the caller's main script (:func:`_skip_main_in_workers`).

In-process callers: :func:`decode_file` is the function the workers run; the Python API
(``cxrkit.load(run).predict(paths)``) decodes paths in its own process with the same
readers and the same Deflate bound but no deadline (a notebook's own files); arrays need
no decoding at all. Pass untrusted paths through :class:`Decoder` (or ``cxrkit predict``).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrkit.data.dicom import (
    dicom_tags,
    grey_from_dataset,
    has_dicom_preamble,
    is_dicom,
    read_dataset,
)
from cxrkit.data.images import DEFAULT_MAX_PIXELS, ImageReadError, preprocess, read_xray
from cxrkit.data.preprocessing import PreprocessSettings

log = logging.getLogger(__name__)

#: Default deadline for one file, seconds (decode + preprocess). A 4300 x 3500 16-bit
#: radiograph takes well under a second; 30 s leaves room for a loaded machine.
DEFAULT_TIMEOUT_S = 30.0
#: Default memory a decode may take above the worker's own start-up address space, MiB:
#: room for the largest image ``max_pixels`` allows (64 Mpx: the float copies of a 16-bit
#: image's LUT steps take ~1.5 GB), while a bomb stops far below the machine's memory.
DEFAULT_MEMORY_MB = 3072


#: Longest wait for a worker process to start (an interpreter start and imports on a
#: loaded machine), seconds; not counted in a file's deadline.
START_TIMEOUT_S = 120.0


class DecodeLimitError(ImageReadError):
    """A file hit a bound of :class:`DecodeLimits`: ``kind`` is "timeout", "memory" or
    "crash" (the worker died)."""

    def __init__(self, path, reason: str, kind: str = "crash"):
        super().__init__(path, reason)
        self.kind = kind

    def __reduce__(self):
        return (type(self), (str(self.path), self.reason, self.kind))


@dataclass(frozen=True)
class DecodeLimits:
    """The bounds one file is decoded under (the caller's to choose)."""

    #: seconds per file (wall clock), then the worker is killed; > 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: MiB of address space a decode may add to the worker's start-up size; None: no cap
    memory_mb: int | None = DEFAULT_MEMORY_MB
    #: largest image, width x height (checked from the header before decoding)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"decode timeout must be > 0 seconds, got {self.timeout_s}")
        if self.memory_mb is not None and self.memory_mb < 16:
            raise ValueError(f"decode memory bound must be at least 16 MiB, got {self.memory_mb}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")


def decode_limits(
    timeout_s: float | None = None, memory_mb: int | None = None, max_pixels: int | None = None
) -> DecodeLimits:
    """:class:`DecodeLimits` with the defaults where None is given (the CLI's options)."""
    d = DecodeLimits()
    return DecodeLimits(
        timeout_s=d.timeout_s if timeout_s is None else timeout_s,
        memory_mb=d.memory_mb if memory_mb is None else memory_mb,
        max_pixels=d.max_pixels if max_pixels is None else max_pixels,
    )


@dataclass(frozen=True)
class Decoded:
    """One file's result: ``image`` and what the file was, or ``error`` (one line)."""

    source: str  #: the path (or the name given with bytes)
    image: np.ndarray | None = None  #: grey uint8 (H, W), or the (S, S) cache-stage image
    error: str | None = None  #: why it could not be decoded (None: decoded)
    format: str | None = None  #: "DICOM", else Pillow's ("PNG", "JPEG", ...)
    width: int = 0  #: decoded file's width, pixels (before preprocessing)
    height: int = 0  #: decoded file's height, pixels
    #: a DICOM's raw ``PatientAge``/``PatientSex``/``ViewPosition`` (``age``/``sex``/``view``)
    tags: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def decode_file(
    source: str | Path | bytes,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache: PreprocessSettings | None = None,
) -> Decoded:
    """Decode one file (a path, or its bytes with ``name``) in this process: what a worker
    runs. Never raises for a bad file (the reason is in ``error``), but ``MemoryError``
    (the worker's memory bound, reported by :class:`Decoder`). ``cache``: also apply the
    checkpoint's cache stage (:func:`cxrkit.data.images.preprocess`)."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
    label = name or ("upload" if data is not None else str(source))
    path = Path(label) if data is not None else Path(str(source))
    try:
        head = data[:132] if data is not None else _head(path)
        tags: dict = {}
        fmt: str | None
        if has_dicom_preamble(head) or (data is None and is_dicom(path)):
            fmt = "DICOM"
            ds = read_dataset(path, data=data, max_pixels=max_pixels)
            tags = dicom_tags(ds)
            img = grey_from_dataset(ds, path, max_pixels=max_pixels)
        else:
            fmt = next((f for f, magic in _MAGIC if head.startswith(magic)), None)
            img = read_xray(path, max_pixels=max_pixels, data=data)
        h, w = img.shape
        if cache is not None:
            img = preprocess(img, size=cache.size, clahe=cache.clahe, crop=cache.crop)
        return Decoded(label, img, None, fmt, int(w), int(h), tags)
    except ImageReadError as e:
        return Decoded(label, error=e.reason)
    except MemoryError:  # the worker reports it as over its memory bound
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's error
        return Decoded(
            label, error=f"cannot decode ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        )


#: File signatures -> format names (as Pillow names them).
_MAGIC = (("PNG", b"\x89PNG\r\n\x1a\n"), ("JPEG", b"\xff\xd8\xff"))


def _head(path: Path) -> bytes:
    """The first 132 bytes (enough for DICOM's preamble), b"" when unreadable (the reader
    then says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return b""


# -- the worker side -----------------------------------------------------------------------
def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _worker_main(conn, memory_mb: int | None, preload: tuple[str, ...] = ()) -> None:
    """Import ``preload``, cap the address space, then loop: receive ``(fn, args, kwargs,
    timeout)``, send ``("ok", value)`` or ``("raise", exception)``; exit on None or when the
    parent's end closes."""
    import importlib
    import resource

    for module in preload:  # before the cap: imports are not the file's to pay for
        importlib.import_module(module)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import cv2

        cv2.setNumThreads(1)  # one file per worker; no thread pool under the memory cap
    except Exception:  # noqa: BLE001
        pass
    if memory_mb is not None:
        try:
            cap = _address_space() + memory_mb * 2**20
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                cap = min(cap, hard)
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        except (OSError, ValueError) as e:  # no /proc, or not allowed: say so, go on
            log.warning("decoder worker: no address-space limit (%s)", e)
    try:
        conn.send(("ready", None))  # deadlines count from here, not from start-up
    except (OSError, ValueError):
        return
    while True:
        try:
            msg = conn.recv()
        except BaseException:  # noqa: BLE001 - the parent is gone, or the input unreadable
            return
        if msg is None:
            return
        fn, args, kwargs, timeout = msg
        try:  # a backstop to the parent's deadline: the kernel stops a spinning worker
            used = resource.getrusage(resource.RUSAGE_SELF)
            soft = int(used.ru_utime + used.ru_stime + 2 * timeout + 5)
            resource.setrlimit(
                resource.RLIMIT_CPU, (soft, resource.getrlimit(resource.RLIMIT_CPU)[1])
            )
        except (OSError, ValueError):
            pass
        try:
            reply = ("ok", fn(*args, **kwargs))
        except MemoryError:
            reply = ("memory", None)
        except BaseException as e:  # noqa: BLE001 - sent back to the caller
            reply = ("raise", e)
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("memory", None))
        except (OSError, ValueError):
            return  # the parent is gone
        except Exception as e:  # noqa: BLE001 - an unpicklable result or exception
            conn.send(("raise", RuntimeError(f"{type(e).__name__}: {e}")))
        if reply[0] == "memory":
            return  # its heap may be fragmented at the cap: the pool starts a fresh one


#: Imported once in the forkserver (so a replacement worker starts in milliseconds).
_PRELOAD = ("pydicom", "pydicom.pixels")
_light = threading.local()


def _context():
    """The forkserver context (spawn where there is none), preloading this module."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, *_PRELOAD])  # once per server; then a no-op
    _skip_main_in_workers()
    return ctx


def _skip_main_in_workers() -> None:
    """Start decoding workers without importing the caller's main module.

    multiprocessing makes every forkserver/spawn child import the parent's ``__main__``
    script (its ``"__main__"`` preload does not work on Python 3.11), so a worker started
    by a script that imports torch would import torch too: seconds per worker, each
    replacement included. A worker needs only this module, so while :class:`_Worker`
    starts one (and only then, in that thread), the preparation data multiprocessing
    sends to the child leaves the main module out. Other users of multiprocessing see
    no change.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "cxrkit_light", False):
        return

    def get_preparation_data(name):
        data = original(name)
        if getattr(_light, "on", False):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data.cxrkit_light = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def _fork_is_safe() -> bool:
    """Whether this process can start workers by a plain ``fork`` (milliseconds, no
    interpreter start): only while it runs one thread and has no torch/onnxruntime thread
    pools whose locks a child could inherit mid-state. ``cxrkit predict`` makes its decoder
    before loading the model, when this holds."""
    return (
        "fork" in multiprocessing.get_all_start_methods()
        and threading.current_thread() is threading.main_thread()
        and threading.active_count() == 1
        and not any(m in sys.modules for m in ("torch", "onnxruntime", "openvino"))
    )


class _Worker:
    def __init__(self, memory_mb: int | None, preload: tuple[str, ...] = (), ctx=None):
        ctx = ctx or _context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, memory_mb, preload), daemon=True, name="cxrkit-decode"
        )
        _light.on = True
        try:
            self.proc.start()
        finally:
            _light.on = False
        child.close()
        self.ready = False

    def wait_ready(self, timeout: float) -> None:
        """Wait for the worker's start-up (imports, limits); OSError when it fails."""
        if self.ready:
            return
        if not self.conn.poll(timeout):
            raise OSError(f"a decoding worker did not start within {timeout:g} s")
        try:
            status, _ = self.conn.recv()
        except EOFError:
            raise OSError(f"a decoding worker died at start ({_death(self.proc)})") from None
        if status != "ready":
            raise OSError(f"a decoding worker sent {status!r} at start")
        self.ready = True

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(5)
        except (OSError, ValueError, AssertionError):
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(1)
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()


def _death(proc) -> str:
    proc.join(2)
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Decoder:
    """A pool of ``workers`` decoding processes under ``limits``; thread-safe.

    The workers start in the background at once. ``preload``: modules each worker imports
    before its memory cap (those of the functions given to :meth:`call`; keep them light:
    every worker imports them). Use as a context manager, or :meth:`close` it. See the
    module docstring.
    """

    def __init__(
        self, workers: int = 1, *, limits: DecodeLimits | None = None, preload: tuple[str, ...] = ()
    ):
        if int(workers) < 1:
            raise ValueError(f"decode workers must be >= 1, got {workers}")
        self.workers = int(workers)
        self.limits = limits or DecodeLimits()
        self.preload = tuple(preload)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._start_error: BaseException | None = None
        self._count = self.workers  # live workers plus those being started
        # workers stop when the decoder is collected without close() (an app in a test)
        weakref.finalize(self, _reap, self._all)
        if _fork_is_safe():  # fork them here and now (milliseconds each)
            fork = multiprocessing.get_context("fork")
            for _ in range(self.workers):
                w = _Worker(self.limits.memory_mb, self.preload, fork)
                self._all.add(w)
                self._idle.append(w)
        else:  # from the forkserver, in the background (the first one boots it)
            threading.Thread(
                target=self._start_all, name="cxrkit-decode-start", daemon=True
            ).start()

    # -- the pool ------------------------------------------------------------------------
    def _start_all(self) -> None:
        for _ in range(self.workers):
            try:
                w = _Worker(self.limits.memory_mb, self.preload)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                with self._cond:
                    self._start_error = e
                    self._count = len(self._all)
                    self._cond.notify_all()
                return
            with self._cond:
                if self._closed:
                    w.stop()
                    continue
                self._all.add(w)
                self._idle.append(w)
                self._cond.notify()

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise RuntimeError("the decoder is closed")
                if self._start_error is not None:
                    raise RuntimeError(
                        f"cannot start a decoding worker process: {self._start_error}"
                    ) from self._start_error
                if self._count < self.workers:  # a killed worker's slot: start one here
                    self._count += 1
                    break
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
        try:
            w = _Worker(self.limits.memory_mb, self.preload)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(w)
        return w

    def _release(self, w: _Worker) -> None:
        with self._cond:
            if self._closed:
                self._all.discard(w)
                w.stop()
            else:
                self._idle.append(w)
            self._cond.notify()

    def _discard(self, w: _Worker) -> None:
        w.kill()
        with self._cond:
            if w in self._all:
                self._all.discard(w)
                self._count -= 1
            self._cond.notify()

    def call(self, fn, *args, label: str | Path = "input", **kwargs):
        """``fn(*args, **kwargs)`` in a worker under the limits; returns its value or
        re-raises its exception. ``fn`` must be a module-level function. A bound that is
        hit raises :class:`DecodeLimitError` naming ``label``."""
        lim = self.limits
        w = self._acquire()
        done = False
        try:
            try:
                w.wait_ready(START_TIMEOUT_S)
                w.conn.send((fn, args, kwargs, lim.timeout_s))
            except (OSError, ValueError):  # the idle worker had died: one fresh try
                self._discard(w)
                w = self._acquire()
                try:
                    w.wait_ready(START_TIMEOUT_S)
                    w.conn.send((fn, args, kwargs, lim.timeout_s))
                except (OSError, ValueError) as e:
                    raise RuntimeError(f"cannot start a decoding worker process: {e}") from e
            if not w.conn.poll(lim.timeout_s):
                raise DecodeLimitError(
                    label,
                    f"took longer than {lim.timeout_s:g} s to "
                    "decode (stopped: a hostile or broken file?)",
                    "timeout",
                )
            try:
                status, value = w.conn.recv()
            except (EOFError, OSError):
                raise DecodeLimitError(
                    label,
                    f"the decoding process died "
                    f"({_death(w.proc)}): a corrupt file, or one "
                    f"needing more than the decode memory bound of "
                    f"{lim.memory_mb} MiB",
                    "crash",
                ) from None
            done = status != "memory"  # a worker that hit its cap is replaced
        finally:
            if done:
                self._release(w)
            else:  # timed out, died, or interrupted mid-file: its state is unknown
                self._discard(w)
        if status == "memory":
            raise DecodeLimitError(
                label,
                f"needs more memory than the decode bound of "
                f"{lim.memory_mb} MiB (a decompression bomb?)",
                "memory",
            )
        if status == "raise":
            raise value
        return value

    def decode(
        self,
        source: str | Path | bytes,
        name: str | None = None,
        *,
        cache: PreprocessSettings | None = None,
    ) -> Decoded:
        """One file (a path, or bytes named ``name``) -> :class:`Decoded`; never raises for
        a bad file. ``cache``: the checkpoint's cache-stage settings, applied in the worker
        after decoding (``image`` is then ``(S, S)``, a small transfer)."""
        label = name or (str(source) if isinstance(source, (str, Path)) else "upload")
        try:
            result = self.call(
                decode_file,
                source,
                name,
                max_pixels=self.limits.max_pixels,
                cache=cache,
                label=label,
            )
        except ImageReadError as e:
            return Decoded(label, error=e.reason)
        return result

    def imap(
        self,
        sources: Iterable,
        *,
        cache: PreprocessSettings | None = None,
        ahead: int | None = None,
    ) -> Iterator[Decoded]:
        """:meth:`decode` each of ``sources``, in order, at most ``ahead`` (default
        ``4 x workers``) files ahead of the consumer, ``workers`` at a time."""
        ahead = max(self.workers, ahead or 4 * self.workers)
        it = iter(sources)
        with cf.ThreadPoolExecutor(self.workers, thread_name_prefix="cxrkit-decode") as ex:
            window: collections.deque = collections.deque()
            try:
                for s in it:
                    window.append(ex.submit(self.decode, s, cache=cache))
                    if len(window) >= ahead:
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()
            finally:
                for f in window:
                    f.cancel()

    def close(self) -> None:
        """Stop every worker (busy ones are killed)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = self._all - set(idle)
            self._all.clear()
            self._cond.notify_all()
        for w in idle:
            w.stop()
        for w in busy:
            w.kill()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reap(workers: set) -> None:
    for w in list(workers):
        w.kill()
    workers.clear()


def default_workers(n_files: int) -> int:
    """Workers for ``n_files``: one per spare core (half the cores; the model takes the
    rest), at least 1, at most one per file."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(1, min(n_files, cores // 2))


__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "DecodeLimitError",
    "DecodeLimits",
    "Decoded",
    "Decoder",
    "decode_file",
    "decode_limits",
    "default_workers",
]

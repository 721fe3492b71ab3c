"""Batched serving: concurrent ``/predict`` requests share one forward pass.

Each request decodes its upload and runs the cache stage in its own worker thread (off the
event loop, in parallel), then hands the cache-stage image to the :class:`Batcher`. One
batcher thread takes the first waiting image, gathers the ones that follow it, and runs
them through the model as one batch (``Predictor.score_cached``: logits and the OOD score
from the same pass), then hands each request its own row.

How long it gathers: at most ``max_batch`` images and at most ``max_wait_ms`` after the
first, and it waits **only while other requests are still decoding** (they announce
themselves on arrival, :meth:`Batcher.incoming`). A lone request (the model idle, no other
request queued or decoding) runs at once in its own thread, as without batching: no wait,
no hand-over to the batcher thread. Under load the wait fills the batch with the requests
already on their way.

Each answer is what the image alone would get: rows are computed independently by the
network (no batch statistics at inference) and returned by position; the batched and the
single results agree to float rounding (tested). A request whose image makes the batched
pass fail is not allowed to fail the others: the batch is then run again one image at a
time, and only the failing image's request gets the error.

``max_batch=1`` turns batching off: each request runs its own forward pass under the
service's lock, in its own thread (what the service did before batching).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: Default largest batch: measured on the 2-core CPU with DenseNet121 (bench/bench_serve.py,
#: README "Batched serving"): 16 clients at max_batch 16 were no slower than at 4 or 8, and a
#: batch larger than the number of clients is never formed.
DEFAULT_MAX_BATCH = 16
#: Default longest wait for company after the first image, milliseconds (only while other
#: requests are still decoding; a lone request never waits).
DEFAULT_MAX_WAIT_MS = 5.0


@dataclass
class _Item:
    image: np.ndarray  #: cache-stage ``(1, S, S)`` uint8
    meta: np.ndarray | None  #: ``(1, 4)`` float32 or None
    future: Future


class Batcher:
    """Gathers cache-stage images into batches for ``model.score_cached`` (see the module
    docstring). ``lock``: taken around every forward pass (shared with the endpoints that
    use the torch module directly, such as Grad-CAM)."""

    def __init__(
        self,
        model,
        *,
        tta: str = "none",
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        lock: threading.Lock | None = None,
    ):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not 0 <= float(max_wait_ms) <= 1000:
            raise ValueError(f"max_wait_ms must be 0..1000 milliseconds, got {max_wait_ms}")
        self.model, self.tta = model, tta
        self.max_batch, self.max_wait_ms = int(max_batch), float(max_wait_ms)
        self.lock = lock or threading.Lock()
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._incoming = 0
        self._count_lock = threading.Lock()
        self.batches = self.images = self.largest = 0
        self._thread = None
        if self.max_batch > 1:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="cxrkit-batcher")
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    def stats(self) -> dict:
        """Settings and counters for ``/info``."""
        return {
            "enabled": self.enabled,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "batches": self.batches,
            "images": self.images,
            "largest_batch": self.largest,
            "mean_batch": round(self.images / self.batches, 2) if self.batches else None,
        }

    @contextmanager
    def incoming(self):
        """Around a request's decoding: tells the batcher that an image is on its way."""
        with self._count_lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._incoming -= 1

    def score(self, image: np.ndarray, meta: np.ndarray | None = None):
        """One cache-stage image ``(1, S, S)`` (and its ``(1, 4)`` meta) -> ``(logits (F,),
        OOD score or None, OOD flag or None)``, from a batched pass when others are waiting.
        Raises what the model raised for this image."""
        if not self.enabled:
            with self.lock:
                return self._rows(*self._run(image[None], meta))[0]
        if self.lock.acquire(blocking=False):
            try:
                with self._count_lock:
                    alone = self._incoming == 0 and self._queue.empty()
                if alone:  # nobody to batch with: run here, no hand-over to the thread
                    row = self._rows(*self._run(image[None], meta))[0]
                    self._count([row])
                    return row
            finally:
                self.lock.release()
        item = _Item(image, meta, Future())
        self._queue.put(item)
        return item.future.result()

    def _count(self, rows: list) -> None:
        with self._count_lock:
            self.batches += 1
            self.images += len(rows)
            self.largest = max(self.largest, len(rows))

    # -- the batcher thread ---------------------------------------------------------------
    def _run(self, images: np.ndarray, meta: np.ndarray | None):
        z, ood = self.model.score_cached(images, meta, tta=self.tta)
        return np.asarray(z), ood

    @staticmethod
    def _rows(z, ood) -> list[tuple]:
        return [
            (
                z[i],
                None if ood is None else float(ood.score[i]),
                None if ood is None else bool(ood.flag[i]),
            )
            for i in range(len(z))
        ]

    def _gather(self, first: _Item) -> list[_Item]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait_ms / 1000
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            with self._count_lock:
                coming = self._incoming  # requests still decoding
            left = deadline - time.monotonic()
            if coming <= 0 or left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=min(left, 0.001)))
            except queue.Empty:
                pass
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather(self._queue.get())
            images = np.stack([it.image for it in batch])
            metas = [it.meta for it in batch if it.meta is not None]
            meta = np.concatenate(metas) if metas else None
            try:
                with self.lock:
                    rows = self._rows(*self._run(images, meta))
            except Exception as e:  # noqa: BLE001 - every request gets its own outcome
                if len(batch) == 1:
                    batch[0].future.set_exception(e)
                    continue
                log.info(
                    "a batch of %d failed (%s: %s); running its images one at a time",
                    len(batch),
                    type(e).__name__,
                    e,
                )
                for it in batch:
                    try:
                        with self.lock:
                            row = self._rows(*self._run(it.image[None], it.meta))[0]
                    except Exception as e1:  # noqa: BLE001
                        it.future.set_exception(e1)
                    else:
                        it.future.set_result(row)
                continue
            self._count(rows)
            for it, row in zip(batch, rows, strict=True):
                it.future.set_result(row)


__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_WAIT_MS", "Batcher"]

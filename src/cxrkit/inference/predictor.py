"""The predictor interface shared by the torch and ONNX backends (torch-free).

A :class:`Predictor` is a trained model ready to predict, whatever runs it:
:class:`cxrkit.inference.LoadedModel` (PyTorch, ``cxrkit.load``) or
:class:`cxrkit.inference.onnx_backend.OnnxModel` (onnxruntime, no torch). Everything but the
network call is written once, here:

``findings``, ``preprocessing``      the output order and the preprocessing contract
                                     (:class:`cxrkit.data.preprocessing.Preprocessing`)
``metadata``                         whether the model takes patient metadata
``thresholds``, ``thresholds_source``, ``thresholds_tta``   decision thresholds
``name``, ``backend``, ``source``    model name, "torch"/"onnx", the file it came from
``cache_image``, ``load_images``     the cache stage (decode + :func:`preprocess`)
``meta_matrix``                      ``meta`` as given -> ``(B, 4)`` (or the defaults)
``forward_cached``                   the one backend-specific step (abstract): logits and
                                     the pooled features the OOD score reads
``logits_from_cached``, ``score_cached``   logits; logits + OOD score/flag
``ood_record``, ``ood``, ``ood_note``      the out-of-distribution record (:mod:`cxrkit.ood`)
``predict_logits``, ``predict``      batching, the one sigmoid, the DataFrame (findings,
                                     then ``ood_score`` and ``ood_flag``)
``threshold_vector``, ``thresholds_mismatch``, ``tta_note``

Probabilities are :func:`cxrkit.metrics.sigmoid` of the logits (the one sigmoid; the ONNX
graph's own ``probabilities`` output is only for users of the bare file).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrkit.data.dicom import grey_uint8, read_image
from cxrkit.data.images import preprocess
from cxrkit.data.metadata import DEFAULT_META, META_FEATURES, as_meta_matrix
from cxrkit.data.preprocessing import Preprocessing, mirrored_tta_note
from cxrkit.messages import require_count
from cxrkit.metrics import sigmoid
from cxrkit.ood.record import OodResult, OodScorer

#: Test-time augmentations: none, the image and its mirror, CheXNet's ten crops.
TTA_MODES = ("none", "flip", "tencrop")
#: Threshold used for a finding none was chosen for at evaluation.
DEFAULT_THRESHOLD = 0.5


class MirroredTTAWarning(UserWarning):
    """Mirrored test-time views used on a model trained without flips."""


class OodMissingWarning(UserWarning):
    """The model has no out-of-distribution record: its OOD score and flag are missing."""


def session_ran_by(session) -> str:
    """An onnxruntime session in onnxruntime's own words: version and the execution
    provider that runs it (the first of ``session.get_providers()``)."""
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} ({session.get_providers()[0]})"


class Predictor(ABC):
    """What every backend provides; subclasses set the attributes and implement
    :meth:`logits_from_cached`."""

    findings: tuple[str, ...]
    preprocessing: Preprocessing
    metadata: bool
    thresholds: dict[str, float] | None = None
    thresholds_source: str | None = None
    #: the test-time augmentation the thresholds were chosen with ("none" if unrecorded)
    thresholds_tta: str | None = None
    backend: str = ""
    #: the out-of-distribution record (:mod:`cxrkit.ood.record`), None when there is none
    ood_record: dict | None = None
    #: where it came from (the checkpoint, a sidecar, the ONNX metadata)
    ood_source: str | None = None

    # -- identity ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def name(self) -> str:
        """The model's registry name (e.g. "densenet121")."""

    @property
    @abstractmethod
    def source(self) -> Path:
        """The file the model was loaded from (checkpoint or ``.onnx``)."""

    @property
    def ran_by(self) -> str:
        """What runs the forward pass, in the runtime's own words (e.g. ``onnxruntime 1.22
        (CPUExecutionProvider)``, ``torch 2.13 fp32 eager on cpu``): a backend that hands
        the network to another runtime says so here, not just its own name."""
        return self.backend

    # -- the cache stage -----------------------------------------------------------------------
    def cache_image(self, image: np.ndarray) -> np.ndarray:
        """Grey ``uint8`` ``(H, W)`` of any size -> the cached ``(S, S)`` image."""
        s = self.preprocessing.cache
        return preprocess(image, size=s.size, clahe=s.clahe, crop=s.crop)

    def cached_batch(self, images: Sequence) -> np.ndarray:
        """Paths or grey/RGB arrays -> ``uint8`` ``(B, 1, S, S)`` numpy, the cache stage."""
        out = [
            self.cache_image(read_image(im) if isinstance(im, (str, Path)) else grey_uint8(im))
            for im in images
        ]
        s = self.preprocessing.cache.size
        return np.stack(out)[:, None] if out else np.zeros((0, 1, s, s), np.uint8)

    def load_images(self, images: Sequence):
        """The cache stage as this backend's batch type (numpy here; torch overrides)."""
        return self.cached_batch(images)

    # -- metadata ------------------------------------------------------------------------------
    def meta_matrix(self, n: int, meta=None) -> np.ndarray | None:
        """``meta`` as given (see :func:`cxrkit.data.metadata.as_meta_matrix`) -> ``(n, 4)``
        float32; None for a model without metadata. None given to a model with metadata:
        the training defaults (age missing, female, PA), with a warning."""
        if not self.metadata:
            return None
        if meta is None:
            warnings.warn(
                f"{self.source.name} was trained with patient metadata "
                f"({', '.join(META_FEATURES)}); none given, so age is marked "
                "missing and sex/view default to female/PA (pass meta=, or "
                "--metadata CSV)",
                stacklevel=3,
            )
            return np.tile(np.asarray(DEFAULT_META, np.float32), (n, 1))
        return as_meta_matrix(meta, n)

    # -- inference -----------------------------------------------------------------------------
    @abstractmethod
    def forward_cached(self, images, meta=None, *, tta: str = "none"):
        """``uint8`` ``(B, 1, S, S)`` cache-stage images -> ``(logits (B, F) float32 numpy,
        pooled features (B, D) of the plain view, or None where the backend has none)``."""

    def logits_from_cached(self, images, meta=None, *, tta: str = "none") -> np.ndarray:
        """``uint8`` ``(B, 1, S, S)`` cache-stage images -> logits ``(B, F)`` float32 numpy."""
        self.check_tta(tta, stacklevel=4)
        return self.forward_cached(images, meta, tta=tta)[0]

    def score_cached(self, images, meta=None, *, tta: str = "none"):
        """Logits and the OOD result (:class:`cxrkit.ood.OodResult`, None without a record)
        of cache-stage images, from one forward pass."""
        self.check_tta(tta, stacklevel=4)
        logits, features = self.forward_cached(images, meta, tta=tta)
        return logits, self.ood_from_cached(images, features)

    # -- out-of-distribution -------------------------------------------------------------------
    @property
    def ood(self) -> OodScorer | None:
        """The decoded OOD record (None without one)."""
        rec = self.ood_record
        if rec is None:
            return None
        cached = getattr(self, "_ood_scorer", None)
        if cached is None or cached.record is not rec:
            cached = self._ood_scorer = OodScorer(rec)
        return cached

    def ood_note(self) -> str | None:
        """Why this model gives no OOD score (None: it does)."""
        if self.ood_record is None:
            return (
                f"{self.source.name} has no out-of-distribution record (made before "
                "cxrkit recorded one, or exported without it): ood_score and ood_flag "
                "are empty; compute it with `cxrkit ood RUN` (and export again for ONNX)"
            )
        return None

    def ood_from_cached(self, images, features) -> OodResult | None:
        """The OOD result of cache-stage ``images`` whose pooled features are ``features``."""
        if self.ood is None or features is None:
            return None
        return self.ood.score(np.asarray(features), np.asarray(images))

    def warn_if_no_ood(self) -> None:
        """Say once per model that it has no OOD record (never skipped silently)."""
        note = self.ood_note()
        if note and not getattr(self, "_ood_warned", False):
            self._ood_warned = True
            warnings.warn(note, OodMissingWarning, stacklevel=3)

    def check_tta(self, tta: str, *, stacklevel: int = 3) -> None:
        """Refuse an unknown TTA; warn (:class:`MirroredTTAWarning`) when it mirrors images
        for a model trained without flips (see :func:`cxrkit.data.preprocessing.mirrored_tta_note`)."""
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        note = self.tta_note(tta)
        if note:
            warnings.warn(f"{self.source.name}: {note}", MirroredTTAWarning, stacklevel=stacklevel)

    def tta_note(self, tta: str) -> str | None:
        """Why ``tta`` does not fit this model (None: it fits)."""
        return mirrored_tta_note(self.preprocessing, tta)

    def predict_logits(
        self, images: Sequence, meta=None, *, tta: str = "none", batch_size: int = 16
    ) -> np.ndarray:
        """Paths or arrays -> logits ``(N, F)``, ``batch_size`` images per forward pass."""
        batch_size = require_count(batch_size, "batch_size")
        images = list(images)
        mm = self.meta_matrix(len(images), meta)
        parts = [
            self.logits_from_cached(
                self.load_images(images[i : i + batch_size]),
                None if mm is None else mm[i : i + batch_size],
                tta=tta,
            )
            for i in range(0, len(images), batch_size)
        ]
        return (
            np.concatenate([np.asarray(p) for p in parts])
            if parts
            else np.zeros((0, len(self.findings)), np.float32)
        )

    def predict(self, images, meta=None, *, tta: str = "none", batch_size: int = 16):
        """Probabilities, one row per image and one column per finding (a DataFrame), then
        ``ood_score`` (float; > 1 is out of distribution, NaN without a record) and
        ``ood_flag`` (bool; missing without a record).

        ``images``: a path, an array, or a sequence of them (PNG/JPEG/DICOM paths, or
        grey/RGB arrays). ``meta``: patient metadata for a model trained with it: an
        ``(N, 4)`` array, a DataFrame with ``age``/``sex``/``view`` columns, or one dict
        per image (:func:`cxrkit.data.metadata.as_meta_matrix`). Uses the model's own
        preprocessing. Paths are decoded in this process, with the same readers and their
        bounds (pixel count, Deflate size, one-line errors) but no deadline: for files from
        outside use :func:`cxrkit.inference.predict.predict_files` (``cxrkit predict``), which decodes
        in worker processes under :class:`cxrkit.data.decoder.DecodeLimits`.
        """
        import pandas as pd

        single = isinstance(images, (str, Path)) or (
            isinstance(images, np.ndarray) and images.ndim == 2
        )
        items = [images] if single else list(images)
        batch_size = require_count(batch_size, "batch_size")
        self.warn_if_no_ood()
        mm = self.meta_matrix(len(items), meta)
        logits, scores, flags = [], [], []
        for i in range(0, len(items), batch_size):
            cached = self.load_images(items[i : i + batch_size])
            z, ood = self.score_cached(
                cached, None if mm is None else mm[i : i + batch_size], tta=tta
            )
            logits.append(np.asarray(z))
            scores.append(np.full(len(z), np.nan) if ood is None else ood.score)
            flags.append([pd.NA] * len(z) if ood is None else ood.flag.tolist())
        z = np.concatenate(logits) if logits else np.zeros((0, len(self.findings)), np.float32)
        index = [
            str(p) if isinstance(p, (str, Path)) else f"array_{i}" for i, p in enumerate(items)
        ]
        df = pd.DataFrame(
            sigmoid(z), columns=list(self.findings), index=pd.Index(index, name="image")
        )
        df["ood_score"] = np.concatenate(scores) if scores else np.zeros(0)
        df["ood_flag"] = pd.array([f for part in flags for f in part], dtype="boolean")
        return df

    # -- thresholds ----------------------------------------------------------------------------
    def threshold_vector(self) -> np.ndarray:
        """Per-finding decision thresholds (:data:`DEFAULT_THRESHOLD` where none was chosen)."""
        t = self.thresholds or {}
        return np.array([float(t.get(f, DEFAULT_THRESHOLD)) for f in self.findings])

    def thresholds_mismatch(self, tta: str) -> str | None:
        """Why the thresholds may not fit predictions made with ``tta`` (None: they fit)."""
        if self.thresholds and (self.thresholds_tta or "none") != tta:
            return (
                f"the decision thresholds were chosen with test-time augmentation "
                f"'{self.thresholds_tta or 'none'}' but predictions use '{tta}'; flags "
                f"may be off (evaluate with --tta {tta} to choose matching thresholds)"
            )
        return None


__all__ = ["DEFAULT_THRESHOLD", "MirroredTTAWarning", "OodMissingWarning", "Predictor", "TTA_MODES"]

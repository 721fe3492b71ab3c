"""A trained model, ready to use: ``cxrkit.load(checkpoint)`` (the one inference core).

Evaluation, explanation, prediction, ONNX export and the web service all go through
:class:`LoadedModel`, so they share one definition of how an image reaches the network:

1. **cache stage** (what ``cxrkit prepare`` did to the training images): decode to grey
   ``uint8`` (:func:`cxrkit.data.images.read_xray`, or the DICOM reader), then
   :func:`cxrkit.data.images.preprocess` with the checkpoint's cache settings (size, CLAHE,
   chest crop). Images already in a cache skip this stage.
2. **tensor stage** (what training evaluated with): :class:`EvalTransform` with the
   checkpoint's input size, eval resize and mean/std.

Test-time augmentation (``tta``) averages **logits** over the views: ``flip`` (image and
its mirror) and ``tencrop`` (resize to ``eval_resize`` -- by default 256/224 of the input
size, CheXNet's geometry -- then the four corners, centre and their mirrors). Averaging
logits rather than probabilities keeps temperature scaling and ONNX export exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from cxrkit.artefacts import RunFolder, resolve_checkpoint
from cxrkit.data.dataset import META_FEATURES
from cxrkit.data.dicom import grey_uint8, read_image
from cxrkit.data.images import PreprocessSettings, preprocess
from cxrkit.data.transforms import EvalTransform, ten_crop
from cxrkit.engine.checkpoint import CheckpointError, load_checkpoint
from cxrkit.thresholds import find_thresholds, write_thresholds_file

TTA_MODES = ("none", "flip", "tencrop")


@dataclass
class LoadedModel:
    """A model in eval mode with its findings, preprocessing and decision thresholds."""

    model: torch.nn.Module
    findings: tuple[str, ...]
    cache_settings: PreprocessSettings
    input_size: int
    eval_resize: int | None
    mean: float
    std: float
    channels: int
    metadata: bool
    device: torch.device
    checkpoint: Path
    checkpoint_info: dict
    thresholds: dict[str, float] | None = None
    thresholds_source: str | None = None
    #: the test-time augmentation the thresholds were chosen with ("none" if unrecorded)
    thresholds_tta: str | None = None

    @cached_property
    def checkpoint_sha256(self) -> str:
        """sha256 of the checkpoint file, computed once (thresholds, reports, exports)."""
        from cxrkit.artefacts import file_sha256
        return file_sha256(self.checkpoint)

    # -- preprocessing ------------------------------------------------------------------
    @property
    def transform(self) -> EvalTransform:
        return EvalTransform(self.input_size, resize=self.eval_resize, mean=self.mean,
                             std=self.std, channels=self.channels)

    def preprocess_record(self) -> dict:
        """The full preprocessing contract (stored by ``export`` next to the ONNX file)."""
        return {"cache": self.cache_settings.to_dict(), "input_size": self.input_size,
                "eval_resize": self.eval_resize, "mean": self.mean, "std": self.std,
                "channels": self.channels, "input": "grey uint8 image, cache stage applied, "
                "then /255, resize to eval_resize (or input_size), centre crop input_size, "
                "(x - mean) / std, repeated to `channels`"}

    def cache_image(self, image: np.ndarray) -> np.ndarray:
        """Grey ``uint8`` ``(H, W)`` of any size -> the cached ``(S, S)`` image."""
        s = self.cache_settings
        return preprocess(image, size=s.size, clahe=s.clahe, crop=s.crop)

    def load_images(self, images: Sequence) -> torch.Tensor:
        """Paths or grey arrays -> ``uint8`` batch ``(B, 1, S, S)`` at the cache stage."""
        out = []
        for im in images:
            arr = read_image(im) if isinstance(im, (str, Path)) else grey_uint8(im)
            out.append(self.cache_image(arr))
        return torch.from_numpy(np.stack(out)[:, None])

    def _meta(self, n: int, meta) -> torch.Tensor | None:
        if not self.metadata:
            return None
        if meta is None:
            warnings.warn(f"{self.checkpoint.name} was trained with patient metadata "
                          f"({', '.join(META_FEATURES)}); none given, so age is marked "
                          "missing and sex/view default to female/PA", stacklevel=3)
            m = torch.zeros(n, len(META_FEATURES))
            m[:, 1] = 1.0
            return m.to(self.device)
        return torch.as_tensor(np.asarray(meta, np.float32)).reshape(n, -1).to(self.device)

    # -- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def logits_from_cached(self, images: torch.Tensor, meta=None, *, tta: str = "none"):
        """``uint8`` ``(B, 1, S, S)`` cache-stage images -> logits ``(B, F)`` float32 numpy."""
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        x = torch.as_tensor(images).to(self.device)
        m = self._meta(len(x), meta)
        tf = self.transform
        if tta == "none":
            return self.model(tf(x), m).float().cpu().numpy()
        if tta == "flip":
            v = tf(x)
            z = (self.model(v, m).float() + self.model(v.flip(-1), m).float()) / 2
            return z.cpu().numpy()
        resize = self.eval_resize or int(round(self.input_size * 256 / 224))
        big = EvalTransform(resize, mean=self.mean, std=self.std, channels=self.channels)(x)
        crops = ten_crop(big, self.input_size)  # (B, 10, C, s, s)
        b = crops.shape[0]
        flat = crops.reshape(b * 10, *crops.shape[2:])
        mm = None if m is None else m.repeat_interleave(10, 0)
        z = self.model(flat, mm).float().reshape(b, 10, -1).mean(1)
        return z.cpu().numpy()

    def predict_logits(self, images: Sequence, meta=None, *, tta: str = "none",
                       batch_size: int = 16) -> np.ndarray:
        """Paths or arrays -> logits ``(N, F)``."""
        images = list(images)
        parts = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            mm = None if meta is None else np.asarray(meta)[i:i + batch_size]
            parts.append(self.logits_from_cached(self.load_images(chunk), mm, tta=tta))
        return np.concatenate(parts) if parts else np.zeros((0, len(self.findings)), np.float32)

    def predict(self, images, meta=None, *, tta: str = "none", batch_size: int = 16):
        """Probabilities, one row per image and one column per finding (a DataFrame).

        ``images``: a path, an array, or a sequence of them (PNG/JPEG/DICOM paths, or
        grey/RGB arrays). Uses the checkpoint's own preprocessing.
        """
        import pandas as pd

        single = isinstance(images, (str, Path)) or (isinstance(images, np.ndarray)
                                                     and images.ndim == 2)
        items = [images] if single else list(images)
        z = self.predict_logits(items, meta, tta=tta, batch_size=batch_size)
        probs = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
        index = [str(p) if isinstance(p, (str, Path)) else f"array_{i}"
                 for i, p in enumerate(items)]
        return pd.DataFrame(probs, columns=list(self.findings), index=pd.Index(index, name="image"))

    def thresholds_mismatch(self, tta: str) -> str | None:
        """Why the thresholds may not fit predictions made with ``tta`` (None: they fit)."""
        if self.thresholds and (self.thresholds_tta or "none") != tta:
            return (f"the decision thresholds were chosen with test-time augmentation "
                    f"'{self.thresholds_tta}' but predictions use '{tta}'; flags may be off "
                    f"(evaluate with --tta {tta} to choose matching thresholds)")
        return None

    def threshold_vector(self) -> np.ndarray:
        """Per-finding decision thresholds (0.5 where none was chosen)."""
        t = self.thresholds or {}
        return np.array([float(t.get(f, 0.5)) for f in self.findings])


def load(checkpoint: str | Path, *, device: str | torch.device | None = None,
         thresholds: str | Path | None = None) -> LoadedModel:
    """Load a checkpoint (or run folder) for inference; see :class:`LoadedModel`.

    Thresholds: ``thresholds`` (a JSON file from ``cxrkit evaluate``) if given, else the
    ``thresholds.json`` beside the checkpoint when it was written for this very file
    (same sha256), else none (callers fall back to 0.5 and say so).
    """
    from cxrkit.models import create_model

    path = resolve_checkpoint(checkpoint)
    ck = load_checkpoint(path)
    for key in ("model", "model_config", "preprocess"):
        if key not in ck:
            raise CheckpointError(f"{path}: no {key!r} entry; not a trained cxrkit model")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    model.to(dev).eval()
    pp = ck["preprocess"]
    info = {k: ck.get(k) for k in ("config", "split", "versions", "epoch", "metrics")}
    lm = LoadedModel(
        model=model, findings=tuple(ck.get("findings") or model.cxr_config.findings),
        cache_settings=PreprocessSettings.from_dict(pp["cache"]),
        input_size=int(pp["input_size"]), eval_resize=pp.get("eval_resize"),
        mean=float(pp["mean"]), std=float(pp["std"]), channels=int(pp.get("channels", 1)),
        metadata=int(ck["model_config"].get("meta_features", 0)) > 0, device=dev,
        checkpoint=path, checkpoint_info=info)
    _attach_thresholds(lm, thresholds)
    return lm


def _attach_thresholds(lm: LoadedModel, explicit) -> None:
    found = find_thresholds(RunFolder.of(lm.checkpoint).root, lm.findings,
                            lambda: lm.checkpoint_sha256, explicit)
    if found is not None:
        lm.thresholds, lm.thresholds_source = found.values, found.source
        lm.thresholds_tta = found.tta


def write_thresholds(lm: LoadedModel, thresholds: dict[str, float], *, method: str,
                     chosen_on: str, tta: str = "none", path: str | Path | None = None) -> Path:
    """Write a thresholds sidecar for ``lm.checkpoint`` (read back by :func:`load`).

    ``tta``: the test-time augmentation the thresholds were chosen with; a threshold only
    means the same thing on logits averaged the same way, so users of other TTA are warned.
    """
    return write_thresholds_file(
        Path(path) if path else RunFolder.of(lm.checkpoint).thresholds, thresholds,
        findings=lm.findings, checkpoint=lm.checkpoint,
        checkpoint_sha256=lm.checkpoint_sha256, method=method, chosen_on=chosen_on,
        tta=tta)


__all__ = ["TTA_MODES", "LoadedModel", "load", "read_image", "write_thresholds"]

"""A trained model, ready to use: ``cxrkit.load(checkpoint)`` (the torch backend).

Evaluation, explanation, prediction, ONNX export and the web service all go through
:class:`LoadedModel`, a :class:`cxrkit.inference.predictor.Predictor` (the interface it shares with
the ONNX backend, :class:`cxrkit.inference.onnx_backend.OnnxModel`). How an image reaches the network
is the checkpoint's preprocessing contract, ``lm.preprocessing``
(:class:`cxrkit.data.preprocessing.Preprocessing`), and nothing else:

1. **cache stage** (what ``cxrkit prepare`` did to the training images): decode to grey
   ``uint8`` (:func:`cxrkit.data.images.read_xray`, or the DICOM reader), then
   :func:`cxrkit.data.images.preprocess` with the contract's cache settings (size, CLAHE,
   chest crop). Images already in a cache skip this stage.
2. **tensor stage** (what training evaluated with): :func:`cxrkit.data.transforms.eval_transform`
   of the contract (resize to ``eval_resize``, centre crop ``input_size``, mean/std).

Test-time augmentation (``tta``) averages **logits** over the views: ``flip`` (image and
its mirror) and ``tencrop`` (resize to the contract's ``tencrop_resize``, then the four
corners, centre and their mirrors). Averaging logits rather than probabilities keeps
temperature scaling and ONNX export exact. Mirrored views on a model trained without flips
warn (:class:`cxrkit.inference.predictor.MirroredTTAWarning`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from cxrkit.artefacts import RunFolder, file_sha256, resolve_checkpoint
from cxrkit.data.dicom import read_image
from cxrkit.data.images import PreprocessSettings
from cxrkit.data.preprocessing import Preprocessing
from cxrkit.data.transforms import EvalTransform, eval_transform, ten_crop
from cxrkit.engine.checkpoint import CheckpointError, load_checkpoint
from cxrkit.inference.predictor import TTA_MODES, Predictor
from cxrkit.inference.runtime import EagerForward, Forward, choose_forward
from cxrkit.inference.thresholds import find_thresholds, write_thresholds_file


class LoadedModel(Predictor):
    """A torch model in eval mode with its findings, preprocessing contract and thresholds."""

    backend = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        findings: Sequence[str],
        preprocessing: Preprocessing,
        *,
        metadata: bool = False,
        device: torch.device | str = "cpu",
        checkpoint: Path | None = None,
        checkpoint_info: dict | None = None,
    ):
        self.model = model
        self.findings = tuple(findings)
        self.preprocessing = preprocessing
        self.metadata = bool(metadata)
        self.device = torch.device(device)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else Path("<in memory>")
        self.checkpoint_info = checkpoint_info or {}
        #: the network call of forward-only inference (:mod:`cxrkit.inference.runtime`); fp32 eager
        #: here, the measured fast path when made by :func:`load` (``precision="auto"``)
        self.forward: Forward = EagerForward("fp32", "fp32", model=model, device=self.device)

    @property
    def precision(self) -> dict:
        """How forward-only inference runs: requested and used precision, details."""
        return self.forward.describe()

    @property
    def ran_by(self) -> str:
        return self.forward.ran_by()

    @property
    def name(self) -> str:
        cfg = getattr(self.model, "cxr_config", None)
        return cfg.name if cfg is not None else type(self.model).__name__

    @property
    def source(self) -> Path:
        return self.checkpoint

    @cached_property
    def checkpoint_sha256(self) -> str:
        """sha256 of the checkpoint file, computed once (thresholds, reports, exports)."""
        return file_sha256(self.checkpoint)

    # -- the contract, read-only shortcuts -------------------------------------------------
    @property
    def cache_settings(self) -> PreprocessSettings:
        return self.preprocessing.cache

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def eval_resize(self) -> int:
        return self.preprocessing.eval_resize

    @property
    def channels(self) -> int:
        return self.preprocessing.channels

    @property
    def mean(self) -> float:
        return self.preprocessing.mean

    @property
    def std(self) -> float:
        return self.preprocessing.std

    @property
    def transform(self) -> EvalTransform:
        return eval_transform(self.preprocessing)

    def preprocess_record(self) -> dict:
        """The full preprocessing contract (stored by ``export`` next to the ONNX file)."""
        return self.preprocessing.record()

    def load_images(self, images: Sequence) -> torch.Tensor:
        """Paths or grey arrays -> ``uint8`` batch ``(B, 1, S, S)`` at the cache stage."""
        return torch.from_numpy(self.cached_batch(images))

    def _meta(self, n: int, meta) -> torch.Tensor | None:
        m = self.meta_matrix(n, meta)
        return None if m is None else torch.from_numpy(np.ascontiguousarray(m)).to(self.device)

    # -- inference ------------------------------------------------------------------------
    def forward_cached(self, images, meta=None, *, tta: str = "none"):
        """``uint8`` ``(B, 1, S, S)`` cache-stage images -> ``(logits (B, F), pooled features
        (B, D))`` float32 numpy. The features are read by a hook during the forward pass of
        the plain view (:func:`cxrkit.ood.features.tap_features`); TenCrop has no plain view
        among its crops, so it costs one extra forward (1/10 of its ten). The pass runs at
        the chosen precision (:mod:`cxrkit.inference.runtime`), which returns both. ``tta`` is checked
        by the callers (:meth:`logits_from_cached`, :meth:`score_cached`)."""
        with torch.no_grad():
            x = torch.as_tensor(images).to(self.device)
            m = self._meta(len(x), meta)
            net = self.forward
            if tta == "none":
                z, features = net(self.transform(x), m)
                return z.cpu().numpy(), features.cpu().numpy()
            if tta == "flip":
                v = self.transform(x)
                z, features = net(v, m)
                z = (z + net(v.flip(-1), m)[0]) / 2
                return z.cpu().numpy(), features.cpu().numpy()
            p = self.preprocessing
            features = net(self.transform(x), m)[1]  # the plain view's (TenCrop has none)
            big = EvalTransform(p.tencrop_resize, mean=p.mean, std=p.std, channels=p.channels)(x)
            crops = ten_crop(big, p.input_size)  # (B, 10, C, s, s)
            b = crops.shape[0]
            flat = crops.reshape(b * 10, *crops.shape[2:])
            mm = None if m is None else m.repeat_interleave(10, 0)
            z = net(flat, mm)[0].reshape(b, 10, -1).mean(1)
            return z.cpu().numpy(), features.cpu().numpy()


def load(
    checkpoint: str | Path,
    *,
    device: str | torch.device | None = None,
    thresholds: str | Path | None = None,
    precision: str | None = None,
) -> LoadedModel:
    """Load a checkpoint (or run folder) for inference; see :class:`LoadedModel`.

    ``precision``: how forward-only inference runs (:mod:`cxrkit.inference.runtime`): "auto" (the
    default, or ``$CXRKIT_PRECISION``: onnxruntime on the CPU, within 1e-4 of fp32),
    "fp32" (torch fp32 eager, the reference), "bf16" (autocast + channels_last) or
    "onnxruntime". Gradients (saliency maps) always use the torch module in fp32.

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
    try:
        preprocessing = Preprocessing.from_checkpoint(ck, path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    model.to(dev).eval()
    info = {k: ck.get(k) for k in ("config", "split", "versions", "epoch", "metrics")}
    lm = LoadedModel(
        model,
        tuple(ck.get("findings") or model.cxr_config.findings),  # type: ignore[union-attr, arg-type]
        preprocessing,
        metadata=int(ck["model_config"].get("meta_features", 0)) > 0,
        device=dev,
        checkpoint=path,
        checkpoint_info=info,
    )
    lm.forward = choose_forward(lm, precision)
    _attach_thresholds(lm, thresholds)
    _attach_ood(lm, ck.get("ood"))
    return lm


def ood_sidecar_path(checkpoint: Path) -> Path:
    """``run/best.pt`` -> ``run/best.ood.json``: the record ``cxrkit ood`` fitted for the
    checkpoint of that sha256 (:mod:`cxrkit.ood.sidecar`)."""
    from cxrkit.ood.sidecar import sidecar_path

    return sidecar_path(checkpoint)


def _attach_ood(lm: LoadedModel, recorded: dict | None) -> None:
    """The record in use: the refitted sidecar, else the checkpoint's own
    (:func:`cxrkit.ood.sidecar.choose_record`)."""
    from cxrkit.ood.sidecar import choose_record

    lm.ood_record, lm.ood_source = choose_record(
        lm.checkpoint, lambda: lm.checkpoint_sha256, recorded, lm.checkpoint.name, stacklevel=3
    )


def write_ood_sidecar(lm: LoadedModel, record: dict) -> Path:
    """Write ``record`` as :func:`ood_sidecar_path` of ``lm.checkpoint`` (atomically); from
    now on it is the record ``lm`` and every later load of that checkpoint use."""
    from cxrkit.ood.sidecar import write_sidecar

    path = write_sidecar(lm.checkpoint, lm.checkpoint_sha256, record)
    lm.ood_record, lm.ood_source = record, str(path)
    return path


def _attach_thresholds(lm: LoadedModel, explicit) -> None:
    found = find_thresholds(
        RunFolder.of(lm.checkpoint).root, lm.findings, lambda: lm.checkpoint_sha256, explicit
    )
    if found is not None:
        lm.thresholds, lm.thresholds_source = found.values, found.source
        lm.thresholds_tta = found.tta


def write_thresholds(
    lm: LoadedModel,
    thresholds: dict[str, float],
    *,
    method: str,
    chosen_on: str,
    tta: str = "none",
    path: str | Path | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write a thresholds sidecar for ``lm.checkpoint`` (read back by :func:`load`).

    ``tta``: the test-time augmentation the thresholds were chosen with; a threshold only
    means the same thing on logits averaged the same way, so users of other TTA are warned.
    """
    return write_thresholds_file(
        Path(path) if path else RunFolder.of(lm.checkpoint).thresholds,
        thresholds,
        findings=lm.findings,
        checkpoint=lm.checkpoint,
        checkpoint_sha256=lm.checkpoint_sha256,
        method=method,
        chosen_on=chosen_on,
        tta=tta,
        provenance=provenance,
    )


__all__ = [
    "TTA_MODES",
    "LoadedModel",
    "load",
    "ood_sidecar_path",
    "read_image",
    "write_ood_sidecar",
    "write_thresholds",
]

"""The model's pooled penultimate features, captured during its ordinary forward pass.

Every cxrkit model ends in a ``classifier`` module whose first argument is the pooled image
features (before patient metadata is joined: see :class:`cxrkit.models.base.ClassifierHead`;
``gaussian_attention`` passes one pooled vector per finding, flattened here). A forward
pre-hook copies that argument, so the OOD score costs no second pass through the network.

:func:`fit_from_datasets` is the one call the end of training (and ``cxrkit ood`` for older
checkpoints) makes: it runs the train and validation images through the model once and
fits the record (:func:`cxrkit.ood.record.fit_record`). Both pass the engine ``predict``
uses by default on their device (:func:`cxrkit.inference.runtime.choose_forward`: on a CPU
the cached ONNX graph in OpenVINO bf16 or onnxruntime, on a GPU torch fp32), so the record
is fitted on the numbers it is compared with, and sooner on a CPU than in torch fp32 (the
features and fit: 3.7x for cnn4 at 64 px, 16.7x for DenseNet121 at 224 px with OpenVINO
bf16, ``bench/bench_ood_record.py``); the record's provenance names the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrkit.ood.imagestats import image_stats
from cxrkit.ood.record import MAX_IMAGES, fit_record


class FeatureTap:
    """Holds the features of the last forward pass(es) through ``model.classifier``."""

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def __call__(self, module, args):
        self.batches.append(args[0].detach().float().reshape(args[0].shape[0], -1))

    def take(self) -> torch.Tensor | None:
        """The features of the *first* forward since the last take (the plain view when
        test-time augmentation ran more), then forget them."""
        first = self.batches[0] if self.batches else None
        self.batches = []
        return first


@contextlib.contextmanager
def tap_features(model: torch.nn.Module) -> Iterator[FeatureTap]:
    """Within the block, every forward of ``model`` records its pooled features."""
    head = getattr(model, "classifier", None)
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no `classifier` module whose input "
            "could be read as pooled features"
        )
    tap = FeatureTap()
    handle = head.register_forward_pre_hook(tap)
    try:
        yield tap
    finally:
        handle.remove()


class TorchFp32:
    """``(x, meta) -> (logits, features)`` through ``model`` in torch fp32 eager on
    ``device``: what :func:`dataset_features` runs without a ``forward`` (the inference
    engines themselves are :mod:`cxrkit.inference.runtime`'s, a layer above)."""

    def __init__(self, model: torch.nn.Module, device):
        self.model, self.device = model, device

    def __call__(self, x, meta):
        with tap_features(self.model) as tap:
            logits = self.model(x, meta)
            return logits, tap.take()

    def ran_by(self) -> str:
        return f"torch {torch.__version__} fp32 eager on {self.device}"

    def describe(self) -> dict:
        return {"used": "fp32"}


def engine_record(forward) -> dict:
    """What computed a record's features, for its provenance: ``ran_by`` (the engine in its
    own words) and, for a :class:`cxrkit.inference.runtime.Forward`, its ``describe()``
    (requested and used precision, why, the cached graph and its parity check)."""
    return {"ran_by": forward.ran_by(), **forward.describe()}


@torch.no_grad()
def dataset_features(
    model,
    dataset,
    transform,
    *,
    device,
    metadata: bool,
    forward: Callable | None = None,
    batch_size: int = 64,
    limit: int = MAX_IMAGES,
    seed: int = 0,
    desc: str = "ood features",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features (N, D) float32, image statistics (N, len(STAT_NAMES)), indices)`` of
    ``dataset`` (a seeded sample of ``limit`` images when it is larger), in eval mode.

    ``forward``: ``(tensor-stage x, meta) -> (logits, pooled features)``, the engine the
    features are computed with: a :class:`cxrkit.inference.runtime.Forward` (the training
    and ``cxrkit ood`` pass the one ``predict`` uses by default, so a record is calibrated
    on the numbers it is compared with); None: torch fp32 eager (:class:`TorchFp32`).
    The image statistics are computed batch by batch (the cache-stage images are not kept:
    5,000 images at 1024 px would be 5 GB).
    """
    from torch.utils.data import Subset

    from cxrkit.data.dataset import make_loader

    n = len(dataset)
    idx = np.arange(n)
    if n > limit:
        idx = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    sub = Subset(dataset, idx.tolist()) if n > limit else dataset
    loader = make_loader(sub, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    run = forward if forward is not None else TorchFp32(model, device)
    feats, stats = [], []
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            x = transform(batch["image"].to(device))
            meta = batch["meta"].to(device) if metadata else None
            features = run(x, meta)[1]
            feats.append(np.asarray(torch.as_tensor(features).float().cpu().reshape(len(x), -1)))
            stats.append(image_stats(batch["image"].numpy()))
    finally:
        model.train(was_training)
    return np.concatenate(feats), np.concatenate(stats), idx


def fit_from_datasets(
    model,
    train,
    val,
    transform,
    *,
    device="cpu",
    metadata: bool = False,
    forward: Callable | None = None,
    provenance: dict | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Fit the OOD record of ``model`` from its training and validation datasets, the
    features computed by ``forward`` (see :func:`dataset_features`), which the provenance
    names (``features_engine``, :func:`engine_record`)."""
    run = forward if forward is not None else TorchFp32(model, device)
    common = dict(device=device, metadata=metadata, forward=run, seed=seed, progress=progress)
    tf, ts, _ = dataset_features(model, train, transform, desc="ood: train features", **common)
    vf, vs, _ = dataset_features(model, val, transform, desc="ood: val features", **common)
    engine = engine_record(run)
    prov = {
        "train_images_available": len(train),
        "val_images_available": len(val),
        "sample_seed": seed,
        "features_precision": engine["used"],
        "features_engine": engine,
        **(provenance or {}),
    }
    return fit_record(tf, ts, vf, vs, provenance=prov)


__all__ = [
    "FeatureTap",
    "dataset_features",
    "engine_record",
    "fit_from_datasets",
    "tap_features",
    "TorchFp32",
]

"""The model's pooled penultimate features, captured during its ordinary forward pass.

Every cxrkit model ends in a ``classifier`` module whose first argument is the pooled image
features (before patient metadata is joined: see :class:`cxrkit.models.base.ClassifierHead`;
``gaussian_attention`` passes one pooled vector per finding, flattened here). A forward
pre-hook copies that argument, so the OOD score costs no second pass through the network.

:func:`fit_from_datasets` is the one call the end of training (and ``cxrkit ood`` for older
checkpoints) makes: it runs the train and validation images through the model once and
fits the record (:func:`cxrkit.ood.record.fit_record`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

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


@torch.no_grad()
def dataset_features(
    model,
    dataset,
    transform,
    *,
    device,
    metadata: bool,
    batch_size: int = 64,
    limit: int = MAX_IMAGES,
    seed: int = 0,
    desc: str = "ood features",
    progress: bool = False,
    precision=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features (N, D), cache-stage images (N, 1, S, S) uint8, indices)`` of ``dataset``
    (a seeded sample of ``limit`` images when it is larger), in eval mode, float32.

    ``precision``: a :class:`cxrkit.engine.precision.Precision` to run the passes in;
    None: fp32, what the end of training uses, because ``predict`` scores fp32 features
    and a record should be calibrated on the numbers it will be compared with
    (``bench/bench_ood_record.py`` measures bf16 against fp32: speed and flag agreement).
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
    feats, images = [], []
    low = precision is not None and precision.dtype is not None
    autocast = precision.autocast(torch.device(device)) if low else contextlib.nullcontext()
    try:
        with tap_features(model) as tap, autocast:
            for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
                x = transform(batch["image"].to(device))
                if low:
                    x = x.contiguous(memory_format=torch.channels_last)
                meta = batch["meta"].to(device) if metadata else None
                model(x, meta)
                feats.append(tap.take().cpu().numpy())  # type: ignore[union-attr]  # a forward just ran
                images.append(batch["image"].numpy())
    finally:
        model.train(was_training)
    return np.concatenate(feats), np.concatenate(images), idx


def fit_from_datasets(
    model,
    train,
    val,
    transform,
    *,
    device="cpu",
    metadata: bool = False,
    provenance: dict | None = None,
    seed: int = 0,
    progress: bool = False,
    precision=None,
) -> dict:
    """Fit the OOD record of ``model`` from its training and validation datasets
    (``precision``: see :func:`dataset_features`; recorded in the provenance)."""
    tf, ti, _ = dataset_features(
        model,
        train,
        transform,
        device=device,
        metadata=metadata,
        seed=seed,
        desc="ood: train features",
        progress=progress,
        precision=precision,
    )
    vf, vi, _ = dataset_features(
        model,
        val,
        transform,
        device=device,
        metadata=metadata,
        seed=seed,
        desc="ood: val features",
        progress=progress,
        precision=precision,
    )
    dtype = getattr(precision, "dtype", None)
    prov = {
        "train_images_available": len(train),
        "val_images_available": len(val),
        "sample_seed": seed,
        "features_precision": "fp32" if dtype is None else str(dtype).replace("torch.", ""),
        **(provenance or {}),
    }
    return fit_record(tf, ti, vf, vi, provenance=prov)


__all__ = ["FeatureTap", "dataset_features", "fit_from_datasets", "tap_features"]

"""The chest region of each audited image, and the images with one side of it blanked.

Which region (said in every audit, ``chest_region.source``):

* **phantom releases**: the true lung fields and the mediastinum between them, as drawn
  (``chest_regions.npz`` beside the release, :mod:`cxrkit.data.phantoms.shortcut`), moved
  into cache pixels through each image's recorded crop box;
* **real films** (or a release without that file): cxrkit's exposed-chest crop
  (:func:`cxrkit.data.images.crop_box`) of the cached image, a square box. On NIH's
  256 px copies it is often nearly the whole image, so the audit reports its area share:
  a region covering ~all of the image cannot separate "inside" from "outside".

Blanking fills the hidden side with the **mean grey level of the training images** (the
cache's training split), not black: black is itself a strong, out-of-distribution signal
(a model may score a black rectangle as anything), the training mean is the least
informative constant the model has seen.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxrkit.data.images import crop_box
from cxrkit.data.phantoms.shortcut import read_chest_regions

PHANTOM_SOURCE = (
    "true lung fields and the mediastinum between them (the phantom release's chest_regions.npz)"
)
CROP_SOURCE = (
    "cxrkit's exposed-chest crop (cxrkit.data.images.crop_box) of each cached image, a square box"
)
#: Training images sampled for the blanking value.
MEAN_SAMPLE = 2000


def _cut_padded(mask: np.ndarray, box) -> np.ndarray:
    """``mask[y0:y1, x0:x1]`` with zeros where the box leaves the mask (as the cache pads)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    h, w = mask.shape
    out = np.zeros((y1 - y0, x1 - x0), mask.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = mask[sy0:sy1, sx0:sx1]
    return out


def _phantom_regions(prepared, ids: list[str]) -> np.ndarray | None:
    root = (prepared.info or {}).get("release_root")
    masks = read_chest_regions(Path(root)) if root else None
    if masks is None or any(i not in masks for i in ids):
        return None
    cache = prepared.cache
    size = cache.size
    index = cache.index.set_index("image_id")
    out = np.zeros((len(ids), size, size), bool)
    for k, image_id in enumerate(ids):
        m = masks[image_id].astype(np.float32)
        r = index.loc[image_id]
        fx, fy = m.shape[1] / float(r["width"]), m.shape[0] / float(r["height"])
        box = (r["crop_x0"] * fx, r["crop_y0"] * fy, r["crop_x1"] * fx, r["crop_y1"] * fy)
        cut = _cut_padded(m, box)
        out[k] = cv2.resize(cut, (size, size), interpolation=cv2.INTER_AREA) >= 0.5
    return out


def chest_regions(prepared, ids: list[str], images: np.ndarray) -> tuple[np.ndarray, str]:
    """``(regions (N, S, S) bool, source)`` for the cached ``images`` of ``ids``."""
    regions = _phantom_regions(prepared, ids)
    if regions is not None:
        return regions, PHANTOM_SOURCE
    out = np.zeros(images.shape, bool)
    for k, img in enumerate(images):
        x0, y0, x1, y1 = crop_box(np.ascontiguousarray(img))
        out[k, max(y0, 0) : y1, max(x0, 0) : x1] = True
    return out, CROP_SOURCE


def training_mean(prepared, train: pd.DataFrame, *, seed: int = 0) -> int:
    """Mean grey level (0..255, rounded) of up to :data:`MEAN_SAMPLE` training images."""
    ids = train["image_id"].to_numpy()
    if len(ids) == 0:
        raise ValueError(
            f"{prepared.root}: the split has no training images to take the blanking mean from"
        )
    if len(ids) > MEAN_SAMPLE:
        ids = np.random.default_rng(seed).choice(ids, MEAN_SAMPLE, replace=False)
    rows = np.sort(prepared.cache.rows(list(ids)))
    return int(round(float(np.mean(prepared.cache.images[rows], dtype=np.float64))))


def blank(images: np.ndarray, regions: np.ndarray, value: int, *, keep: str) -> np.ndarray:
    """A copy of ``images`` (``(N, S, S)`` or ``(N, 1, S, S)`` uint8) with everything
    outside the region (``keep="chest"``) or inside it (``keep="outside"``) set to
    ``value``."""
    if keep not in ("chest", "outside"):
        raise ValueError(f"keep must be 'chest' or 'outside', got {keep!r}")
    hide = ~regions if keep == "chest" else regions
    if images.ndim == 4:
        hide = hide[:, None]
    out = np.array(images, copy=True)
    out[hide] = value
    return out


__all__ = ["CROP_SOURCE", "PHANTOM_SOURCE", "blank", "chest_regions", "training_mean"]

"""A phantom release's chest regions, and an optional planted shortcut (for the audit).

Two small additions to :func:`cxrkit.data.phantoms.make_phantoms`, used by
``cxrkit audit`` (:mod:`cxrkit.audit`) to prove that it finds a model reading something
other than the chest:

* :data:`CHEST_REGIONS` (``chest_regions.npz``, not an NIH file): each image's true chest
  region, drawn from the phantom's own anatomy, as a packed boolean mask at
  :data:`REGION_SIZE` px or less. The region is the two **lung fields and the
  mediastinum/heart between them** (each row filled from the outermost lung pixel on one
  side to the outermost on the other), so that a sign of the heart (Cardiomegaly) counts
  as inside the chest while the neck, shoulders, the air around the body and anything
  burnt into the corners do not.
* ``--shortcut FINDING:STRENGTH`` (:class:`Shortcut`): a burnt-in token (a bright "L",
  like a lead side marker or burnt-in text) in an upper corner, always outside the chest
  region, on ``STRENGTH`` of the train_val images whose *published* label has FINDING
  (what a model is trained on) and, at the same rate, on random test images whatever
  their labels. So the token predicts the finding in training and nothing at test.
  Validation images are carved out of train_val later (``cxrkit prepare``), so they carry
  the token as training does (as a site artefact shared by a random validation split
  would): the validation AUROC rewards the shortcut, the test AUROC does not.

Whether an image gets a token and where is drawn from its own seeded stream, so a
release with a shortcut differs from the same seed without one by the tokens only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxrkit.artefacts import write_bytes
from cxrkit.labels import canonical_finding

#: File of the per-image chest-region masks in a phantom release.
CHEST_REGIONS = "chest_regions.npz"
#: Largest side the masks are stored at (a 30,000-image release stays ~60 MB).
REGION_SIZE = 128
#: Side of the token as a fraction of the image side (at least 3 px).
TOKEN_FRACTION = 0.1


@dataclass(frozen=True)
class Shortcut:
    """A planted shortcut: the token goes on ``strength`` of ``finding``'s positive
    train_val images and on ``strength`` of all test images."""

    finding: str
    strength: float

    def __post_init__(self):
        object.__setattr__(self, "finding", canonical_finding(self.finding, allow_no_finding=False))
        if not 0.0 < float(self.strength) <= 1.0:
            raise ValueError(f"shortcut strength must be in (0, 1], got {self.strength}")
        object.__setattr__(self, "strength", float(self.strength))

    @classmethod
    def parse(cls, text: str) -> Shortcut:
        """``"Effusion:0.9"`` -> ``Shortcut("Effusion", 0.9)``."""
        finding, sep, strength = str(text).rpartition(":")
        try:
            value = float(strength)
        except ValueError:
            value = None
        if not sep or value is None:
            raise ValueError(f"shortcut must be FINDING:STRENGTH (e.g. Effusion:0.9), got {text!r}")
        return cls(finding, value)

    def record(self) -> dict:
        return {
            "finding": self.finding,
            "strength": self.strength,
            "marker": "burnt-in token (bright L) in an upper corner, outside the chest",
            "train_val": "on this share of the images whose published label has the finding",
            "test": "on this share of all images, whatever their labels",
        }

    def plants(self, rng: np.random.Generator, *, in_test: bool, published: tuple) -> bool:
        """Whether this image gets the token (one uniform draw from its own ``rng``)."""
        u = rng.uniform()
        return u < self.strength and (in_test or self.finding in published)


def chest_region(lungs: np.ndarray) -> np.ndarray:
    """Lung fields (``(S, S)``, 0..1) -> boolean chest region: the lungs and, row by row,
    everything between the outermost lung pixels (mediastinum, heart)."""
    inside = np.asarray(lungs) > 0.5
    out = np.zeros_like(inside)
    rows = np.flatnonzero(inside.any(1))
    for r in rows:
        cols = np.flatnonzero(inside[r])
        out[r, cols[0] : cols[-1] + 1] = True
    return out


def burn_token(image: np.ndarray, chest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``image`` (uint8) with a bright "L" token in an upper corner, clear of
    ``chest`` (grown by the token's size); the corner is drawn from ``rng``."""
    size = image.shape[0]
    k = max(3, int(round(TOKEN_FRACTION * size)))
    t = max(1, k // 3)
    clear = cv2.dilate(chest.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    right = rng.uniform() < 0.5
    x = int(rng.integers(max(1, size // 25), max(2, size // 8)))
    y = int(rng.integers(max(1, size // 25), max(2, size // 10)))
    out = image.copy()
    for x0 in (size - k - x, x) if right else (x, size - k - x):  # the other corner if needed
        if not clear[y : y + k, x0 : x0 + k].any():
            out[y : y + k, x0 : x0 + t] = 255  # the L's upright
            out[y + k - t : y + k, x0 : x0 + k] = 255  # and its foot
            return out
    raise RuntimeError("no upper corner is clear of the chest region for the shortcut token")


def region_mask_for_file(chest: np.ndarray) -> np.ndarray:
    """The mask as stored: resized to at most :data:`REGION_SIZE` px."""
    size = chest.shape[0]
    if size <= REGION_SIZE:
        return chest.astype(bool)
    small = cv2.resize(
        chest.astype(np.float32), (REGION_SIZE, REGION_SIZE), interpolation=cv2.INTER_AREA
    )
    return small >= 0.5


def write_chest_regions(root: Path, regions: dict[str, np.ndarray]) -> Path:
    """``chest_regions.npz``: ``image_id`` (names) and ``masks`` (packed bits, N x S x S)."""
    ids = list(regions)
    masks = np.stack([regions[i] for i in ids]) if ids else np.zeros((0, 1, 1), bool)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        image_id=np.array(ids),
        shape=np.array(masks.shape),
        masks=np.packbits(masks.reshape(len(ids), -1), axis=1),
    )
    path = Path(root) / CHEST_REGIONS
    write_bytes(buf.getvalue(), path)
    return path


def read_chest_regions(root: Path) -> dict[str, np.ndarray] | None:
    """The release's chest regions by image id, or None when it has none."""
    path = Path(root) / CHEST_REGIONS
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        n, h, w = (int(v) for v in z["shape"])
        bits = np.unpackbits(z["masks"], axis=1, count=h * w).astype(bool).reshape(n, h, w)
        return dict(zip(z["image_id"].tolist(), bits, strict=True))


__all__ = [
    "CHEST_REGIONS",
    "REGION_SIZE",
    "Shortcut",
    "burn_token",
    "chest_region",
    "read_chest_regions",
    "region_mask_for_file",
    "write_chest_regions",
]

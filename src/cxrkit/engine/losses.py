"""Multi-label losses that know about class imbalance and unknown labels.

ChestX-ray14 is badly imbalanced (Hernia: 0.2 % of images). Two standard answers:

* weighted BCE: each finding's positives weighted by ``negatives / positives`` in the
  *training* split (:func:`positive_weights`), as in Wang et al. 2017 and most CheXNet
  re-implementations;
* focal loss (Lin et al. 2017): down-weights easy examples by ``(1 - p_t) ** gamma``.

Unknown labels (NaN) contribute nothing: they are masked, and the mean is over known
entries only, so a batch with many unknowns is not diluted.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.messages import quote


def positive_weights(labels: np.ndarray, *, max_weight: float = 100.0) -> torch.Tensor:
    """``negatives / positives`` per finding over known labels, clipped to ``max_weight``.

    A finding with no positive gets ``max_weight`` (not infinity) so training stays finite.
    """
    labels = np.asarray(labels, dtype=np.float64)
    pos = np.nansum(labels, axis=0)
    known = np.sum(~np.isnan(labels), axis=0)
    neg = known - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), max_weight)
    return torch.tensor(np.clip(w, 1e-3, max_weight), dtype=torch.float32)


class MaskedBCE(nn.Module):
    """Binary cross-entropy on logits, NaN labels masked, optional positive weights."""

    pos_weight: torch.Tensor | None  # a buffer (register_buffer)

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(labels)
        target = torch.where(known, labels, torch.zeros_like(labels))
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), target.float(), pos_weight=self.pos_weight, reduction="none"
        )
        return (loss * known).sum() / known.sum().clamp(min=1)


class MaskedFocal(nn.Module):
    """Focal loss on logits (``gamma`` focusing, optional positive weights), NaN masked."""

    pos_weight: torch.Tensor | None  # a buffer (register_buffer)

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(labels)
        target = torch.where(known, labels, torch.zeros_like(labels)).float()
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = (1 - p_t).pow(self.gamma) * bce
        if self.pos_weight is not None:
            loss = loss * (1 + (self.pos_weight - 1) * target)
        return (loss * known).sum() / known.sum().clamp(min=1)


def make_loss(name: str, *, pos_weight: torch.Tensor | None = None, gamma: float = 2.0):
    """``'bce'`` or ``'focal'``, with or without positive weights."""
    if name == "bce":
        return MaskedBCE(pos_weight)
    if name == "focal":
        return MaskedFocal(gamma, pos_weight)
    raise ValueError(f"unknown loss {quote(name)}: use 'bce' or 'focal'")

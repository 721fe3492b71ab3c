"""Occlusion sensitivity maps: where does hiding a patch lower the finding's score?

Zeiler & Fergus (2014): slide a patch over the image, fill it with a constant, and record
how much the score falls. Computed by captum's :class:`~captum.attr.Occlusion` on the
cache-stage image (``S x S`` pixels, scaled to 0..1 and put through the model's own
``lm.transform``), so the map is in cache pixels like the chest region, with no
geometry to undo. The patch is filled with the training images' mean grey
(:func:`cxrkit.audit.regions.training_mean`), the same value the region-reliance
blanking uses.

Why the audit flags on this rather than on Grad-CAM: a 4-layer CNN's last convolutional
map is 4 x 4 at 64 px, so a Grad-CAM cell spans a quarter of the image side and cannot
tell a 6 px corner token from the lung beside it (measured: a model that relied on the
token got Grad-CAM energy/area ratios of 0.6-1.06 in the chest, as a clean model did).
Occlusion asks the model directly, at the patch's resolution, whether removing a place
lowers the score.

Units: the logit drop averaged over the windows covering each pixel (captum's
convention), positive part only (evidence for the finding); not rescaled, so
:func:`cxrkit.audit.measures.energy_shares` of it is the share of the total drop.
"""

from __future__ import annotations

import numpy as np
import torch

#: Patch side as a fraction of the image side (8 px at 64 px), and the stride as a
#: fraction of the patch (half: every pixel is covered by up to 4 windows).
WINDOW_FRACTION = 1 / 8
STRIDE_FRACTION = 1 / 2


def window_for(size: int) -> tuple[int, int]:
    """``(patch side, stride)`` in pixels for a ``size`` px image."""
    window = max(2, int(round(size * WINDOW_FRACTION)))
    return window, max(1, int(round(window * STRIDE_FRACTION)))


def occlusion_maps(
    lm,
    images: np.ndarray,
    finding: int,
    fill: int,
    *,
    meta=None,
    batch_size: int = 8,
    window: int | None = None,
    stride: int | None = None,
) -> np.ndarray:
    """``(B, S, S)`` float32 occlusion sensitivity of finding index ``finding`` on the
    uint8 cache-stage ``images`` (``(B, S, S)``); ``fill``: the patch's grey (0..255)."""
    from captum.attr import Occlusion

    images = np.asarray(images)
    n, size = len(images), images.shape[-1]
    w, s = window_for(size)
    w, s = window or w, stride or s
    m_all = lm._meta(n, meta)
    model, transform = lm.model.eval(), lm.transform

    def forward(x, m=None):
        return model(transform(x), m)

    occ = Occlusion(forward)
    out = np.zeros((n, size, size), np.float32)
    windows = ((size - w) // s + 1) ** 2
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(lm.device)
            x = x[:, None].float().div_(255.0)
            m = None if m_all is None else m_all[i : i + batch_size]
            a = occ.attribute(
                x,
                sliding_window_shapes=(1, w, w),
                strides=(1, s, s),
                baselines=fill / 255.0,
                target=int(finding),
                additional_forward_args=None if m is None else (m,),
                perturbations_per_eval=max(1, min(windows, 256 // len(x))),
            )
            out[i : i + len(x)] = a[:, 0].float().cpu().numpy()
    return out


__all__ = ["STRIDE_FRACTION", "WINDOW_FRACTION", "occlusion_maps", "window_for"]

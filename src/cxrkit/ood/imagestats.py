"""Simple statistics of a cache-stage image that separate chest radiographs from the rest.

Computed on the ``uint8`` image the model's cache stage produced (what ``cxrkit prepare``
stored, what inference decodes a file to), so they cost the same in every backend and
need no torch. Every value is in [0, 1]-intensity units or a ratio of them:

``thumb_RR_CC``   an 8x8 area-averaged thumbnail (64 values): the layout of a frontal
                  chest film (bright mediastinum and shoulders, dark lungs, the diaphragm
                  below); a rotated, upside-down or cropped image moves these
``hist_KK``       a 16-bin intensity histogram (fractions): inverted films, photographs
                  and noise have other histograms
``mean, std, skew, kurtosis``   intensity moments
``border_top/bottom/left/right``  mean intensity of the outer eighth on each side
``lr_symmetry``   correlation of the 32x32 image with its mirror (chests are nearly
                  symmetric left-right)
``top_minus_bottom``  mean of the upper half minus the lower half
``grad_energy``   mean |horizontal/vertical difference| on the full cache image, over the
                  intensity std (high for noise and texture, low for radiographs)
``dark_fraction, bright_fraction``  pixels <= 5/255 and >= 250/255

Hand-written (about 40 lines of numpy/OpenCV) because no library computes this particular
vector; each value is one well-known statistic.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB = 8
HIST_BINS = 16
_WORK = 32  # side of the working thumbnail the layout statistics are computed on

STAT_NAMES: tuple[str, ...] = (
    tuple(f"thumb_{r}_{c}" for r in range(THUMB) for c in range(THUMB))
    + tuple(f"hist_{k:02d}" for k in range(HIST_BINS))
    + ("mean", "std", "skew", "kurtosis", "border_top", "border_bottom", "border_left",
       "border_right", "lr_symmetry", "top_minus_bottom", "grad_energy", "dark_fraction",
       "bright_fraction"))


def image_stats(images) -> np.ndarray:
    """``uint8`` ``(B, 1, S, S)`` or ``(B, S, S)`` cache-stage images -> ``(B, len(STAT_NAMES))``
    float64 statistics (see the module docstring)."""
    x = np.asarray(images)
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images of shape (B, 1, S, S) or (B, S, S), got {x.shape}")
    return np.stack([_one(im) for im in x]) if len(x) else np.zeros((0, len(STAT_NAMES)))


def _one(im: np.ndarray) -> np.ndarray:
    f = im.astype(np.float32) / 255.0
    work = cv2.resize(f, (_WORK, _WORK), interpolation=cv2.INTER_AREA).astype(np.float64)
    thumb = work.reshape(THUMB, _WORK // THUMB, THUMB, _WORK // THUMB).mean((1, 3)).ravel()
    hist = np.bincount(im.ravel() >> 4, minlength=HIST_BINS)[:HIST_BINS] / im.size
    mean, std = float(f.mean()), float(f.std())
    z = (f - mean) / (std + 1e-6)
    skew, kurt = float((z ** 3).mean()), float((z ** 4).mean())
    b = _WORK // 8
    borders = [work[:b].mean(), work[-b:].mean(), work[:, :b].mean(), work[:, -b:].mean()]
    w0 = work - work.mean()
    mirror = w0[:, ::-1]
    sym = float((w0 * mirror).sum() / (np.sqrt((w0 ** 2).sum() * (mirror ** 2).sum()) + 1e-12))
    half = _WORK // 2
    tb = float(work[:half].mean() - work[half:].mean())
    grad = float((np.abs(np.diff(f, axis=0)).mean() + np.abs(np.diff(f, axis=1)).mean())
                 / 2 / (std + 1e-3))
    dark, bright = float((im <= 5).mean()), float((im >= 250).mean())
    return np.concatenate([thumb, hist, [mean, std, skew, kurt], borders,
                           [sym, tb, grad, dark, bright]])


__all__ = ["STAT_NAMES", "image_stats"]

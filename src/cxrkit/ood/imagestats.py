"""Simple statistics of a cache-stage image that separate chest radiographs from the rest.

Computed on the ``uint8`` image the model's cache stage produced (what ``cxrkit prepare``
stored, what inference decodes a file to), so they cost the same in every backend and
need no torch. Every value is in [0, 1]-intensity units or a ratio of them:

``thumb_RR_CC``   an 8x8 area-averaged thumbnail (64 values): the layout of a frontal
                  chest film (bright mediastinum and shoulders, dark lungs, the diaphragm
                  below); a rotated, upside-down or cropped image moves these
``hist_KK``       a 16-bin intensity histogram (fractions, of the image at 64 px):
                  inverted films, photographs and noise have other histograms
``mean, std, skew, kurtosis``   intensity moments (of the image at 64 px)
``border_top/bottom/left/right``  mean intensity of the outer eighth on each side
``lr_symmetry``   correlation of the 32x32 image with its mirror (chests are nearly
                  symmetric left-right)
``top_minus_bottom``  mean of the upper half minus the lower half
``grad_energy_64px``  mean |horizontal/vertical difference| of the image at 64 px, over
                  the intensity std (high for noise and texture, low for radiographs)
``dark_fraction, bright_fraction``  pixels <= 5/255 and >= 250/255 (at 64 px)

Hand-written (about 40 lines of numpy/OpenCV, vectorised over the batch so that the score
stays a small part of a prediction's time) because no library computes this particular
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
    + (
        "mean",
        "std",
        "skew",
        "kurtosis",
        "border_top",
        "border_bottom",
        "border_left",
        "border_right",
        "lr_symmetry",
        "top_minus_bottom",
        "grad_energy_64px",
        "dark_fraction",
        "bright_fraction",
    )
)
#: side the histogram, moments, dark/bright shares and gradient energy are computed at
#: (area-averaged), so the cost barely grows with the cache size
_MOMENTS = 64


def image_stats(images) -> np.ndarray:
    """``uint8`` ``(B, 1, S, S)`` or ``(B, S, S)`` cache-stage images -> ``(B, len(STAT_NAMES))``
    float64 statistics (see the module docstring), computed for the whole batch at once."""
    x = np.asarray(images)
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images of shape (B, 1, S, S) or (B, S, S), got {x.shape}")
    b = len(x)
    if b == 0:
        return np.zeros((0, len(STAT_NAMES)))
    x = np.ascontiguousarray(x, dtype=np.uint8)
    small = _resized(x, _MOMENTS)  # (B, 64, 64) in [0, 1]
    work = _resized(x, _WORK).astype(np.float64)  # (B, 32, 32)
    k = _WORK // THUMB
    thumb = work.reshape(b, THUMB, k, THUMB, k).mean((2, 4)).reshape(b, -1)
    grey = np.rint(small.reshape(b, -1) * 255).astype(np.int64)  # the 64 px image, 0..255
    codes = (grey >> 4) + HIST_BINS * np.arange(b)[:, None]
    hist = np.bincount(codes.ravel(), minlength=HIST_BINS * b).reshape(b, HIST_BINS)
    hist = hist / grey.shape[1]
    flat = small.reshape(b, -1).astype(np.float64)
    mean, std = flat.mean(1), flat.std(1)
    z = (flat - mean[:, None]) / (std[:, None] + 1e-6)
    z2 = z * z  # products, not **: numpy's pow for exponents 3 and 4 is ten times slower
    skew, kurt = (z2 * z).mean(1), (z2 * z2).mean(1)
    e = _WORK // 8
    borders = np.stack(
        [
            work[:, :e].mean((1, 2)),
            work[:, -e:].mean((1, 2)),
            work[:, :, :e].mean((1, 2)),
            work[:, :, -e:].mean((1, 2)),
        ],
        1,
    )
    w0 = work - work.mean((1, 2), keepdims=True)
    mirror = w0[:, :, ::-1]
    sq = (w0 * w0).sum((1, 2))  # the mirror has the same sum of squares
    sym = (w0 * mirror).sum((1, 2)) / (sq + 1e-12)
    half = _WORK // 2
    tb = work[:, :half].mean((1, 2)) - work[:, half:].mean((1, 2))
    grad = (
        (np.abs(np.diff(small, axis=1)).mean((1, 2)) + np.abs(np.diff(small, axis=2)).mean((1, 2)))
        / 2
        / (std + 1e-3)
    )
    dark, bright = (grey <= 5).mean(1), (grey >= 250).mean(1)
    return np.concatenate(
        [
            thumb,
            hist,
            np.stack([mean, std, skew, kurt], 1),
            borders,
            np.stack([sym, tb, grad, dark, bright], 1),
        ],
        1,
    )


def _resized(x: np.ndarray, side: int) -> np.ndarray:
    """``(B, S, S)`` uint8 -> ``(B, side, side)`` float32 in [0, 1], area-averaged."""
    if x.shape[1] == side and x.shape[2] == side:
        return x.astype(np.float32) / 255.0
    return (
        np.stack([cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in x]).astype(
            np.float32
        )
        / 255.0
    )


__all__ = ["STAT_NAMES", "image_stats"]

"""A saliency map drawn over its X-ray, with the finding and its probability written on it.

OpenCV does the colour map (``COLORMAP_JET``: blue = no evidence, red = the most) and the
text; the blend is a fixed-alpha mix, so the grey image stays readable under the colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrkit.artefacts import atomic_path


def overlay(
    image: np.ndarray, heatmap: np.ndarray, *, label: str | None = None, alpha: float = 0.45
) -> np.ndarray:
    """grey uint8 (H,W) image + (h,w) float map in [0,1] (resized to the image) ->
    RGB uint8 (H,W,3) with a colour map, and `label` (e.g. "Effusion 0.83") written on it."""
    import cv2

    image = np.asarray(image)
    heatmap = np.asarray(heatmap, np.float32)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be grey uint8 (H, W), got {image.dtype} {image.shape}")
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {heatmap.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = image.shape
    if heatmap.shape != (h, w):
        heatmap = cv2.resize(heatmap, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = np.nan_to_num(heatmap, nan=0.0).clip(0.0, 1.0)
    colour = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32)
    grey = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    out = np.rint((1 - alpha) * grey + alpha * colour).clip(0, 255).astype(np.uint8)
    if label:
        _write_label(out, label)
    return out


def _write_label(rgb: np.ndarray, text: str) -> None:
    """White text on a black band at the top-left, scaled to the image width (in place)."""
    import cv2

    h, w = rgb.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.3, w / 640)
    thick = max(1, int(round(w / 400)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    if tw > w - 4:  # shrink long labels to fit the width
        scale *= (w - 4) / tw
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    pad = max(2, th // 3)
    cv2.rectangle(
        rgb,
        (0, 0),
        (min(w - 1, tw + 2 * pad), min(h - 1, th + base + 2 * pad)),
        (0, 0, 0),
        thickness=-1,
    )
    cv2.putText(rgb, text, (pad, th + pad), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


def write_png(rgb: np.ndarray, path: Path) -> None:
    """Write an RGB ``uint8`` image as PNG, atomically (no fsync: one of many small files)."""
    import cv2

    with atomic_path(path, durable=False) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"OpenCV could not write {path}")


def write_map(heatmap: np.ndarray, path: Path) -> None:
    """Write a saliency map as float32 ``.npy``, atomically (no fsync, like :func:`write_png`)."""
    with atomic_path(path, durable=False) as tmp:
        np.save(tmp, np.asarray(heatmap, np.float32))


__all__ = ["overlay", "write_map", "write_png"]

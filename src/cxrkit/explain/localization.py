"""Localisation benchmark: saliency maps scored against NIH's bounding boxes.

For every box image in the evaluated split and each of its boxed findings, the finding's
map (:func:`~cxrkit.explain.saliency.saliency_maps`) is turned into one box the way Wang
et al. (CVPR 2017) did, simplified as the issue asks: normalise the map to its maximum,
threshold it (default 180/255, the higher of Wang's two levels), keep the **largest
connected component** (8-connectivity, OpenCV) and take its bounding box. It is compared
with the ground truth:

``IoU``   area(pred ∩ truth) / area(pred ∪ truth)
``IoBB``  area(pred ∩ truth) / area(pred)   (Wang's "intersection over the detected B-Box")

with the best-matching truth box when a finding has several on one image. Accuracy at
``T`` is the share of (image, finding) pairs with a value **> T** (Wang's "exceeds"), at
T(IoBB) in :data:`IOBB_THRESHOLDS` and T(IoU) in :data:`IOU_THRESHOLDS`. The pointing
game counts a hit when the map's maximum lies inside a truth box; its chance level is the
share of the image the truth boxes cover (where a uniformly random point lands), and the
one-sided p-value of the hits under that null is exact (a Poisson-binomial tail).

Space: everything is computed in the **cache image's pixel space** (``S x S``, crop
included): boxes come from NIH's 1024 space through ``Prepared.boxes_in_pixels`` (the
cache's own ``map_boxes``), maps are already there. IoU and IoBB are ratios of areas,
which the axis-aligned scaling between the two spaces leaves unchanged.

A whole-image box is scored too (``full_image``): its IoU and IoBB both equal the
truth box's share of the image, so it is the baseline any map must beat.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Wang et al. normalised heatmaps to [0, 255] and thresholded at 60 and 180.
WANG_THRESHOLD = 180 / 255

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (half-open pixels)


def map_to_box(heatmap: np.ndarray, threshold: float = WANG_THRESHOLD) -> Box | None:
    """The bounding box of the largest connected region where ``map >= threshold * max``.

    ``None`` for a map with no positive value (no evidence anywhere). Pixel ``(i, j)``
    covers ``[j, j+1) x [i, i+1)``, so a one-pixel region gives a 1 x 1 box.
    """
    import cv2

    m = np.asarray(heatmap, np.float32)
    if m.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {m.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    peak = float(np.nanmax(m)) if m.size else 0.0
    if not peak > 0:
        return None
    binary = (np.nan_to_num(m) >= threshold * peak).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    best = 1 + int(np.argmax(stats[1:n, cv2.CC_STAT_AREA]))
    x, y, w, h = (
        int(stats[best, k])
        for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
    )
    return (float(x), float(y), float(x + w), float(y + h))


def box_overlap(pred: Box, truth: Box) -> tuple[float, float]:
    """``(IoU, IoBB)`` of a predicted and a truth box (``x0, y0, x1, y1``)."""
    ix = max(0.0, min(pred[2], truth[2]) - max(pred[0], truth[0]))
    iy = max(0.0, min(pred[3], truth[3]) - max(pred[1], truth[1]))
    inter = ix * iy
    a_pred = max(0.0, pred[2] - pred[0]) * max(0.0, pred[3] - pred[1])
    a_truth = max(0.0, truth[2] - truth[0]) * max(0.0, truth[3] - truth[1])
    union = a_pred + a_truth - inter
    return (inter / union if union > 0 else 0.0, inter / a_pred if a_pred > 0 else 0.0)


def truth_mask(boxes: Sequence[Box], size: int) -> np.ndarray:
    """``(size, size)`` bool: pixels whose centre lies inside any truth box."""
    c = np.arange(size) + 0.5
    mask = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((c[:, None] >= y0) & (c[:, None] < y1)) & ((c[None, :] >= x0) & (c[None, :] < x1))
    return mask


def score_pair(
    heatmap: np.ndarray, boxes: Sequence[Box], *, threshold: float = WANG_THRESHOLD
) -> dict:
    """One (image, finding): predicted box, best IoU/IoBB, pointing hit and chance."""
    size = heatmap.shape[-1]
    pred = map_to_box(heatmap, threshold)
    mask = truth_mask(boxes, size)
    full = (0.0, 0.0, float(size), float(size))
    out = {
        "empty_map": pred is None,
        "pred_x0": np.nan,
        "pred_y0": np.nan,
        "pred_x1": np.nan,
        "pred_y1": np.nan,
        "iou": 0.0,
        "iobb": 0.0,
        "pointing_hit": False,
        "box_fraction": float(mask.mean()),
        "full_image_iou": max(box_overlap(full, b)[0] for b in boxes),
        "full_image_iobb": max(box_overlap(full, b)[1] for b in boxes),
    }
    if pred is not None:
        iou, iobb = zip(*(box_overlap(pred, b) for b in boxes), strict=True)
        i, j = np.unravel_index(int(np.nanargmax(heatmap)), heatmap.shape)
        out.update(
            pred_x0=pred[0],
            pred_y0=pred[1],
            pred_x1=pred[2],
            pred_y1=pred[3],
            iou=max(iou),
            iobb=max(iobb),
            pointing_hit=bool(mask[i, j]),
        )
    return out


def pointing_p_value(hits: int, chances: Sequence[float]) -> float:
    """P(at least ``hits`` hits) when pair k is hit with probability ``chances[k]``.

    The exact Poisson-binomial tail (dynamic programming over pairs, O(n^2)), the null
    hypothesis being "the map's maximum falls anywhere in the image, uniformly".
    """
    dist = np.zeros(len(chances) + 1)
    dist[0] = 1.0
    for k, p in enumerate(chances):
        dist[1 : k + 2] = dist[1 : k + 2] * (1 - p) + dist[: k + 1] * p
        dist[0] *= 1 - p
    return float(dist[hits:].sum().clip(0.0, 1.0))


def summarise(pairs: pd.DataFrame) -> dict:
    """Per finding and over all pairs: accuracies at each T, pointing game, baselines."""

    def block(t: pd.DataFrame) -> dict:
        hits = int(t["pointing_hit"].sum())
        return {
            "pairs": int(len(t)),
            "images": int(t["image_id"].nunique()),
            "empty_maps": int(t["empty_map"].sum()),
            "iobb_accuracy": {str(k): float((t["iobb"] > k).mean()) for k in IOBB_THRESHOLDS},
            "iou_accuracy": {str(k): float((t["iou"] > k).mean()) for k in IOU_THRESHOLDS},
            "full_image_iobb_accuracy": {
                str(k): float((t["full_image_iobb"] > k).mean()) for k in IOBB_THRESHOLDS
            },
            "full_image_iou_accuracy": {
                str(k): float((t["full_image_iou"] > k).mean()) for k in IOU_THRESHOLDS
            },
            "pointing_hits": hits,
            "pointing_rate": float(t["pointing_hit"].mean()),
            "pointing_chance": float(t["box_fraction"].mean()),
            "pointing_p_value": pointing_p_value(hits, t["box_fraction"].tolist()),
            "mean_iou": float(t["iou"].mean()),
            "mean_iobb": float(t["iobb"].mean()),
        }

    if len(pairs) == 0:
        return {"per_finding": {}, "overall": None}
    per = {f: block(t) for f, t in pairs.groupby("finding", sort=False)}
    return {"per_finding": per, "overall": block(pairs)}


def comparison_table(summary: dict, published: dict[str, dict]) -> pd.DataFrame:
    """Long table: finding, measure, threshold, ours, full_image baseline, Wang et al."""
    rows = []
    groups = list(summary["per_finding"].items())
    if summary["overall"] is not None:
        groups.append(("all", summary["overall"]))
    for finding, s in groups:
        for measure in ("iobb", "iou"):
            for t, acc in s[f"{measure}_accuracy"].items():
                wang = published[measure].get(float(t), {}).get(finding)
                rows.append(
                    {
                        "finding": finding,
                        "measure": measure,
                        "threshold": float(t),
                        "pairs": s["pairs"],
                        "accuracy": acc,
                        "full_image_accuracy": s[f"full_image_{measure}_accuracy"][t],
                        "wang2017_accuracy": wang,
                    }
                )
    return pd.DataFrame(rows)


def pointing_table(summary: dict) -> pd.DataFrame:
    groups = list(summary["per_finding"].items())
    if summary["overall"] is not None:
        groups.append(("all", summary["overall"]))
    return pd.DataFrame(
        [
            {
                "finding": f,
                "pairs": s["pairs"],
                "hits": s["pointing_hits"],
                "hit_rate": s["pointing_rate"],
                "chance": s["pointing_chance"],
                "p_value": s["pointing_p_value"],
                "empty_maps": s["empty_maps"],
            }
            for f, s in groups
        ]
    )


def draw_boxes(rgb: np.ndarray, truth: Sequence[Box], pred: Box | None) -> np.ndarray:
    """Truth boxes in green and the map's box in red, on an RGB image (a copy)."""
    import cv2

    out = rgb.copy()
    for colour, boxes in (((0, 255, 0), truth), ((255, 0, 0), [pred] if pred else [])):
        for x0, y0, x1, y1 in boxes:
            cv2.rectangle(
                out,
                (int(round(x0)), int(round(y0))),
                (int(round(x1)) - 1, int(round(y1)) - 1),
                colour,
                1,
            )
    return out


__all__ = [
    "IOBB_THRESHOLDS",
    "IOU_THRESHOLDS",
    "WANG_THRESHOLD",
    "box_overlap",
    "comparison_table",
    "draw_boxes",
    "map_to_box",
    "pointing_p_value",
    "pointing_table",
    "score_pair",
    "summarise",
    "truth_mask",
]

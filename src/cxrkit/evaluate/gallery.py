"""The error gallery: per finding, the model's most confident mistakes, with where it looked.

An AUROC says how often the model is wrong, not what its mistakes look like. For each
finding the model predicts, :func:`write_error_gallery` takes the evaluated split's
images and, at the operating point chosen on validation (Youden's J, ``metrics.json``),

* the ``per_kind`` most confident **false positives** (reference negative, highest
  probability at or above the threshold) and
* the ``per_kind`` most confident **false negatives** (reference positive, lowest
  probability below it),

against the best reference available for each image, named in every row: the
radiologists' adjudicated four-findings label (Pneumothorax), else the all-findings
majority of three radiologists (the 14 findings, on its PA test images), else NIH's
label. Each image gets a Grad-CAM overlay for that finding (:func:`cxrkit.explain.saliency_maps`,
:func:`cxrkit.explain.overlay`) with NIH's boxes for the finding drawn in green where the
image has any. Overlays are small JPEGs (at most ``THUMB`` px) and the gallery holds at
most ``2 * per_kind`` images per finding, so its share of the report stays bounded
whatever the size of the test set (14 findings x 4 images x ~10 kB at the default).

Writes ``gallery/`` (the JPEGs) and ``gallery.csv`` into the evaluation folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrkit.data.dataset import metadata_vector
from cxrkit.artefacts import EvaluationFolder, read_csv, write_bytes, write_csv
from cxrkit.explain import overlay, saliency_maps
from cxrkit.explain.localization import draw_boxes

log = logging.getLogger(__name__)

THUMB = 192
BATCH = 16  #: images per Grad-CAM pass
COLUMNS = [
    "finding",
    "kind",
    "rank",
    "image_id",
    "patient_id",
    "probability",
    "threshold",
    "reference",
    "reference_label",
    "nih_label",
    "boxes",
    "overlay",
]
#: reference names, best first
ADJUDICATED = "radiologists (four findings, adjudicated)"
MAJORITY = "radiologists (all findings, majority of three)"
NIH = "NIH label (text-mined)"


def best_reference(test, findings, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per image and finding: the label of the best reference and its name (see module)."""
    labels = np.array(test.labels, dtype=np.float64, copy=True)
    names = np.full(labels.shape, NIH, dtype=object)
    names[np.isnan(labels)] = ""
    path = EvaluationFolder(out).radiologists_images
    if not path.exists():
        return labels, names
    expert = read_csv(path, dtype={"image_id": str})
    row_of = {i: k for k, i in enumerate(test.table["image_id"])}
    # lower priority first, so that the better reference overwrites it
    for set_name, ref_name in (("all_findings", MAJORITY), ("four_findings", ADJUDICATED)):
        part = expert[expert["set"] == set_name]
        for j, f in enumerate(findings):
            rows = part[part["finding"] == f.replace("_", " ")]
            if rows.empty or (set_name == "four_findings" and f != "Pneumothorax"):
                continue
            idx = rows["image_id"].map(row_of).to_numpy()
            labels[idx, j] = rows["radiologists"].to_numpy(np.float64)
            names[idx, j] = ref_name
    return labels, names


def choose_errors(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float | None,
    per_kind: int,
    *,
    threshold_free: bool = False,
) -> dict[str, np.ndarray]:
    """Row indices of the most confident false positives and false negatives of one
    finding (``labels`` 0/1/NaN, ``probs``), most confident first. ``threshold_free``:
    no threshold, the highest-scored negatives and the lowest-scored positives."""
    if threshold_free:
        fp, fn = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    elif threshold is None or not np.isfinite(threshold):
        return {"false positive": np.array([], int), "false negative": np.array([], int)}
    else:
        fp = np.flatnonzero((labels == 0) & (probs >= threshold))
        fn = np.flatnonzero((labels == 1) & (probs < threshold))
    return {
        "false positive": fp[np.argsort(-probs[fp], kind="stable")][:per_kind],
        "false negative": fn[np.argsort(probs[fn], kind="stable")][:per_kind],
    }


def _thumb(rgb: np.ndarray) -> np.ndarray:
    h = rgb.shape[0]
    if h <= THUMB:
        return rgb
    return cv2.resize(rgb, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def write_error_gallery(
    lm, data, test, metrics: dict, out: str | Path, *, per_kind: int = 2, progress: bool = True
) -> pd.DataFrame:
    """Overlays of each finding's most confident errors (see the module); ``gallery.csv``."""
    layout = EvaluationFolder(Path(out))
    out, folder = layout.root, layout.gallery
    if folder.exists():
        for old in folder.glob("*.jpg"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    findings = list(metrics["findings"])
    labels, names = best_reference(test, findings, out)
    probs = test.probs
    thresholds = metrics["thresholds"].get("used") or metrics["thresholds"]["youden"]
    cache = data.prepared.cache
    boxes = data.prepared.boxes_in_pixels()
    meta_all = metadata_vector(test.table) if lm.metadata else None
    picked = []  # (finding index, kind, rank, row): every error image, then one pass
    for j, f in enumerate(findings):
        chosen = choose_errors(labels[:, j], probs[:, j], thresholds.get(f), per_kind)
        picked += [
            (j, kind, rank, i) for kind, idx in chosen.items() for rank, i in enumerate(idx, 1)
        ]
    rows = []
    for a in tqdm(
        range(0, len(picked), BATCH),
        desc="error gallery",
        unit="batch",
        disable=not progress or not picked,
        leave=False,
    ):
        batch = picked[a : a + BATCH]
        ids = [test.table["image_id"].iloc[i] for _, _, _, i in batch]
        x = torch.from_numpy(np.asarray(cache.images[cache.rows(ids)]))[:, None]
        meta = None if meta_all is None else meta_all[[i for _, _, _, i in batch]]
        maps = saliency_maps(lm, x, [j for j, _, _, _ in batch], method="gradcam", meta=meta)
        for (j, kind, rank, i), image_id, img, hm in zip(
            batch, ids, x[:, 0].numpy(), maps, strict=True
        ):
            f = findings[j]
            p = float(probs[i, j])
            rgb = overlay(img, hm, label=f"{f} {p:.2f}")
            own = (
                []
                if boxes is None
                else [
                    (b.x, b.y, b.x + b.w, b.y + b.h)
                    for b in boxes[
                        (boxes["image_id"] == image_id) & (boxes["finding"] == f)
                    ].itertuples()
                ]
            )
            if own:
                rgb = draw_boxes(rgb, own, None)
            name = f"{kind.split()[1][:3]}_{f}_{Path(image_id).stem}.jpg"
            ok, jpg = cv2.imencode(
                ".jpg", cv2.cvtColor(_thumb(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
            )
            if not ok:
                raise RuntimeError(f"OpenCV could not encode the overlay of {image_id}")
            write_bytes(jpg.tobytes(), folder / name, durable=False)
            nih = test.labels[i, j]
            rows.append(
                {
                    "finding": f,
                    "kind": kind,
                    "rank": rank,
                    "image_id": image_id,
                    "patient_id": test.table["patient_id"].iloc[i],
                    "probability": p,
                    "threshold": thresholds.get(f),
                    "reference": names[i, j],
                    "reference_label": int(labels[i, j]),
                    "nih_label": None if np.isnan(nih) else int(nih),
                    "boxes": len(own),
                    "overlay": f"{folder.name}/{name}",
                }
            )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["nih_label"] = table["nih_label"].astype("Int64")
    write_csv(table, layout.gallery_table)
    log.info(
        "error gallery: %d images for %d findings in %s",
        len(table),
        table["finding"].nunique(),
        folder,
    )
    return table


def write_error_table(
    test, metrics: dict, out: str | Path, *, images=None, per_kind: int = 2
) -> pd.DataFrame:
    """The error gallery of a model cxrkit cannot run (a predictions file): the same
    choice of images, against the same references, with the image itself (no saliency
    map) where ``images`` (a folder, searched by :func:`cxrkit.data.images.find_images`)
    has it. Without fitted thresholds the choice is threshold-free: the negatives with the
    highest probability and the positives with the lowest (``threshold`` empty)."""
    from cxrkit.data.images import ImageIndex, find_images, read_xray, to_uint8

    layout = EvaluationFolder(Path(out))
    folder = layout.gallery
    if folder.exists():
        for old in folder.glob("*.jpg"):
            old.unlink()
    findings = list(metrics["findings"])
    labels, names = best_reference(test, findings, layout.root)
    probs = test.probs
    index = find_images(images, warn=False) if images else ImageIndex()
    thresholds = metrics["thresholds"]["youden"]
    rows = []
    for j, f in enumerate(findings):
        t = thresholds.get(f)
        chosen = choose_errors(labels[:, j], probs[:, j], t, per_kind, threshold_free=t is None)
        for kind, idx in chosen.items():
            for rank, i in enumerate(idx, 1):
                image_id = test.table["image_id"].iloc[i]
                overlay = ""
                if image_id in index and image_id not in index.bad:
                    gray = to_uint8(read_xray(index[image_id]))
                    name = f"{kind.split()[1][:3]}_{f}_{Path(image_id).stem}.jpg"
                    ok, jpg = cv2.imencode(
                        ".jpg",
                        _thumb(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB) if gray.ndim == 2 else gray),
                        [cv2.IMWRITE_JPEG_QUALITY, 85],
                    )
                    if ok:
                        folder.mkdir(parents=True, exist_ok=True)
                        (folder / name).write_bytes(jpg.tobytes())
                        overlay = f"{folder.name}/{name}"
                nih = test.labels[i, j]
                rows.append(
                    {
                        "finding": f,
                        "kind": kind,
                        "rank": rank,
                        "image_id": image_id,
                        "patient_id": test.table["patient_id"].iloc[i],
                        "probability": float(probs[i, j]),
                        "threshold": t,
                        "reference": names[i, j],
                        "reference_label": int(labels[i, j]),
                        "nih_label": None if np.isnan(nih) else int(nih),
                        "boxes": 0,
                        "overlay": overlay,
                    }
                )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["nih_label"] = table["nih_label"].astype("Int64")
    write_csv(table, layout.gallery_table)
    log.info(
        "error table: %d images for %d findings, %d of them shown (from %s)",
        len(table),
        table["finding"].nunique(),
        int((table["overlay"] != "").sum()),
        images or "no --images folder",
    )
    return table


__all__ = [
    "ADJUDICATED",
    "MAJORITY",
    "NIH",
    "best_reference",
    "choose_errors",
    "write_error_gallery",
    "write_error_table",
]

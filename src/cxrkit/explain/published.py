"""Wang et al.'s published localisation accuracies, and how their protocol differs from ours.

Source: Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM, "ChestX-ray8: Hospital-scale
Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization
of Common Thorax Diseases", CVPR 2017 / arXiv:1705.02315v5.

* ``T(IoBB)``: Table 4 ("Pathology localization accuracy and average false positive number
  for 8 disease classes"), the ``Acc.`` rows. The text defines a correct localisation as
  "either IoU > T(IoU) or IoBB > T(IoBB)".
* ``T(IoU)``: arXiv v5 supplementary A.3, Table 7 (same caption, "with T(IoU) ranged from
  0.1 to 0.7"), ``Acc.`` rows, "with IoU > T(IoU) only".

Values were copied from text copies of the paper found with the project's search tool
(two copies agree on Table 4; Table 7 was read from one) and agree with the ResNet-50
classification AUCs already recorded in ``cxrkit.evaluate.published``; the average false
positive (AFP) rows are not copied because we do not measure AFP (one box per map).
"""

from __future__ import annotations

from cxrkit.labels import BOXED_FINDINGS

SOURCE = (
    "Wang et al., ChestX-ray8, CVPR 2017 (arXiv:1705.02315v5): Table 4 (T(IoBB)) and "
    "supplementary Table 7 (T(IoU)); ResNet-50, 'Acc.' rows"
)

#: ``{threshold: {finding: accuracy}}``, columns in the paper's order (BOXED_FINDINGS).
WANG_2017_IOBB: dict[float, dict[str, float]] = {
    t: dict(zip(BOXED_FINDINGS, row, strict=True))
    for t, row in {
        0.1: (0.7277, 0.9931, 0.7124, 0.7886, 0.4352, 0.1645, 0.7500, 0.4591),
        0.25: (0.5500, 0.9794, 0.5424, 0.5772, 0.2823, 0.0506, 0.5583, 0.3469),
        0.5: (0.2833, 0.8767, 0.3333, 0.4227, 0.1411, 0.0126, 0.3833, 0.1836),
        0.75: (0.1666, 0.7260, 0.2418, 0.3252, 0.1176, 0.0126, 0.2583, 0.1020),
        0.9: (0.1333, 0.6849, 0.2091, 0.2520, 0.0588, 0.0126, 0.2416, 0.0816),
    }.items()
}

WANG_2017_IOU: dict[float, dict[str, float]] = {
    t: dict(zip(BOXED_FINDINGS, row, strict=True))
    for t, row in {
        0.1: (0.6888, 0.9383, 0.6601, 0.7073, 0.4000, 0.1392, 0.6333, 0.3775),
        0.2: (0.4722, 0.6849, 0.4509, 0.4796, 0.2588, 0.0506, 0.3500, 0.2346),
        0.3: (0.2444, 0.4589, 0.3006, 0.2764, 0.1529, 0.0379, 0.1666, 0.1326),
        0.4: (0.0944, 0.2808, 0.2026, 0.1219, 0.0705, 0.0126, 0.0750, 0.0714),
        0.5: (0.0500, 0.1780, 0.1111, 0.0650, 0.0117, 0.0126, 0.0333, 0.0306),
        0.6: (0.0222, 0.0753, 0.0457, 0.0243, 0.0000, 0.0126, 0.0166, 0.0306),
        0.7: (0.0055, 0.0273, 0.0196, 0.0000, 0.0000, 0.0000, 0.0083, 0.0204),
    }.items()
}

#: How Wang et al.'s numbers were made, against how ours are (shown beside every table).
PROTOCOL_DIFFERENCES: tuple[str, ...] = (
    "data: Wang et al. scored ChestX-ray8 (108,948 images, labels before the 2017 "
    "re-release) with 983 images / 1,600 boxes; NIH released 984 boxes on 880 images, "
    "which is what we score",
    "split: their classifier was trained on a random 70/10/20 image shuffle of ChestX-ray8; "
    "ours on this run's split (under NIH's official split all box images are test images; "
    "under a box fold only the box images left in test are scored)",
    "maps: theirs are CAMs of a ResNet-50 transition layer at 32x32 from 1024 px input; "
    "ours are the chosen attribution method on this model's input size",
    "boxes: they thresholded the [0, 255]-normalised heatmap at 60 and 180 and boxed every "
    "isolated region (about 1-3 boxes per map, with average false positives reported); we "
    "keep one box per map, the largest connected component above one threshold, so we "
    "report no false-positive count",
    "correctness: their Table 4 counts a box correct when IoU > T(IoU) or IoBB > T(IoBB); "
    "their Table 7 uses IoU > T(IoU) only; we report IoBB > T and IoU > T separately",
    "resolution: they compared in the 1024 px space; we compare in the cache's pixel space "
    "(IoU and IoBB are ratios of areas, unchanged by the axis-aligned scaling between the "
    "two, up to pixel rounding of the map's box)",
)


def published_table() -> list[dict]:
    """Long rows ``{source, measure, threshold, finding, accuracy}`` of both tables."""
    rows = []
    for measure, table in (("iobb", WANG_2017_IOBB), ("iou", WANG_2017_IOU)):
        for t, per_finding in table.items():
            rows += [
                {
                    "source": SOURCE,
                    "measure": measure,
                    "threshold": t,
                    "finding": f,
                    "accuracy": acc,
                }
                for f, acc in per_finding.items()
            ]
    return rows


__all__ = ["PROTOCOL_DIFFERENCES", "SOURCE", "WANG_2017_IOBB", "WANG_2017_IOU", "published_table"]

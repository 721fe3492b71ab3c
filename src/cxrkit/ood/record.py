"""The out-of-distribution record a checkpoint carries, and the score it gives an image.

A record (format ``cxrkit-ood/1``, plain data: valid in a ``weights_only`` checkpoint and
in JSON) describes the training distribution twice, each part with a
:mod:`cxrkit.ood.gaussian` (PCA covariance + diagonal rest):

``features``  the model's pooled penultimate features (what its classifier reads), fitted
              on the **training** split and calibrated on the **validation** split (the
              network has seen its training images, so their distances are too small);
``image``     :func:`cxrkit.ood.imagestats.image_stats` of the cache-stage image (which the
              network does not shape), fitted on train + val together and calibrated on
              5-fold out-of-fold distances of those same images: ten times the calibration
              images of the validation split alone, which matters on small releases.

Each part's threshold is the :data:`PERCENTILE`-th percentile of its calibration distances;
an image's **ood score** is the larger of its two squared distances, each over its part's
threshold, so **flagged** means ``score > 1``. Measured in ``bench/bench_ood.py`` (and
kept because of it): each part alone misses what the other catches (features separate a
real-trained model's images from phantoms best, the statistics catch photographs, noise,
rotated and inverted films best). The percentile was chosen on a real-trained cnn4
(64 px, 4 epochs; flag rates of its real test images / phantoms / photographs): 99th
0.8 % / 7 % / 89 %; 97.5th 4.3 % / 92 % / 98 %; **97th 5.4 % / 98 % / 98 %**; 96th
6.9 % / 99 % / 98 %. The 97th is the first that flags >= 95 % of phantoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from cxrkit.ood.gaussian import Gaussian, fit_gaussian
from cxrkit.ood.imagestats import STAT_NAMES, image_stats

FORMAT = "cxrkit-ood/1"
#: Least threshold of a part (a squared distance). Distances of typical vectors are of the
#: order of the dimension (tens to hundreds); only a calibration set with no spread at
#: all (identical images) comes below 1, and a threshold of ~0 flagged everything.
MIN_THRESHOLD_D2 = 1.0
#: Percentile of each part's calibration distances used as its threshold.
PERCENTILE = 97.0
#: Folds of the out-of-fold calibration of the image part.
FOLDS = 5
#: Most images of a split used to fit or calibrate (a seeded sample beyond that): 5,000
#: images pin a 64-direction Gaussian far better than its own noise, and keep fitting on
#: the full 78k-image NIH training split to minutes.
MAX_IMAGES = 5000
PARTS = ("features", "image")
METHOD = (
    "max over {pooled penultimate features, image statistics} of the squared "
    "Mahalanobis distance (PCA covariance + diagonal rest) over that part's "
    "threshold (97th percentile of val distances for features, of out-of-fold "
    "train+val distances for image statistics); flagged when > 1"
)


@dataclass
class OodResult:
    """Scores of a batch: ``score`` ``(N,)``, ``flag`` ``(N,)`` bool (``score > 1``), and
    each part's distance over its threshold."""

    score: np.ndarray
    flag: np.ndarray
    parts: dict[str, np.ndarray]


def fit_record(
    train_features: np.ndarray,
    train_images,
    val_features: np.ndarray,
    val_images,
    *,
    provenance: dict | None = None,
    percentile: float = PERCENTILE,
    seed: int = 0,
) -> dict:
    """Fit a record on training features/images, calibrate it on validation ones.

    ``*_features``: ``(N, D)`` pooled features; ``*_images``: ``uint8`` ``(N, 1, S, S)``
    cache-stage images (or their :func:`image_stats`, an ``(N, len(STAT_NAMES))`` float
    array). ``provenance``: what they came from (stored as given).
    """
    import platform

    import sklearn
    from sklearn.model_selection import KFold

    from cxrkit import __version__

    train_stats, val_stats = _stats(train_images), _stats(val_images)
    if len(val_features) < 2:
        raise ValueError(
            f"need at least 2 validation images to choose a threshold, got {len(val_features)}"
        )
    feats = fit_gaussian(train_features)
    feat_cal = Gaussian(feats).mahalanobis2(val_features)
    pool = np.concatenate([train_stats, val_stats])
    image_cal = np.zeros(len(pool))
    folds = KFold(min(FOLDS, len(pool)), shuffle=True, random_state=seed)
    for fit_rows, held in folds.split(pool):
        image_cal[held] = Gaussian(fit_gaussian(pool[fit_rows], standardize=True)).mahalanobis2(
            pool[held]
        )
    image = fit_gaussian(pool, standardize=True)
    parts = {"features": feats, "image": image}
    cal = {"features": feat_cal, "image": image_cal}
    for name in PARTS:
        parts[name]["threshold_d2"] = float(
            max(np.percentile(cal[name], percentile), MIN_THRESHOLD_D2)
        )
        parts[name]["calibrated_on"] = (
            "val" if name == "features" else f"train+val, {folds.get_n_splits()}-fold out-of-fold"
        )
        parts[name]["n_calibration"] = int(len(cal[name]))
    val_ratios = {
        "features": feat_cal / parts["features"]["threshold_d2"],
        "image": Gaussian(image).mahalanobis2(val_stats) / parts["image"]["threshold_d2"],
    }
    val_score = np.maximum(val_ratios["features"], val_ratios["image"])
    return {
        "format": FORMAT,
        "method": METHOD,
        "parts": parts,
        "stat_names": list(STAT_NAMES),
        "threshold": 1.0,
        "percentile": float(percentile),
        "val": {
            "n": int(len(val_score)),
            "flag_rate": float((val_score > 1).mean()),
            "score_quantiles": {
                q: float(np.percentile(val_score, float(q))) for q in ("50", "90", "95", "99")
            },
        },
        "train": {"n": int(len(train_features))},
        "provenance": dict(provenance or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "cxrkit": __version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "python": platform.python_version(),
        },
    }


def _stats(images) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return image_stats(a)
    if a.ndim != 2 or a.shape[1] != len(STAT_NAMES):
        raise ValueError(f"expected uint8 images or ({len(STAT_NAMES)},) statistics, got {a.shape}")
    return a.astype(np.float64)


class OodScorer:
    """A record, decoded once; :meth:`score` gives each image its score and flag."""

    def __init__(self, record: dict):
        check_record(record)
        self.record = record
        self.threshold = float(record["threshold"])
        self.gaussians = {k: Gaussian(record["parts"][k]) for k in PARTS}
        self.scales = {k: float(record["parts"][k]["threshold_d2"]) for k in PARTS}

    @property
    def feature_dim(self) -> int:
        return int(self.record["parts"]["features"]["dim"])

    def score(self, features: np.ndarray, images) -> OodResult:
        """``features`` ``(N, D)`` pooled features and the ``uint8`` cache-stage images."""
        feats = np.asarray(features, np.float64).reshape(len(features), -1)
        ratios = {
            "features": self.gaussians["features"].mahalanobis2(feats) / self.scales["features"],
            "image": self.gaussians["image"].mahalanobis2(_stats(images)) / self.scales["image"],
        }
        score = np.maximum(ratios["features"], ratios["image"])
        return OodResult(score=score, flag=score > self.threshold, parts=ratios)


def check_record(record) -> None:
    """Raise ``ValueError`` naming what is wrong with a record (format, parts, threshold)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(
            f"not a cxrkit OOD record (format {FORMAT!r} expected, got "
            f"{record.get('format') if isinstance(record, dict) else type(record).__name__!r})"
        )
    missing = [k for k in PARTS if k not in record.get("parts", {})]
    if missing or "threshold" not in record:
        raise ValueError(f"OOD record lacks {missing or ['threshold']}")
    if list(record.get("stat_names", [])) != list(STAT_NAMES):
        raise ValueError(
            "OOD record was made with other image statistics than this cxrkit "
            "computes; recompute it with `cxrkit ood RUN`"
        )


def record_summary(record: dict) -> dict:
    """The small, human part of a record (for manifests, reports and ``/info``)."""
    return {
        "method": record["method"],
        "threshold": record["threshold"],
        "percentile": record["percentile"],
        "val": record["val"],
        "train": record["train"],
        "calibration": {k: record["parts"][k]["calibrated_on"] for k in PARTS},
        "feature_dim": record["parts"]["features"]["dim"],
        "feature_rank": record["parts"]["features"]["rank"],
        "provenance": record.get("provenance", {}),
        "created": record.get("created"),
    }


__all__ = [
    "FORMAT",
    "MAX_IMAGES",
    "PERCENTILE",
    "OodResult",
    "OodScorer",
    "check_record",
    "fit_record",
    "record_summary",
]

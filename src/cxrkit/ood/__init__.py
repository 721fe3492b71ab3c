"""Out-of-distribution score and flag: is this image like the ones the model learned from?

:mod:`cxrkit.ood.record` (the record a checkpoint carries and the score, numpy only, so
the torch-free ONNX backend uses it too), :mod:`cxrkit.ood.gaussian` (the fitted
Gaussians), :mod:`cxrkit.ood.imagestats` (image statistics) and
:mod:`cxrkit.ood.features` (pooled features captured during the forward pass; torch).
This package imports no torch itself.
"""

from cxrkit.ood.imagestats import STAT_NAMES, image_stats
from cxrkit.ood.record import (
    FORMAT,
    PERCENTILE,
    OodResult,
    OodScorer,
    check_record,
    fit_record,
    record_summary,
)

__all__ = [
    "FORMAT",
    "PERCENTILE",
    "STAT_NAMES",
    "OodResult",
    "OodScorer",
    "check_record",
    "fit_record",
    "image_stats",
    "record_summary",
]

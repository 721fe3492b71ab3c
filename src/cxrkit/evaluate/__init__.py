"""Evaluation of a trained checkpoint: ``evaluate_checkpoint`` (``cxrkit evaluate``)."""

from cxrkit.evaluate.core import FORMAT, evaluate_checkpoint
from cxrkit.evaluate.predictions import (
    SplitChangedError,
    load_eval_data,
    predict_split,
)
from cxrkit.evaluate.published import SOURCES, published_rows

__all__ = ["FORMAT", "SOURCES", "SplitChangedError", "evaluate_checkpoint", "load_eval_data",
           "predict_split", "published_rows"]

"""Evaluation of a trained checkpoint: ``evaluate_checkpoint`` (``cxrkit evaluate``)."""

from cxrkit.evaluate.core import FORMAT, evaluate_checkpoint
from cxrkit.evaluate.predictions import predict_split
from cxrkit.inference.heldout import SplitChangedError, load_held_out
from cxrkit.evaluate.published import SOURCES, published_rows

__all__ = ["FORMAT", "SOURCES", "SplitChangedError", "evaluate_checkpoint", "load_held_out",
           "predict_split", "published_rows"]

"""Evaluation: a run's checkpoint (``evaluate_checkpoint``) or any model's predictions file
(``evaluate_predictions``), scored the same way (``cxrkit evaluate``)."""

from cxrkit.evaluate.core import FORMAT, evaluate_checkpoint
from cxrkit.evaluate.external import evaluate_predictions
from cxrkit.evaluate.predictions import predict_split
from cxrkit.evaluate.predictions_file import PredictionsFormatError, read_predictions
from cxrkit.inference.heldout import SplitChangedError, load_held_out
from cxrkit.evaluate.published import SOURCES, published_rows

__all__ = [
    "FORMAT",
    "SOURCES",
    "PredictionsFormatError",
    "SplitChangedError",
    "evaluate_checkpoint",
    "evaluate_predictions",
    "load_held_out",
    "predict_split",
    "published_rows",
    "read_predictions",
]

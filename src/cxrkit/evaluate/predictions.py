"""One split's predictions from the cache, with the checkpoint's own preprocessing and TTA.

:func:`predict_split` turns the cached images of one split of a verified
:class:`cxrkit.inference.heldout.HeldOut` into logits (:class:`Predictions`);
:func:`predictions_frame` is the table ``cxrkit evaluate`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrkit.data.dataset import CXRDataset, make_loader
from cxrkit.inference.core import LoadedModel
from cxrkit.inference.heldout import HeldOut
from cxrkit.metrics import sigmoid


@dataclass
class Predictions:
    """One split's images, labels (NaN = unknown) and logits, in the same row order."""

    split: str
    table: pd.DataFrame  #: image_id, patient_id, age, sex, view
    labels: np.ndarray  #: (N, F)
    logits: np.ndarray  #: (N, F)
    ood_score: np.ndarray | None = None  #: (N,) out-of-distribution score (> 1: flagged)
    #: (N, F) the probabilities as given, when they were given (a predictions file): kept
    #: exactly, not recomputed through the logits, so scores equal the file's to the bit
    probabilities: np.ndarray | None = None

    @property
    def ood_flag(self) -> np.ndarray | None:
        return None if self.ood_score is None else self.ood_score > 1.0

    @property
    def probs(self) -> np.ndarray:
        return self.probabilities if self.probabilities is not None else sigmoid(self.logits)

    @property
    def patients(self) -> np.ndarray:
        return self.table["patient_id"].to_numpy()


def predict_split(
    lm: LoadedModel,
    data: HeldOut,
    split: str,
    *,
    tta: str = "none",
    batch_size: int = 64,
    progress: bool = True,
) -> Predictions:
    """Logits for every cached image of ``split`` (checkpoint preprocessing, ``tta``)."""
    table = data.table(split)
    if len(table) == 0:
        raise ValueError(f"split {split!r} of {data.split_path} has no cached images")
    ds = CXRDataset(data.prepared.cache, table, lm.findings)
    loader = make_loader(ds, batch_size=batch_size, shuffle=False)
    parts, ood = [], []
    for batch in tqdm(
        loader,
        desc=f"predict {split}",
        unit="batch",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    ):
        meta = batch["meta"] if lm.metadata else None
        z, result = lm.score_cached(batch["image"], meta, tta=tta)
        parts.append(z)
        ood.append(None if result is None else result.score)
    return Predictions(
        split=split,
        table=ds.table[["image_id", "patient_id", "age", "sex", "view"]].reset_index(drop=True),
        labels=ds.labels.numpy().astype(np.float64),
        logits=np.concatenate(parts).astype(np.float64),
        ood_score=None if any(o is None for o in ood) else np.concatenate(ood),  # type: ignore[arg-type]
    )


def predictions_frame(pred: Predictions, findings) -> pd.DataFrame:
    """image_id, patient_id, age, sex, view, then per finding its label F and probability p_F."""
    df = pred.table.copy()
    probs = pred.probs
    for j, f in enumerate(findings):
        df[f] = pd.array(
            np.where(
                np.isnan(pred.labels[:, j]),
                None,  # type: ignore[call-overload]
                pred.labels[:, j],
            ),
            dtype="Int64",
        )
    for j, f in enumerate(findings):
        df[f"p_{f}"] = probs[:, j]
    if pred.ood_score is not None:
        df["ood_score"] = pred.ood_score
        df["ood_flag"] = pred.ood_flag
    return df


__all__ = ["Predictions", "predict_split", "predictions_frame"]

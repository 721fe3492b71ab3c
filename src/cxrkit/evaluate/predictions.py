"""The evaluated images: the run's split (sha256-verified, box fold reproduced) and predictions.

:func:`load_eval_data` finds the prepared folder and split file a checkpoint was trained
with, refuses a split file whose sha256 differs from the recorded one (a changed split
could put training images into "test"), checks the cache was made with the checkpoint's
preprocessing, and re-applies the run's box fold exactly as
:func:`cxrkit.engine.train.load_data` did (same function, fraction and seed), so box images
moved into training are not evaluated. :func:`predict_split` turns one split into logits
from the cache with the checkpoint's own preprocessing and optional TTA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrkit.data.dataset import CXRDataset, make_loader
from cxrkit.data.nih import file_sha256
from cxrkit.data.prepare import Prepared, load_prepared
from cxrkit.data.splits import box_fold, load_split, split_provenance
from cxrkit.inference import LoadedModel
from cxrkit.metrics import sigmoid


class SplitChangedError(ValueError):
    """The split file differs from the one the checkpoint was trained with."""


# -- data ---------------------------------------------------------------------------------
@dataclass
class EvalData:
    """The prepared folder and the run's split (box fold applied), verified."""

    prepared: Prepared
    split: pd.DataFrame          #: image_id, patient_id, split (after the box fold)
    split_path: Path
    split_sha256: str
    protocol: str                #: "official", "random" or "custom"
    moved: pd.DataFrame | None   #: images the box fold moved test -> train
    box_fold: float

    def table(self, split: str) -> pd.DataFrame:
        """Label rows of the cached images in ``split``."""
        t = self.prepared.labels.merge(self.split[["image_id", "split"]], on="image_id",
                                       how="inner")
        return t.loc[t["split"] == split].reset_index(drop=True)


def _prepared_folder(lm: LoadedModel, override) -> Path:
    config = lm.checkpoint_info.get("config") or {}
    recorded = (config.get("data") or {}).get("prepared")
    path = Path(override) if override else (Path(recorded) if recorded else None)
    if path is None:
        raise ValueError(f"{lm.checkpoint}: the checkpoint records no prepared folder "
                         "(config data.prepared); pass --prepared")
    if not path.exists():
        raise FileNotFoundError(f"prepared folder {path} (recorded in {lm.checkpoint.name}) "
                                "not found; pass --prepared with its new location")
    return path


def _split_file(lm: LoadedModel, prepared: Path, overridden: bool) -> tuple[Path, str]:
    """The split file to use and the sha256 the checkpoint recorded for it."""
    rec = lm.checkpoint_info.get("split") or {}
    if not rec.get("sha256"):
        raise ValueError(f"{lm.checkpoint}: no split sha256 recorded; cannot verify which "
                         "images are held out")
    config = lm.checkpoint_info.get("config") or {}
    custom = (config.get("data") or {}).get("split_file")
    recorded = Path(rec["path"]) if rec.get("path") else None
    if custom:
        path = Path(custom)
    elif overridden or recorded is None or not recorded.exists():
        path = prepared / "split.csv"   # the run used the prepared folder's own split
    else:
        path = recorded
    if not path.exists():
        raise FileNotFoundError(f"split file {path} (recorded in {lm.checkpoint.name}) not found")
    return path, rec["sha256"]


def load_eval_data(lm: LoadedModel, prepared: str | Path | None = None) -> EvalData:
    """Prepared folder + the checkpoint's split, sha256-verified, box fold reproduced."""
    folder = _prepared_folder(lm, prepared)
    p = load_prepared(folder)
    if p.cache.settings.to_dict() != lm.cache_settings.to_dict():
        raise ValueError(f"{folder}: cache settings {p.cache.settings.to_dict()} differ from "
                         f"the checkpoint's {lm.cache_settings.to_dict()}; evaluate on the "
                         "prepared folder the model was trained with")
    split_path, want = _split_file(lm, folder, prepared is not None)
    got = file_sha256(split_path)
    if got != want:
        raise SplitChangedError(
            f"{split_path}: sha256 {got[:12]}... differs from the {want[:12]}... recorded in "
            f"{lm.checkpoint.name}: the split changed since training, so the evaluated "
            "images may include training images. Evaluate with the original split file.")
    split = load_split(split_path)
    protocol = str(split_provenance(split_path).get("protocol", "custom"))
    config = lm.checkpoint_info.get("config") or {}
    fraction = float((config.get("data") or {}).get("box_fold") or 0.0)
    moved = None
    if fraction > 0:
        if p.boxes is None:
            raise ValueError(f"the run used data.box_fold={fraction} but {folder} has no boxes")
        seed = int((config.get("train") or {}).get("seed", 0))
        split, moved = box_fold(split, p.boxes, fraction=fraction, seed=seed)  # as training did
        _check_moved(moved, lm.checkpoint.parent / "box_fold_moved.csv")
    return EvalData(prepared=p, split=split, split_path=split_path, split_sha256=got,
                    protocol=protocol, moved=moved, box_fold=fraction)


def _check_moved(moved: pd.DataFrame, recorded: Path) -> None:
    """The reproduced box fold must move the images the run recorded as moved."""
    if not recorded.exists():
        return
    ids = set(pd.read_csv(recorded, dtype={"image_id": str})["image_id"])
    if ids != set(moved["image_id"]):
        raise ValueError(f"{recorded}: the run moved {len(ids)} box images into training, "
                         f"but reproducing its box fold moves {len(moved)} others; the split "
                         "or boxes changed since training")


# -- predictions --------------------------------------------------------------------------
@dataclass
class Predictions:
    """One split's images, labels (NaN = unknown) and logits, in the same row order."""

    split: str
    table: pd.DataFrame      #: image_id, patient_id, age, sex, view
    labels: np.ndarray       #: (N, F)
    logits: np.ndarray       #: (N, F)

    @property
    def probs(self) -> np.ndarray:
        return sigmoid(self.logits)

    @property
    def patients(self) -> np.ndarray:
        return self.table["patient_id"].to_numpy()


def predict_split(lm: LoadedModel, data: EvalData, split: str, *, tta: str = "none",
                  batch_size: int = 64, progress: bool = True) -> Predictions:
    """Logits for every cached image of ``split`` (checkpoint preprocessing, ``tta``)."""
    table = data.table(split)
    if len(table) == 0:
        raise ValueError(f"split {split!r} of {data.split_path} has no cached images")
    ds = CXRDataset(data.prepared.cache, table, lm.findings)
    loader = make_loader(ds, batch_size=batch_size, shuffle=False)
    parts = []
    for batch in tqdm(loader, desc=f"predict {split}", unit="batch", disable=not progress,
                      leave=False, dynamic_ncols=True):
        meta = batch["meta"] if lm.metadata else None
        parts.append(lm.logits_from_cached(batch["image"], meta, tta=tta))
    return Predictions(split=split, table=ds.table[["image_id", "patient_id", "age", "sex",
                                                   "view"]].reset_index(drop=True),
                       labels=ds.labels.numpy().astype(np.float64),
                       logits=np.concatenate(parts).astype(np.float64))



def predictions_frame(pred: Predictions, findings) -> pd.DataFrame:
    """image_id, patient_id, age, sex, view, then per finding its label F and probability p_F."""
    df = pred.table.copy()
    probs = pred.probs
    for j, f in enumerate(findings):
        df[f] = pd.array(np.where(np.isnan(pred.labels[:, j]), None,
                                  pred.labels[:, j]), dtype="Int64")
    for j, f in enumerate(findings):
        df[f"p_{f}"] = probs[:, j]
    return df


__all__ = ["EvalData", "Predictions", "SplitChangedError", "load_eval_data", "predict_split",
           "predictions_frame"]

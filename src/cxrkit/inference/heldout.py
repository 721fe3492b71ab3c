"""The images a checkpoint never trained on: its prepared folder and split, verified.

One place, used by evaluation (``cxrkit evaluate``), explanation and the localisation
benchmark (``cxrkit explain`` / ``cxrkit localize``), so they agree on what "test" is.
:func:`load_held_out` finds the prepared folder and split file a checkpoint was trained
with, refuses a split file whose sha256 differs from the recorded one (a changed split
could put training images into "test"), checks the cache was made with the checkpoint's
preprocessing, and re-applies the run's box fold exactly as
:func:`cxrkit.engine.train.load_data` did (same function, fraction and seed), checked
against the run's ``box_fold_moved.csv``, so box images moved into training are never
evaluated or scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrkit.artefacts import PreparedFolder, RunFolder, file_sha256, read_csv
from cxrkit.data.prepare import Prepared, load_prepared
from cxrkit.data.splits import box_fold, load_split, split_provenance
from cxrkit.inference.core import LoadedModel


class SplitChangedError(ValueError):
    """The split file differs from the one the checkpoint was trained with."""


@dataclass
class HeldOut:
    """The prepared folder and the run's split (box fold applied), verified."""

    prepared: Prepared
    split: pd.DataFrame  #: image_id, patient_id, split (after the box fold)
    split_path: Path
    split_sha256: str
    protocol: str  #: "official", "random" or "custom"
    moved: pd.DataFrame | None  #: images the box fold moved test -> train
    box_fold: float

    def table(self, split: str) -> pd.DataFrame:
        """Label rows of the cached images in ``split``."""
        t = self.prepared.labels.merge(
            self.split[["image_id", "split"]], on="image_id", how="inner"
        )
        return t.loc[t["split"] == split].reset_index(drop=True)


def _prepared_folder(lm: LoadedModel, override) -> Path:
    config = lm.checkpoint_info.get("config") or {}
    recorded = (config.get("data") or {}).get("prepared")
    path = Path(override) if override else (Path(recorded) if recorded else None)
    if path is None:
        raise ValueError(
            f"{lm.checkpoint}: the checkpoint records no prepared folder "
            "(config data.prepared); pass --prepared"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"prepared folder {path} (recorded in {lm.checkpoint.name}) "
            "not found; pass --prepared with its new location"
        )
    return path


def _split_file(lm: LoadedModel, prepared: Path, overridden: bool) -> tuple[Path, str]:
    """The split file to use and the sha256 the checkpoint recorded for it."""
    rec = lm.checkpoint_info.get("split") or {}
    if not rec.get("sha256"):
        raise ValueError(
            f"{lm.checkpoint}: no split sha256 recorded; cannot verify which images are held out"
        )
    config = lm.checkpoint_info.get("config") or {}
    custom = (config.get("data") or {}).get("split_file")
    recorded = Path(rec["path"]) if rec.get("path") else None
    if custom:
        path = Path(custom)
    elif overridden or recorded is None or not recorded.exists():
        path = PreparedFolder(prepared).split  # the run used the prepared folder's own split
    else:
        path = recorded
    if not path.exists():
        raise FileNotFoundError(f"split file {path} (recorded in {lm.checkpoint.name}) not found")
    return path, rec["sha256"]


def load_held_out(lm: LoadedModel, prepared: str | Path | None = None) -> HeldOut:
    """Prepared folder + the checkpoint's split, sha256-verified, box fold reproduced."""
    folder = _prepared_folder(lm, prepared)
    p = load_prepared(folder)
    if p.cache.settings.to_dict() != lm.preprocessing.cache.to_dict():
        raise ValueError(
            f"{folder}: cache settings {p.cache.settings.to_dict()} differ from "
            f"the checkpoint's {lm.preprocessing.cache.to_dict()}; evaluate on the "
            "prepared folder the model was trained with"
        )
    split_path, want = _split_file(lm, folder, prepared is not None)
    got = file_sha256(split_path)
    if got != want:
        raise SplitChangedError(
            f"{split_path}: sha256 {got[:12]}... differs from the {want[:12]}... recorded in "
            f"{lm.checkpoint.name}: the split changed since training, so the evaluated "
            "images may include training images. Evaluate with the original split file."
        )
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
        _check_moved(moved, RunFolder.of(lm.checkpoint).box_fold_moved)
    return HeldOut(
        prepared=p,
        split=split,
        split_path=split_path,
        split_sha256=got,
        protocol=protocol,
        moved=moved,
        box_fold=fraction,
    )


def _check_moved(moved: pd.DataFrame, recorded: Path) -> None:
    """The reproduced box fold must move the images the run recorded as moved."""
    if not recorded.exists():
        return
    ids = set(read_csv(recorded, dtype={"image_id": str})["image_id"])
    if ids != set(moved["image_id"]):
        raise ValueError(
            f"{recorded}: the run moved {len(ids)} box images into training, "
            f"but reproducing its box fold moves {len(moved)} others; the split "
            "or boxes changed since training"
        )


def ensure_ood_record(
    lm: LoadedModel,
    prepared: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = False,
) -> dict:
    """The checkpoint's out-of-distribution record; computed when it has none.

    A checkpoint made before records existed (or ``force``) gets one computed from the
    run's own prepared cache and split (verified by :func:`load_held_out`), exactly as the
    end of training computes it (:func:`cxrkit.ood.features.fit_from_datasets`, the
    features by ``lm.forward``: with ``load``'s default precision, the engine ``predict``
    uses, as training picks it; the provenance names it), written
    atomically to ``<checkpoint>.ood.json`` (the checkpoint itself is not rewritten, so
    its sha256, which thresholds and exports refer to, stays).
    """
    import logging
    import time

    from cxrkit.data.dataset import CXRDataset
    from cxrkit.inference.core import write_ood_sidecar
    from cxrkit.ood.features import fit_from_datasets

    if lm.ood_record is not None and not force:
        return lm.ood_record
    data = load_held_out(lm, prepared)
    t0 = time.perf_counter()
    train = CXRDataset(data.prepared.cache, data.table("train"), lm.findings)
    val = CXRDataset(data.prepared.cache, data.table("val"), lm.findings)
    seed = int(((lm.checkpoint_info.get("config") or {}).get("train") or {}).get("seed", 0))
    record = fit_from_datasets(
        lm.model,
        train,
        val,
        lm.transform,
        device=lm.device,
        metadata=lm.metadata,
        forward=lm.forward,
        seed=seed,
        progress=progress,
        provenance={
            "made_by": "cxrkit ood (on demand)",
            "split": str(data.split_path),
            "split_sha256": data.split_sha256,
            "prepared": str(data.prepared.root),
        },
    )
    path = write_ood_sidecar(lm, record)
    logging.getLogger(__name__).info(
        "ood record for %s computed from %d train / %d val images in %.1f s -> %s",
        lm.checkpoint.name,
        record["train"]["n"],
        record["val"]["n"],
        time.perf_counter() - t0,
        path,
    )
    return record


__all__ = ["HeldOut", "SplitChangedError", "ensure_ood_record", "load_held_out"]

"""The images a checkpoint never trained on: its prepared folder and split, box fold re-applied.

Why this is here and not imported: ``cxrkit.evaluate.load_eval_data`` does the same job,
but evaluate is layer 7 and explain layer 6, so explain may not import it. This module
keeps the same rules with the same lower-level functions (``load_prepared``,
``load_split``, ``box_fold``): the split file must have the sha256 the checkpoint
recorded, and the run's box fold is reproduced with its fraction and seed, so box images
moved into training are never scored. ``tests/test_localize.py`` checks that both give
the same split. (Moving ``load_eval_data`` down to layer 5 would let both share one.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrkit.data.nih import file_sha256
from cxrkit.data.prepare import Prepared, load_prepared
from cxrkit.data.splits import box_fold, load_split, split_provenance


@dataclass
class HeldOut:
    """A prepared folder and the run's split as training saw it (box fold applied)."""

    prepared: Prepared
    split: pd.DataFrame          #: image_id, patient_id, split (after the box fold)
    split_path: Path
    protocol: str                #: "official", "random" or "custom"
    box_fold: float              #: the run's data.box_fold (0: none)
    moved: pd.DataFrame | None   #: images the box fold moved test -> train


def held_out(lm, prepared: str | Path | None = None) -> HeldOut:
    """The checkpoint's prepared folder (or ``prepared``) and verified split."""
    config = lm.checkpoint_info.get("config") or {}
    data_cfg = config.get("data") or {}
    folder = Path(prepared) if prepared else (Path(data_cfg["prepared"])
                                              if data_cfg.get("prepared") else None)
    if folder is None:
        raise ValueError(f"{lm.checkpoint}: the checkpoint records no prepared folder "
                         "(config data.prepared); pass --prepared")
    if not folder.exists():
        raise FileNotFoundError(f"prepared folder {folder} (recorded in {lm.checkpoint.name}) "
                                "not found; pass --prepared with its new location")
    p = load_prepared(folder)
    if p.cache.settings.to_dict() != lm.cache_settings.to_dict():
        raise ValueError(f"{folder}: cache settings {p.cache.settings.to_dict()} differ from "
                         f"the checkpoint's {lm.cache_settings.to_dict()}")
    rec = lm.checkpoint_info.get("split") or {}
    if not rec.get("sha256"):
        raise ValueError(f"{lm.checkpoint}: no split sha256 recorded; cannot tell which "
                         "images are held out")
    recorded = Path(rec["path"]) if rec.get("path") else None
    if data_cfg.get("split_file"):
        split_path = Path(data_cfg["split_file"])
    elif prepared is not None or recorded is None or not recorded.exists():
        split_path = folder / "split.csv"
    else:
        split_path = recorded
    if not split_path.exists():
        raise FileNotFoundError(f"split file {split_path} (recorded in {lm.checkpoint.name}) "
                                "not found")
    got = file_sha256(split_path)
    if got != rec["sha256"]:
        raise ValueError(f"{split_path}: sha256 {got[:12]}... differs from the "
                         f"{rec['sha256'][:12]}... recorded in {lm.checkpoint.name}: the split "
                         "changed since training, so 'test' may hold training images")
    split = load_split(split_path)
    fraction = float(data_cfg.get("box_fold") or 0.0)
    moved = None
    if fraction > 0:
        if p.boxes is None:
            raise ValueError(f"the run used data.box_fold={fraction} but {folder} has no boxes")
        seed = int((config.get("train") or {}).get("seed", 0))
        split, moved = box_fold(split, p.boxes, fraction=fraction, seed=seed)
        recorded_moved = lm.checkpoint.parent / "box_fold_moved.csv"
        if recorded_moved.exists():
            ids = set(pd.read_csv(recorded_moved, dtype={"image_id": str})["image_id"])
            if ids != set(moved["image_id"]):
                raise ValueError(f"{recorded_moved}: the run moved {len(ids)} box images into "
                                 f"training, but reproducing its box fold moves {len(moved)} "
                                 "others; the split or boxes changed since training")
    protocol = str(split_provenance(split_path).get("protocol", "custom"))
    return HeldOut(prepared=p, split=split, split_path=split_path, protocol=protocol,
                   box_fold=fraction, moved=moved)


__all__ = ["HeldOut", "held_out"]

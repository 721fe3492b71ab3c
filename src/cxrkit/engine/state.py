"""The state types of a training run, shared by :mod:`~cxrkit.engine.train`,
:mod:`~cxrkit.engine.resume` and :mod:`~cxrkit.engine.box_supervision`.

:class:`RunData` (what was read), :class:`Training` (what a run is built of, once) and
:class:`TrainState` (what changes from epoch to epoch) live here so that those modules
import them from one place rather than from each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from cxrkit.artefacts import RunFolder
from cxrkit.config import RunConfig
from cxrkit.data.dataset import CXRDataset
from cxrkit.data.prepare import Prepared
from cxrkit.data.preprocessing import Preprocessing
from cxrkit.engine import distributed
from cxrkit.engine.precision import Precision


@dataclass
class RunData:
    """What :func:`~cxrkit.engine.train.load_data` read: the prepared folder, the split, the
    train and validation datasets (and the box images moved into training, if any)."""

    prepared: Prepared
    findings: tuple[str, ...]
    train: CXRDataset
    val: CXRDataset
    split_path: Path
    split_sha256: str
    moved: pd.DataFrame | None
    train_boxes: pd.DataFrame | None


@dataclass
class Training:
    """One run's parts, built once by :func:`~cxrkit.engine.train.build`; the epochs only read them."""

    cfg: RunConfig
    dist: distributed.Dist
    device: torch.device
    run: RunFolder
    data: RunData
    model: nn.Module  #: the bare model (saved, resumed)
    net: nn.Module  #: what is trained: the model, maybe DDP-wrapped and compiled
    freeze: dict  #: apply_freeze's counts (trainable / frozen parameters)
    preprocessing: Preprocessing  #: the geometry contract, stored in every checkpoint
    train_tf: object
    eval_tf: object
    precision: Precision
    scaler: Any
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    sched_step: object  #: per-step scheduler hook, or None (plateau steps per epoch)
    sampler: Any  #: DistributedSampler of the training set, or None
    val_loader: object
    per_rank: int  #: training batch per rank
    aux: object  #: box-supervision loss, or None

    @property
    def no_train(self) -> bool:
        return self.optimizer is None or self.cfg.model.freeze == "no-train"


@dataclass
class TrainState:
    """What changes from epoch to epoch; saved in every checkpoint for exact resume."""

    start_epoch: int = 0
    step: int = 0
    best: float = -math.inf
    history: list = field(default_factory=list)
    bad_epochs: int = 0


__all__ = ["RunData", "TrainState", "Training"]

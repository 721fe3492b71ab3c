"""Optimisers and learning-rate schedules, chosen by name from the run config.

One place for the choices (torchvision's reference keeps them together too): Adam, AdamW
or SGD over the trainable parameters; ReduceLROnPlateau on the validation loss (CheXNet:
x0.1 when it stalls) or a cosine schedule with linear warm-up, stepped per optimiser
step over ``train.epochs`` epochs.
"""

from __future__ import annotations

import math

import torch

from cxrkit.config import RunConfig


def make_optimizer(cfg: RunConfig, model):
    """The optimiser of ``train.optimizer`` over the trainable parameters (None if none)."""
    tc = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, betas=(0.9, 0.999), weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)


def make_scheduler(cfg: RunConfig, optimizer, steps_per_epoch: int):
    """(scheduler, per-step hook or None). Plateau steps per epoch on val loss."""
    tc = cfg.train
    if optimizer is None or tc.scheduler == "none":
        return None, None
    if tc.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=tc.plateau_factor, patience=tc.plateau_patience
        ), None
    total = max(1, tc.epochs * steps_per_epoch)
    warm = int(round(tc.warmup_epochs * steps_per_epoch))

    def factor(step):
        if step < warm:
            return (step + 1) / max(1, warm)
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return sched, sched.step


__all__ = ["make_optimizer", "make_scheduler"]

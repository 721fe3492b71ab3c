"""``cxrkit train``: fit a model on a prepared release, resumably, on one CPU or many GPUs.

Reads top to bottom like torchvision's reference recipe: :func:`train_one_epoch`,
:func:`evaluate`, :func:`load_data`, :func:`build_model`, :func:`fit`.

A run folder holds ``config.yaml`` (resolved), ``run.json`` (manifest and status),
``metrics.csv`` (one row per epoch), ``curves.png``, TensorBoard events in ``tb/``, and
``last.pt`` / ``best.pt`` (best validation mean AUROC). Re-running the same command on a
folder with ``last.pt`` resumes exactly where it stopped: model, optimiser, scheduler,
scaler, epoch and RNG states are restored, and every epoch's shuffling and augmentation
are seeded from ``(seed, epoch)``, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from cxrkit.config import RunConfig
from cxrkit.data.dataset import META_FEATURES, CXRDataset, make_loader
from cxrkit.data.prepare import load_prepared
from cxrkit.data.splits import box_fold, load_split, split_provenance
from cxrkit.data.transforms import NO_AUGMENT, AugmentSettings, presets
from cxrkit.engine import distributed
from cxrkit.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    versions,
)
from cxrkit.engine.losses import make_loss, positive_weights
from cxrkit.engine.precision import Precision
from cxrkit.engine.runlog import plot_curves, write_history
from cxrkit.labels import resolve_findings
from cxrkit.metrics import auroc_per_finding, mean_defined
from cxrkit.preprocessing import Preprocessing

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch) * 1_009 + rank)


def train_one_epoch(model, loss_fn, optimizer, loader, transform, *, device, precision,
                    scaler, epoch, cfg: RunConfig, scheduler_step=None, writer=None,
                    step=0, show_progress=True, aux_loss=None):
    """One pass over the training loader; returns (mean loss, images/s, step)."""
    model.train()
    tc = cfg.train
    g = _epoch_generator(tc.seed, epoch, getattr(loader.sampler, "rank", 0))
    total, count, t0 = 0.0, 0, time.perf_counter()
    n_batches = len(loader) if tc.max_steps_per_epoch is None else min(len(loader), tc.max_steps_per_epoch * tc.grad_accum)
    bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="batch",
               disable=not show_progress, leave=False, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        x = transform(batch["image"].to(device, non_blocking=True), g)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["labels"].to(device)
        meta = batch["meta"].to(device) if cfg.model.metadata else None
        with precision.autocast(device):
            logits = model(x, meta)
        loss = loss_fn(logits.float(), y)
        if aux_loss is not None:
            loss = loss + aux_loss(model, x, batch)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}; the last "
                "good checkpoint (last.pt) is kept. Lower train.lr, or try train.amp=none.")
        scaled = loss / tc.grad_accum
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if (i + 1) % tc.grad_accum == 0 or i + 1 == n_batches:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if tc.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler_step is not None:
                scheduler_step()
            step += 1
            if writer is not None and step % tc.log_every == 0:
                writer.add_scalar("train/loss_step", loss.item(), step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        total += loss.item() * len(y)
        count += len(y)
        rate = count / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{rate:.0f}", refresh=False)
        bar.update(1)
    bar.close()
    return total / max(count, 1), count / max(time.perf_counter() - t0, 1e-9), step


@torch.no_grad()
def predict_loader(model, loader, transform, *, device, precision, metadata: bool,
                   dist=None, show_progress=False, desc="eval"):
    """Logits and labels for every item of ``loader`` (gathered across ranks).

    Returns ``(indices, logits, labels)`` as float32 numpy arrays sorted by dataset index,
    de-duplicated (a distributed sampler pads the last shard with repeats).
    """
    model.eval()
    idx, logits, labels = [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not show_progress, leave=False):
        x = transform(batch["image"].to(device))
        meta = batch["meta"].to(device) if metadata else None
        with precision.autocast(device):
            out = model(x, meta)
        logits.append(out.float().cpu().numpy())
        labels.append(batch["labels"].numpy())
        idx.append(batch["index"].numpy())
    local = (np.concatenate(idx), np.concatenate(logits), np.concatenate(labels))
    parts = distributed.gather_objects(dist or distributed.Dist(), local)
    i, z, y = (np.concatenate([part[k] for part in parts]) for k in range(3))
    _, first = np.unique(i, return_index=True)
    order = first[np.argsort(i[first])]
    return i[order], z[order], y[order]


def evaluate(model, loss_fn, loader, transform, *, device, precision, metadata, dist=None,
             show_progress=False) -> dict:
    """Validation loss, per-finding AUROC and mean AUROC (NaN findings skipped)."""
    _, logits, labels = predict_loader(model, loader, transform, device=device,
                                       precision=precision, metadata=metadata, dist=dist,
                                       show_progress=show_progress)
    z, y = torch.from_numpy(logits), torch.from_numpy(labels)
    with torch.no_grad():
        loss = float(loss_fn(z.to(device), y.to(device)))
    aurocs = auroc_per_finding(labels, torch.sigmoid(z).numpy())
    return {"loss": loss, "auroc": aurocs, "mean_auroc": mean_defined(aurocs)}


@dataclass
class RunData:
    prepared: object
    findings: tuple[str, ...]
    train: CXRDataset
    val: CXRDataset
    split_path: Path
    split_sha256: str
    moved: pd.DataFrame | None
    train_boxes: pd.DataFrame | None


def load_data(cfg: RunConfig, run_dir: Path | None = None) -> RunData:
    """Prepared folder + split (+ box fold) -> train and validation datasets."""
    dc = cfg.data
    prepared = load_prepared(dc.prepared)
    split_path = Path(dc.split_file) if dc.split_file else prepared.root / "split.csv"
    split = load_split(split_path) if dc.split_file else prepared.split
    prov = split_provenance(split_path)
    from cxrkit.data.nih import file_sha256
    split_sha = file_sha256(split_path)
    moved = None
    if dc.box_fold > 0:
        if prepared.boxes is None:
            raise ValueError(f"data.box_fold={dc.box_fold} but {prepared.root} has no boxes")
        split, moved = box_fold(split, prepared.boxes, fraction=dc.box_fold, seed=cfg.train.seed)
        if run_dir is not None:
            moved.to_csv(run_dir / "box_fold_moved.csv", index=False)
        log.info("box fold: moved %d test images of %d patients into train (listed in "
                 "box_fold_moved.csv)", len(moved), moved["patient_id"].nunique())
    findings = resolve_findings(dc.findings)
    table = prepared.labels.merge(split[["image_id", "split"]], on="image_id", how="inner")
    train_t = table[table["split"] == "train"].reset_index(drop=True)
    val_t = table[table["split"] == "val"].reset_index(drop=True)
    if len(train_t) == 0 or len(val_t) == 0:
        raise ValueError(f"split {split_path} has {len(train_t)} train and {len(val_t)} val "
                         "images in the cache; both must be non-empty")
    train_boxes = None  # in cache pixels (crop and resize applied)
    if prepared.boxes is not None:
        boxes = prepared.boxes_in_pixels()
        train_boxes = boxes[boxes["image_id"].isin(train_t["image_id"])].reset_index(drop=True)
    log.info("data: %d train / %d val images, %d findings, split %s (%s)", len(train_t),
             len(val_t), len(findings), split_path, prov.get("protocol", "custom"))
    return RunData(prepared=prepared, findings=findings,
                   train=CXRDataset(prepared.cache, train_t, findings),
                   val=CXRDataset(prepared.cache, val_t, findings),
                   split_path=split_path, split_sha256=split_sha, moved=moved,
                   train_boxes=train_boxes)


def build_model(cfg: RunConfig, data: RunData):
    """The registry model for this run (box priors only from training images)."""
    from cxrkit.models import apply_freeze, create_model, fit_box_priors

    mc = cfg.model
    kwargs = dict(mc.kwargs)
    if mc.name == "gaussian_attention" and "box_priors" not in kwargs:
        boxes = data.prepared.boxes
        if boxes is not None and (data.train_boxes is None or len(data.train_boxes) == 0):
            raise ValueError(
                "gaussian_attention fits its attention priors from bounding boxes, but no "
                "training image has a box: under the official split all box images are test "
                "images. Set data.box_fold (e.g. 0.5) to move a patient-grouped part of the "
                "box images out of test into training (the run records which), or use a "
                "random split.")
        if data.train_boxes is not None and len(data.train_boxes):
            kwargs["box_priors"] = fit_box_priors(data.train_boxes, data.findings,
                                                  image_size=data.prepared.cache.size)
    model = create_model(mc.name, findings=data.findings, in_chans=mc.in_chans,
                         pretrained=mc.pretrained, weights=mc.weights,
                         meta_features=len(META_FEATURES) if mc.metadata else 0, **kwargs)
    apply_freeze(model, mc.freeze)
    return model


def _make_optimizer(cfg: RunConfig, model):
    tc = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, betas=(0.9, 0.999), weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)


def _make_scheduler(cfg: RunConfig, optimizer, steps_per_epoch: int):
    """(scheduler, per-step hook or None). Plateau steps per epoch on val loss."""
    tc = cfg.train
    if optimizer is None or tc.scheduler == "none":
        return None, None
    if tc.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=tc.plateau_factor, patience=tc.plateau_patience), None
    total = max(1, tc.epochs * steps_per_epoch)
    warm = int(round(tc.warmup_epochs * steps_per_epoch))

    def factor(step):
        if step < warm:
            return (step + 1) / max(1, warm)
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return sched, sched.step


def record_ood(checkpoint: Path, model, data: RunData, transform, *, device, cfg: RunConfig,
               show_progress: bool = False) -> None:
    """The end of training: fit the checkpoint's out-of-distribution record
    (:func:`cxrkit.ood.features.fit_from_datasets`, with the checkpoint's own weights) and
    write it into the checkpoint (key ``ood``), atomically. A checkpoint that already has
    one (a finished run re-run) is left as it is."""
    from cxrkit.ood.features import fit_from_datasets

    ck = load_checkpoint(checkpoint)
    if ck.get("ood") is not None:
        return
    model.load_state_dict(ck["model"])
    t0 = time.perf_counter()
    try:
        record = fit_from_datasets(
            model, data.train, data.val, transform, device=device,
            metadata=cfg.model.metadata, seed=cfg.train.seed, progress=show_progress,
            provenance={"made_by": "training", "epoch": int(ck["epoch"]) + 1,
                        "split": str(data.split_path), "split_sha256": data.split_sha256,
                        "prepared": str(data.prepared.root)})
    except ValueError as e:   # e.g. a validation split of one image: say so, keep the run
        log.warning("no out-of-distribution record written into %s: %s", checkpoint.name, e)
        return
    ck["ood"] = record
    save_checkpoint({k: v for k, v in ck.items() if k != "format"}, checkpoint)
    log.info("ood record: %d train / %d val images, %.1f s, written into %s",
             ck["ood"]["train"]["n"], ck["ood"]["val"]["n"], time.perf_counter() - t0,
             checkpoint.name)


def fit(cfg: RunConfig, *, resume: bool = True, show_progress: bool = True) -> dict:
    """Train (or, with ``model.freeze=no-train``, only evaluate) and write the run folder.

    Returns the summary dict also written to ``run.json``.
    """
    from cxrkit.data.nih import write_json_atomic

    d = distributed.setup()
    tc, dc = cfg.train, cfg.data
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    run_dir = Path(cfg.out)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(run_dir / "config.yaml")
    distributed.barrier(d)
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed % 2**32)

    data = load_data(cfg, run_dir if d.is_main else None)
    model = build_model(cfg, data).to(device)
    mcfg = model.cxr_config
    preprocessing = Preprocessing.for_run(cfg, data.prepared.cache.settings, model)
    train_tf, eval_tf = presets(
        preprocessing, augment=AugmentSettings(hflip=dc.hflip) if dc.augment else NO_AUGMENT)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = Precision.choose(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
    pos_w = positive_weights(data.train.labels.numpy()) if tc.pos_weight else None
    loss_fn = make_loss(tc.loss, pos_weight=pos_w, gamma=tc.focal_gamma).to(device)

    world_batch = dc.batch_size
    per_rank = max(1, world_batch // d.world_size)
    sampler = val_sampler = None
    if d.enabled:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(data.train, num_replicas=d.world_size, rank=d.rank,
                                     shuffle=True, seed=tc.seed)
        val_sampler = DistributedSampler(data.val, num_replicas=d.world_size, rank=d.rank,
                                         shuffle=False)
    eval_bs = dc.eval_batch_size or 2 * world_batch
    val_loader = make_loader(data.val, batch_size=max(1, eval_bs // d.world_size), shuffle=False,
                             workers=dc.workers, sampler=val_sampler,
                             pin_memory=device.type == "cuda")

    optimizer = _make_optimizer(cfg, model)
    steps = math.ceil(len(data.train) / world_batch / tc.grad_accum)
    if tc.max_steps_per_epoch:
        steps = min(steps, tc.max_steps_per_epoch)
    scheduler, sched_step = _make_scheduler(cfg, optimizer, steps)
    net = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)

    aux = None
    if cfg.model.box_supervision > 0:
        from cxrkit.engine.box_supervision import box_supervision_loss

        aux = box_supervision_loss(cfg, data, preprocessing)

    start_epoch, step, best, history, bad_epochs = 0, 0, -math.inf, [], 0
    last = run_dir / "last.pt"
    if resume and last.exists():
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        if optimizer is not None and ck.get("optimizer"):
            optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler"):
            scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, step = ck["epoch"] + 1, ck["step"]
        best, history, bad_epochs = ck["best"], list(ck["history"]), ck["bad_epochs"]
        set_rng_state(ck["rng"])
        if d.is_main:
            log.info("resumed from %s at epoch %d", last, start_epoch + 1)

    writer = None
    if d.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"))

    def state(epoch, metrics):
        return {
            "model": model.state_dict(), "model_config": mcfg.to_dict(),
            "findings": list(data.findings),
            "preprocess": preprocessing.to_dict(),
            "config": cfg.to_dict(),
            "split": {"path": str(data.split_path), "sha256": data.split_sha256},
            "versions": versions(),
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict() if scaler is not None else {},
            "epoch": epoch, "step": step, "rng": rng_state(), "best": best,
            "bad_epochs": bad_epochs, "history": history, "metrics": metrics,
        }

    status, started = "completed", time.time()
    no_train = optimizer is None or cfg.model.freeze == "no-train"
    epochs = 1 if no_train else tc.epochs
    if history and bad_epochs >= tc.patience:  # the resumed run had stopped early: done
        status, epochs = "early-stopped", start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            torch.manual_seed(tc.seed * 7919 + epoch)  # dropout etc.: a function of the epoch
            if no_train:
                train_loss, rate = float("nan"), 0.0
            else:
                if sampler is not None:
                    sampler.set_epoch(epoch)
                loader = make_loader(data.train, batch_size=per_rank, shuffle=True,
                                     seed=tc.seed * 1000 + epoch, workers=dc.workers,
                                     sampler=sampler, drop_last=len(data.train) > per_rank,
                                     pin_memory=device.type == "cuda")  # non_blocking copies
                train_loss, rate, step = train_one_epoch(
                    net, loss_fn, optimizer, loader, train_tf, device=device,
                    precision=precision, scaler=scaler, epoch=epoch, cfg=cfg,
                    scheduler_step=sched_step, writer=writer, step=step,
                    show_progress=show_progress and d.is_main, aux_loss=aux)
                if d.enabled:  # images/s over all ranks
                    rate = float(sum(distributed.gather_objects(d, rate)))
            val = evaluate(net, loss_fn, val_loader, eval_tf, device=device, precision=precision,
                           metadata=cfg.model.metadata, dist=d)
            if scheduler is not None and sched_step is None:
                scheduler.step(val["loss"])
            improved = val["mean_auroc"] > best + 1e-6 or not history
            if improved:
                best, bad_epochs = val["mean_auroc"], 0
            else:
                bad_epochs += 1
            row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
                   "val_mean_auroc": val["mean_auroc"], "images_per_s": rate,
                   "lr": optimizer.param_groups[0]["lr"] if optimizer else 0.0,
                   "seconds": time.time() - started,
                   **{f"auroc_{f}": float(a) for f, a in zip(data.findings, val["auroc"], strict=True)}}
            history.append(row)
            if d.is_main:
                log.info("epoch %d: train loss %.4f, val loss %.4f, val mean AUROC %.4f, "
                         "%.1f img/s", epoch + 1, train_loss, val["loss"], val["mean_auroc"], rate)
                for k in ("train_loss", "val_loss", "val_mean_auroc", "images_per_s", "lr"):
                    writer.add_scalar(k.replace("_", "/", 1), row[k], epoch + 1)
                metrics = {"val_mean_auroc": val["mean_auroc"],
                           "val_auroc": dict(zip(data.findings, map(float, val["auroc"]), strict=True))}
                if improved:
                    save_checkpoint(state(epoch, metrics), run_dir / "best.pt")
                save_checkpoint(state(epoch, metrics), last)
                write_history(history, run_dir / "metrics.csv")
                plot_curves(history, run_dir / "curves.png")
            distributed.barrier(d)
            if bad_epochs >= tc.patience:
                if d.is_main:
                    log.info("early stopping: no better validation AUROC for %d epochs", bad_epochs)
                status = "early-stopped"
                break
        if d.is_main and history:
            record_ood(run_dir / "best.pt", model, data, eval_tf, device=device, cfg=cfg,
                       show_progress=show_progress)
    except TrainingDiverged as e:
        status = f"diverged: {e}"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if d.is_main:
            if writer is not None:
                writer.close()
            summary = {
                "status": status, "model": cfg.model.name, "findings": list(data.findings),
                "epochs_run": len(history), "best_val_mean_auroc": best if history else None,
                "seconds": time.time() - started, "train_images": len(data.train),
                "val_images": len(data.val), "parameters": sum(p.numel() for p in model.parameters()),
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "images_per_s": history[-1]["images_per_s"] if history else None,
                "device": str(device), "world_size": d.world_size, "backend": d.backend or None,
                "precision": str(precision.dtype), "split": {"path": str(data.split_path),
                                                             "sha256": data.split_sha256},
                "versions": versions(), "box_fold_moved": 0 if data.moved is None else len(data.moved),
            }
            write_json_atomic(summary, run_dir / "run.json")
        distributed.teardown(d)
    return summary if d.is_main else {}

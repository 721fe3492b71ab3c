"""``cxrkit train``: fit a model on a prepared release, resumably, on one CPU or many GPUs.

Reads top to bottom like torchvision's reference recipe: :func:`train_one_epoch`,
:func:`evaluate`, :func:`load_data`, :func:`build_model`; then :func:`fit` in four steps,
each readable on its own: **build** (:func:`build`: everything the run is made of, no
file written), **resume** (:func:`check_resume`, :func:`resume_state`), **run the
epochs** (:func:`run_epochs`) and **summarise** (:func:`summarise`: ``run.json``).

A run folder (:class:`cxrkit.artefacts.RunFolder`) holds ``config.yaml`` (resolved),
``run.json`` (manifest and status), ``metrics.csv`` (one row per epoch), ``curves.png``,
TensorBoard events in ``tb/``, and ``last.pt`` / ``best.pt`` (best validation mean AUROC).
Re-running the same command on a folder with ``last.pt`` resumes exactly where it
stopped: model, optimiser, scheduler, scaler, epoch and RNG states are restored, and every
epoch's shuffling and augmentation are seeded from ``(seed, epoch)``, so a resumed run
ends where an uninterrupted one does. Only the keys in :data:`cxrkit.config.RESUMABLE`
(``train.epochs`` to extend a run, workers, threads, ...) may differ on resume; other
differences are refused before anything is written (``--fresh`` starts again).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxrkit.artefacts import (
    PreparedFolder,
    RunFolder,
    WriteError,
    file_sha256,
    finite_or_none,
    folder_lock,
    versions,
    write_json,
)
from cxrkit.config import RunConfig
from cxrkit.data.dataset import META_FEATURES, CXRDataset, make_loader
from cxrkit.data.prepare import load_prepared
from cxrkit.data.splits import box_fold, load_split, split_provenance
from cxrkit.data.transforms import NO_AUGMENT, AugmentSettings, presets
from cxrkit.engine import distributed
from cxrkit.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint
from cxrkit.engine.losses import make_loss, positive_weights
from cxrkit.engine.optim import make_optimizer, make_scheduler
from cxrkit.engine.precision import Precision
from cxrkit.engine.resume import check_resume, resume_state, start_run_folder
from cxrkit.engine.runlog import plot_curves, write_history
from cxrkit.engine.state import RunData, Training, TrainState
from cxrkit.labels import resolve_findings
from cxrkit.metrics import auroc_per_finding, mean_defined
from cxrkit.data.preprocessing import Preprocessing

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch) * 1_009 + rank)


def train_one_epoch(
    model,
    loss_fn,
    optimizer,
    loader,
    transform,
    *,
    device,
    precision,
    scaler,
    epoch,
    cfg: RunConfig,
    scheduler_step=None,
    writer=None,
    step=0,
    show_progress=True,
    aux_loss=None,
):
    """One pass over the training loader; returns (mean loss, images/s, step)."""
    model.train()
    tc = cfg.train
    g = _epoch_generator(tc.seed, epoch, getattr(loader.sampler, "rank", 0))
    total, count, t0 = 0.0, 0, time.perf_counter()
    n_batches = (
        len(loader)
        if tc.max_steps_per_epoch is None
        else min(len(loader), tc.max_steps_per_epoch * tc.grad_accum)
    )
    bar = tqdm(
        total=n_batches,
        desc=f"epoch {epoch + 1}/{tc.epochs}",
        unit="batch",
        disable=not show_progress,
        leave=False,
        dynamic_ncols=True,
    )
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
                "good checkpoint (last.pt) is kept. Lower train.lr, or try train.amp=none."
            )
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
def predict_loader(
    model,
    loader,
    transform,
    *,
    device,
    precision,
    metadata: bool,
    dist=None,
    show_progress=False,
    desc="eval",
):
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


def evaluate(
    model,
    loss_fn,
    loader,
    transform,
    *,
    device,
    precision,
    metadata,
    dist=None,
    show_progress=False,
) -> dict:
    """Validation loss, per-finding AUROC and mean AUROC (NaN findings skipped)."""
    _, logits, labels = predict_loader(
        model,
        loader,
        transform,
        device=device,
        precision=precision,
        metadata=metadata,
        dist=dist,
        show_progress=show_progress,
    )
    z, y = torch.from_numpy(logits), torch.from_numpy(labels)
    with torch.no_grad():
        loss = float(loss_fn(z.to(device), y.to(device)))
    aurocs = auroc_per_finding(labels, torch.sigmoid(z).numpy())
    return {"loss": loss, "auroc": aurocs, "mean_auroc": mean_defined(aurocs)}


def load_data(cfg: RunConfig) -> RunData:
    """Prepared folder + split (+ box fold) -> train and validation datasets (writes nothing)."""
    dc = cfg.data
    prepared = load_prepared(dc.prepared)
    split_path = Path(dc.split_file) if dc.split_file else PreparedFolder(prepared.root).split
    split = load_split(split_path) if dc.split_file else prepared.split
    prov = split_provenance(split_path)
    split_sha = file_sha256(split_path)
    moved = None
    if dc.box_fold > 0:
        if prepared.boxes is None:
            raise ValueError(f"data.box_fold={dc.box_fold} but {prepared.root} has no boxes")
        split, moved = box_fold(split, prepared.boxes, fraction=dc.box_fold, seed=cfg.train.seed)
        log.info(
            "box fold: moved %d test images of %d patients into train (listed in "
            "box_fold_moved.csv)",
            len(moved),
            moved["patient_id"].nunique(),
        )
    findings = resolve_findings(dc.findings)
    table = prepared.labels.merge(split[["image_id", "split"]], on="image_id", how="inner")
    train_t = table[table["split"] == "train"].reset_index(drop=True)
    val_t = table[table["split"] == "val"].reset_index(drop=True)
    if len(train_t) == 0 or len(val_t) == 0:
        raise ValueError(
            f"split {split_path} has {len(train_t)} train and {len(val_t)} val "
            "images in the cache; both must be non-empty"
        )
    train_boxes = None  # in cache pixels (crop and resize applied)
    if prepared.boxes is not None:
        boxes = prepared.boxes_in_pixels()
        train_boxes = boxes[boxes["image_id"].isin(train_t["image_id"])].reset_index(drop=True)  # type: ignore[index]  # not None when prepared.boxes is not
    log.info(
        "data: %d train / %d val images, %d findings, split %s (%s)",
        len(train_t),
        len(val_t),
        len(findings),
        split_path,
        prov.get("protocol", "custom"),
    )
    return RunData(
        prepared=prepared,
        findings=findings,
        train=CXRDataset(prepared.cache, train_t, findings),
        val=CXRDataset(prepared.cache, val_t, findings),
        split_path=split_path,
        split_sha256=split_sha,
        moved=moved,
        train_boxes=train_boxes,
    )


def build_model(cfg: RunConfig, data: RunData) -> tuple[nn.Module, dict]:
    """The registry model for this run (box priors only from training images), frozen as
    ``model.freeze`` says, and :func:`~cxrkit.models.apply_freeze`'s parameter counts."""
    from cxrkit.models import apply_freeze, create_model, fit_box_priors, uses_box_priors

    mc = cfg.model
    kwargs = dict(mc.kwargs)
    if uses_box_priors(mc.name) and "box_priors" not in kwargs:
        boxes = data.prepared.boxes
        if boxes is not None and (data.train_boxes is None or len(data.train_boxes) == 0):
            raise ValueError(
                f"{mc.name} fits its attention priors from bounding boxes, but no "
                "training image has a box: under the official split all box images are test "
                "images. Set data.box_fold (e.g. 0.5) to move a patient-grouped part of the "
                "box images out of test into training (the run records which), or use a "
                "random split."
            )
        if data.train_boxes is not None and len(data.train_boxes):
            kwargs["box_priors"] = fit_box_priors(
                data.train_boxes, data.findings, image_size=data.prepared.cache.size
            )
    model = create_model(
        mc.name,
        findings=data.findings,
        in_chans=mc.in_chans,
        pretrained=mc.pretrained,
        weights=mc.weights,
        meta_features=len(META_FEATURES) if mc.metadata else 0,
        **kwargs,
    )
    return model, apply_freeze(model, mc.freeze)


# -- build: everything a run is made of (no file written) -------------------------------
def build(cfg: RunConfig, d: distributed.Dist) -> Training:
    """Data, model, transforms, loss, loaders, optimiser and scheduler for ``cfg``.

    Seeds first; the order below fixes how the global RNGs are consumed, which exact
    resume relies on. Raises for a config that cannot run, before any file is written.
    """
    tc, dc = cfg.train, cfg.data
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed % 2**32)

    data = load_data(cfg)
    model, freeze = build_model(cfg, data)
    model = model.to(device)
    preprocessing = Preprocessing.for_run(cfg, data.prepared.cache.settings, model)
    train_tf, eval_tf = presets(
        preprocessing, augment=AugmentSettings(hflip=dc.hflip) if dc.augment else NO_AUGMENT
    )
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits it
    precision = Precision.choose(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
    pos_w = positive_weights(data.train.labels.numpy()) if tc.pos_weight else None
    loss_fn = make_loss(tc.loss, pos_weight=pos_w, gamma=tc.focal_gamma).to(device)

    world_batch = dc.batch_size
    sampler: Any = None
    val_sampler: Any = None
    if d.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            data.train, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=tc.seed
        )
        val_sampler = DistributedSampler(
            data.val, num_replicas=d.world_size, rank=d.rank, shuffle=False
        )
    eval_bs = dc.eval_batch_size or 2 * world_batch
    val_loader = make_loader(
        data.val,
        batch_size=max(1, eval_bs // d.world_size),
        shuffle=False,
        workers=dc.workers,
        sampler=val_sampler,
        pin_memory=device.type == "cuda",
    )

    optimizer = make_optimizer(cfg, model)
    steps = math.ceil(len(data.train) / world_batch / tc.grad_accum)
    if tc.max_steps_per_epoch:
        steps = min(steps, tc.max_steps_per_epoch)
    scheduler, sched_step = make_scheduler(cfg, optimizer, steps)
    net = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.type == "cuda" else None
        )
    if tc.compile:
        net = torch.compile(net)  # type: ignore[assignment]  # a Module when given one

    aux = None
    if cfg.model.box_supervision > 0:
        from cxrkit.engine.box_supervision import box_supervision_loss

        aux = box_supervision_loss(cfg, data, preprocessing)
    return Training(
        cfg=cfg,
        dist=d,
        device=device,
        run=RunFolder(Path(cfg.out)),
        data=data,
        model=model,
        net=net,
        freeze=freeze,
        preprocessing=preprocessing,
        train_tf=train_tf,
        eval_tf=eval_tf,
        precision=precision,
        scaler=scaler,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        sched_step=sched_step,
        sampler=sampler,
        val_loader=val_loader,
        per_rank=max(1, world_batch // d.world_size),
        aux=aux,
    )


# -- resume: cxrkit.engine.resume (check_resume, resume_state, start_run_folder) ----------


# -- the epochs ------------------------------------------------------------------------
def _checkpoint(t: Training, s: TrainState, epoch: int, metrics: dict) -> dict:
    return {
        "model": t.model.state_dict(),
        "model_config": t.model.cxr_config.to_dict(),  # type: ignore[union-attr, operator]
        "findings": list(t.data.findings),
        "preprocess": t.preprocessing.to_dict(),
        "config": t.cfg.to_dict(),
        "split": {"path": str(t.data.split_path), "sha256": t.data.split_sha256},
        "versions": versions(),
        "optimizer": t.optimizer.state_dict() if t.optimizer is not None else {},
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else {},
        "scaler": t.scaler.state_dict() if t.scaler is not None else {},
        "epoch": epoch,
        "step": s.step,
        "rng": rng_state(),
        "best": s.best,
        "bad_epochs": s.bad_epochs,
        "history": s.history,
        "metrics": metrics,
    }


def run_epochs(
    t: Training,
    s: TrainState,
    *,
    writer=None,
    show_progress: bool = True,
    started: float | None = None,
) -> str:
    """Train and validate epoch after epoch, checkpointing each; returns the status.

    "completed", or "early-stopped" (no better validation AUROC for ``train.patience``
    epochs; a rerun of such a run trains no further).
    """
    tc, dc, d = t.cfg.train, t.cfg.data, t.dist
    started = time.time() if started is None else started
    epochs = 1 if t.no_train else tc.epochs
    if s.history and s.bad_epochs >= tc.patience:  # the resumed run had stopped early: done
        return "early-stopped"
    for epoch in range(s.start_epoch, epochs):
        torch.manual_seed(tc.seed * 7919 + epoch)  # dropout etc.: a function of the epoch
        if t.no_train:
            train_loss, rate = float("nan"), 0.0
        else:
            if t.sampler is not None:
                t.sampler.set_epoch(epoch)
            loader = make_loader(
                t.data.train,
                batch_size=t.per_rank,
                shuffle=True,
                seed=tc.seed * 1000 + epoch,
                workers=dc.workers,
                sampler=t.sampler,
                drop_last=len(t.data.train) > t.per_rank,
                pin_memory=t.device.type == "cuda",
            )  # non_blocking copies
            train_loss, rate, s.step = train_one_epoch(
                t.net,
                t.loss_fn,
                t.optimizer,
                loader,
                t.train_tf,
                device=t.device,
                precision=t.precision,
                scaler=t.scaler,
                epoch=epoch,
                cfg=t.cfg,
                scheduler_step=t.sched_step,
                writer=writer,
                step=s.step,
                show_progress=show_progress and d.is_main,
                aux_loss=t.aux,
            )
            if d.enabled:  # images/s over all ranks
                rate = float(sum(distributed.gather_objects(d, rate)))
        val = evaluate(
            t.net,
            t.loss_fn,
            t.val_loader,
            t.eval_tf,
            device=t.device,
            precision=t.precision,
            metadata=t.cfg.model.metadata,
            dist=d,
        )
        if t.scheduler is not None and t.sched_step is None:
            t.scheduler.step(val["loss"])
        improved = val["mean_auroc"] > s.best + 1e-6 or not s.history
        if improved:
            s.best, s.bad_epochs = val["mean_auroc"], 0
        else:
            s.bad_epochs += 1
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_mean_auroc": val["mean_auroc"],
            "images_per_s": rate,
            "lr": t.optimizer.param_groups[0]["lr"] if t.optimizer else 0.0,
            "seconds": time.time() - started,
            **{f"auroc_{f}": float(a) for f, a in zip(t.data.findings, val["auroc"], strict=True)},
        }
        s.history.append(row)
        if d.is_main:
            _record_epoch(t, s, epoch, row, val, improved, writer)
        distributed.barrier(d)
        if s.bad_epochs >= tc.patience:
            if d.is_main:
                log.info("early stopping: no better validation AUROC for %d epochs", s.bad_epochs)
            return "early-stopped"
    return "completed"


def _record_epoch(
    t: Training, s: TrainState, epoch: int, row: dict, val: dict, improved: bool, writer
) -> None:
    """Log the epoch, write TensorBoard scalars, best.pt/last.pt, metrics.csv, curves.png."""
    log.info(
        "epoch %d: train loss %.4f, val loss %.4f, val mean AUROC %.4f, %.1f img/s",
        epoch + 1,
        row["train_loss"],
        val["loss"],
        val["mean_auroc"],
        row["images_per_s"],
    )
    for k in ("train_loss", "val_loss", "val_mean_auroc", "images_per_s", "lr"):
        writer.add_scalar(k.replace("_", "/", 1), row[k], epoch + 1)
    metrics = {
        "val_mean_auroc": val["mean_auroc"],
        "val_auroc": dict(zip(t.data.findings, map(float, val["auroc"]), strict=True)),
    }
    if improved:
        save_checkpoint(_checkpoint(t, s, epoch, metrics), t.run.best)
    save_checkpoint(_checkpoint(t, s, epoch, metrics), t.run.last)
    write_history(s.history, t.run.history)
    plot_curves(s.history, t.run.curves)


def record_ood(
    checkpoint: Path,
    model,
    data: RunData,
    transform,
    *,
    device,
    cfg: RunConfig,
    show_progress: bool = False,
) -> None:
    """The end of training: fit the checkpoint's out-of-distribution record
    (:func:`cxrkit.ood.features.fit_from_datasets`, with the checkpoint's own weights) and
    write it into the checkpoint (key ``ood``), atomically. A checkpoint that already has
    one (a finished run re-run) is left as it is; ``train.ood_record=false`` skips it.

    The features are computed by the engine ``predict`` uses by default on this device
    (:func:`cxrkit.inference.runtime.choose_forward`, as ``cxrkit ood`` does): on a CPU the
    checkpoint's network as a cached ONNX graph in OpenVINO bf16 or onnxruntime (the graph
    is keyed by the weights, so ``predict`` later loads the same one), on a GPU torch fp32;
    the record's provenance names it (``features_engine``)."""
    from cxrkit.inference.runtime import SavedNetwork, choose_forward
    from cxrkit.ood.features import fit_from_datasets
    from cxrkit.ood.record import MAX_IMAGES

    if not cfg.train.ood_record:
        log.info(
            "ood record: skipped (train.ood_record=false); predict and serve give no "
            "out-of-distribution score until `cxrkit ood RUN` adds one"
        )
        return
    ck = load_checkpoint(checkpoint)
    if ck.get("ood") is not None:
        return
    model.load_state_dict(ck["model"])
    t0 = time.perf_counter()
    log.info(
        "ood record: features of %d train + %d val images (train.ood_record=false skips this)",
        min(len(data.train), MAX_IMAGES),
        min(len(data.val), MAX_IMAGES),
    )
    net = SavedNetwork(
        model,
        checkpoint,
        Preprocessing.from_checkpoint(ck, checkpoint),
        metadata=cfg.model.metadata,
        device=torch.device(device),
    )
    try:
        forward = choose_forward(net)
    except (RuntimeError, ValueError, ImportError) as e:  # an engine asked for by name failed
        log.warning("ood record: %s; computing the features in torch fp32", e)
        forward = None
    log.info("ood record: features by %s", forward.ran_by() if forward else "torch fp32")
    try:
        record = fit_from_datasets(
            model,
            data.train,
            data.val,
            transform,
            device=device,
            metadata=cfg.model.metadata,
            forward=forward,
            seed=cfg.train.seed,
            progress=show_progress,
            provenance={
                "made_by": "training",
                "epoch": int(ck["epoch"]) + 1,
                "split": str(data.split_path),
                "split_sha256": data.split_sha256,
                "prepared": str(data.prepared.root),
            },
        )
    except ValueError as e:  # e.g. a validation split of one image: say so, keep the run
        log.warning("no out-of-distribution record written into %s: %s", checkpoint.name, e)
        return
    ck["ood"] = record
    save_checkpoint({k: v for k, v in ck.items() if k != "format"}, checkpoint)
    log.info(
        "ood record: %d train / %d val images, %.1f s, written into %s",
        ck["ood"]["train"]["n"],
        ck["ood"]["val"]["n"],
        time.perf_counter() - t0,
        checkpoint.name,
    )


# -- summarise ---------------------------------------------------------------------------
def summarise(t: Training, s: TrainState, status: str, started: float) -> dict:
    """The run's manifest, written to ``run.json`` (also when the run failed)."""
    f = t.freeze
    summary = {
        "status": status,
        "model": t.cfg.model.name,
        "findings": list(t.data.findings),
        "epochs_run": len(s.history),
        "best_val_mean_auroc": finite_or_none(s.best) if s.history else None,
        "seconds": time.time() - started,
        "train_images": len(t.data.train),
        "val_images": len(t.data.val),
        "parameters": f["trainable_params"] + f["frozen_params"],
        "trainable_parameters": sum(p.numel() for p in t.model.parameters() if p.requires_grad),
        "frozen_parameters": sum(p.numel() for p in t.model.parameters() if not p.requires_grad),
        "freeze": {
            "policy": f["policy"],
            "frozen_layers": f["frozen_layers"],
            "layers": f["layers"],
        },
        "images_per_s": s.history[-1]["images_per_s"] if s.history else None,
        "device": str(t.device),
        "world_size": t.dist.world_size,
        "backend": t.dist.backend or None,
        "precision": str(t.precision.dtype),
        "split": {"path": str(t.data.split_path), "sha256": t.data.split_sha256},
        "versions": versions(),
        "box_fold_moved": 0 if t.data.moved is None else len(t.data.moved),
    }
    write_json(summary, t.run.run_json)
    return summary


def fit(cfg: RunConfig, *, resume: bool = True, show_progress: bool = True) -> dict:
    """Train (or, with ``model.freeze=no-train``, only evaluate) and write the run folder.

    Four steps, each a function: :func:`check_resume` (refuse a folder whose run has other
    settings), :func:`build`, :func:`resume_state`, :func:`run_epochs`; then
    :func:`summarise` writes ``run.json``. The folder must be new, empty or a cxrkit run
    (:meth:`RunFolder.check_trainable`), and is locked while training writes into it
    (:func:`cxrkit.artefacts.folder_lock`: a second writer is refused, naming this pid).
    Nothing else is written until the config is accepted and the run is built.
    ``resume=False`` (``--fresh``) starts the folder again.
    Returns the summary dict written to ``run.json`` (``{}`` on other ranks).
    """
    d = distributed.setup()
    try:
        with _writing(cfg, d):
            return _fit(cfg, d, resume=resume, show_progress=show_progress)
    finally:
        distributed.teardown(d)


def _writing(cfg: RunConfig, d: distributed.Dist):
    """The main rank's hold on the run folder: refuse a folder that is not empty and not a
    run (the user's files), then lock it against a second writer (a second ``train`` or an
    ``evaluate`` writing into it)."""
    if not d.is_main:
        return nullcontext()
    run = RunFolder(Path(cfg.out))
    run.check_trainable()
    return folder_lock(run.root, "cxrkit train")


def _fit(cfg: RunConfig, d: distributed.Dist, *, resume: bool, show_progress: bool) -> dict:
    """:func:`fit` once the run folder is held."""
    ck = check_resume(cfg, resume=resume)
    t = build(cfg, d)
    if d.is_main:
        start_run_folder(t, fresh=not resume)
    distributed.barrier(d)
    s = resume_state(t, ck)
    writer = None
    if d.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(t.run.tensorboard))
    status, started = "failed", time.time()
    try:
        status = run_epochs(t, s, writer=writer, show_progress=show_progress, started=started)
        if d.is_main and s.history:
            record_ood(
                t.run.best,
                t.model,
                t.data,
                t.eval_tf,
                device=t.device,
                cfg=cfg,
                show_progress=show_progress,
            )
    except TrainingDiverged as e:
        status = f"diverged: {e}"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as e:
        status = f"failed: {type(e).__name__}: {e}"
        raise
    finally:
        if writer is not None:
            writer.close()
        if d.is_main:
            summary = _summarise_safely(t, s, status, started)
    return summary if d.is_main else {}


def _summarise_safely(t: Training, s: TrainState, status: str, started: float) -> dict:
    """:func:`summarise`; when the run already failed, a failure to write run.json is only
    logged, so that the first error (often the same full disk) is the one reported."""
    if status in ("completed", "early-stopped"):
        return summarise(t, s, status, started)
    try:
        return summarise(t, s, status, started)
    except WriteError as e:
        log.error("%s", e)
        return {}

"""Resume a run folder, or refuse to: the run-folder side of :func:`cxrkit.engine.train.fit`.

A run folder is resumed only with the settings it was trained with: :func:`check_resume`
compares the new config with the one ``last.pt`` recorded *before anything is written*
and refuses any difference outside :data:`cxrkit.config.RESUMABLE` (``train.epochs`` to
extend a run, workers, threads, ...), naming the keys and the two ways forward: another
``out``, or ``--fresh``. :func:`resume_state` restores the training state for exact
resume; :func:`start_run_folder` writes ``config.yaml`` once the run is built (and, for
``--fresh``, first deletes what the earlier run trained).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxrkit.artefacts import RunFolder, make_folder, write_csv
from cxrkit.config import RESUMABLE, RunConfig, config_differences
from cxrkit.engine.checkpoint import load_checkpoint, set_rng_state
from cxrkit.engine.state import Training, TrainState
from cxrkit.messages import quote

log = logging.getLogger("cxrkit.engine.train")  # one training log


class RunConflictError(ValueError):
    """The run folder holds a run made with other settings (nothing was written)."""


def check_resume(cfg: RunConfig, *, resume: bool = True) -> dict | None:
    """``last.pt`` of ``cfg.out`` if this run continues it, else None.

    Refuses (:class:`RunConflictError`, before anything is written) when the checkpoint
    was made with settings other than ``cfg`` in any key outside
    :data:`cxrkit.config.RESUMABLE`.
    """
    run = RunFolder(Path(cfg.out))
    if not resume or not run.last.exists():
        return None
    ck = load_checkpoint(run.last)
    differ = config_differences(ck.get("config") or {}, cfg.to_dict())
    if differ:
        shown = "; ".join(
            f"{k}: {quote(old)} in the run, {quote(new)} now" for k, old, new in differ[:8]
        )
        more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
        raise RunConflictError(
            f"{run.root} holds a run made with other settings ({shown}{more}); nothing was "
            f"written. Train into another folder (out=... or --out), or pass --fresh to "
            f"start this one again (its checkpoints are deleted). Only "
            f"{', '.join(RESUMABLE)} may change on resume."
        )
    return ck


def resume_state(t: Training, ck: dict | None) -> TrainState:
    """Load model, optimiser, scheduler, scaler and RNG states from ``ck`` (None: fresh)."""
    if ck is None:
        return TrainState()
    t.model.load_state_dict(ck["model"])
    if t.optimizer is not None and ck.get("optimizer"):
        t.optimizer.load_state_dict(ck["optimizer"])
    if t.scheduler is not None and ck.get("scheduler"):
        t.scheduler.load_state_dict(ck["scheduler"])
    if t.scaler is not None and ck.get("scaler"):
        t.scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    s = TrainState(
        start_epoch=ck["epoch"] + 1,
        step=ck["step"],
        best=ck["best"],
        history=list(ck["history"]),
        bad_epochs=ck["bad_epochs"],
    )
    if t.dist.is_main:
        log.info("resumed from %s at epoch %d", t.run.last, s.start_epoch + 1)
    return s


def start_run_folder(t: Training, *, fresh: bool) -> None:
    """Create the run folder and write ``config.yaml`` (main rank, after :func:`build`).

    ``fresh``: first delete what an earlier run of this folder trained (checkpoints,
    records, its TensorBoard event files: :meth:`RunFolder.trained_files`), so nothing of
    it is mistaken for the new run's; files cxrkit did not write are left.
    """
    run = t.run
    if fresh:
        old = run.trained_files()
        for p in old:
            p.unlink()
        if run.tensorboard.is_dir() and not any(run.tensorboard.iterdir()):
            run.tensorboard.rmdir()
        if old:
            log.info(
                "--fresh: removed %s from %s (what cxrkit train wrote; nothing else)",
                ", ".join(sorted({str(p.relative_to(run.root)) for p in old})),
                run.root,
            )
    make_folder(run.root)
    t.cfg.to_yaml(run.config)
    if t.data.moved is not None:
        write_csv(t.data.moved, run.box_fold_moved)
    f = t.freeze
    log.info(
        "parameters: %s trainable, %s frozen (model.freeze=%s: %d of %d layers frozen)",
        f"{f['trainable_params']:,}",
        f"{f['frozen_params']:,}",
        f["policy"],
        f["frozen_layers"],
        f["layers"],
    )


__all__ = ["RunConflictError", "TrainState", "check_resume", "resume_state", "start_run_folder"]

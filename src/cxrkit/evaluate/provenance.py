"""Which checkpoint an evaluation scored, and whether it may change the run it scored.

An evaluation folder (``metrics.json``, ``predictions_*.csv``) describes one checkpoint
file: :func:`scored_checkpoint` is what ``metrics.json`` records of it (path and
sha256). A run trained further has another ``best.pt``, so a reader that reuses an
evaluation (``cxrkit compare``) first asks :func:`stale_reason`, and redoes or refuses an
evaluation of another checkpoint instead of showing the old epoch's AUROC beside the new
training time.

:func:`is_runs_own` decides whether an evaluation may update the run itself (its
``thresholds.json``, which ``predict`` and ``serve`` use): only one written inside the run
folder, on the prepared folder the run was trained on. ``evaluate RUN --prepared OTHER``
or ``--out DIR`` elsewhere writes its thresholds into its own folder only.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrkit.artefacts import RunFolder, file_sha256, is_inside


def scored_checkpoint(metrics: dict) -> dict:
    """``{"path", "sha256"}`` of the checkpoint an evaluation scored (None when unknown)."""
    return {"path": metrics.get("checkpoint"), "sha256": metrics.get("checkpoint_sha256")}


def stale_reason(metrics: dict, checkpoint: str | Path) -> str | None:
    """None if ``metrics`` scored ``checkpoint`` as it is now (same sha256), else why not."""
    scored = scored_checkpoint(metrics)
    if not scored["sha256"]:
        return "it records no checkpoint sha256 (written by an older cxrkit)"
    now = file_sha256(checkpoint)
    if scored["sha256"] != now:
        return (
            f"it scored a checkpoint with sha256 {scored['sha256'][:12]}..., but "
            f"{checkpoint} is now {now[:12]}... (trained further since?)"
        )
    return None


def is_runs_own(
    checkpoint: str | Path, config: dict, prepared: str | Path, out: str | Path
) -> bool:
    """Whether an evaluation of ``checkpoint`` on ``prepared`` written to ``out`` is the
    run's own: inside its run folder, on the prepared folder ``config`` (the checkpoint's
    run config) records. Only such an evaluation updates the run's ``thresholds.json``."""
    recorded = ((config or {}).get("data") or {}).get("prepared")
    if not recorded:
        return False
    return is_inside(out, RunFolder.of(checkpoint).root) and os.path.realpath(
        prepared
    ) == os.path.realpath(recorded)


__all__ = ["is_runs_own", "scored_checkpoint", "stale_reason"]

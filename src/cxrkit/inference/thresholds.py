"""The decision-thresholds sidecar (``thresholds.json``): its one writer and one reader.

``cxrkit evaluate`` writes it beside the checkpoint it evaluated; :func:`cxrkit.load`
(torch) and the ONNX backend (no torch) read it back through :func:`find_thresholds`, so
both accept and refuse the same files. Torch-free on purpose.

A sidecar found beside a model is used only when it was written for that very checkpoint
(same sha256); one passed explicitly is always used. Either way it must parse and may
name only findings the model predicts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxrkit.artefacts import THRESHOLDS_FILE, write_json

log = logging.getLogger(__name__)

MEANING = "a finding is reported present when its probability is >= its threshold"


@dataclass(frozen=True)
class Thresholds:
    """Per-finding thresholds, where they came from, and the TTA they were chosen with."""

    values: dict[str, float]
    source: str  #: "<path> (<method>)"
    tta: str  #: "none" when the file predates the field


def find_thresholds(
    beside: Path, findings, checkpoint_sha256: Callable[[], str], explicit: str | Path | None = None
) -> Thresholds | None:
    """``explicit`` if given (it must exist), else ``beside/thresholds.json`` if it was
    written for the checkpoint whose sha256 ``checkpoint_sha256()`` returns (called only
    when a sidecar is there: hashing a large checkpoint is not free); ``None`` if none."""
    p = Path(explicit) if explicit else Path(beside) / THRESHOLDS_FILE
    if not p.exists():
        if explicit:
            raise FileNotFoundError(f"thresholds file not found: {p}")
        return None
    try:
        rec = json.loads(p.read_text())
        values = {str(k): float(v) for k, v in rec["thresholds"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{p}: not a cxrkit thresholds file ({e})") from e
    if not explicit and rec.get("checkpoint_sha256") != checkpoint_sha256():
        log.info("%s was written for another checkpoint; not used", p)
        return None
    unknown = sorted(set(values) - set(findings))
    if unknown:
        raise ValueError(f"{p}: thresholds for findings the model lacks: {unknown}")
    return Thresholds(
        values=values, source=f"{p} ({rec.get('method', '?')})", tta=str(rec.get("tta", "none"))
    )


def write_thresholds_file(
    path: str | Path,
    thresholds: dict[str, float],
    *,
    findings,
    checkpoint: Path,
    checkpoint_sha256: str,
    method: str,
    chosen_on: str,
    tta: str = "none",
    provenance: dict | None = None,
) -> Path:
    """Write a sidecar (atomically) that :func:`find_thresholds` reads back.

    ``provenance``: where each threshold came from (positives it was fitted on, hand-set
    overrides, the findings with too few positives), kept under ``"provenance"``."""
    path = Path(path)
    rec = {
        "checkpoint": Path(checkpoint).name,
        "checkpoint_sha256": checkpoint_sha256,
        "method": method,
        "chosen_on": chosen_on,
        "tta": tta,
        "meaning": MEANING,
        "thresholds": {f: float(thresholds[f]) for f in findings if f in thresholds},
    }
    if provenance is not None:
        rec["provenance"] = provenance
    write_json(rec, path)
    return path


__all__ = ["MEANING", "THRESHOLDS_FILE", "Thresholds", "find_thresholds", "write_thresholds_file"]

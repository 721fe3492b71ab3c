"""Which OOD record a checkpoint's loaders use: the refitted sidecar, else the one inside.

``cxrkit ood RUN`` (and ``--force``, and evaluate for a checkpoint without a record) fits a
record and writes it beside the checkpoint, ``run/best.pt`` -> ``run/best.ood.json``, with
the checkpoint's sha256; the checkpoint itself is never rewritten (thresholds and exports
name it by that sha256). One rule, :func:`choose_record`, for every loader (``cxrkit.load``
and so predict, evaluate, serve and export; the ONNX backend and the fast predict path):

1. a sidecar written for this checkpoint's sha256 is the record in use: it is the one the
   user last fitted, so ``cxrkit ood RUN --force`` changes what predict scores with;
2. otherwise the record inside the checkpoint (the end of training's, or an export's);
3. a sidecar for another checkpoint (the run trained again since) is ignored: with a
   warning only when it is all there is.

An unusable record (another version's format) is said and treated as missing. Torch-free,
like the ONNX backend that uses it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

from cxrkit.artefacts import CheckpointError, write_json
from cxrkit.ood.record import check_record

SIDECAR_FORMAT = "cxrkit-ood-sidecar/1"


def sidecar_path(checkpoint: str | Path) -> Path:
    """``run/best.pt`` -> ``run/best.ood.json``."""
    return Path(checkpoint).with_suffix(".ood.json")


def write_sidecar(checkpoint: str | Path, checkpoint_sha256: str, record: dict) -> Path:
    """Write ``record`` as the sidecar of ``checkpoint`` (atomically); its path."""
    path = sidecar_path(checkpoint)
    write_json(
        {
            "format": SIDECAR_FORMAT,
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": checkpoint_sha256,
            "record": record,
        },
        path,
    )
    return path


def choose_record(
    checkpoint: str | Path,
    checkpoint_sha256: str | Callable[[], str] | None,
    recorded: dict | None,
    recorded_in: str,
    *,
    stacklevel: int = 2,
) -> tuple[dict | None, str | None]:
    """``(record, source)`` by the module's rule: the sidecar of ``checkpoint`` made for
    ``checkpoint_sha256`` (or a function giving it: called only when there is a sidecar),
    else ``recorded`` (the record inside, said to be "recorded in ``recorded_in``"), else
    ``(None, None)``."""
    stacklevel += 1
    side = sidecar_path(checkpoint)
    if checkpoint_sha256 is not None and side.exists():
        if callable(checkpoint_sha256):
            checkpoint_sha256 = checkpoint_sha256()
        try:
            doc = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"{side}: unreadable OOD record ({e}); delete it and run `cxrkit ood` again"
            ) from e
        if not isinstance(doc, dict) or doc.get("checkpoint_sha256") != checkpoint_sha256:
            if recorded is None:
                warnings.warn(
                    f"{side} was computed for another checkpoint (sha256 differs from "
                    f"{Path(checkpoint).name}); ignored: run `cxrkit ood` again",
                    stacklevel=stacklevel,
                )
        else:
            try:
                check_record(doc.get("record"))
            except ValueError as e:
                warnings.warn(f"{side}: not usable ({e})", stacklevel=stacklevel)
            else:
                return doc["record"], str(side)
    if recorded is not None:
        try:
            check_record(recorded)
        except ValueError as e:  # made by another version: said, and treated as missing
            warnings.warn(
                f"{recorded_in}: its OOD record is not usable ({e})", stacklevel=stacklevel
            )
        else:
            return recorded, f"recorded in {recorded_in}"
    return None, None


__all__ = ["SIDECAR_FORMAT", "choose_record", "sidecar_path", "write_sidecar"]

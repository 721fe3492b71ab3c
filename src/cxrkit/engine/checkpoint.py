"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
without unpickling arbitrary objects: a file that carries a pickled object that would run
code is refused. It holds everything needed to rebuild the model and its preprocessing
from the file alone (nanoGPT's habit):

``format``           "cxrkit-checkpoint/1"
``model``            the state dict (without DDP/compile prefixes)
``model_config``     the model's registry config (``create_model(**model_config)``)
``preprocess``       the preprocessing contract (:class:`cxrkit.data.preprocessing.Preprocessing`:
                     cache settings, input size, eval/TenCrop resize, mean/std, channels)
``config``           the resolved run config
``split``            split file path and sha256; ``versions`` of python/torch/cxrkit
``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step``, ``rng``, ``best``,
``history``          training state, for exact resume (absent from exported weights)
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from cxrkit.artefacts import CheckpointError, atomic_file, resolve_checkpoint
from cxrkit.messages import quote

FORMAT = "cxrkit-checkpoint/1"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`cxrkit.artefacts.atomic_file`).

    A kill at any moment leaves either the previous file or the new one, never half; a
    full disk or an unwritable folder raises :class:`cxrkit.artefacts.WriteError`.
    """
    path = Path(path)
    with atomic_file(path) as f:
        torch.save({"format": FORMAT, **state}, f)
    return path


def load_checkpoint(path: str | Path, *, map_location="cpu") -> dict:
    """Load a checkpoint (or a run folder's) safely (``weights_only=True``); clear errors."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: it contains objects other than tensors and plain "
            f"data, which could run code when unpickled ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cxrkit checkpoint (no format {FORMAT!r})")
    check_fields(ckpt, path)
    return ckpt


#: The type of each field a cxrkit checkpoint may hold (absent or None is allowed).
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "model_config": dict,
    "findings": list,
    "preprocess": dict,
    "config": dict,
    "split": dict,
    "versions": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "epoch": int,
    "step": int,
    "rng": dict,
    "best": (int, float),
    "bad_epochs": int,
    "history": list,
    "metrics": dict,
    "ood": dict,
}


def check_fields(ckpt: dict, path) -> None:
    """Refuse a checkpoint whose fields have the wrong type (a ``config`` that is a string,
    findings that are not names...): one :class:`CheckpointError` naming the field, instead
    of an ``AttributeError`` wherever the field is first used."""

    def wrong(field: str, value, want: str):
        raise CheckpointError(
            f"{path}: field {field!r} of the checkpoint should be {want}, "
            f"found {quote(value, 40)} ({type(value).__name__}); the file "
            "is damaged or was not written by cxrkit"
        )

    for field, kind in FIELD_TYPES.items():
        value = ckpt.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            wrong(field, value, f"a {names}")
    findings = ckpt.get("findings")
    if findings is not None and not all(isinstance(f, str) for f in findings):
        wrong("findings", findings, "a list of finding names")
    for section, value in (ckpt.get("config") or {}).items():
        if section in ("data", "model", "train") and not isinstance(value, dict | None):
            wrong(f"config.{section}", value, "a mapping")


__all__ = [
    "FIELD_TYPES",
    "FORMAT",
    "CheckpointError",
    "check_fields",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


def rng_state() -> dict:
    """Python, numpy and torch RNG states as checkpoint-safe values."""
    np_state: tuple = np.random.get_state()  # type: ignore[assignment]  # the legacy tuple form
    state: dict = {
        "python": repr(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import ast

    random.setstate(_tuples(ast.literal_eval(state["python"])))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, (list, tuple)) else x

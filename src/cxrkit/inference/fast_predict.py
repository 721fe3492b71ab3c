"""``cxrkit predict CHECKPOINT`` without torch: the checkpoint's cached export, in auto's engine.

Start-up dominates a short ``predict``: importing torch, timm and torchvision and building
the network cost seconds before the first image. So for the default settings (``--precision
auto``, the CPU, no test-time augmentation, ``--backend auto`` on a ``.pt`` or run folder),
:func:`load_fast` runs the checkpoint as ``cxrkit export`` would export it (the graph takes
the cache-stage image and holds the tensor stage, the network, the features and the OOD
record; :mod:`cxrkit.export`), from a cache keyed by the checkpoint's sha256, in the
engine ``auto`` picks on this CPU (:func:`cxrkit.inference.openvino_engine.auto_choice`: OpenVINO bf16
or onnxruntime). Later runs import neither torch nor timm.

The first run of a checkpoint builds that graph (torch is imported then) and says so: what
it builds, why it waits, where it is kept. The export is checked against torch fp32 by
:func:`cxrkit.export.export_onnx` (onnxruntime within 1e-4); the OpenVINO bf16 engine is then
checked against it on the same phantoms (within :data:`~cxrkit.inference.openvino_engine.BF16_TOLERANCE`),
once per engine version, recorded in ``<graph>.check.json`` with the graph's sha256. A
cached graph whose bytes no longer match, or that the engine cannot read, is built again
with a :class:`~cxrkit.inference.openvino_engine.CacheRebuiltWarning`.

Thresholds come from the run folder as for the torch backend (``thresholds.json`` written
for this checkpoint's sha256, or ``--thresholds``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from cxrkit.artefacts import RunFolder, file_sha256, resolve_checkpoint, write_json
from cxrkit.inference.onnx_backend import OnnxModel
from cxrkit.inference.openvino_engine import (
    BF16_TOLERANCE,
    CacheRebuiltWarning,
    auto_choice,
    cache_root,
    say_once,
)

log = logging.getLogger(__name__)

#: Phantom radiographs the engine is checked on (beside ``export_onnx``'s own check).
CHECK_PHANTOMS = 4


def wants_fast_path(
    path: Path, *, backend: str, precision: str | None, device: str | None, tta: str
) -> bool:
    """Whether ``cxrkit predict`` with these options may skip torch (see the module
    docstring); ``$CXRKIT_PRECISION`` counts as the precision when none is given."""
    requested = precision or os.environ.get("CXRKIT_PRECISION") or "auto"
    return (
        backend == "auto"
        and requested == "auto"
        and device in (None, "cpu")
        and tta == "none"
        and path.suffix.lower() != ".onnx"
    )


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def graph_path(checkpoint_sha256: str) -> Path:
    """Where the checkpoint's export is cached (keyed by its sha256 and the exporter's
    versions, so a new torch or cxrkit builds a new graph)."""
    from cxrkit import __version__
    from cxrkit.inference.export import OPSET

    key = json.dumps(
        [checkpoint_sha256, OPSET, _version("torch"), _version("onnxscript"), __version__]
    )
    return cache_root() / "export" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"


def load_fast(checkpoint: str | Path, *, thresholds: str | Path | None = None) -> OnnxModel:
    """The checkpoint as an :class:`~cxrkit.onnx_backend.OnnxModel` in auto's engine,
    built (once, with torch) when not cached; see the module docstring."""
    ck = resolve_checkpoint(checkpoint)
    sha = file_sha256(ck)
    path = graph_path(sha)
    choice = auto_choice()
    check = path.with_name(path.name + ".check.json")
    model = None
    if path.exists():
        try:
            recorded = json.loads(check.read_text())
        except (OSError, ValueError):
            recorded = {}
        why = None
        if recorded.get("graph_sha256") != file_sha256(path):
            why = "its bytes differ from the sha256 recorded when it was made"
        else:
            try:
                model = _open(path, ck, choice.engine, thresholds)
            except (ValueError, RuntimeError) as e:
                why = f"{choice.engine} cannot read it: {str(e).splitlines()[0]}"
        if why:
            warnings.warn(
                f"the cached export {path} of {ck.name} is unusable ({why}); building it again",
                CacheRebuiltWarning,
                stacklevel=3,
            )
            path.unlink(missing_ok=True)
            check.unlink(missing_ok=True)
            model, recorded = None, {}
    if model is None:
        _build(ck, path)
        recorded = {
            "checkpoint": str(ck),
            "checkpoint_sha256": sha,
            "graph_sha256": file_sha256(path),
            "engines": {},
        }
        model = _open(path, ck, choice.engine, thresholds)
    key = f"{choice.engine} {model.engine_record.get('openvino') or _version('onnxruntime')}"
    if key not in recorded.get("engines", {}):
        recorded.setdefault("engines", {})[key] = _check_engine(path, ck, model)
        write_json(recorded, check)
    model.engine_record.update(
        {
            "requested": "auto",
            "used": choice.engine,
            "why": choice.why,
            "graph": str(path),
            "checked": recorded["engines"][key],
        }
    )
    say_once(choice.say)
    return model


def _open(path: Path, ck: Path, engine: str, thresholds) -> OnnxModel:
    model = OnnxModel(
        path,
        engine=engine,
        thresholds_file=thresholds,
        thresholds_beside=RunFolder.of(ck).root,
        source=ck,
    )
    model.backend = f"onnx ({engine}, torch-free)"
    return model


def _build(ck: Path, path: Path) -> None:
    from cxrkit.inference.export import export_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "first run of %s: exporting it once with its preprocessing to an ONNX graph, so "
        "that later runs start without torch (this takes a while: tens of seconds for "
        "DenseNet121); kept in %s",
        ck,
        path.parent,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the OOD note is said by predict itself
        logging.getLogger("cxrkit.export").setLevel(logging.ERROR)
        try:
            export_onnx(ck, path, n_phantoms=2)
        finally:
            logging.getLogger("cxrkit.export").setLevel(logging.NOTSET)


def _check_engine(path: Path, ck: Path, model: OnnxModel) -> dict:
    """``model``'s engine against onnxruntime (itself within 1e-4 of torch fp32, checked by
    the export) on phantoms; over the engine's bound, ``RuntimeError``."""
    from cxrkit.data.phantoms import render_phantom
    from cxrkit.labels import FINDINGS

    if model.engine == "onnxruntime":
        return {"max_abs_diff_probability_vs_torch": "checked by cxrkit export (1e-4)"}
    images = [
        render_phantom(np.random.default_rng(2000 + i), () if i == 0 else (FINDINGS[i],), size=256)[
            0
        ]
        for i in range(CHECK_PHANTOMS)
    ]
    ref = OnnxModel(path, engine="onnxruntime", source=ck)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = model.cached_batch(images)
        from cxrkit.metrics import sigmoid

        dp = float(
            np.abs(
                sigmoid(model.logits_from_cached(cached)) - sigmoid(ref.logits_from_cached(cached))
            ).max()
        )
    bound = BF16_TOLERANCE if model.engine == "openvino-bf16" else 1e-4
    if not dp <= bound:
        raise RuntimeError(
            f"{ck}: {model.engine} differs from onnxruntime fp32 by {dp:.3g} "
            f"in probability (bound {bound:g}); use --precision onnxruntime"
        )
    return {
        "max_abs_diff_probability_vs_onnxruntime": dp,
        "bound": bound,
        "images": f"{CHECK_PHANTOMS} phantom radiographs, 256 px",
    }


__all__ = ["graph_path", "load_fast", "wants_fast_path"]

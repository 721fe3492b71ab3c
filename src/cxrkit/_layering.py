"""The layering rule, stated once: imports only go downward (this table was ``layers.py``).

Every top-level module or package of cxrkit sits on one layer of :data:`LAYERS` (or, for
a package that spans layers, each of its modules: ``"inference.core"``); a module
may import from its own layer or lower ones, never from a higher one, so data flows one
way (``NIH files -> data -> models -> engine -> checkpoint -> inference -> explain /
evaluate / predict / export -> serve -> cli``) and a lower layer can be read, tested and
reused without the ones above it. ``tests/test_layers.py`` checks every import in the
package against this table, and fails on a module the table does not place: a new module
needs a line here, which is where its place is decided. The README's layout section is
this table, in words. Old module paths (:mod:`cxrkit._moved`) have the layer of their new place.

The package root ``cxrkit`` (``__init__``) is the public façade: it may reach any layer
(``cxrkit.load`` imports inference lazily), while other modules may take from it only
:data:`ROOT_NAMES`, the names it re-exports from the bottom layer.
"""

from __future__ import annotations

from cxrkit._moved import new_name

#: module or package under ``cxrkit`` -> layer (lower = more basic).
LAYERS: dict[str, int] = {
    # 0: no cxrkit imports above the standard library, numpy and torch
    "_compat": 0,  # torchvision/timm next to a CPU-only torch
    "artefacts": 0,  # atomic writes, hashes, versions, prepared/run folder layouts
    "labels": 0,  # the 14 findings: the single source of truth
    "messages": 0,  # how errors quote input (cut, never whole)
    "_layering": 0,  # this table
    "_moved": 0,  # old module paths, aliased to where the modules now live
    "metrics": 0,  # AUROC/AUPRC, bootstrap, thresholds, calibration (numpy)
    # 1: settings
    "config": 1,  # run settings: YAML in, YAML out
    # 2: data
    "data": 2,  # NIH files, splits, cache, dataset, transforms, phantoms, DICOM,
    # the preprocessing contract, dataset statistics (eda)
    "inference.thresholds": 2,  # the thresholds sidecar (torch-free, for the ONNX backend too)
    "inference.predictor": 2,  # the predictor interface shared by the torch and ONNX backends
    "ood": 2,  # out-of-distribution record and score (features + image statistics)
    "inference.openvino_engine": 2,  # OpenVINO compiling an ONNX graph (torch-free, optional extra)
    # 3: models
    "models": 3,  # the registry and one file per family
    # 4: training
    "engine": 4,  # losses, checkpoint, distributed, train
    "inference.runtime": 4,  # how a forward pass runs: fp32, bf16, onnxruntime, OpenVINO
    # (--precision); below the trained-model layer because the end of training computes
    # the OOD record with the engine predict uses (cxrkit.engine.train.record_ood)
    # 5: a trained model in use
    "inference": 5,  # the package's façade: cxrkit.inference.load (lazily, from core)
    "inference.core": 5,  # cxrkit.load: the one inference core
    "inference.heldout": 5,  # the held-out data a checkpoint was trained against
    "inference.onnx_backend": 5,  # the ONNX Runtime predictor
    # 6-7: what is done with a model
    "explain": 6,  # saliency maps, overlays, localisation
    "evaluate": 7,  # metrics with CIs, report, compare
    "audit": 7,  # shortcut audit: occlusion, saliency share, probes, per view, size
    "inference.predict": 7,  # files -> probabilities
    "inference.export": 7,  # ONNX export and backend
    "importer": 7,  # published model files -> run folders, checked against their code
    "inference.fast_predict": 7,  # predict from a checkpoint's cached export, torch-free
    # 8-9: front ends
    "serve": 8,  # the web service
    "cli": 9,  # the Typer shell
    "__init__": 10,  # the package's public façade (see the module docstring)
}

#: What a module may import from the package root itself (re-exports of layer 0).
ROOT_NAMES = frozenset({"__version__", "FINDINGS", "NO_FINDING"})


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name; None when it is not part of cxrkit.

    ``cxrkit`` alone is the façade. Raises ``KeyError`` for a cxrkit module the table
    does not place.
    """
    parts = new_name(module).split(".")
    if parts[0] != "cxrkit":
        return None
    if len(parts) == 1:
        return LAYERS["__init__"]
    return LAYERS[place(".".join(parts[1:]))]


def place(module: str) -> str:
    """The line that places ``module`` (relative to ``cxrkit``): the longest one naming it
    or a package above it; a module of a package placed module by module needs its own."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i])
        if key in LAYERS:
            if i < len(parts) and any(k.startswith(key + ".") for k in LAYERS):
                raise KeyError(f"cxrkit.{module}: cxrkit.{key} is placed module by module")
            return key
    raise KeyError(f"cxrkit.{module} has no line in LAYERS")


__all__ = ["LAYERS", "ROOT_NAMES", "layer_of", "place"]

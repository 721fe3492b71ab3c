"""Using a trained model: load it, run it, decide with it, export it.

``cxrkit.inference.load(checkpoint)`` (also ``cxrkit.load``) gives a
:class:`~cxrkit.inference.core.LoadedModel`; the modules of this package, from the bottom
up (each on its own layer of :mod:`cxrkit._layering`):

=================  ======================================================================
``thresholds``     the thresholds sidecar (torch-free, for the ONNX backend too)
``predictor``      the :class:`Predictor` interface shared by the torch and ONNX backends
``openvino_engine``  OpenVINO compiling an ONNX graph, auto's engine choice (no torch)
``runtime``        how the forward pass runs: fp32, bf16, onnxruntime, OpenVINO (``--precision``)
``core``           :func:`load` and :class:`LoadedModel`, the one inference core (torch)
``onnx_backend``   :class:`OnnxModel`, the ONNX Runtime predictor (no torch)
``heldout``        the held-out data a checkpoint was trained against
``predict``        files -> probabilities (``cxrkit predict``)
``export``         ONNX export with a parity check (``cxrkit export``)
``fast_predict``   ``cxrkit predict CHECKPOINT`` from its cached export, torch-free
=================  ======================================================================

The names of :mod:`cxrkit.inference.core` (``load``, ``LoadedModel``, ``TTA_MODES``,
``write_thresholds``, ...) are importable from here, as they were when this package was
one module. They are looked up lazily, so importing a torch-free submodule
(``cxrkit.inference.onnx_backend``, ``.thresholds``, ``.predict``) does not import torch.
The old top-level paths (``cxrkit.export``, ``cxrkit.predict``, ``cxrkit.runtime``, ...)
stay importable as aliases of these modules (:mod:`cxrkit._moved`).
"""

from __future__ import annotations

__all__ = [
    "TTA_MODES",
    "LoadedModel",
    "load",
    "ood_sidecar_path",
    "read_image",
    "write_ood_sidecar",
    "write_thresholds",
]


def __getattr__(name: str):
    """``cxrkit.inference.X`` for a name X of :mod:`cxrkit.inference.core` (imported on first use)."""
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib

    core = importlib.import_module("cxrkit.inference.core")
    try:
        return getattr(core, name)
    except AttributeError:
        raise AttributeError(f"module 'cxrkit.inference' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

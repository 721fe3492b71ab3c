"""OpenVINO, Intel's inference engine, running an ONNX graph on the CPU (torch-free).

Used by two callers, both with graphs cxrkit made itself: :mod:`cxrkit.runtime` (the cached
network graph of a torch checkpoint, ``--precision openvino`` / ``openvino-bf16`` / ``auto``)
and :class:`cxrkit.onnx_backend.OnnxModel` (a ``cxrkit export`` file, ``--backend onnx``).
This module imports neither torch nor onnxruntime: numpy and ``openvino`` only.

OpenVINO is an optional extra (``pip install 'cxrkit[openvino]'``). Without it,
:func:`import_openvino` raises :class:`OpenVinoUnavailable`, a one-line error saying how to
install it; ``auto`` then falls back to onnxruntime and says so.

Two inference precisions, set by OpenVINO's ``INFERENCE_PRECISION_HINT``:

``fp32``  what the graph says; within float32 rounding of torch fp32 (measured 2e-7 to 5e-7
          in probability for DenseNet121 at 224 px).
``bf16``  weights and activations rounded to bfloat16 (8-bit mantissa) inside convolutions
          and matrix products, accumulating in fp32: 2-3x faster than fp32 on a CPU with
          AVX512-BF16 or AMX (:func:`cpu_has_bf16`), at the price of up to ~3e-3 in
          probability (the bounds callers check are theirs, see :mod:`cxrkit.runtime`).

The compiled model is cached by OpenVINO itself (``CACHE_DIR``), in one folder per graph and
precision (:func:`compile_graph`): a second process loads it in ~0.3 s instead of compiling
for 1-2 s. A cached blob that OpenVINO cannot import (corrupt, truncated, from another
version) is recompiled by OpenVINO; cxrkit notices (``LOADED_FROM_CACHE`` is false although
the folder held a blob) and says so in a warning and in the record.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The two inference precisions (see the module docstring).
OV_PRECISIONS = ("fp32", "bf16")
#: Largest accepted |probability(OpenVINO bf16) - probability(torch fp32)| where cxrkit
#: checks it (first use of a graph): the bound of ``precision=auto`` on a bf16 CPU. Measured
#: for DenseNet121 at 224 px: 1.7e-3 to 2.8e-3 (README "Fast inference" for real images).
BF16_TOLERANCE = 5e-3
#: How to get OpenVINO, said by every error about its absence.
INSTALL_HINT = "pip install 'cxrkit[openvino]' (or: pip install openvino)"


class OpenVinoUnavailable(ImportError):
    """OpenVINO is not installed (or not importable); the message says how to install it."""


class CacheRebuiltWarning(UserWarning):
    """A cached graph or compiled model was unusable (corrupt, truncated) and was rebuilt."""


def cache_root() -> Path:
    """cxrkit's cache folder: ``$CXRKIT_CACHE``, else ``$XDG_CACHE_HOME/cxrkit``
    (``~/.cache/cxrkit``); graphs go to ``onnx/``, OpenVINO's compiled models to
    ``openvino/``."""
    import os

    root = os.environ.get("CXRKIT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxrkit"


def import_openvino():
    """The ``openvino`` module, or :class:`OpenVinoUnavailable` with the install hint."""
    try:
        import openvino
    except ImportError as e:
        raise OpenVinoUnavailable(f"OpenVINO is not installed ({e}); {INSTALL_HINT}") from None
    return openvino


def cpuinfo_has_bf16() -> bool | None:
    """Whether ``/proc/cpuinfo`` lists native bf16 (AVX512-BF16 or AMX-BF16); None where
    there is no ``/proc/cpuinfo`` (not Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_bf16(core=None) -> bool:
    """Whether OpenVINO runs bf16 natively here: its CPU plugin lists ``BF16`` among its
    optimization capabilities and (on Linux) the CPU has AVX512-BF16 or AMX-BF16 (OpenVINO
    also lists BF16 on plain AVX512 CPUs, where it is emulated and slower than fp32)."""
    ov = import_openvino()
    core = core or ov.Core()
    try:
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False
    return "BF16" in caps and cpuinfo_has_bf16() is not False


@dataclass(frozen=True)
class AutoChoice:
    """What ``precision=auto`` runs on this CPU (see :mod:`cxrkit.runtime`), and why."""

    engine: str  #: "openvino-bf16" or "onnxruntime"
    why: str  #: for records (metrics.json, /info, the fast path's record)
    say: str | None  #: an INFO line for a less exact or slower choice, else None


def auto_choice() -> AutoChoice:
    """OpenVINO bf16 where OpenVINO is installed and the CPU has native bf16; else
    onnxruntime fp32 (saying so where OpenVINO bf16 would have been faster)."""
    try:
        bf16 = cpu_has_bf16()
    except OpenVinoUnavailable as e:
        say = (
            f"precision auto: onnxruntime fp32; OpenVINO is not installed, and this CPU "
            f"runs DenseNet121 about 2x faster with it in bf16: {INSTALL_HINT}"
            if cpuinfo_has_bf16()
            else None
        )
        return AutoChoice("onnxruntime", f"auto: onnxruntime fp32; OpenVINO: {e}", say)
    if bf16:
        return AutoChoice(
            "openvino-bf16",
            f"auto on a CPU with native bf16: OpenVINO bf16, checked within "
            f"{BF16_TOLERANCE:g} of fp32 in probability (--precision onnxruntime: within 1e-4)",
            f"precision auto: OpenVINO bf16 (probabilities within {BF16_TOLERANCE:g} of "
            "fp32; --precision onnxruntime for fp32, about 2x slower here)",
        )
    return AutoChoice(
        "onnxruntime",
        "auto without native bf16: onnxruntime fp32 (OpenVINO fp32 measured no faster)",
        None,
    )


_SAID: set[str] = set()


def say_once(message: str | None) -> None:
    """Log ``message`` at INFO once per process (auto's choice is said, not repeated)."""
    if message and message not in _SAID:
        _SAID.add(message)
        log.info("%s", message)


@dataclass
class CompiledGraph:
    """An ONNX graph compiled by OpenVINO for the CPU: ``run(feeds, outputs)``."""

    compiled: Any  #: openvino.CompiledModel
    precision: str  #: "fp32" or "bf16"
    record: dict = field(default_factory=dict)  #: for manifests (metrics.json, /info)

    def __post_init__(self):
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request, shared: one call at a time
        self.inputs = [p.get_any_name() for p in self.compiled.inputs]
        self.outputs = [p.get_any_name() for p in self.compiled.outputs]

    def ran_by(self) -> str:
        """This graph's engine in its own words (what ``cxrkit predict`` prints)."""
        return f"OpenVINO {self.record.get('openvino', '?')} {self.precision} (CPU)"

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """``feeds`` (input name -> array) -> the named outputs, float32 copies."""
        with self._lock:
            result = self._request.infer(feeds)
            by_name = {k.get_any_name(): v for k, v in result.items()}
            return [np.array(by_name[name], dtype=np.float32) for name in outputs]


def read_graph(path: str | Path):
    """``(model, metadata)``: the ONNX file read by OpenVINO, and its ``metadata_props``
    (key -> string; what ``cxrkit export`` records), without onnx or onnxruntime."""
    ov = import_openvino()
    model = ov.Core().read_model(str(path))
    props = {}
    if model.has_rt_info(["framework"]):
        for key in model.get_rt_info()["framework"]:
            props[key] = model.get_rt_info(["framework", key]).astype(str)
    return model, props


def compile_graph(path, *, precision: str, cache: Path | None) -> CompiledGraph:
    """Compile the ONNX file ``path`` (or a model from :func:`read_graph`) for the CPU at
    ``precision`` ("fp32" or "bf16").

    ``cache``: the folder OpenVINO keeps the compiled model in (one per graph and precision;
    None: no cache). Raises :class:`OpenVinoUnavailable` without OpenVINO and ``ValueError``
    for bf16 on a CPU without native bf16 (:func:`cpu_has_bf16`).
    """
    if precision not in OV_PRECISIONS:
        raise ValueError(f"OpenVINO precision must be one of {OV_PRECISIONS}, got {precision!r}")
    ov = import_openvino()
    core = ov.Core()
    model = str(path) if isinstance(path, (str, Path)) else path  # else read_graph's
    if precision == "bf16" and not cpu_has_bf16(core):
        raise ValueError(
            "OpenVINO bf16: this CPU has no native bf16 (AVX512-BF16 or "
            "AMX-BF16); use --precision openvino (fp32) or onnxruntime"
        )
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    had_blob = False
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        had_blob = any(cache.glob("*.blob"))
        config["CACHE_DIR"] = str(cache)
    if not had_blob:
        log.info(
            "compiling the graph for OpenVINO %s once (a few seconds for DenseNet121)%s",
            precision,
            "" if cache is None else f"; later runs load it from {cache}",
        )
    t = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    seconds = time.perf_counter() - t
    from_cache = False
    with contextlib.suppress(RuntimeError):
        from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
    rebuilt = had_blob and not from_cache
    if rebuilt:
        warnings.warn(
            f"the cached OpenVINO model in {cache} could not be loaded (corrupt, "
            "truncated or made by another OpenVINO version); compiled again and "
            "cached anew",
            CacheRebuiltWarning,
            stacklevel=3,
        )
    return CompiledGraph(
        compiled,
        precision,
        {
            "openvino": ov.__version__.split("-")[0],
            "openvino_precision": precision,
            "openvino_cache": None if cache is None else str(cache),
            "compiled_from_cache": from_cache,
            "cache_rebuilt": rebuilt,
            "compile_s": round(seconds, 3),
        },
    )


__all__ = [
    "BF16_TOLERANCE",
    "INSTALL_HINT",
    "OV_PRECISIONS",
    "AutoChoice",
    "CacheRebuiltWarning",
    "CompiledGraph",
    "auto_choice",
    "say_once",
    "OpenVinoUnavailable",
    "cache_root",
    "compile_graph",
    "cpu_has_bf16",
    "cpuinfo_has_bf16",
    "import_openvino",
    "read_graph",
]

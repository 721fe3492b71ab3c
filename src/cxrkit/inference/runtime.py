"""How a torch checkpoint's forward pass runs at inference: fp32, bf16 or ONNX Runtime.

Evaluate, predict, explain, localize and serve all call :class:`cxrkit.inference.LoadedModel`,
whose network call is a :class:`Forward` chosen here from ``precision``:

``fp32``         torch fp32 eager, NCHW: the reference every other path is checked against
                 (what the usual scripts do; force it with ``--precision fp32``).
``bf16``         torch bf16 autocast + channels_last (:class:`cxrkit.engine.precision.Precision`,
                 the training engine's autocast), where the device has bf16: CUDA, or a CPU
                 with AVX512-BF16 / AMX-BF16.
``onnxruntime``  the network exported once to ONNX (fp32) and run by onnxruntime on the
                 CPU. The export is cached by the checkpoint's sha256 (and the torch,
                 onnxruntime and opset versions) under :func:`cache_dir`, and checked
                 against fp32 eager when made (:data:`PARITY_TOLERANCE`; the result is
                 in the ``.onnx.json`` manifest beside the graph).
``auto``         the default: ``onnxruntime`` on the CPU, ``fp32`` elsewhere (a GPU was not
                 measured here), ``fp32`` for a model without a checkpoint file or whose
                 export fails (with a warning saying why). ``$CXRKIT_PRECISION`` sets the
                 default for a whole shell (or test suite).

Why this default, measured on the 2-core development CPU (Xeon with AVX512-BF16, no AMX;
``bench/bench_predict.py``, README "Fast inference"): DenseNet121's network forward pass at
224 px runs 4.6-4.8x faster in onnxruntime than in torch fp32 eager with max |dp| 1.2e-7,
while bf16 autocast + channels_last gains 1.1-1.7x and moves probabilities by up to 2.8e-3
(the machine's bf16 is AVX512 emulation-grade; without AMX, oneDNN's bf16 convolutions are
barely faster than fp32, and DenseNet's many concatenations and batch norms stay memory
bound). ``torch.jit.freeze`` / ``optimize_for_inference`` gained nothing (0.96-1.04x).
onnxruntime fuses the batch norms and ReLUs into its blocked (NCHWc) convolutions.

Gradients (Grad-CAM, SmoothGrad, Integrated Gradients) always run on the torch module in
fp32 (``LoadedModel.model``); only forward-only predictions take the fast path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import warnings
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import torch

from cxrkit.artefacts import atomic_path, write_json
from cxrkit.data.metadata import DEFAULT_META
from cxrkit.engine.precision import Precision
from cxrkit.ood.features import tap_features

log = logging.getLogger(__name__)

#: What ``precision=`` accepts (see the module docstring).
PRECISIONS = ("auto", "fp32", "bf16", "onnxruntime")
#: Environment variable that sets the default of ``precision`` (else "auto").
PRECISION_ENV = "CXRKIT_PRECISION"
#: Largest accepted |probability(onnxruntime) - probability(torch fp32)| on the load-time
#: check (random inputs at the model's input size). The same 1e-4 as ``cxrkit export``
#: (:data:`cxrkit.inference.export.PROBABILITY_TOLERANCE`; measured 1.2e-7 for DenseNet121).
PARITY_TOLERANCE = 1e-4
#: ONNX opset of the cached network graphs.
OPSET = 18


#: what the cached graph returns (part of its cache key, so older graphs are remade)
GRAPH_OUTPUTS = ("logits", "features")

def default_precision(precision: str | None = None) -> str:
    """``precision`` if given, else ``$CXRKIT_PRECISION``, else "auto"; validated."""
    value = precision or os.environ.get(PRECISION_ENV) or "auto"
    if value not in PRECISIONS:
        where = "" if precision else f" (from ${PRECISION_ENV})"
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{value!r}{where}")
    return value


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                if fn():
                    return True
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def cache_dir() -> Path:
    """Where exported network graphs are kept: ``$CXRKIT_CACHE``, else
    ``$XDG_CACHE_HOME/cxrkit`` (``~/.cache/cxrkit``), subfolder ``onnx``."""
    root: str | Path | None = os.environ.get("CXRKIT_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxrkit"
    return Path(root) / "onnx"


@contextlib.contextmanager
def quiet_exporter_logs(names=("onnx_ir", "onnxscript", "torch.onnx", "torch.export")):
    """The ONNX exporter's passes log progress at INFO; keep it out of cxrkit's INFO output."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# -- the forward passes ---------------------------------------------------------------------
@dataclass
class Forward:
    """``forward(x, meta) -> (float32 logits (B, F), pooled features (B, D))`` for
    tensor-stage inputs, and what it is. The features are the classifier's input, read by
    :func:`cxrkit.ood.features.tap_features` (the out-of-distribution score needs them), so
    every precision returns them from the same single pass."""

    precision: str                                  #: "fp32", "bf16" or "onnxruntime"
    requested: str                                  #: what the caller asked for
    record: dict = field(default_factory=dict)      #: details for manifests (metrics.json)

    def __call__(self, x: torch.Tensor, meta: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"requested": self.requested, "used": self.precision, **self.record}


@dataclass
class EagerForward(Forward):
    """torch eager, fp32 or bf16 autocast + channels_last."""

    model: torch.nn.Module = None  # type: ignore[assignment]  # set by __init__
    device: torch.device = torch.device("cpu")

    def __post_init__(self):
        self._amp = Precision.choose("bf16" if self.precision == "bf16" else "none", self.device)
        if self.precision == "bf16":
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits it

    def __call__(self, x, meta):
        if self.precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), self._amp.autocast(self.device), tap_features(self.model) as tap:
            logits = self.model(x, meta).float()
            return logits, tap.take().float()  # type: ignore[union-attr]  # a forward just ran


@dataclass
class OrtForward(Forward):
    """The network as an ONNX graph in onnxruntime (CPU), fp32."""

    session: Any = None  # an onnxruntime.InferenceSession
    metadata: bool = False

    def __call__(self, x, meta):
        feeds = {"x": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        if self.metadata:
            feeds["meta"] = np.ascontiguousarray(meta.detach().cpu().numpy(), dtype=np.float32)
        logits, features = self.session.run(["logits", "features"], feeds)
        return torch.from_numpy(logits), torch.from_numpy(features)


class _Network(torch.nn.Module):
    """The bare network, ``(x[, meta]) -> (logits, features)``: what the cached graph holds."""

    def __init__(self, model: torch.nn.Module, metadata: bool):
        super().__init__()
        self.model, self.metadata = model, metadata

    def forward(self, x, meta=None):
        with tap_features(self.model) as tap:
            logits = self.model(x, meta if self.metadata else None).float()
            return logits, tap.take()


def _key(sha256: str, shape: tuple, metadata: bool) -> str:
    import onnxruntime

    text = json.dumps([sha256, list(shape), metadata, OPSET, GRAPH_OUTPUTS, str(torch.__version__),
                       onnxruntime.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _export(net: _Network, example: tuple, path: Path, metadata: bool) -> None:
    """``torch.onnx.export(dynamo=True)`` to ``path``, atomically (tmp file + rename)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    names = ["x", "meta"] if metadata else ["x"]
    printed = io.StringIO()
    with (atomic_path(path) as tmp, warnings.catch_warnings(),
          contextlib.redirect_stdout(printed), quiet_exporter_logs()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, str(tmp), dynamo=True, opset_version=OPSET,
                          input_names=names, output_names=list(GRAPH_OUTPUTS),
                          dynamic_shapes=tuple({0: batch} for _ in names),
                          external_data=False, verbose=False)


def onnxruntime_forward(lm, *, requested: str = "onnxruntime") -> OrtForward:
    """Export ``lm``'s network once (cached), check it against fp32, load it in onnxruntime.

    Raises ``RuntimeError`` when the export fails or its outputs differ from torch fp32
    by more than :data:`PARITY_TOLERANCE`.
    """
    import onnxruntime as ort

    if lm.device.type != "cpu":
        raise ValueError(f"precision onnxruntime runs on the CPU; the model is on {lm.device}")
    if not lm.checkpoint.is_file():
        raise ValueError("precision onnxruntime needs a checkpoint file (the export is "
                         "cached by its sha256)")
    p = lm.preprocessing
    shape = (p.channels, p.input_size, p.input_size)
    path = cache_dir() / f"{lm.name}-{_key(lm.checkpoint_sha256, shape, lm.metadata)}.onnx"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=gen)
    meta = (torch.from_numpy(np.tile(np.asarray(DEFAULT_META, np.float32), (2, 1)))
            if lm.metadata else None)
    net = _Network(lm.model, lm.metadata).eval()
    exported = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("exporting %s's network to ONNX once for onnxruntime (cached in %s)",
                 lm.checkpoint.name, path.parent)
        example = (x,) if meta is None else (x, meta)
        try:
            _export(net, example, path, lm.metadata)
        except Exception as e:
            raise RuntimeError(f"ONNX export of {lm.checkpoint} for onnxruntime failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                               ) from e
        exported = True
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fwd = OrtForward("onnxruntime", requested, session=session, metadata=lm.metadata)
    sidecar = path.with_name(path.name + ".json")
    manifest = None
    if not exported and sidecar.exists():
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads(sidecar.read_text())
    if manifest is None:  # checked once, when the graph is made (or its manifest is lost)
        with torch.no_grad():
            ref = torch.sigmoid(net(x, meta)[0])
        diff = float((torch.sigmoid(fwd(x, meta)[0]) - ref).abs().max())
        if not diff <= PARITY_TOLERANCE:
            path.unlink(missing_ok=True)
            raise RuntimeError(f"{lm.checkpoint}: onnxruntime differs from torch fp32 by "
                               f"{diff:.3g} in probability (tolerance {PARITY_TOLERANCE:g})")
        manifest = {"checkpoint": str(lm.checkpoint), "checkpoint_sha256": lm.checkpoint_sha256,
                    "model": lm.name, "input": list(shape), "opset": OPSET,
                    "exporter": "torch.onnx.export(dynamo=True)",
                    "versions": {"torch": str(torch.__version__), "onnxruntime": ort.__version__},
                    "parity_max_abs_diff_probability": diff,
                    "parity_inputs": "2 standard-normal tensors at the input size, seed 0"}
        write_json(manifest, sidecar)
    fwd.record = {"onnx": str(path), "exported_now": exported,
                  "parity_max_abs_diff_probability": manifest["parity_max_abs_diff_probability"],
                  "onnxruntime": ort.__version__, "cpu": platform.processor() or platform.machine()}
    return fwd


def choose_forward(lm, precision: str | None = None) -> Forward:
    """The :class:`Forward` for ``lm`` and ``precision`` (see the module docstring)."""
    requested = default_precision(precision)
    dev = lm.device
    if requested == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        raise ValueError("precision bf16: this CPU has no bf16 instructions (AVX512-BF16 or "
                         "AMX); use fp32 or onnxruntime")
    if requested in ("fp32", "bf16"):
        return EagerForward(requested, requested, model=lm.model, device=dev)
    if requested == "onnxruntime":
        return onnxruntime_forward(lm)
    # auto
    if dev.type != "cpu" or not lm.checkpoint.is_file():
        why = ("not measured on this device" if dev.type != "cpu"
               else "no checkpoint file to key the ONNX cache")
        return EagerForward("fp32", "auto", {"why": why}, model=lm.model, device=dev)
    try:
        return onnxruntime_forward(lm, requested="auto")
    except (RuntimeError, ValueError, ImportError) as e:
        warnings.warn(f"{lm.checkpoint.name}: onnxruntime unavailable for this model "
                      f"({e}); running torch fp32", RuntimeWarning, stacklevel=3)
        return EagerForward("fp32", "auto", {"why": f"onnxruntime failed: {e}"},
                            model=lm.model, device=dev)


__all__ = ["PARITY_TOLERANCE", "PRECISIONS", "PRECISION_ENV", "EagerForward", "Forward",
           "OrtForward", "cache_dir", "choose_forward", "cpu_has_bf16", "default_precision",
           "onnxruntime_forward", "quiet_exporter_logs"]

"""How a torch checkpoint's forward pass runs at inference: fp32, bf16, onnxruntime, OpenVINO.

Evaluate, predict, explain, localize and serve all call :class:`cxrkit.inference.LoadedModel`,
whose network call is a :class:`Forward` chosen here from ``precision``:

``fp32``           torch fp32 eager, NCHW: the reference every other path is checked against
                   (what the usual scripts do; force it with ``--precision fp32``).
``bf16``           torch bf16 autocast + channels_last (:class:`cxrkit.engine.precision.Precision`,
                   the training engine's autocast), where the device has bf16: CUDA, or a CPU
                   with AVX512-BF16 / AMX-BF16.
``onnxruntime``    the network exported once to ONNX (fp32) and run by onnxruntime on the
                   CPU, within :data:`PARITY_TOLERANCE` (1e-4) of fp32 in probability.
``openvino``       the same graph compiled by OpenVINO (:mod:`cxrkit.inference.openvino_engine`,
                   optional extra ``cxrkit[openvino]``), fp32: within 1e-4 too.
``openvino-bf16``  OpenVINO with bf16 inference precision, on a CPU with native bf16:
                   within :data:`BF16_PARITY_TOLERANCE` (5e-3) of fp32 in probability.
``auto``           the default (``$CXRKIT_PRECISION`` sets another for a whole shell or test
                   suite), per machine:

                   * CPU with native bf16 (AVX512-BF16 or AMX) and OpenVINO installed:
                     ``openvino-bf16``, said once per process in an INFO line (less exact:
                     max |dp| <= 5e-3, checked when the graph is first compiled);
                   * CPU, OpenVINO installed, no native bf16: ``onnxruntime`` (OpenVINO fp32
                     measured no faster; same 1e-4 bound);
                   * CPU without OpenVINO: ``onnxruntime``; where the CPU has bf16 an INFO
                     line says OpenVINO would be about 2x faster and how to install it;
                   * GPU, or a model without a checkpoint file: ``fp32`` (not measured);
                   * an engine that fails for this model (export, compile or parity): the
                     next one down (OpenVINO bf16, onnxruntime, torch fp32), with a warning.

The ONNX export is made once per network (:func:`weights_sha256`: its config and weights, so
a checkpoint that only gained an OOD record keeps its graph), input shape and
torch/onnxruntime/opset versions, under :func:`cache_dir`; its manifest (``.onnx.json``)
records the graph's own sha256 and each engine's parity result. A graph whose bytes no
longer match, or that an engine cannot read (truncated, not protobuf), is exported again
with a :class:`CacheRebuiltWarning`; OpenVINO keeps its compiled model beside it (``openvino/``).

Why, measured on the 2-core development CPU (Xeon with AVX512-BF16, no AMX;
``bench/bench_predict.py``, README "Fast inference"): see the README for the table. In
short, onnxruntime and OpenVINO fp32 run DenseNet121 at 224 px 3-5x faster than torch fp32
eager (they fuse batch norms and ReLUs into blocked convolutions), OpenVINO bf16 about 2x
faster again, while torch's own bf16 autocast gains 1.1-1.7x. ``torch.jit.freeze`` /
``optimize_for_inference`` gained nothing (0.96-1.04x).

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
from functools import cached_property
from typing import Any
from pathlib import Path

import numpy as np
import torch

from cxrkit.artefacts import atomic_path, file_sha256, write_json
from cxrkit.data.metadata import DEFAULT_META
from cxrkit.engine.precision import Precision
from cxrkit.inference.predictor import session_ran_by
from cxrkit.ood.features import tap_features
from cxrkit.inference.openvino_engine import (
    BF16_TOLERANCE,
    CacheRebuiltWarning,
    auto_choice,
    cache_root,
    cpuinfo_has_bf16,
    say_once,
)

log = logging.getLogger(__name__)

#: What ``precision=`` accepts (see the module docstring).
PRECISIONS = ("auto", "fp32", "bf16", "onnxruntime", "openvino", "openvino-bf16")
#: Environment variable that sets the default of ``precision`` (else "auto").
PRECISION_ENV = "CXRKIT_PRECISION"
#: Largest accepted |probability(onnxruntime) - probability(torch fp32)| on the load-time
#: check (random inputs at the model's input size). The same 1e-4 as ``cxrkit export``
#: (:data:`cxrkit.inference.export.PROBABILITY_TOLERANCE`; measured 1.2e-7 for DenseNet121).
PARITY_TOLERANCE = 1e-4
#: Largest accepted |probability(OpenVINO bf16) - probability(torch fp32)| on the load-time
#: check: the issue's bound for the default precision. Measured for DenseNet121 at 224 px:
#: 1.7e-3 to 2.8e-3 on random inputs, see the README "Fast inference" for real images.
BF16_PARITY_TOLERANCE = BF16_TOLERANCE
#: ONNX opset of the cached network graphs.
OPSET = 18


#: what the cached graph returns (part of its cache key, so older graphs are remade)
GRAPH_OUTPUTS = ("logits", "features")


def default_precision(precision: str | None = None) -> str:
    """``precision`` if given, else ``$CXRKIT_PRECISION``, else "auto"; validated."""
    value = precision or os.environ.get(PRECISION_ENV) or "auto"
    if value not in PRECISIONS:
        where = "" if precision else f" (from ${PRECISION_ENV})"
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}{where}")
    return value


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                if fn():
                    return True
    return bool(cpuinfo_has_bf16())


def cache_dir() -> Path:
    """Where exported network graphs are kept: ``onnx/`` under
    :func:`cxrkit.inference.openvino_engine.cache_root` (``$CXRKIT_CACHE``, else ``~/.cache/cxrkit``)."""
    return cache_root() / "onnx"


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
class SavedNetwork:
    """What :func:`choose_forward` needs of a model: the torch network in eval mode, the
    checkpoint file it was saved to, its preprocessing contract, whether it takes patient
    metadata, its device. :class:`cxrkit.inference.LoadedModel` is one; the end of
    training makes one for its ``best.pt`` (:func:`cxrkit.engine.train.record_ood`), so its
    OOD record is computed by the engine ``predict`` uses."""

    model: torch.nn.Module
    checkpoint: Path
    preprocessing: Any  #: a cxrkit.data.preprocessing.Preprocessing
    metadata: bool = False
    device: torch.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return self.model.cxr_config.name  # type: ignore[union-attr, return-value]  # every cxrkit model has one

    @cached_property
    def checkpoint_sha256(self) -> str:
        return file_sha256(self.checkpoint)


@dataclass
class Forward:
    """``forward(x, meta) -> (float32 logits (B, F), pooled features (B, D))`` for
    tensor-stage inputs, and what it is. The features are the classifier's input, read by
    :func:`cxrkit.ood.features.tap_features` (the out-of-distribution score needs them), so
    every precision returns them from the same single pass."""

    precision: str  #: "fp32", "bf16" or "onnxruntime"
    requested: str  #: what the caller asked for
    record: dict = field(default_factory=dict)  #: details for manifests (metrics.json)

    def __call__(
        self, x: torch.Tensor, meta: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"requested": self.requested, "used": self.precision, **self.record}

    def ran_by(self) -> str:
        """The runtime that runs this forward pass, in its own words (what ``cxrkit
        predict`` prints)."""
        return f"torch {torch.__version__} {self.precision}"


@dataclass
class EagerForward(Forward):
    """torch eager, fp32 or bf16 autocast + channels_last."""

    model: torch.nn.Module = None  # type: ignore[assignment]  # set by __init__
    device: torch.device = torch.device("cpu")

    def __post_init__(self):
        self._amp = Precision.choose("bf16" if self.precision == "bf16" else "none", self.device)
        if self.precision == "bf16":
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits it

    def ran_by(self) -> str:
        how = "bf16 autocast + channels_last" if self.precision == "bf16" else "fp32 eager"
        return f"torch {torch.__version__} {how} on {self.device}"

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

    def ran_by(self) -> str:
        return session_ran_by(self.session)

    def __call__(self, x, meta):
        logits, features = self.session.run(["logits", "features"], _feeds(x, meta, self.metadata))
        return torch.from_numpy(logits), torch.from_numpy(features)


def _feeds(x: torch.Tensor, meta: torch.Tensor | None, metadata: bool) -> dict:
    """The cached graph's inputs as contiguous float32 numpy arrays."""
    feeds = {"x": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
    if metadata and meta is not None:
        feeds["meta"] = np.ascontiguousarray(meta.detach().cpu().numpy(), dtype=np.float32)
    return feeds


class _Network(torch.nn.Module):
    """The bare network, ``(x[, meta]) -> (logits, features)``: what the cached graph holds."""

    def __init__(self, model: torch.nn.Module, metadata: bool):
        super().__init__()
        self.model, self.metadata = model, metadata

    def forward(self, x, meta=None):
        with tap_features(self.model) as tap:
            logits = self.model(x, meta if self.metadata else None).float()
            return logits, tap.take()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a network's architecture config and state (names, dtypes, shapes, values).

    The graph cache is keyed by this rather than by the checkpoint file's sha256: the end of
    training computes the OOD record with the graph (:func:`cxrkit.engine.train.record_ood`)
    and then writes the record into the checkpoint, which changes the file but not the
    network, so ``predict``, ``evaluate`` and ``serve`` load the graph made then."""
    h = hashlib.sha256()
    cfg = getattr(model, "cxr_config", None)
    h.update(json.dumps(cfg.to_dict() if cfg is not None else None, default=str).encode())
    for name, t in model.state_dict().items():
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)};".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _key(weights: str, shape: tuple, metadata: bool) -> str:
    import onnxruntime

    text = json.dumps(
        [
            weights,
            list(shape),
            metadata,
            OPSET,
            GRAPH_OUTPUTS,
            str(torch.__version__),
            onnxruntime.__version__,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _export(net: _Network, example: tuple, path: Path, metadata: bool) -> None:
    """``torch.onnx.export(dynamo=True)`` to ``path``, atomically (tmp file + rename)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    names = ["x", "meta"] if metadata else ["x"]
    printed = io.StringIO()
    with (
        atomic_path(path) as tmp,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(printed),
        quiet_exporter_logs(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            example,
            str(tmp),
            dynamo=True,
            opset_version=OPSET,
            input_names=names,
            output_names=list(GRAPH_OUTPUTS),
            dynamic_shapes=tuple({0: batch} for _ in names),
            external_data=False,
            verbose=False,
        )


@dataclass
class _Graph:
    """A checkpoint's cached network graph: where it is, its manifest, its check inputs."""

    lm: Any  #: a LoadedModel (cxrkit.inference.core)
    path: Path
    net: _Network
    x: torch.Tensor
    meta: torch.Tensor | None
    exported: bool = False
    manifest: dict | None = None
    weights: str = ""  #: :func:`weights_sha256` of the network (the cache key)

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)
        self.manifest = None


def _graph(lm) -> _Graph:
    """The cached graph of ``lm``'s network, exported now when absent or found corrupt.

    The manifest beside it records the graph's sha256 when it is made; a graph whose bytes
    no longer match (a disk or copy error, a partial overwrite) is exported again with a
    :class:`CacheRebuiltWarning`, so a damaged cache never fails every later command nor
    silently changes a probability.
    """
    if not lm.checkpoint.is_file():
        raise ValueError(
            "the ONNX graph is cached by the checkpoint's sha256: it needs a checkpoint file"
        )
    p = lm.preprocessing
    shape = (p.channels, p.input_size, p.input_size)
    weights = weights_sha256(lm.model)
    path = cache_dir() / f"{lm.name}-{_key(weights, shape, lm.metadata)}.onnx"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=gen)
    meta = (
        torch.from_numpy(np.tile(np.asarray(DEFAULT_META, np.float32), (2, 1)))
        if lm.metadata
        else None
    )
    g = _Graph(lm, path, _Network(lm.model, lm.metadata).eval(), x, meta, weights=weights)
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            g.manifest = json.loads(g.sidecar.read_text())
        recorded = (g.manifest or {}).get("graph_sha256")
        if recorded is not None and recorded != file_sha256(path):
            _rebuilt(g, "its bytes differ from the sha256 recorded when it was made")
    if not path.exists():
        _export_graph(g)
    return g


def _rebuilt(g: _Graph, why: str) -> None:
    """Say that ``g``'s cached graph is unusable, remove it (exported again by the caller)."""
    warnings.warn(
        f"the cached ONNX graph {g.path} is unusable ({why}); exporting it again "
        "from the checkpoint",
        CacheRebuiltWarning,
        stacklevel=4,
    )
    g.discard()


def _export_graph(g: _Graph) -> None:
    lm = g.lm
    g.path.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "exporting %s's network to an ONNX graph for the fast CPU path, once: this "
        "takes a while (tens of seconds for DenseNet121); later runs load it from %s",
        lm.checkpoint.name,
        g.path.parent,
    )
    example = (g.x,) if g.meta is None else (g.x, g.meta)
    try:
        _export(g.net, example, g.path, lm.metadata)
    except Exception as e:
        raise RuntimeError(
            f"ONNX export of {lm.checkpoint} for the fast CPU path failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    g.exported, g.manifest = True, None


def _checked(g: _Graph, fwd: Forward, engine: str, tolerance: float) -> Forward:
    """Compare ``fwd`` with torch fp32 on the check inputs, once per graph and engine
    (recorded in the manifest); over ``tolerance``, ``RuntimeError``."""
    lm = g.lm
    manifest = g.manifest or {}
    parity = dict(manifest.get("parity") or {})
    if manifest.get("parity_max_abs_diff_probability") is not None:  # older manifests
        parity.setdefault("onnxruntime", manifest["parity_max_abs_diff_probability"])
    version = fwd.record.get("openvino") or fwd.record.get("onnxruntime")
    key = f"{engine} {version}"
    diff = parity.get(key)
    if diff is None:
        with torch.no_grad():
            ref = torch.sigmoid(g.net(g.x, g.meta)[0])
        diff = float((torch.sigmoid(fwd(g.x, g.meta)[0]) - ref).abs().max())
        if not diff <= tolerance:
            raise RuntimeError(
                f"{lm.checkpoint}: {engine} differs from torch fp32 by "
                f"{diff:.3g} in probability (tolerance {tolerance:g})"
            )
        parity[key] = diff
        import onnxruntime as ort

        write_json(
            {
                "checkpoint": str(lm.checkpoint),
                "checkpoint_sha256": lm.checkpoint_sha256,
                "weights_sha256": g.weights,
                "model": lm.name,
                "input": list(g.x.shape[1:]),
                "opset": OPSET,
                "exporter": "torch.onnx.export(dynamo=True)",
                "graph_sha256": manifest.get("graph_sha256") or file_sha256(g.path),
                "versions": {"torch": str(torch.__version__), "onnxruntime": ort.__version__},
                "parity": parity,
                "parity_inputs": "2 standard-normal tensors at the input size, seed 0",
            },
            g.sidecar,
        )
    fwd.record.update(
        {
            "onnx": str(g.path),
            "exported_now": g.exported,
            "parity_max_abs_diff_probability": diff,
            "parity_tolerance": tolerance,
            "cpu": platform.processor() or platform.machine(),
        }
    )
    return fwd


def _open(g: _Graph, engine: str, requested: str) -> Forward:
    """The graph loaded by ``engine`` ("onnxruntime", "openvino", "openvino-bf16")."""
    if engine == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(g.path), providers=["CPUExecutionProvider"])
        return OrtForward(
            "onnxruntime",
            requested,
            {"onnxruntime": ort.__version__},
            session=session,
            metadata=g.lm.metadata,
        )
    from cxrkit.inference.openvino_engine import compile_graph

    ov_precision = "bf16" if engine == "openvino-bf16" else "fp32"
    cache = cache_root() / "openvino" / f"{g.path.stem}-{ov_precision}"
    compiled = compile_graph(g.path, precision=ov_precision, cache=cache)
    return OpenVinoForward(
        engine, requested, dict(compiled.record), graph=compiled, metadata=g.lm.metadata
    )


def graph_forward(lm, engine: str, *, requested: str | None = None) -> Forward:
    """Export ``lm``'s network once (cached), load it in ``engine``, check it against fp32.

    ``engine``: "onnxruntime", "openvino" (fp32) or "openvino-bf16"; checked against
    :data:`PARITY_TOLERANCE` (fp32 engines) or :data:`BF16_PARITY_TOLERANCE`. A cached graph
    that the engine cannot read is exported again (:class:`CacheRebuiltWarning`). Raises
    ``RuntimeError`` when the export fails or the outputs differ from torch fp32 by more
    than the tolerance, ``ValueError`` for a model not on the CPU or without a checkpoint
    file (and for bf16 on a CPU without it), :class:`cxrkit.inference.openvino_engine.OpenVinoUnavailable`
    without OpenVINO.
    """
    if lm.device.type != "cpu":
        raise ValueError(f"precision {engine} runs on the CPU; the model is on {lm.device}")
    g = _graph(lm)
    try:
        fwd = _open(g, engine, requested or engine)
    except (ImportError, ValueError):
        raise  # OpenVINO missing, no bf16: not the graph's fault
    except Exception as e:  # the engine cannot read the cached file
        if g.exported:
            raise RuntimeError(
                f"{engine} cannot load the graph just exported from "
                f"{lm.checkpoint}: {type(e).__name__}: {e}"
            ) from e
        _rebuilt(
            g,
            f"{engine} cannot read it: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}",
        )
        _export_graph(g)
        fwd = _open(g, engine, requested or engine)
    tolerance = BF16_PARITY_TOLERANCE if engine == "openvino-bf16" else PARITY_TOLERANCE
    try:
        return _checked(g, fwd, engine, tolerance)
    except RuntimeError:
        if engine != "openvino-bf16":
            g.discard()  # an fp32 engine that disagrees: the graph itself is suspect
        raise


def onnxruntime_forward(lm, *, requested: str = "onnxruntime") -> Forward:
    """:func:`graph_forward` with onnxruntime (kept for callers of the earlier name)."""
    return graph_forward(lm, "onnxruntime", requested=requested)


def choose_forward(lm, precision: str | None = None) -> Forward:
    """The :class:`Forward` for ``lm`` and ``precision`` (see the module docstring)."""
    requested = default_precision(precision)
    dev = lm.device
    if requested == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        raise ValueError(
            "precision bf16: this CPU has no bf16 instructions (AVX512-BF16 or "
            "AMX); use fp32 or onnxruntime"
        )
    if requested in ("fp32", "bf16"):
        return EagerForward(requested, requested, model=lm.model, device=dev)
    if requested != "auto":
        return graph_forward(lm, requested)
    if dev.type != "cpu" or not lm.checkpoint.is_file():
        why = (
            "not measured on this device"
            if dev.type != "cpu"
            else "no checkpoint file to key the ONNX cache"
        )
        return EagerForward("fp32", "auto", {"why": why}, model=lm.model, device=dev)
    choice = auto_choice()
    engines = (
        ["openvino-bf16", "onnxruntime"] if choice.engine == "openvino-bf16" else ["onnxruntime"]
    )
    for engine in engines:
        try:
            fwd = graph_forward(lm, engine, requested="auto")
        except (RuntimeError, ValueError, ImportError) as e:
            warnings.warn(
                f"{lm.checkpoint.name}: {engine} unavailable for this model ({e}); "
                f"trying {'onnxruntime' if engine != 'onnxruntime' else 'torch fp32'}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        same = engine == choice.engine
        fwd.record["why"] = choice.why if same else "auto: OpenVINO bf16 failed for this model"
        say_once(choice.say if same else None)
        return fwd
    return EagerForward(
        "fp32", "auto", {"why": "onnxruntime and OpenVINO failed"}, model=lm.model, device=dev
    )


@dataclass
class OpenVinoForward(Forward):
    """The network as an ONNX graph compiled by OpenVINO (CPU), fp32 or bf16
    (:mod:`cxrkit.inference.openvino_engine`)."""

    graph: Any = None  #: a CompiledGraph (openvino_engine)
    metadata: bool = False

    def ran_by(self) -> str:
        return self.graph.ran_by()

    def __call__(self, x, meta):
        logits, features = self.graph.run(_feeds(x, meta, self.metadata), ["logits", "features"])
        return torch.from_numpy(logits), torch.from_numpy(features)


__all__ = [
    "BF16_PARITY_TOLERANCE",
    "PARITY_TOLERANCE",
    "PRECISIONS",
    "PRECISION_ENV",
    "CacheRebuiltWarning",
    "EagerForward",
    "Forward",
    "OpenVinoForward",
    "OrtForward",
    "SavedNetwork",
    "cache_dir",
    "choose_forward",
    "cpu_has_bf16",
    "default_precision",
    "graph_forward",
    "onnxruntime_forward",
    "quiet_exporter_logs",
    "weights_sha256",
]

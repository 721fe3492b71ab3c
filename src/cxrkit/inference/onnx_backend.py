"""The ONNX backend: an exported model run by onnxruntime, without torch.

:class:`OnnxModel` is a :class:`cxrkit.inference.predictor.Predictor` like
:class:`cxrkit.inference.LoadedModel`, so ``cxrkit predict --backend onnx`` and the Python
API treat both alike. The graph written by :func:`cxrkit.inference.export.export_onnx` takes the
**cache-stage** image (``uint8`` ``(B, 1, S, S)``) and does the tensor stage itself; the
cache stage (decode, :func:`cxrkit.data.images.preprocess`) runs here in numpy/OpenCV with
the preprocessing contract recorded in the file's ``metadata_props`` (``cxrkit.*`` keys,
JSON values), the same code as training.

Test-time augmentation is not in the graph, so this backend predicts with ``tta="none"``
only (the torch backend does flip/TenCrop).

Engines (``engine=``, ``cxrkit predict MODEL.onnx --precision ...``): ``onnxruntime`` (the
default, fp32), or OpenVINO (``openvino`` fp32, ``openvino-bf16``; the optional extra,
:mod:`cxrkit.inference.openvino_engine`), which reads the same ``metadata_props``. Neither imports
torch. OpenVINO's compiled model is cached under ``$CXRKIT_CACHE/openvino`` (one folder
per file, size and modification time, and precision).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrkit.artefacts import RunFolder, onnx_path
from cxrkit.data.preprocessing import Preprocessing
from cxrkit.inference.predictor import Predictor, session_ran_by
from cxrkit.inference.thresholds import find_thresholds

#: ``cxrkit.<key>`` entries every exported graph carries in its ``metadata_props``.
META_KEYS = (
    "preprocess",
    "findings",
    "thresholds",
    "thresholds_source",
    "model",
    "checkpoint",
    "checkpoint_sha256",
    "opset",
    "versions",
    "inputs",
    "outputs",
    "meta_default",
)


#: What ``engine=`` accepts.
ENGINES = ("onnxruntime", "openvino", "openvino-bf16")


class OnnxModel(Predictor):
    """An exported model (``.onnx`` from ``cxrkit export``) run by onnxruntime or OpenVINO."""

    backend = "onnx"

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        thresholds_file: str | Path | None = None,
        engine: str = "onnxruntime",
        thresholds_beside: str | Path | None = None,
        source: str | Path | None = None,
    ):
        """``thresholds_beside``: the folder whose ``thresholds.json`` is looked for (default:
        the file's); ``source``: the file reported as the model's source (default: this
        one; :mod:`cxrkit.inference.fast_predict` gives the checkpoint its cached export came from)."""
        if engine not in ENGINES:
            raise ValueError(
                f"the ONNX backend's engine must be one of {', '.join(ENGINES)}, got {engine!r}"
            )
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.engine = engine
        self._beside = Path(thresholds_beside) if thresholds_beside else self.path.parent
        self._source = Path(source) if source else self.path
        props = self._open(providers)
        missing = [k for k in META_KEYS if f"cxrkit.{k}" not in props]
        if missing:
            raise ValueError(
                f"{self.path}: not exported by cxrkit (no cxrkit.{missing[0]} in "
                "its metadata); export with `cxrkit export`"
            )
        self.record = {k: json.loads(props[f"cxrkit.{k}"]) for k in META_KEYS}
        self.findings = tuple(self.record["findings"])
        self.preprocessing = Preprocessing.from_dict(self.record["preprocess"])
        self.metadata = "meta" in self.record["inputs"]
        self.checkpoint = Path(self.record["checkpoint"])
        self.thresholds_file = thresholds_file
        self.thresholds, self.thresholds_source, self.thresholds_tta = self._thresholds()
        if "features" in self.outputs:  # the record refitted for its checkpoint, else its own
            from cxrkit.ood.sidecar import choose_record

            self.ood_record, self.ood_source = choose_record(
                self._source if source else self.checkpoint,  # the checkpoint, where it is now
                self.record.get("checkpoint_sha256"),
                json.loads(props.get("cxrkit.ood", "null")),
                self.path.name,
                stacklevel=3,
            )

    def _open(self, providers) -> dict:
        """Load the file in the engine; its ``metadata_props``. Sets ``_run`` and ``outputs``."""
        if self.engine == "onnxruntime":
            import onnxruntime as ort

            try:
                self.session = ort.InferenceSession(
                    str(self.path), providers=list(providers or ["CPUExecutionProvider"])
                )
            except Exception as e:  # onnxruntime raises its own exception types
                raise ValueError(f"{self.path}: not a loadable ONNX model ({e})") from e
            self.outputs = [o.name for o in self.session.get_outputs()]
            self._run = lambda feeds, names: self.session.run(names, feeds)
            self.engine_record = {"engine": "onnxruntime", "onnxruntime": ort.__version__}
            return self.session.get_modelmeta().custom_metadata_map
        import hashlib

        from cxrkit.inference.openvino_engine import cache_root, compile_graph, read_graph

        try:
            model, props = read_graph(self.path)
        except RuntimeError as e:  # OpenVINO's errors for a file it cannot parse
            raise ValueError(
                f"{self.path}: not a loadable ONNX model ({str(e).strip().splitlines()[0]})"
            ) from e
        st = self.path.stat()
        key = hashlib.sha256(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        precision = "bf16" if self.engine == "openvino-bf16" else "fp32"
        cache = cache_root() / "openvino" / f"{self.path.stem}-{key.hexdigest()[:16]}-{precision}"
        graph = compile_graph(model, precision=precision, cache=cache)
        self.outputs = graph.outputs
        self._graph = graph
        self._run = lambda feeds, names: graph.run(feeds, names)
        self.engine_record = {"engine": self.engine, **graph.record}
        return props

    def _thresholds(self):
        found = find_thresholds(
            self._beside,
            self.findings,
            lambda: self.record["checkpoint_sha256"],
            self.thresholds_file,
        )
        if found is not None:
            return found.values, found.source, found.tta
        if self.record["thresholds"]:
            return (
                {str(k): float(v) for k, v in self.record["thresholds"].items()},
                f"recorded in {self.path.name} (from {self.record['thresholds_source']})",
                None,
            )
        return None, None, None

    @property
    def name(self) -> str:
        return self.record["model"]["name"]

    @property
    def source(self) -> Path:
        return self._source

    @property
    def ran_by(self) -> str:
        if self.engine == "onnxruntime":
            return session_ran_by(self.session)
        return self._graph.ran_by()  # OpenVINO (openvino / openvino-bf16)

    def forward_cached(self, images, meta=None, *, tta: str = "none"):
        """``uint8`` ``(B, 1, S, S)`` -> ``(logits (B, F), pooled features (B, D) or None)``
        float32 (``tta`` must be "none"). Graphs exported before the OOD score have no
        ``features`` output: None."""
        if tta != "none":
            raise ValueError(
                f"the ONNX backend runs without test-time augmentation; got "
                f"tta={tta!r} (use the torch backend for flip/tencrop)"
            )
        x = np.ascontiguousarray(np.asarray(images), dtype=np.uint8)
        feeds = {"image": x}
        m = self.meta_matrix(len(x), meta)
        if m is not None:
            feeds["meta"] = np.ascontiguousarray(m, np.float32)
        if "features" in self.outputs:
            logits, features = self._run(feeds, ["logits", "features"])
            return logits, features
        return self._run(feeds, ["logits"])[0], None


def load_onnx(
    path: str | Path,
    *,
    thresholds: str | Path | None = None,
    providers: Sequence[str] | None = None,
    engine: str = "onnxruntime",
) -> OnnxModel:
    """An ``.onnx`` file from ``cxrkit export`` (or a run folder / ``.pt`` with one beside)."""
    path = Path(path)
    if path.is_dir():
        run = RunFolder(path)
        path = onnx_path(run.best if onnx_path(run.best).exists() else run.last)
    elif path.suffix == ".pt":
        path = onnx_path(path)
    if not path.exists():
        raise FileNotFoundError(f"ONNX model not found: {path} (make it with `cxrkit export`)")
    return OnnxModel(path, providers=providers, thresholds_file=thresholds, engine=engine)


__all__ = ["ENGINES", "META_KEYS", "OnnxModel", "load_onnx"]

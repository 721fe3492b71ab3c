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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrkit.artefacts import RunFolder, onnx_path
from cxrkit.data.preprocessing import Preprocessing
from cxrkit.inference.predictor import Predictor
from cxrkit.inference.thresholds import find_thresholds

#: ``cxrkit.<key>`` entries every exported graph carries in its ``metadata_props``.
META_KEYS = ("preprocess", "findings", "thresholds", "thresholds_source", "model",
             "checkpoint", "checkpoint_sha256", "opset", "versions", "inputs", "outputs",
             "meta_default")


class OnnxModel(Predictor):
    """An exported model (``.onnx`` from ``cxrkit export``) run by onnxruntime."""

    backend = "onnx"

    def __init__(self, path: str | Path, *, providers: Sequence[str] | None = None,
                 thresholds_file: str | Path | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        try:
            self.session = ort.InferenceSession(
                str(self.path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a loadable ONNX model ({e})") from e
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in META_KEYS if f"cxrkit.{k}" not in props]
        if missing:
            raise ValueError(f"{self.path}: not exported by cxrkit (no cxrkit.{missing[0]} in "
                             "its metadata); export with `cxrkit export`")
        self.record = {k: json.loads(props[f"cxrkit.{k}"]) for k in META_KEYS}
        self.findings = tuple(self.record["findings"])
        self.preprocessing = Preprocessing.from_dict(self.record["preprocess"])
        self.metadata = "meta" in self.record["inputs"]
        self.checkpoint = Path(self.record["checkpoint"])
        self.thresholds_file = thresholds_file
        self.thresholds, self.thresholds_source, self.thresholds_tta = self._thresholds()
        self.outputs = [o.name for o in self.session.get_outputs()]
        if "cxrkit.ood" in props and "features" in self.outputs:
            from cxrkit.ood import check_record

            record = json.loads(props["cxrkit.ood"])
            if record is not None:
                check_record(record)
                self.ood_record, self.ood_source = record, f"recorded in {self.path.name}"

    def _thresholds(self):
        found = find_thresholds(self.path.parent, self.findings,
                                lambda: self.record["checkpoint_sha256"], self.thresholds_file)
        if found is not None:
            return found.values, found.source, found.tta
        if self.record["thresholds"]:
            return ({str(k): float(v) for k, v in self.record["thresholds"].items()},
                    f"recorded in {self.path.name} (from {self.record['thresholds_source']})",
                    None)
        return None, None, None

    @property
    def name(self) -> str:
        return self.record["model"]["name"]

    @property
    def source(self) -> Path:
        return self.path

    def forward_cached(self, images, meta=None, *, tta: str = "none"):
        """``uint8`` ``(B, 1, S, S)`` -> ``(logits (B, F), pooled features (B, D) or None)``
        float32 (``tta`` must be "none"). Graphs exported before the OOD score have no
        ``features`` output: None."""
        if tta != "none":
            raise ValueError(f"the ONNX backend runs without test-time augmentation; got "
                             f"tta={tta!r} (use the torch backend for flip/tencrop)")
        x = np.ascontiguousarray(np.asarray(images), dtype=np.uint8)
        feeds = {"image": x}
        m = self.meta_matrix(len(x), meta)
        if m is not None:
            feeds["meta"] = np.ascontiguousarray(m, np.float32)
        if "features" in self.outputs:
            logits, features = self.session.run(["logits", "features"], feeds)
            return logits, features
        return self.session.run(["logits"], feeds)[0], None


def load_onnx(path: str | Path, *, thresholds: str | Path | None = None,
              providers: Sequence[str] | None = None) -> OnnxModel:
    """An ``.onnx`` file from ``cxrkit export`` (or a run folder / ``.pt`` with one beside)."""
    path = Path(path)
    if path.is_dir():
        run = RunFolder(path)
        path = onnx_path(run.best if onnx_path(run.best).exists() else run.last)
    elif path.suffix == ".pt":
        path = onnx_path(path)
    if not path.exists():
        raise FileNotFoundError(f"ONNX model not found: {path} (make it with `cxrkit export`)")
    return OnnxModel(path, providers=providers, thresholds_file=thresholds)


__all__ = ["META_KEYS", "OnnxModel", "load_onnx"]

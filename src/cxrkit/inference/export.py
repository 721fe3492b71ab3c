"""ONNX export of a checkpoint, with its preprocessing inside the graph.

:func:`export_onnx` writes ``best.onnx`` (beside ``best.pt`` unless told otherwise) whose
graph takes what the checkpoint's **cache stage** produces and does the **tensor stage**
itself (see :mod:`cxrkit.inference`):

* input ``image``: ``uint8`` ``(B, 1, S, S)``, ``S`` the cache size (grey 0..255), batch
  axis dynamic; ``meta`` ``float32`` ``(B, 4)`` too when the model was trained with
  patient metadata;
* in the graph: ``/ 255``, the eval resize and centre crop, ``(x - mean) / std``, the
  channel repeat, the network;
* outputs ``logits`` and ``probabilities`` (sigmoid), ``float32`` ``(B, F)``.

So an ONNX user needs numpy/OpenCV for the cache stage (:func:`cxrkit.data.dicom.read_image`,
:func:`cxrkit.data.images.preprocess`: the same code as training) and onnxruntime for the
rest; :class:`cxrkit.inference.onnx_backend.OnnxModel` is that, with no torch import. This module
only exports (and checks the export).

The resize is two matrix products, ``W @ x @ W.T``, not ONNX ``Resize``. Why: training
resizes with torch's antialiased bilinear interpolation, and onnxruntime's ``Resize``
with ``antialias=1`` computes slightly different weights (measured with onnxruntime 1.32:
up to 2.4e-5 on the [0, 1] image for 224 <-> 256); ``W`` is built by running torch's own
``F.interpolate`` on an identity basis, so it holds torch's exact weights (matmul vs
``F.interpolate``: <= 2.4e-7) and the crop is just W's rows. Exporter: torch's dynamo
exporter (``torch.onnx.export(dynamo=True)``, torch 2.13's default; onnxscript), opset
:data:`OPSET`.

Every export is checked: PyTorch and onnxruntime run the same images (phantoms, and real
images when given) and the largest absolute differences of probabilities and logits are
recorded and compared with :data:`PROBABILITY_TOLERANCE` / :data:`LOGIT_TOLERANCE`;
over them, :class:`ParityError`. The preprocessing contract (the checkpoint's
:class:`~cxrkit.data.preprocessing.Preprocessing`, findings, thresholds, model, checkpoint sha256, opset, versions)
goes into the ONNX ``metadata_props`` (``cxrkit.*`` keys, JSON values) and, with the
parity results, into a ``.onnx.json`` sidecar.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrkit.artefacts import (
    WriteError,
    atomic_path,
    check_writable,
    onnx_path,
    versions,
    write_json,
    writes_into_run,
)
from cxrkit.data.dicom import grey_uint8, read_image
from cxrkit.inference.onnx_backend import META_KEYS, OnnxModel
from cxrkit.metrics import sigmoid

if TYPE_CHECKING:
    from cxrkit.inference.core import LoadedModel

log = logging.getLogger(__name__)

#: ONNX opset of exported graphs: 18 runs on onnxruntime >= 1.14 and every current runtime.
OPSET = 18

#: Largest accepted |probability(torch) - probability(onnxruntime)|. Why 1e-4: float32
#: in a different summation order drifts a little; measured at export (phantoms, NIH
#: 256 px and 1024 px images) 1.3e-7 for cnn4 and densenet121 at 224 px, 9.2e-7 for
#: mobilenet_v2 (logits: up to 3.7e-6). 1e-4 leaves 100x room and still cannot move a
#: probability across a threshold except within 1e-4 of it, while a real export error
#: moves them far more (the image upside down in the graph: 3e-2 on a weak phantom cnn4).
PROBABILITY_TOLERANCE = 1e-4
#: Largest accepted |logit difference|, relative to max(1, |logit|) (the same reasoning:
#: logits of a confident model reach +-10, where float32 drift scales with the value).
LOGIT_TOLERANCE = 1e-3
#: Largest accepted |OOD score difference|, relative to max(1, score): the score is a
#: squared distance of the features, so float32 feature drift (~1e-6) enters it roughly
#: doubled and divided by the smallest fitted variance; 1e-3 is far above that and far
#: below what moves a flag (the threshold is 1).
OOD_TOLERANCE = 1e-3
#: Environment variable naming the real NIH sample folder (``images_256/``, ``originals/``)
#: whose images the parity check uses by default (:func:`default_parity_images`).
NIH_SAMPLE_ENV = "CXRKIT_NIH_SAMPLE"


class ParityError(RuntimeError):
    """The exported graph's outputs differ from PyTorch's by more than the tolerances."""


# -- the graph --------------------------------------------------------------------------------
def resize_matrix(in_size: int, resize: int, crop: int):
    """``(crop, in_size)`` float32: torch's antialiased bilinear resize ``in_size -> resize``
    followed by the centre crop ``crop``, as a matrix (rows = output pixels).

    Built by resizing an identity basis with ``F.interpolate`` itself, so the weights are
    torch's. (The basis is 2 px wide: torch's antialias kernel mishandles a 1-px axis.)
    """
    import torch
    import torch.nn.functional as F

    if resize == in_size:
        w = torch.eye(in_size)
    else:
        eye = torch.eye(in_size).reshape(in_size, 1, in_size, 1).expand(in_size, 1, in_size, 2)
        out = F.interpolate(
            eye, size=(resize, 2), mode="bilinear", antialias=True, align_corners=False
        )
        w = out[:, 0, :, 0].T.contiguous()  # (resize, in_size)
    off = (resize - crop) // 2
    return w[off : off + crop].contiguous()


def _graph(lm):
    """An ``nn.Module``: cache-stage ``uint8`` image (and meta) -> (logits, probabilities,
    features): ``features`` are the pooled penultimate features the OOD score reads, taken
    by the same classifier-input hook as the torch backend (:mod:`cxrkit.ood.features`)."""
    import torch

    class OnnxGraph(torch.nn.Module):
        rows: torch.Tensor  # buffers (register_buffer)
        cols: torch.Tensor

        def __init__(self):
            super().__init__()
            self.model = lm.model
            p = lm.preprocessing
            w = resize_matrix(p.cache.size, p.eval_resize, p.input_size)
            self.register_buffer("rows", w)
            self.register_buffer("cols", w.T.contiguous())
            self.mean, self.std, self.channels = p.mean, p.std, p.channels

        def forward(self, image, meta=None):
            from cxrkit.ood.features import tap_features

            x = image.to(torch.float32) / 255.0
            x = torch.matmul(torch.matmul(self.rows, x), self.cols)
            x = (x - self.mean) / self.std
            if self.channels != 1:
                x = x.expand(-1, self.channels, -1, -1)
            with tap_features(self.model) as tap:
                logits = self.model(x, meta).float()
                features = tap.take()
            return logits, torch.sigmoid(logits), features

    return OnnxGraph().eval()


def _trace(lm: LoadedModel, out: Path, opset: int) -> tuple[dict[str, str], list | None]:
    """Export ``lm``'s graph (:func:`_graph`) to ``out`` with torch's dynamo exporter, the
    batch dimension dynamic; returns the graph's inputs (name -> what it holds) and the
    metadata a model trained with it gets by default (None: none)."""
    import torch

    from cxrkit.inference.runtime import quiet_exporter_logs

    graph = _graph(lm)
    s = lm.preprocessing.cache.size
    example: tuple = (torch.zeros(2, 1, s, s, dtype=torch.uint8),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes: tuple = ({0: batch},)
    inputs = {"image": f"uint8 (batch, 1, {s}, {s}): the cache-stage image"}
    meta_default = None
    if lm.metadata:
        from cxrkit.data.metadata import DEFAULT_META

        meta_default = list(DEFAULT_META)
        example += (torch.tensor([meta_default] * 2),)
        shapes += ({0: batch},)
        inputs["meta"] = f"float32 (batch, {example[1].shape[1]}): patient metadata"
    printed = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(printed),
            quiet_exporter_logs(),
            atomic_path(out) as tmp,
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                example,
                str(tmp),
                dynamo=True,
                opset_version=opset,
                input_names=list(inputs),
                output_names=["logits", "probabilities", "features"],
                dynamic_shapes=shapes,
                external_data=False,
                verbose=False,
            )
    except WriteError:
        raise
    except Exception as e:
        log.debug("exporter output:\n%s", printed.getvalue())
        raise RuntimeError(
            f"ONNX export of {lm.checkpoint} (model "
            f"{lm.model.cxr_config.name}) failed: {type(e).__name__}: "  # type: ignore[union-attr]
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return inputs, meta_default


def _write_metadata(out: Path, record: dict, ood_record: dict | None) -> None:
    """Write the contract (:data:`META_KEYS` of ``record``) and the OOD record into the
    ONNX file's metadata, as ``cxrkit.KEY`` JSON strings, replacing any there."""
    import onnx

    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for key, value in [*((k, record[k]) for k in META_KEYS), ("ood", ood_record)]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"cxrkit.{key}", json.dumps(value)
    proto.producer_name = "cxrkit"
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))


@writes_into_run("cxrkit export")
def export_onnx(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    parity_images: Sequence[str | Path] = (),
    n_phantoms: int = 6,
    opset: int = OPSET,
    thresholds: str | Path | None = None,
    parity_source: str | None = None,
) -> dict:
    """Export ``checkpoint`` (file or run folder) to ONNX, check parity, write the sidecar.

    ``parity_images``: image files (any format :func:`read_image` reads) checked on top of
    ``n_phantoms`` phantom radiographs; ``parity_source`` says where they came from, or
    why there are none (recorded with the parity as ``checked`` / ``not_checked``, so a
    check on phantoms alone says so). Returns the sidecar record (``path``, contract,
    ``parity``). Raises :class:`ParityError` (after writing both files, so they can be
    inspected) when the differences exceed the tolerances.
    """
    from cxrkit.inference.core import load

    # parity is checked against torch fp32 eager, the reference
    lm = load(checkpoint, device="cpu", thresholds=thresholds, precision="fp32")
    out = Path(out) if out else onnx_path(lm.checkpoint)
    check_writable(out)
    inputs, meta_default = _trace(lm, out, opset)
    record = {
        "preprocess": lm.preprocess_record(),
        "findings": list(lm.findings),
        "thresholds": lm.thresholds,
        "thresholds_source": lm.thresholds_source,
        "model": lm.model.cxr_config.to_dict(),  # type: ignore[union-attr, operator]
        "checkpoint": str(lm.checkpoint),
        "checkpoint_sha256": lm.checkpoint_sha256,
        "opset": opset,
        "versions": versions("onnx", "onnxruntime", "onnxscript"),
        "inputs": inputs,
        "outputs": {
            "logits": f"float32 (batch, {len(lm.findings)})",
            "probabilities": "float32, sigmoid of the logits",
            "features": "float32 (batch, D): pooled penultimate features, scored "
            "against the cxrkit.ood record for the OOD score",
        },
        "meta_default": meta_default,
    }
    if lm.ood_record is None:
        log.warning("%s", lm.ood_note())
    _write_metadata(out, record, lm.ood_record)

    onnx_model = OnnxModel(out)
    images = _parity_images(n_phantoms, parity_images)
    parity = parity_check(lm, onnx_model, images)
    parity.update(parity_coverage(parity, n_real=len(parity_images), source=parity_source))
    sidecar = out.with_name(out.name + ".json")
    from cxrkit.ood import record_summary

    record["ood"] = None if lm.ood_record is None else record_summary(lm.ood_record)
    write_json(
        {
            "path": str(out),
            "exporter": "torch.onnx.export(dynamo=True)",
            **record,
            "parity": parity,
        },
        sidecar,
    )
    if not parity["passed"]:
        raise ParityError(
            f"{out}: onnxruntime differs from PyTorch by up to "
            f"{parity['max_abs_diff_probability']:.3g} in probability and "
            f"{parity['max_abs_diff_logit']:.3g} in logit (tolerances "
            f"{PROBABILITY_TOLERANCE:g}, {LOGIT_TOLERANCE:g} relative), OOD score "
            f"{parity['ood_score']}; see "
            f"{sidecar}"
        )
    return {"path": str(out), "sidecar": str(sidecar), **record, "parity": parity}


def parity_coverage(parity: dict, *, n_real: int, source: str | None) -> dict:
    """What the parity check covered and what it could not, in words (``checked`` and
    ``not_checked`` lists): the kinds of image and how many, the batch sizes, and the
    paths the graph does not hold."""
    checked = [f"{k['n']} {kind} image(s)" for kind, k in parity["by_kind"].items()]
    if n_real and source:
        checked.append(f"real images from {source}")
    checked.append(f"as one batch of {parity['n_images']} and as a batch of 1")
    not_checked = []
    if not n_real:
        not_checked.append(
            "real radiographs: " + (source or "none given") + " (pass --parity-images DIR)"
        )
    not_checked.append(
        "test-time augmentation (flip, tencrop): not in the graph; the ONNX "
        "backend predicts with tta none"
    )
    return {"checked": checked, "not_checked": not_checked}


def _parity_images(
    n_phantoms: int, paths: Sequence[str | Path]
) -> dict[str, tuple[str, np.ndarray]]:
    """``name -> (kind, grey uint8 image)``: phantoms at 256 px, then the given files."""
    from cxrkit.data.phantoms import render_phantom
    from cxrkit.labels import FINDINGS

    images = {}
    for i in range(n_phantoms):
        findings = () if i == 0 else (FINDINGS[(3 * i) % len(FINDINGS)],)
        img, _ = render_phantom(
            np.random.default_rng(1000 + i), findings, size=256, view="PA" if i % 2 else "AP"
        )
        images[f"phantom_{i}"] = ("phantom", img)
    for p in paths:
        img = read_image(p)
        images[str(p)] = (f"real {img.shape[1]}x{img.shape[0]}", img)
    return images


def parity_check(lm, onnx_model: OnnxModel, images: dict[str, tuple[str, np.ndarray]]) -> dict:
    """Run ``images`` through PyTorch (``lm``) and onnxruntime, batched and one at a time.

    Returns the largest absolute differences of probabilities and logits, overall and per
    kind of image, and whether they are within the tolerances.
    """
    names = list(images)
    cached = np.stack([lm.cache_image(grey_uint8(images[n][1])) for n in names])[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # metadata defaults, said once by the caller
        z_torch, ood_torch = lm.score_cached(cached)
        z_onnx, ood_onnx = onnx_model.score_cached(cached)
        z_torch, z_onnx = z_torch.astype(np.float64), z_onnx.astype(np.float64)
        z_single = onnx_model.logits_from_cached(cached[:1]).astype(np.float64)  # batch of 1

    dz = np.abs(z_torch - z_onnx)
    dp = np.abs(sigmoid(z_torch) - sigmoid(z_onnx))
    rel = dz / np.maximum(1.0, np.abs(z_torch))
    by_kind: dict[str, dict] = {}
    for i, n in enumerate(names):
        k = by_kind.setdefault(
            images[n][0], {"n": 0, "max_abs_diff_probability": 0.0, "max_abs_diff_logit": 0.0}
        )
        k["n"] += 1
        k["max_abs_diff_probability"] = max(k["max_abs_diff_probability"], float(dp[i].max()))
        k["max_abs_diff_logit"] = max(k["max_abs_diff_logit"], float(dz[i].max()))
    batch1 = float(np.abs(z_single[0] - z_onnx[0]).max())
    passed = bool(dp.max() <= PROBABILITY_TOLERANCE and rel.max() <= LOGIT_TOLERANCE)
    ood = None
    if ood_torch is not None and ood_onnx is not None:
        d = np.abs(ood_torch.score - ood_onnx.score) / np.maximum(1.0, np.abs(ood_torch.score))
        ood = {
            "max_rel_diff_score": float(d.max()),
            "tolerance_relative": OOD_TOLERANCE,
            "flags_agree": bool((ood_torch.flag == ood_onnx.flag).all()),
        }
        passed = passed and bool(d.max() <= OOD_TOLERANCE)
    return {
        "n_images": len(names),
        "max_abs_diff_probability": float(dp.max()),
        "max_abs_diff_logit": float(dz.max()),
        "max_rel_diff_logit": float(rel.max()),
        "max_abs_logit": float(np.abs(z_torch).max()),
        "batch_of_one_vs_batch_logit": batch1,
        "by_kind": by_kind,
        "ood_score": ood,
        "tolerances": {"probability": PROBABILITY_TOLERANCE, "logit_relative": LOGIT_TOLERANCE},
        "passed": passed,
        "images": names,
    }


def nih_sample_folder() -> Path | None:
    """The real NIH sample: ``$CXRKIT_NIH_SAMPLE``, else ``shared/nih`` beside a source
    checkout of cxrkit (found from this file, not from the working directory); None when
    neither is there."""
    if os.environ.get(NIH_SAMPLE_ENV):
        return Path(os.environ[NIH_SAMPLE_ENV])
    repo = Path(__file__).resolve().parents[3]
    beside = repo.parent / "shared" / "nih"
    return beside if (repo / "pyproject.toml").exists() and beside.is_dir() else None


def default_parity_images() -> list[Path]:
    """Real images for the parity check when none are given: 8 of the NIH sample's 256 px
    images and one 1024 px original, when the sample is there (else none: phantoms only)."""
    sample = nih_sample_folder()
    if sample is None:
        return []
    small = sorted((sample / "images_256").glob("*.png"))[:8]
    big = sorted((sample / "originals").rglob("*.png"))[:1]
    return small + big


def default_parity_source(found: list[Path]) -> str:
    """Where :func:`default_parity_images` took ``found`` from, or why it found none (the
    folder it looked in and the variable that points elsewhere), for the parity record."""
    sample = nih_sample_folder()
    if found:
        return f"the NIH sample at {sample}"
    where = (
        f"not found at {sample}"
        if sample is not None
        else "not found (no shared/nih beside a source checkout of cxrkit)"
    )
    return f"the NIH sample was {where}; set {NIH_SAMPLE_ENV}"


__all__ = [
    "LOGIT_TOLERANCE",
    "NIH_SAMPLE_ENV",
    "OPSET",
    "PROBABILITY_TOLERANCE",
    "ParityError",
    "default_parity_images",
    "default_parity_source",
    "export_onnx",
    "nih_sample_folder",
    "parity_check",
    "parity_coverage",
    "resize_matrix",
]

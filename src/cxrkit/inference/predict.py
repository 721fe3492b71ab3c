"""Prediction on image files: what ``cxrkit predict CHECKPOINT PATH...`` does, in Python.

:func:`collect_inputs` turns files, folders (searched recursively) and glob patterns into a
list of image files; :func:`predict_files` runs them through a
:class:`~cxrkit.inference.predictor.Predictor`: :class:`~cxrkit.inference.LoadedModel` (PyTorch,
``cxrkit.load``) or :class:`~cxrkit.inference.onnx_backend.OnnxModel` (onnxruntime,
``--backend onnx``), always with the
checkpoint's own preprocessing (a model trained at 224 px on CLAHE images sees 224 px
CLAHE images); :class:`Predictions` holds the result and writes it as CSV or JSON.

Probabilities are the same numbers ``cxrkit.load(checkpoint).predict(paths)`` returns (the
same functions compute them). A finding is *flagged* when its probability is at least its
decision threshold: the thresholds ``cxrkit evaluate`` chose on the validation split
(``thresholds.json`` beside the checkpoint), else 0.5 with a warning saying so.

Nothing is skipped silently: an input that names no file, a file that cannot be read (not
an image, a DICOM whose compression has no decoder, ...) gets a row with its reason in the
``error`` column, and the rest are still predicted; files in searched folders that are not
images (``.txt``, ``.csv``...) are counted and listed in ``Predictions.skipped``.

Patient metadata (models trained with ``model.metadata=true``): age, sex and view come from
``metadata=`` (``--metadata CSV``), else ``metadata.csv`` beside each image, else the
file's DICOM tags (columns and tags: :mod:`cxrkit.data.metadata`); images that lacked a
field are listed in ``Predictions.metadata_missing`` and in a warning.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrkit.artefacts import atomic_path, csv_row, write_text
from cxrkit.data.decoder import DecodeLimits, Decoder, default_workers
from cxrkit.data.dicom import DICOM_EXTENSIONS, is_dicom
from cxrkit.data.images import IMAGE_EXTENSIONS, os_reason, walk_files
from cxrkit.inference.predictor import DEFAULT_THRESHOLD
from cxrkit.messages import require_count
from cxrkit.metrics import sigmoid

#: File name endings searched for in folders (case-insensitive); files named directly are
#: always tried, and extension-less files in folders are taken when they start like DICOM.
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS + DICOM_EXTENSIONS


class MetadataMissingWarning(UserWarning):
    """Images predicted by a metadata model without their age, sex or view."""


class NoThresholdsWarning(UserWarning):
    """Findings flagged at 0.5 because the checkpoint has no thresholds from evaluation."""


@dataclass
class Inputs:
    """What the command line named: ``files`` to predict, ``problems`` (input, reason) for
    inputs that named none, ``skipped`` files in folders that are not images."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def collect_inputs(items: Sequence[str | Path]) -> Inputs:
    """Files, folders and globs (``**`` recurses) -> image files, in the order given.

    A folder is searched recursively for :data:`SUPPORTED_EXTENSIONS` (hidden entries
    skipped, names sorted) by :func:`cxrkit.data.images.walk_files`, which enters each
    folder once: links to ``.`` or to a parent cannot make it loop. A pattern expands like
    :func:`glob.glob`, its ``**`` by that same walk. The same file named twice is predicted
    once. A link to itself, a broken link or a FIFO named (or found with an image name) is
    an input with its reason, i.e. an error row.
    """
    out, seen = Inputs(), set()

    def add(p: Path):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.files.append(p)

    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = _search_folder(path, out)
            if not found:
                out.problems.append((text, "folder holds no PNG, JPEG or DICOM files"))
            for p in found:
                add(p)
        elif path.exists():
            add(path)
        elif os.path.islink(text):  # a link to itself, or a broken one
            out.problems.append((text, _link_reason(text)))
        elif glob.has_magic(text):
            files = []
            for m in _expand(text, out):
                files.extend(_search_folder(m, out) if m.is_dir() else [m])
            if not files:
                out.problems.append((text, "no file matches this pattern"))
            for p in files:
                add(p)
        else:
            out.problems.append((text, "no such file or folder"))
    return out


def _link_reason(path: str) -> str:
    try:
        os.stat(path)
    except OSError as e:
        return os_reason(e, path)
    return "not a regular file"


def _expand(pattern: str, out: Inputs) -> list[Path]:
    """The paths ``pattern`` matches, sorted. Without ``**``: :func:`glob.glob` (one folder
    level per part: bounded). With it: the folder before the first wildcard is walked once
    (:func:`walk_files`, loop-proof) and each file matched part by part (``**`` = any
    number of folders), since ``glob``'s own ``**`` follows linked folders into loops."""
    if "**" not in pattern:
        return [Path(m) for m in sorted(glob.glob(pattern))]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    if not base.is_dir():
        return []
    rest = parts[fixed:]
    found = []
    for path, reason in walk_files(base):
        rel = Path(path).relative_to(base).parts
        if _match(rest, rel):
            if reason:
                if Path(path).suffix.lower() in SUPPORTED_EXTENSIONS:
                    out.problems.append((path, reason))
            else:
                found.append(Path(path))
    return found


def _match(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """``parts`` (a relative path) matched by ``pattern`` part by part; ``**`` matches zero
    or more whole parts, other parts as :func:`fnmatch.fnmatchcase`."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, parts[i:]) for i in range(len(parts) + 1)) or not rest
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _match(rest, parts[1:])


def _search_folder(root: Path, out: Inputs) -> list[Path]:
    """Image files under ``root`` (by extension, or extension-less DICOM), in walk order;
    other files go to ``out.skipped``, bad entries with an image name to ``out.problems``."""
    found = []
    try:
        entries = list(walk_files(root))
    except PermissionError as e:
        out.problems.append((str(root), str(e)))
        return []
    for path, reason in entries:
        p = Path(path)
        suffix = p.suffix.lower()
        if reason:
            if suffix in SUPPORTED_EXTENSIONS:
                out.problems.append((path, reason))
            else:
                out.skipped.append(p)
        elif suffix in SUPPORTED_EXTENSIONS or (not suffix and is_dicom(p)):
            found.append(p)
        else:
            out.skipped.append(p)
    return found


@dataclass
class Predictions:
    """Probabilities per image and finding, flagged findings, and the images that failed."""

    findings: tuple[str, ...]
    images: list[str]  #: every input, in order (predicted or failed)
    probabilities: np.ndarray  #: (len(images), F) float64; NaN rows where failed
    errors: dict[str, str]  #: image -> why it could not be predicted
    thresholds: np.ndarray  #: (F,) decision thresholds used for ``flagged``
    thresholds_source: str | None  #: where they came from; None: 0.5 by default
    model: str = ""
    backend: str = "torch"
    ran_by: str = ""  #: the runtime that ran the forward pass (its own name)
    checkpoint: str = ""
    tta: str = "none"
    skipped: list[str] = field(default_factory=list)
    #: image -> patient-metadata fields it lacked (models trained with metadata only)
    metadata_missing: dict[str, list[str]] = field(default_factory=dict)
    #: (len(images),) out-of-distribution score (> 1: flagged); NaN where failed or no record
    ood_score: np.ndarray | None = None
    #: why there is no OOD score (None: there is one)
    ood_note: str | None = None

    def ood_flag(self, i: int) -> bool | None:
        """Image ``i`` is unlike the training images (None: no score)."""
        if self.ood_score is None or np.isnan(self.ood_score[i]):
            return None
        return bool(self.ood_score[i] > 1.0)

    @property
    def n_ood(self) -> int:
        return sum(bool(self.ood_flag(i)) for i in range(len(self.images)))

    @property
    def n_failed(self) -> int:
        return len(self.errors)

    def flagged(self, i: int) -> list[str]:
        """Findings of image ``i`` at or over their threshold, most probable first."""
        p = self.probabilities[i]
        if np.isnan(p).any():
            return []
        idx = [j for j in np.argsort(-p, kind="stable") if p[j] >= self.thresholds[j]]
        return [self.findings[j] for j in idx]

    def frame(self):
        """One row per image: ``image``, ``error``, ``flagged`` (";"-joined), ``ood_score``,
        ``ood_flag`` (empty without a score), then one probability column per finding."""
        import pandas as pd

        df = pd.DataFrame(self.probabilities, columns=list(self.findings))
        df.insert(0, "image", self.images)
        df.insert(1, "error", [self.errors.get(n, "") for n in self.images])
        df.insert(2, "flagged", [";".join(self.flagged(i)) for i in range(len(self.images))])
        n = len(self.images)
        df.insert(
            3, "ood_score", self.ood_score if self.ood_score is not None else np.full(n, np.nan)
        )
        df.insert(4, "ood_flag", pd.array([self.ood_flag(i) for i in range(n)], dtype="boolean"))
        return df

    def _write_csv(self, path: Path) -> None:
        """:meth:`frame` as CSV (floats at full precision, NaN as empty), written with the
        csv module: ``cxrkit predict --out x.csv`` must not import pandas (start-up time).
        Text cells are escaped against formula injection (:func:`cxrkit.artefacts.csv_cell`)."""
        import csv

        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(
                csv_row(["image", "error", "flagged", "ood_score", "ood_flag", *self.findings])
            )
            for i, name in enumerate(self.images):
                flag = self.ood_flag(i)
                score = "" if flag is None else repr(float(self.ood_score[i]))  # type: ignore[index]  # a flag implies a score
                w.writerow(
                    csv_row(
                        [
                            name,
                            self.errors.get(name, ""),
                            ";".join(self.flagged(i)),
                            score,
                            "" if flag is None else str(flag),
                            *("" if np.isnan(v) else repr(float(v)) for v in self.probabilities[i]),
                        ]
                    )
                )

    def to_dict(self) -> dict:
        rows: list[dict] = []
        for i, name in enumerate(self.images):
            if name in self.errors:
                rows.append({"image": name, "error": self.errors[name]})
            else:
                score = None if self.ood_flag(i) is None else float(self.ood_score[i])  # type: ignore[index]  # a flag implies a score
                rows.append(
                    {
                        "image": name,
                        "flagged": self.flagged(i),
                        "ood_score": score,
                        "ood_flag": self.ood_flag(i),
                        "probabilities": dict(
                            zip(self.findings, map(float, self.probabilities[i]), strict=True)
                        ),
                    }
                )
        return {
            "checkpoint": self.checkpoint,
            "model": self.model,
            "backend": self.backend,
            "ran_by": self.ran_by,
            "tta": self.tta,
            "findings": list(self.findings),
            "thresholds": dict(zip(self.findings, map(float, self.thresholds), strict=True)),
            "thresholds_source": self.thresholds_source
            or f"none chosen at evaluation: {DEFAULT_THRESHOLD} for every finding",
            "n_images": len(self.images),
            "n_failed": self.n_failed,
            "skipped_not_images": self.skipped,
            "metadata_missing": self.metadata_missing,
            "ood": {
                "meaning": "ood_score > 1: the image is unlike the training images "
                "(ood_flag); the findings of such an image mean little",
                "n_flagged": self.n_ood,
                "note": self.ood_note,
            },
            "predictions": rows,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``.csv`` (:meth:`frame`, full float precision) or ``.json`` (:meth:`to_dict`)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".json"):
            raise ValueError(f"--out {path}: write .csv or .json")
        if suffix == ".csv":
            with atomic_path(path) as tmp:
                self._write_csv(tmp)
            return path
        return write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n", path)

    def summary(self, *, top: int = 3, limit: int = 50) -> str:
        """A terminal table: per image its flagged findings and its ``top`` probabilities."""
        width = min(48, max([5] + [len(_short(n)) for n in self.images[:limit]]))
        lines = [
            f"{'image':<{width}}  {'OOD':<9}  {'flagged (probability >= threshold)':<44}  "
            "most probable"
        ]
        for i, name in enumerate(self.images[:limit]):
            short = _short(name)[-width:]
            if name in self.errors:
                lines.append(f"{short:<{width}}  ERROR: {self.errors[name]}")
                continue
            p = self.probabilities[i]
            names = self.flagged(i)
            flagged = ", ".join(f"{f} {p[self.findings.index(f)]:.2f}" for f in names[:top])
            if len(names) > top:
                flagged += f" +{len(names) - top} more"
            best = ", ".join(
                f"{self.findings[j]} {p[j]:.2f}" for j in np.argsort(-p, kind="stable")[:top]
            )
            flag = self.ood_flag(i)
            ood = "-" if flag is None else (f"YES {self.ood_score[i]:.1f}" if flag else "no")  # type: ignore[index]
            lines.append(f"{short:<{width}}  {ood:<9}  {flagged or '-':<44}  {best}")
        if len(self.images) > limit:
            lines.append(
                f"... and {len(self.images) - limit} more images (write them all "
                "with --out FILE.csv or .json)"
            )
        if self.n_ood:
            lines.append(
                f"WARNING: {self.n_ood} image(s) flagged OOD (score > 1): unlike the "
                "images the model was trained on; their findings mean little"
            )
        if self.ood_note:
            lines.append(f"note: {self.ood_note}")
        return "\n".join(lines)


def _short(name: str) -> str:
    return name if len(name) <= 48 else "..." + name[-45:]


def _score_files(
    model, files: list[Path], decoder: Decoder | None, meta, *, tta: str, batch_size: int, bar
) -> tuple[list[np.ndarray], list[float], dict[str, str]]:
    """Decode ``files`` (in ``decoder``'s workers) and score them ``batch_size`` at a time
    while the next ones decode. Returns, per file in order, its probabilities and OOD
    score (NaN where it was not decoded or the model has no OOD record), and the error of
    each file that was not decoded."""
    n_findings = len(model.findings)
    probs = [np.full(n_findings, np.nan) for _ in files]
    ood = [np.nan for _ in files]
    errors: dict[str, str] = {}
    pending: list[tuple[int, np.ndarray]] = []  # (index in files, image)

    def flush():
        if not pending:
            return
        rows = [k for k, _ in pending]
        mm = None if meta is None else meta[rows]
        z, result = model.score_cached(np.stack([im for _, im in pending])[:, None], mm, tta=tta)
        for j, ((k, _), p) in enumerate(zip(pending, sigmoid(z), strict=True)):
            probs[k] = p
            if result is not None:
                ood[k] = float(result.score[j])
        pending.clear()

    decoded = (
        decoder.imap(files, cache=model.preprocessing.cache, ahead=2 * batch_size)
        if decoder is not None
        else iter(())
    )
    for k, (f, d) in enumerate(zip(files, decoded, strict=True)):
        if d.image is not None:
            pending.append((k, d.image))
        else:
            errors[str(f)] = d.error or "not decoded"
        if len(pending) == batch_size:
            flush()
        bar.update(1)
    flush()
    return probs, ood, errors


def predict_files(
    model,
    inputs: Inputs | Sequence[str | Path],
    *,
    tta: str = "none",
    batch_size: int = 16,
    progress: bool = True,
    metadata=None,
    decoder: Decoder | None = None,
    limits: DecodeLimits | None = None,
    workers: int | None = None,
) -> Predictions:
    """Predict every file of ``inputs`` with ``model`` (a :class:`~cxrkit.inference.predictor.Predictor`).

    Files are decoded and cache-preprocessed in worker processes
    (:class:`cxrkit.data.decoder.Decoder`: a deadline and a memory bound per file, so a
    hostile file fails alone and cannot hang or exhaust the run) while the network runs
    on the previous ``batch_size`` images; results keep the input order. Unreadable files
    and inputs that named no file become rows with an ``error``; every good file is still
    predicted. ``decoder``: one already started (the CLI starts it before loading the
    model, so worker start-up overlaps it); else one is made with ``limits`` and
    ``workers`` (default :func:`~cxrkit.data.decoder.default_workers`) and closed at the
    end. ``metadata``: a CSV path or a table
    (:func:`cxrkit.data.metadata.read_metadata_csv`'s columns) of age/sex/view, used only by
    models trained with metadata (see the module docstring).
    """
    from tqdm.auto import tqdm

    batch_size = require_count(batch_size, "batch_size")
    if not isinstance(inputs, Inputs):
        inputs = collect_inputs(inputs)
    findings = tuple(model.findings)
    names = [text for text, _ in inputs.problems]
    errors = dict(inputs.problems)
    probs = [np.full(len(findings), np.nan) for _ in names]
    ood = [np.nan for _ in names]
    ood_note = model.ood_note()
    if ood_note:
        model.warn_if_no_ood()
    thresholds = _thresholds(model)
    mismatch = model.thresholds_mismatch(tta)
    if mismatch:
        warnings.warn(mismatch, NoThresholdsWarning, stacklevel=2)
    files = inputs.files
    meta, missing = _file_metadata(model, files, metadata)
    bar = tqdm(
        total=len(files),
        unit="image",
        desc="predict",
        leave=False,
        disable=not progress or len(files) < 2,
    )
    own = decoder is None and bool(files)  # no files: no worker started
    if own:
        decoder = Decoder(workers or default_workers(len(files)), limits=limits)
    try:
        with bar:
            scored, scores, failed = _score_files(
                model, files, decoder, meta, tta=tta, batch_size=batch_size, bar=bar
            )
        names += [str(f) for f in files]
        probs += scored
        ood += scores
        errors.update(failed)
    finally:
        if own and decoder is not None:
            decoder.close()
    missing = {k: v for k, v in missing.items() if k not in errors}
    return Predictions(
        findings=findings,
        images=names,
        probabilities=np.array(probs).reshape(len(names), len(findings)),
        errors=errors,
        thresholds=thresholds,
        thresholds_source=model.thresholds_source,
        model=model.name,
        backend=model.backend,
        ran_by=model.ran_by,
        checkpoint=str(model.source),
        tta=tta,
        skipped=[str(p) for p in inputs.skipped],
        metadata_missing=missing,
        ood_score=np.asarray(ood, np.float64),
        ood_note=ood_note,
    )


def _file_metadata(model, files: list[Path], metadata):
    """``(meta (N, 4) or None, missing)`` for a model with metadata; warns which images lacked it."""
    if not model.metadata:
        if metadata is not None:
            warnings.warn(
                f"{model.source.name} was trained without patient metadata; "
                "the metadata given is not used",
                MetadataMissingWarning,
                stacklevel=3,
            )
        return None, {}
    from cxrkit.data.metadata import read_metadata_csv, resolve_metadata

    table = read_metadata_csv(metadata) if isinstance(metadata, (str, Path)) else metadata
    resolved = resolve_metadata(files, table)
    note = resolved.summary()
    if note:
        warnings.warn(note, MetadataMissingWarning, stacklevel=3)
    return resolved.vectors, resolved.missing


def _thresholds(model) -> np.ndarray:
    """The model's thresholds (0.5 where missing), warning when any finding has none."""
    chosen = model.thresholds or {}
    missing = [f for f in model.findings if f not in chosen]
    source = model.source
    if not chosen:
        warnings.warn(
            f"{source.name}: no decision thresholds from evaluation (run "
            "`cxrkit evaluate` to choose them on the validation split); findings "
            f"are flagged at probability >= {DEFAULT_THRESHOLD}",
            NoThresholdsWarning,
            stacklevel=3,
        )
    elif missing:
        warnings.warn(
            f"no threshold chosen for {', '.join(missing)} (undefined on the "
            f"validation split?); {DEFAULT_THRESHOLD} used for them",
            NoThresholdsWarning,
            stacklevel=3,
        )
    return model.threshold_vector()


def load_model(
    checkpoint: str | Path,
    *,
    backend: str = "auto",
    device: str | None = None,
    thresholds: str | Path | None = None,
    precision: str | None = None,
    tta: str = "none",
):
    """A checkpoint for prediction: ``backend`` "torch" (``cxrkit.load``), "onnx" (the
    ``.onnx`` export; a run folder or ``.pt`` finds the ``.onnx`` beside it) or "auto"
    (onnx for a ``.onnx`` path, else torch). ``precision``: the torch backend's
    (:mod:`cxrkit.inference.runtime`); the ONNX backend runs onnxruntime fp32 (auto, fp32 or
    onnxruntime: start-up matters most there), ``openvino`` or ``openvino-bf16``, all
    without torch. A checkpoint with the defaults (backend and precision auto, the CPU,
    ``tta`` "none") runs torch-free from its cached export (:mod:`cxrkit.inference.fast_predict`)."""
    path = Path(checkpoint)
    from cxrkit.inference.fast_predict import load_fast, wants_fast_path

    if wants_fast_path(path, backend=backend, precision=precision, device=device, tta=tta):
        return load_fast(path, thresholds=thresholds)
    if backend == "auto":
        backend = "onnx" if path.suffix.lower() == ".onnx" else "torch"
    if backend == "onnx":
        from cxrkit.inference.onnx_backend import load_onnx

        if precision not in (None, "auto", "fp32", "onnxruntime", "openvino", "openvino-bf16"):
            raise ValueError(
                f"precision {precision!r}: the ONNX backend runs onnxruntime "
                "(auto, fp32), openvino or openvino-bf16 (use --backend torch "
                "for torch bf16)"
            )
        engine = precision if precision in ("openvino", "openvino-bf16") else "onnxruntime"
        return load_onnx(path, thresholds=thresholds, engine=engine)
    if backend != "torch":
        raise ValueError(f"backend must be auto, torch or onnx, got {backend!r}")
    if path.suffix.lower() == ".onnx":
        raise ValueError(f"{path} is an ONNX file: use --backend onnx (or auto)")
    from cxrkit.inference.core import load

    return load(path, device=device, thresholds=thresholds, precision=precision)


__all__ = [
    "DEFAULT_THRESHOLD",
    "Inputs",
    "MetadataMissingWarning",
    "NoThresholdsWarning",
    "Predictions",
    "SUPPORTED_EXTENSIONS",
    "collect_inputs",
    "load_model",
    "predict_files",
]

"""``cxrkit evaluate``: honest test numbers, written as ``metrics.json`` + tables.

One evaluation path: :func:`~cxrkit.evaluate.scoring.score` scores a table of predictions
(labels, probabilities, patients, age/sex/view) and writes the evaluation folder
(:class:`cxrkit.artefacts.EvaluationFolder`). Evaluating a run is "make predictions, then
score the table": :func:`evaluate_checkpoint` (this module) loads the run's split and
predicts (:mod:`cxrkit.inference.heldout`, :mod:`cxrkit.evaluate.predictions`), then calls
``score``; a model cxrkit did not train comes in through its predictions file
(:mod:`cxrkit.evaluate.external`) and is scored by the same ``score``, so the two cannot
drift apart.

The parts, bottom up: the metric sections (:mod:`cxrkit.evaluate.sections`:
``ranking_section``, ``threshold_section``, ``calibration_section``, ``subgroup_rows``,
``ood_section``), the honesty notes and the protocol line (:mod:`cxrkit.evaluate.notes`),
scoring and writing the folder (:mod:`cxrkit.evaluate.scoring`: ``score``,
``write_outputs``), and evaluating a checkpoint (here). Their public names are importable
from this module too, as before the split.

Honesty rules the code keeps:

* decision thresholds and the temperature are fitted on the **validation** split (a
  predictions file: on ``--fit-on`` predictions for other images, else not at all) and
  only applied to the evaluated split (never fitted on test);
* every output states its protocol (:func:`~cxrkit.evaluate.notes.protocol_line`): which
  rows were scored and how many of NIH's 25,596 official test images they are;
* confidence intervals resample **patients** (all images of a drawn patient together);
* a finding whose evaluated labels have one class has no AUROC: ``null``, never 0.5;
* the split file must be byte-identical (sha256) to the one the model was trained with,
  otherwise "test" could contain training images and the evaluation is refused;
* published numbers are shown with whether this run's test set can be set beside them.

``metrics.json`` (format ``cxrkit-eval/1``; ``source.kind`` "run" or "predictions", and
``protocol``) holds everything the report needs; undefined
values are ``null``. Reliability curves list the non-empty bins only (as scikit-learn's
``calibration_curve`` returns them). ``epoch`` is 1-based, as in the run's metrics.csv.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cxrkit.artefacts import (
    THRESHOLDS_FILE,
    EvaluationFolder,
    RunFolder,
    write_bytes,
    writes_into_run,
)
from cxrkit.data.nih import read_image_list
from cxrkit.evaluate.gallery import write_error_gallery
from cxrkit.evaluate.notes import coverage, data_source, protocol_line, scoring_notes
from cxrkit.evaluate.predictions import Predictions, predict_split
from cxrkit.evaluate.provenance import is_runs_own
from cxrkit.evaluate.published import RunProtocol
from cxrkit.evaluate.report import write_report
from cxrkit.evaluate.scoring import FORMAT, THRESHOLD_MEANING, score, write_outputs
from cxrkit.evaluate.sections import (
    AGE_BANDS,
    CALIBRATION_BINS,
    FEW_POSITIVES,
    MIN_INTERVAL_PATIENTS,
    age_band,
    calibration_section,
    ood_section,
    ranking_section,
    subgroup_rows,
    threshold_section,
)
from cxrkit.evaluate.text import format_ci
from cxrkit.evaluate.threshold_choice import THRESHOLD_METHODS, parse_method
from cxrkit.inference.core import TTA_MODES, load, write_thresholds
from cxrkit.inference.heldout import HeldOut, ensure_ood_record, load_held_out
from cxrkit.messages import count

log = logging.getLogger(__name__)


def _run_notes(*, data: HeldOut) -> list[str]:
    """Notes only a run's evaluation has: the box fold (coverage of the official list is
    the protocol line's, :func:`protocol_line`)."""
    notes = []
    if data.moved is not None:
        notes.append(
            f"The run used a box fold ({data.box_fold:g}): {len(data.moved)} test "
            f"images of {data.moved['patient_id'].nunique()} patients were moved into "
            "training and are not evaluated here."
        )
    return notes


def _check_options(split, tta, threshold_method, threshold_split, bootstrap, subgroup_bootstrap):
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    parse_method(threshold_method)
    if threshold_split not in ("train", "val"):
        raise ValueError(f"thresholds are fitted on train or val, never on {threshold_split!r}")
    if bootstrap < 1 or subgroup_bootstrap < 1:
        raise ValueError("bootstrap replicates must be >= 1")


def _ood_record(lm, data: HeldOut, prepared, *, progress: bool) -> dict | None:
    """The run's out-of-distribution record, computed now (and kept) when it has none; None
    when the run was trained without one (the user's choice) or it cannot be computed."""
    ood_record = None
    if lm.ood_record is None and not ood_record_wanted(lm):
        log.warning(
            "no out-of-distribution record: the run was trained with "
            "train.ood_record=false (`cxrkit ood RUN` adds one)"
        )
    else:
        if lm.ood_record is None:
            log.info(
                "%s has no out-of-distribution record: computing it from %s",
                lm.checkpoint.name,
                data.prepared.root,
            )
        try:
            ood_record = ensure_ood_record(lm, prepared, progress=progress)
        except ValueError as e:  # e.g. a validation split too small to calibrate on: said
            log.warning("no out-of-distribution record for %s: %s", lm.checkpoint.name, e)
    return ood_record


def _write_thresholds(
    lm, data: HeldOut, metrics: dict, folder: EvaluationFolder, *, method: str, tta: str, split: str
) -> None:
    """thresholds.json for ``cxrkit predict``: beside the checkpoint and in the evaluation
    folder when the evaluation is the run's own (:func:`is_runs_own`), else in the
    evaluation folder only, leaving the run's as it was."""
    chosen = {f: t for f, t in metrics["thresholds"]["used"].items() if t is not None}
    own = is_runs_own(
        lm.checkpoint, lm.checkpoint_info.get("config") or {}, data.prepared.root, folder.root
    )
    sidecar = write_thresholds(
        lm,
        chosen,
        method=method,
        tta=tta,
        chosen_on=f"{split} split of {data.split_path} (tta={tta})",
        provenance=metrics["thresholds"]["written"],
        path=None if own else folder.thresholds,
    )
    if own:
        write_bytes(sidecar.read_bytes(), folder.thresholds)
    else:
        log.info(
            "thresholds written to %s only: an evaluation outside the run folder or on "
            "another prepared folder leaves the run's %s as it was",
            sidecar,
            THRESHOLDS_FILE,
        )


@writes_into_run("cxrkit evaluate")
def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str = "test",
    tta: str = "none",
    out: str | Path | None = None,
    prepared: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    temperature: bool = True,
    threshold_method: str = "youden",
    threshold_split: str = "val",
    batch_size: int = 64,
    subgroup_bootstrap: int = 200,
    device: str | None = None,
    precision: str | None = None,
    progress: bool = True,
    report: bool = True,
    reference: str = "auto",
    expert_labels: str | Path | None = None,
    gallery: int = 2,
    threshold_overrides: dict[str, float] | None = None,
) -> dict:
    """Evaluate a checkpoint (or run folder) on one split; returns the ``metrics.json`` dict.

    Writes to ``out`` (default ``RUN/eval/SPLIT[-TTA]``, :meth:`RunFolder.eval`): metrics.json, auroc/thresholds/
    calibration/subgroups/published CSVs, predictions of the evaluated and threshold
    splits, and thresholds.json (also beside the checkpoint, for ``cxrkit predict``, when
    the evaluation is the run's own: :func:`~cxrkit.evaluate.provenance.is_runs_own`).
    ``precision``: how the forward passes run (:mod:`cxrkit.inference.runtime`; default auto),
    recorded in metrics.json as ``precision`` (requested, used, parity of the fast path).

    ``reference`` / ``expert_labels``: the section against Google's radiologists
    (:mod:`cxrkit.evaluate.radiologists`): ``"auto"`` when their files are found under the
    release root (or in ``expert_labels``), ``"radiologists"`` to require them, ``"nih"``
    to skip. ``gallery``: the most confident false positives and false negatives shown per
    finding (:mod:`cxrkit.evaluate.gallery`; 0: none).

    ``threshold_method`` (``youden``, ``max_f1``, ``sensitivity=T``, ``specificity=T``) and
    ``threshold_overrides`` (finding -> fixed threshold) decide ``thresholds.json``
    (:mod:`cxrkit.evaluate.threshold_choice`); each threshold records the positives it was
    fitted on, and too few are warned about.
    """
    _check_options(split, tta, threshold_method, threshold_split, bootstrap, subgroup_bootstrap)
    lm = load(checkpoint, device=device, precision=precision)
    data = load_held_out(lm, prepared)
    ood_record = _ood_record(lm, data, prepared, progress=progress)
    run_folder = RunFolder.of(lm.checkpoint)
    folder = EvaluationFolder(Path(out) if out else run_folder.eval(split, tta))
    started, cpu = time.perf_counter(), time.process_time()
    # 1. make predictions ...
    test = predict_split(lm, data, split, tta=tta, batch_size=batch_size, progress=progress)
    fit = (
        test
        if threshold_split == split
        else predict_split(
            lm, data, threshold_split, tta=tta, batch_size=batch_size, progress=progress
        )
    )
    forward_s, forward_cpu = time.perf_counter() - started, time.process_time() - cpu
    log.info(
        "forward passes: %d images in %.1f s (%.1f s CPU)",
        len(test.table) + (0 if fit is test else len(fit.table)),
        forward_s,
        forward_cpu,
    )
    # 2. ... then score the table, as for any model's predictions file
    source = data_source(data.prepared.info)
    header = _run_header(lm, data, split, tta, run_folder, test, nih=source == "nih")
    after = []
    if tta != "none":
        after.append(
            f"Test-time augmentation '{tta}': logits averaged over views; thresholds "
            f"in thresholds.json were chosen with the same TTA."
        )
    if lm.tta_note(tta):
        after.append(f"Warning: {lm.tta_note(tta)}")
    metrics = score(
        test,
        fit,
        lm.findings,
        folder.root,
        header=header,
        run=RunProtocol(
            data=source,
            protocol=data.protocol,
            split=split,
            n_images=len(test.table),
            box_fold=data.box_fold,
        ),
        fit_split=threshold_split,
        bootstrap=bootstrap,
        subgroup_bootstrap=subgroup_bootstrap,
        seed=seed,
        temperature=temperature,
        notes=(_run_notes(data=data), after),
        expert_source=data.prepared.info,
        reference=reference,
        expert_labels=expert_labels,
        ood_record=ood_record,
        threshold_method=threshold_method,
        threshold_overrides=threshold_overrides,
    )
    log.info(
        "metrics: %.1f s after the forward passes (%.1f s CPU)",
        time.perf_counter() - started - forward_s,
        time.process_time() - cpu - forward_cpu,
    )
    if gallery:
        write_error_gallery(
            lm, data, test, metrics, folder.root, per_kind=gallery, progress=progress
        )
    _write_thresholds(
        lm, data, metrics, folder, method=threshold_method, tta=tta, split=threshold_split
    )
    log.info(
        "evaluated %s on %s: mean AUROC %s, %s flagged out-of-distribution; wrote %s",
        lm.checkpoint.name,
        count(len(test.table), f"{split} image"),
        format_ci(metrics["mean_auroc"], 4),
        metrics["ood"]["n_flagged"] if metrics["ood"] else "none",
        folder.root,
    )
    if report:
        _report(folder, run_folder.root)
    return metrics


def _run_header(
    lm, data: HeldOut, split: str, tta: str, run_folder: RunFolder, test: Predictions, *, nih: bool
) -> dict:
    """What made a run's predictions: checkpoint, data, split, protocol (``metrics.json``)."""
    files = data.prepared.info.get("files") or {}
    cov = coverage(
        test.table["image_id"], *(_read_list(files.get(k)) for k in ("test", "train_val")), nih=nih
    )
    config = lm.checkpoint_info.get("config") or {}
    epoch = lm.checkpoint_info.get("epoch")
    return {
        "source": {"kind": "run"},
        "checkpoint": str(lm.checkpoint),
        "checkpoint_sha256": lm.checkpoint_sha256,
        "run_dir": str(run_folder.root),
        "prepared": str(data.prepared.root),
        "split": split,
        "split_file": str(data.split_path),
        "split_protocol": data.protocol,
        "tta": tta,
        "precision": lm.precision,
        "tta_mirror": _tta_mirror(lm, tta),
        "model": (config.get("model") or {}).get("name", type(lm.model).__name__),
        "epoch": None if epoch is None else int(epoch) + 1,
        "protocol": {
            "rows": "split",
            "coverage": cov,
            "line": protocol_line(
                "split",
                cov,
                split_text=f"the {split} split of {data.split_path.name} ({data.protocol})",
            ),
        },
    }


def _read_list(path) -> list[str] | None:
    return read_image_list(path) if path and Path(path).exists() else None


def _report(out: EvaluationFolder, run_dir: Path | None) -> Path:
    started, cpu = time.perf_counter(), time.process_time()
    html = write_report(out.root, run_dir)
    log.info(
        "report: %s (%.1f MB) in %.1f s (%.1f s CPU)",
        html,
        Path(html).stat().st_size / 1e6,
        time.perf_counter() - started,
        time.process_time() - cpu,
    )
    return html


def ood_record_wanted(lm) -> bool:
    """False when the run was trained with ``train.ood_record=false`` (the user's choice
    to go without one is kept: evaluate does not compute it behind their back)."""
    train = (lm.checkpoint_info.get("config") or {}).get("train") or {}
    return bool(train.get("ood_record", True))


def _tta_mirror(lm, tta: str) -> dict:
    """What ``metrics.json`` records about mirrored test-time views (see
    :func:`cxrkit.data.preprocessing.mirrored_tta_note`: cxrkit warns, it does not refuse)."""
    mirrored = tta in ("flip", "tencrop")
    note = lm.tta_note(tta)
    return {
        "mirrored_views": mirrored,
        "trained_with_hflip": lm.preprocessing.hflip,
        "decision": "warned: model trained without flips"
        if note
        else (
            "consistent: model trained with flips"
            if mirrored and lm.preprocessing.hflip
            else "no mirrored views"
            if not mirrored
            else "unknown training flips"
        ),
        "note": note,
    }


__all__ = [
    "AGE_BANDS",
    "CALIBRATION_BINS",
    "FEW_POSITIVES",
    "FORMAT",
    "MIN_INTERVAL_PATIENTS",
    "THRESHOLD_MEANING",
    "THRESHOLD_METHODS",
    "age_band",
    "calibration_section",
    "coverage",
    "data_source",
    "evaluate_checkpoint",
    "ood_section",
    "protocol_line",
    "ranking_section",
    "score",
    "scoring_notes",
    "subgroup_rows",
    "threshold_section",
    "write_outputs",
]

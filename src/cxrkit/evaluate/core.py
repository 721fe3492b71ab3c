"""``cxrkit evaluate``: a checkpoint's honest test numbers, written as ``metrics.json`` + tables.

Reads top to bottom: the metric sections
(:func:`ranking_section`, :func:`threshold_section`, :func:`calibration_section`,
:func:`subgroup_rows`), the honesty notes, :func:`write_outputs`, and
:func:`evaluate_checkpoint`, which first loads the run's split and predicts
(:mod:`cxrkit.inference.heldout`, :mod:`cxrkit.evaluate.predictions`), then runs them.

Honesty rules the code keeps:

* decision thresholds and the temperature are fitted on the **validation** split and only
  applied to the evaluated split (never fitted on test);
* confidence intervals resample **patients** (all images of a drawn patient together);
* a finding whose evaluated labels have one class has no AUROC: ``null``, never 0.5;
* the split file must be byte-identical (sha256) to the one the model was trained with,
  otherwise "test" could contain training images and the evaluation is refused;
* published numbers are shown with whether this run's test set can be set beside them.

``metrics.json`` (format ``cxrkit-eval/1``) holds everything the report needs; undefined
values are ``null``. Reliability curves list the non-empty bins only (as scikit-learn's
``calibration_curve`` returns them). ``epoch`` is 1-based, as in the run's metrics.csv.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import (RunFolder, jsonable, make_folder, versions, write_bytes, write_csv,
                              THRESHOLDS_FILE, write_json, writes_into_run)
from cxrkit.artefacts import finite_or_none as _f
from cxrkit.data.prepare import Prepared
from cxrkit.evaluate.predictions import Predictions, predict_split, predictions_frame
from cxrkit.evaluate.gallery import write_error_gallery
from cxrkit.evaluate.radiologists import evaluate_against_radiologists
from cxrkit.evaluate.published import (
    NIH_LABEL_ROWS,
    OFFICIAL_TEST_IMAGES,
    RunProtocol,
    published_rows,
)
from cxrkit.evaluate.report import write_report
from cxrkit.evaluate.provenance import is_runs_own
from cxrkit.inference.heldout import HeldOut, ensure_ood_record, load_held_out
from cxrkit.inference.core import TTA_MODES, load, write_thresholds
from cxrkit.metrics import (
    bootstrap_ci,
    bootstrap_mean,
    bootstrap_ranking,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    max_f1_threshold,
    mean_defined,
    reliability_curve,
    sigmoid,
    threshold_metrics,
    youden_threshold,
)

log = logging.getLogger(__name__)

FORMAT = "cxrkit-eval/1"
THRESHOLD_METHODS = ("youden", "max_f1")
CALIBRATION_BINS = 10
#: (lower bound inclusive, upper bound exclusive, label) in years.
AGE_BANDS = ((0, 20, "<20"), (20, 40, "20-39"), (40, 60, "40-59"), (60, 80, "60-79"),
             (80, 121, "80+"))
#: Fewer positives than this in the evaluated split earns a small-sample note.
FEW_POSITIVES = 10
THRESHOLD_MEANING = ("a finding is called present when its probability (sigmoid of the "
                     "model's logit, before temperature scaling) is >= its threshold")


# -- metric sections ----------------------------------------------------------------------
def _counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (labels == 1).sum(0).astype(int), (labels == 0).sum(0).astype(int)


def ranking_section(pred: Predictions, findings, *, n: int, seed: int, level: float = 0.95):
    """AUROC and AUPRC per finding with patient-bootstrap CIs, and the mean AUROC."""
    roc, prc = bootstrap_ranking(pred.labels, pred.probs, pred.patients, n=n, seed=seed,
                                 level=level)
    pos, neg = _counts(pred.labels)
    auroc = {f: {"value": _f(roc.value[j]), "lo": _f(roc.lo[j]), "hi": _f(roc.hi[j]),
                 "positives": int(pos[j]), "negatives": int(neg[j])}
             for j, f in enumerate(findings)}
    auprc = {f: {"value": _f(prc.value[j]), "lo": _f(prc.lo[j]), "hi": _f(prc.hi[j]),
                 "prevalence": _f(pos[j] / (pos[j] + neg[j]) if pos[j] + neg[j] else None)}
             for j, f in enumerate(findings)}
    m = bootstrap_mean(roc)
    mean = {"value": _f(m["value"]), "lo": _f(m["lo"]), "hi": _f(m["hi"]),
            "defined": m["defined"],
            "undefined": [f for j, f in enumerate(findings) if np.isnan(roc.value[j])]}
    return auroc, auprc, mean


def threshold_section(fit: Predictions, test: Predictions, findings) -> tuple[dict, dict]:
    """Thresholds chosen on ``fit`` (validation) per method, and their metrics on ``test``."""
    choose = {"youden": youden_threshold, "max_f1": max_f1_threshold}
    thresholds: dict = {}
    applied: dict = {}
    for method, fn in choose.items():
        thresholds[method] = {f: _f(fn(fit.labels[:, j], fit.probs[:, j]))
                              for j, f in enumerate(findings)}
        applied[method] = {}
        for j, f in enumerate(findings):
            t = thresholds[method][f]
            m = threshold_metrics(test.labels[:, j], test.probs[:, j],
                                  float("nan") if t is None else t)
            applied[method][f] = {k: v if isinstance(v, int) else _f(v) for k, v in m.items()}
    return thresholds, applied


def _calibration(labels: np.ndarray, probs: np.ndarray, findings) -> dict:
    cols = range(len(findings))
    brier = np.array([brier_score(labels[:, j], probs[:, j]) for j in cols])
    ece = np.array([expected_calibration_error(labels[:, j], probs[:, j], CALIBRATION_BINS)
                    for j in cols])
    return {"brier": dict(zip(findings, map(_f, brier), strict=True)),
            "ece": dict(zip(findings, map(_f, ece), strict=True)),
            "mean_brier": _f(mean_defined(brier)), "mean_ece": _f(mean_defined(ece))}


def calibration_section(fit: Predictions, test: Predictions, findings, *,
                        temperature: bool = True) -> dict:
    """Brier, ECE and reliability on ``test``; temperature fitted on ``fit``, before/after."""
    before = _calibration(test.labels, test.probs, findings)
    out = {"bins": CALIBRATION_BINS, **before, "temperature": None, "after_temperature": None,
           "reliability": {f: reliability_curve(test.labels[:, j], test.probs[:, j],
                                                CALIBRATION_BINS)
                           for j, f in enumerate(findings)}}
    if temperature:
        t = fit_temperature(fit.logits, fit.labels)
        if math.isfinite(t):
            out["temperature"] = t
            out["after_temperature"] = _calibration(test.labels, sigmoid(test.logits / t),
                                                    findings)
    return out


def age_band(age) -> pd.Series:
    """Age in years -> band label (:data:`AGE_BANDS`); NaN for missing or impossible ages."""
    age = pd.to_numeric(pd.Series(age), errors="coerce")
    out = pd.Series(np.nan, index=age.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        out[(age >= lo) & (age < hi)] = name
    return out


def subgroup_rows(pred: Predictions, findings, *, n: int, seed: int) -> list[dict]:
    """Per-finding AUROC with patient-bootstrap CI in each sex, age band and view."""
    attributes = {"sex": (pred.table["sex"], ("M", "F")),
                  "age_band": (age_band(pred.table["age"]), [b[2] for b in AGE_BANDS]),
                  "view": (pred.table["view"], ("PA", "AP"))}
    rows = []
    for attribute, (values, groups) in attributes.items():
        values = values.to_numpy()
        for group in groups:
            rows_in = np.flatnonzero(values == group)
            if len(rows_in) == 0:
                continue
            y, p = pred.labels[rows_in], pred.probs[rows_in]
            ci = bootstrap_ci(y, p, pred.patients[rows_in], "auroc", n=n, seed=seed)
            pos, neg = _counts(y)
            for j, f in enumerate(findings):
                rows.append({"attribute": attribute, "group": group, "finding": f,
                             "n": int(pos[j] + neg[j]), "positives": int(pos[j]),
                             "auroc": _f(ci.value[j]), "lo": _f(ci.lo[j]), "hi": _f(ci.hi[j])})
    return rows


def ood_section(pred: Predictions, findings, record: dict) -> dict:
    """How many evaluated images the OOD score flags, and the mean AUROC with and without
    them (per finding too): a model should not be judged on images it calls foreign, and a
    flag that removes mostly hard cases would show here as a jump."""
    from cxrkit.metrics import auroc_per_finding
    from cxrkit.ood import record_summary

    flag: np.ndarray = pred.ood_flag  # type: ignore[assignment]  # the caller checks ood_score is not None
    keep = ~flag
    all_auc = auroc_per_finding(pred.labels, pred.probs)
    kept_auc = (auroc_per_finding(pred.labels[keep], pred.probs[keep]) if keep.sum() >= 2
                else np.full(len(findings), np.nan))
    return {"n_images": int(len(flag)), "n_flagged": int(flag.sum()),
            "fraction_flagged": _f(flag.mean()) if len(flag) else None,
            "flagged_images": pred.table.loc[flag, "image_id"].tolist()[:200],
            "score_quantiles": {q: _f(np.percentile(pred.ood_score, float(q)))  # type: ignore[arg-type]
                                for q in ("50", "90", "99")},
            "mean_auroc_all": _f(mean_defined(all_auc)),
            "mean_auroc_without_flagged": _f(mean_defined(kept_auc)),
            "auroc_all": dict(zip(findings, map(_f, all_auc), strict=True)),
            "auroc_without_flagged": dict(zip(findings, map(_f, kept_auc), strict=True)),
            "record": record_summary(record)}


# -- provenance and notes -----------------------------------------------------------------
def data_source(prepared: Prepared) -> str:
    """"phantom" (synthetic release), "nih" (the full NIH label file) or "other"."""
    info = prepared.info
    if info.get("phantom"):
        return "phantom"
    root = info.get("release_root")
    if root and (Path(root) / "phantoms_manifest.json").exists():
        return "phantom"
    rows = (info.get("label_report") or {}).get("n_images")
    return "nih" if rows == NIH_LABEL_ROWS else "other"


def _notes(*, source: str, split: str, fit_split: str, data: HeldOut, mean: dict,
           auroc: dict, bootstrap: int, calibration: dict, test: Predictions,
           tta: str) -> list[str]:
    notes = []
    if source == "phantom":
        notes.append("Phantom (synthetic) images: these numbers test the pipeline and say "
                     "nothing about performance on real chest X-rays.")
    elif source == "other":
        notes.append("The labels are not the full NIH label file (112,120 rows), so the test "
                     "set is not NIH's; published numbers are not comparable.")
    n = len(test.table)
    if (source == "nih" and data.protocol == "official" and split == "test"
            and data.moved is None and n != OFFICIAL_TEST_IMAGES):
        notes.append(f"Only {n:,} of the {OFFICIAL_TEST_IMAGES:,} official test images are in "
                     "the cache, so this is not the official test set: published numbers "
                     "are not comparable.")
    if mean["undefined"]:
        notes.append(f"AUROC undefined (one class among the evaluated labels) for: "
                     f"{', '.join(mean['undefined'])}; they are null and left out of the mean "
                     f"({mean['defined']} findings averaged).")
    few = [f"{f} ({v['positives']})" for f, v in auroc.items()
           if v["value"] is not None and v["positives"] < FEW_POSITIVES]
    if few:
        notes.append(f"Fewer than {FEW_POSITIVES} positive images for: {', '.join(few)}; "
                     "their AUROCs are noisy (see the intervals).")
    thin = [f for f, v in auroc.items() if v["value"] is not None and v["lo"] is None]
    if thin:
        notes.append(f"No confidence interval for {', '.join(thin)}: fewer than half of the "
                     f"{bootstrap} patient resamples contained both classes.")
    if mean["value"] is not None and mean["lo"] is None:
        notes.append("No confidence interval for the mean AUROC: fewer than half of the "
                     "patient resamples had both classes for every finding in the mean.")
    if data.moved is not None:
        notes.append(f"The run used a box fold ({data.box_fold:g}): {len(data.moved)} test "
                     f"images of {data.moved['patient_id'].nunique()} patients were moved into "
                     "training and are not evaluated here.")
    if split == fit_split:
        notes.append(f"Thresholds and temperature were fitted on the evaluated split "
                     f"({split}) itself: threshold metrics and calibration after temperature "
                     "are optimistic.")
    else:
        notes.append(f"Thresholds and temperature were fitted on the {fit_split} split only "
                     f"and applied unchanged to {split}.")
    if fit_split == "train":
        notes.append("Thresholds and temperature were fitted on training images, which the "
                     "model has learned: expect them to be off on new images (use val).")
    t = calibration.get("temperature")
    if t is not None and not 0.06 < t < 19.0:
        notes.append(f"The fitted temperature ({t:.3g}) is at its search bound; calibration "
                     "after temperature scaling is unreliable.")
    no_band = int(age_band(test.table["age"]).isna().sum())
    if no_band:
        notes.append(f"{no_band} images have a missing or impossible age (over 120) and are "
                     "in no age-band subgroup.")
    unknown = int(np.isnan(test.labels).sum())
    if unknown:
        notes.append(f"{unknown} unknown labels (NaN) were left out per finding.")
    if tta != "none":
        notes.append(f"Test-time augmentation '{tta}': logits averaged over views; thresholds "
                     f"in thresholds.json were chosen with the same TTA.")
    notes.append("Intervals: percentile bootstrap over patients (all images of a drawn "
                 f"patient together), {bootstrap} resamples, 95%.")
    return notes


# -- outputs ------------------------------------------------------------------------------
def _tables(metrics: dict) -> dict[str, pd.DataFrame]:
    findings = metrics["findings"]
    auroc = pd.DataFrame([{
        "finding": f, "auroc": metrics["auroc"][f]["value"], "auroc_lo": metrics["auroc"][f]["lo"],
        "auroc_hi": metrics["auroc"][f]["hi"], "auprc": metrics["auprc"][f]["value"],
        "auprc_lo": metrics["auprc"][f]["lo"], "auprc_hi": metrics["auprc"][f]["hi"],
        "positives": metrics["auroc"][f]["positives"],
        "negatives": metrics["auroc"][f]["negatives"]} for f in findings])
    thresholds = pd.DataFrame([{"method": m, "finding": f, **metrics["threshold_metrics"][m][f]}
                               for m in THRESHOLD_METHODS for f in findings])
    for col in ("tp", "fp", "tn", "fn"):
        thresholds[col] = thresholds[col].astype("Int64")   # counts; empty when undefined
    cal = metrics["calibration"]
    after = cal["after_temperature"] or {"brier": {}, "ece": {}}
    calibration = pd.DataFrame([{
        "finding": f, "brier": cal["brier"][f], "ece": cal["ece"][f],
        "brier_after_temperature": after["brier"].get(f),
        "ece_after_temperature": after["ece"].get(f),
        "temperature": cal["temperature"]} for f in findings])
    subgroups = pd.DataFrame(metrics["subgroups"], columns=["attribute", "group", "finding", "n",
                                                            "positives", "auroc", "lo", "hi"])
    published = pd.DataFrame(metrics["published"], columns=["finding", "source", "auroc", "split",
                                                            "protocol", "comparable", "note"])
    published.insert(3, "this_run_auroc", [metrics["auroc"].get(f, {}).get("value")
                                           for f in published["finding"]])
    return {"auroc.csv": auroc, "thresholds.csv": thresholds, "calibration.csv": calibration,
            "subgroups.csv": subgroups, "published.csv": published}


def write_outputs(out: Path, metrics: dict, preds: list[Predictions]) -> dict:
    """metrics.json, the CSV tables and predictions_<split>.csv, each written atomically.

    Returns ``metrics`` as written (plain JSON types, ``None`` for undefined values).
    """
    metrics = jsonable(metrics)
    make_folder(out)
    for pred in preds:
        write_csv(predictions_frame(pred, metrics["findings"]),
                         out / f"predictions_{pred.split}.csv")
    for name, table in _tables(metrics).items():
        write_csv(table, out / name)
    write_json(metrics, out / "metrics.json")
    return metrics


# -- the whole evaluation -----------------------------------------------------------------
def _check_options(split, tta, threshold_method, threshold_split, bootstrap, subgroup_bootstrap):
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if threshold_method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be youden or max_f1, got {threshold_method!r}")
    if threshold_split not in ("train", "val"):
        raise ValueError(f"thresholds are fitted on train or val, never on {threshold_split!r}")
    if bootstrap < 1 or subgroup_bootstrap < 1:
        raise ValueError("bootstrap replicates must be >= 1")


@writes_into_run("cxrkit evaluate")
def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", tta: str = "none",
                        out: str | Path | None = None, prepared: str | Path | None = None,
                        bootstrap: int = 1000, seed: int = 0, temperature: bool = True,
                        threshold_method: str = "youden", threshold_split: str = "val",
                        batch_size: int = 64, subgroup_bootstrap: int = 200,
                        device: str | None = None, precision: str | None = None,
                        progress: bool = True,
                        report: bool = True, reference: str = "auto",
                        expert_labels: str | Path | None = None,
                        gallery: int = 2) -> dict:
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
    """
    _check_options(split, tta, threshold_method, threshold_split, bootstrap, subgroup_bootstrap)
    lm = load(checkpoint, device=device, precision=precision)
    findings = list(lm.findings)
    data = load_held_out(lm, prepared)
    if lm.ood_record is None:
        log.info("%s has no out-of-distribution record: computing it from %s",
                 lm.checkpoint.name, data.prepared.root)
    try:
        ood_record = ensure_ood_record(lm, prepared, progress=progress)
    except ValueError as e:   # e.g. a validation split too small to calibrate on: said, kept
        log.warning("no out-of-distribution record for %s: %s", lm.checkpoint.name, e)
        ood_record = None
    run_folder = RunFolder.of(lm.checkpoint)
    out = Path(out) if out else run_folder.eval(split, tta)
    started, cpu = time.perf_counter(), time.process_time()
    test = predict_split(lm, data, split, tta=tta, batch_size=batch_size, progress=progress)
    fit = test if threshold_split == split else predict_split(
        lm, data, threshold_split, tta=tta, batch_size=batch_size, progress=progress)
    forward_s, forward_cpu = time.perf_counter() - started, time.process_time() - cpu
    log.info("forward passes: %d images in %.1f s (%.1f s CPU)", len(test.table) + (
        0 if fit is test else len(fit.table)), forward_s, forward_cpu)

    auroc, auprc, mean = ranking_section(test, findings, n=bootstrap, seed=seed)
    thresholds, applied = threshold_section(fit, test, findings)
    calibration = calibration_section(fit, test, findings, temperature=temperature)
    subgroups = subgroup_rows(test, findings, n=subgroup_bootstrap, seed=seed)
    source = data_source(data.prepared)
    run = RunProtocol(data=source, protocol=data.protocol, split=split, n_images=len(test.table),
                      box_fold=data.box_fold)
    config = lm.checkpoint_info.get("config") or {}
    epoch = lm.checkpoint_info.get("epoch")
    metrics = {
        "format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions("scikit-learn"),
        "checkpoint": str(lm.checkpoint),
        "checkpoint_sha256": lm.checkpoint_sha256, "run_dir": str(run_folder.root),
        "prepared": str(data.prepared.root), "split": split, "split_file": str(data.split_path),
        "split_protocol": data.protocol, "tta": tta,
        "precision": lm.precision, "tta_mirror": _tta_mirror(lm, tta),
        "n_images": len(test.table),
        "n_patients": int(test.table["patient_id"].nunique()), "findings": findings,
        "model": (config.get("model") or {}).get("name", type(lm.model).__name__),
        "epoch": None if epoch is None else int(epoch) + 1,
        "bootstrap": {"replicates": bootstrap, "unit": "patient", "seed": seed, "level": 0.95},
        "auroc": auroc, "auprc": auprc, "mean_auroc": mean,
        "thresholds": {"chosen_on": threshold_split, **thresholds, "meaning": THRESHOLD_MEANING},
        "threshold_metrics": applied, "calibration": calibration, "subgroups": subgroups,
        "ood": (ood_section(test, findings, ood_record)
                if ood_record is not None and test.ood_score is not None else None),
        "published": published_rows(findings, run),
        "notes": _notes(source=source, split=split, fit_split=threshold_split, data=data,
                        mean=mean, auroc=auroc, bootstrap=bootstrap,
                        calibration=calibration, test=test, tta=tta)
        + ([f"Warning: {lm.tta_note(tta)}"] if lm.tta_note(tta) else []),
    }
    against = evaluate_against_radiologists(
        data.prepared, test, fit, findings, out, split=split, fit_split=threshold_split,
        reference=reference, expert_dir=expert_labels, n=bootstrap, seed=seed,
        phantom=source == "phantom")
    if against is not None:
        metrics["notes"].append("Against radiologists: see radiologists.json and the report's "
                                "section of that name (Google's expert labels on "
                                + ", ".join(f"{r['images_in_split']:,} {k} images"
                                            for k, r in against["sets"].items()) + ").")
    metrics = write_outputs(out, metrics, [test] if fit is test else [test, fit])
    if gallery:
        write_error_gallery(lm, data, test, metrics, out, per_kind=gallery, progress=progress)
    chosen = {f: t for f, t in thresholds[threshold_method].items() if t is not None}
    own = is_runs_own(lm.checkpoint, config, data.prepared.root, out)
    sidecar = write_thresholds(lm, chosen, method=threshold_method, tta=tta,
                               chosen_on=f"{threshold_split} split of {data.split_path} "
                                         f"(tta={tta})",
                               path=None if own else out / THRESHOLDS_FILE)
    if own:
        write_bytes(sidecar.read_bytes(), out / sidecar.name)
    else:
        log.info("thresholds written to %s only: an evaluation outside the run folder or on "
                 "another prepared folder leaves the run's %s as it was", sidecar,
                 THRESHOLDS_FILE)
    log.info("evaluated %s on %d %s images: mean AUROC %s, %s flagged out-of-distribution; "
             "wrote %s", lm.checkpoint.name, len(test.table), split, _fmt(mean),
             metrics["ood"]["n_flagged"] if metrics["ood"] else "none", out)
    log.info("metrics: %.1f s after the forward passes (%.1f s CPU)",
             time.perf_counter() - started - forward_s, time.process_time() - cpu - forward_cpu)
    if report:
        started, cpu = time.perf_counter(), time.process_time()
        html = write_report(out, run_folder.root)
        log.info("report: %s (%.1f MB) in %.1f s (%.1f s CPU)", html,
                 Path(html).stat().st_size / 1e6, time.perf_counter() - started,
                 time.process_time() - cpu)
    return metrics


def _tta_mirror(lm, tta: str) -> dict:
    """What ``metrics.json`` records about mirrored test-time views (see
    :func:`cxrkit.data.preprocessing.mirrored_tta_note`: cxrkit warns, it does not refuse)."""
    mirrored = tta in ("flip", "tencrop")
    note = lm.tta_note(tta)
    return {"mirrored_views": mirrored, "trained_with_hflip": lm.preprocessing.hflip,
            "decision": "warned: model trained without flips" if note
            else ("consistent: model trained with flips" if mirrored and lm.preprocessing.hflip
                  else "no mirrored views" if not mirrored else "unknown training flips"),
            "note": note}


def _fmt(m: dict) -> str:
    if m["value"] is None:
        return "undefined"
    ci = f" [{m['lo']:.3f}, {m['hi']:.3f}]" if m["lo"] is not None else ""
    return f"{m['value']:.4f}{ci}"


__all__ = ["FORMAT", "THRESHOLD_METHODS", "age_band", "ood_section", "calibration_section", "data_source",
           "evaluate_checkpoint", "ranking_section", "subgroup_rows",
           "threshold_section", "write_outputs"]

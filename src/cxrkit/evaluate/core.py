"""``cxrkit evaluate``: honest test numbers, written as ``metrics.json`` + tables.

One evaluation path: :func:`score` scores a table of predictions (labels, probabilities,
patients, age/sex/view) and writes the evaluation folder
(:class:`cxrkit.artefacts.EvaluationFolder`). Evaluating a run is "make predictions, then
score the table": :func:`evaluate_checkpoint` loads the run's split and predicts
(:mod:`cxrkit.inference.heldout`, :mod:`cxrkit.evaluate.predictions`), then calls
:func:`score`; a model cxrkit did not train comes in through its predictions file
(:mod:`cxrkit.evaluate.external`) and is scored by the same :func:`score`, so the two
cannot drift apart.

Reads top to bottom: the metric sections
(:func:`ranking_section`, :func:`threshold_section`, :func:`calibration_section`,
:func:`subgroup_rows`), the honesty notes and the protocol line, :func:`write_outputs`,
:func:`score`, and :func:`evaluate_checkpoint`.

Honesty rules the code keeps:

* decision thresholds and the temperature are fitted on the **validation** split (a
  predictions file: on ``--fit-on`` predictions for other images, else not at all) and
  only applied to the evaluated split (never fitted on test);
* every output states its protocol (:func:`protocol_line`): which rows were scored and
  how many of NIH's 25,596 official test images they are;
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
import math
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import (
    THRESHOLDS_FILE,
    EvaluationFolder,
    RunFolder,
    jsonable,
    make_folder,
    versions,
    write_bytes,
    write_csv,
    write_json,
    writes_into_run,
)
from cxrkit.artefacts import finite_or_none as _f
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
from cxrkit.evaluate.threshold_choice import (
    THRESHOLD_METHODS,
    ThresholdChoice,
    choose_thresholds,
    fit_threshold,
    parse_method,
)
from cxrkit.evaluate.text import format_ci
from cxrkit.data.nih import read_image_list
from cxrkit.evaluate.provenance import is_runs_own
from cxrkit.inference.core import TTA_MODES, load, write_thresholds
from cxrkit.inference.heldout import HeldOut, ensure_ood_record, load_held_out
from cxrkit.messages import count
from cxrkit.metrics import (
    bootstrap_ci,
    bootstrap_mean,
    bootstrap_ranking,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    mean_defined,
    reliability_curve,
    sigmoid,
    threshold_metrics,
)

log = logging.getLogger(__name__)

FORMAT = "cxrkit-eval/1"
CALIBRATION_BINS = 10
#: (lower bound inclusive, upper bound exclusive, label) in years.
AGE_BANDS = (
    (0, 20, "<20"),
    (20, 40, "20-39"),
    (40, 60, "40-59"),
    (60, 80, "60-79"),
    (80, 121, "80+"),
)
#: Fewer positives than this in the evaluated split earns a small-sample note; a subgroup
#: AUROC resting on fewer positive *patients* than this is marked "caution" (greyed).
FEW_POSITIVES = 10
#: A subgroup AUROC with fewer positive patients than this gets no interval: a patient
#: bootstrap of one to four positive patients only reshuffles the same few images, and
#: its interval looks tight (Hernia, sex M: [0.843, 0.913] from one positive image).
MIN_INTERVAL_PATIENTS = 5
THRESHOLD_MEANING = (
    "a finding is called present when its probability (sigmoid of the "
    "model's logit, before temperature scaling) is >= its threshold"
)


# -- metric sections ----------------------------------------------------------------------
def _counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (labels == 1).sum(0).astype(int), (labels == 0).sum(0).astype(int)


def ranking_section(pred: Predictions, findings, *, n: int, seed: int, level: float = 0.95):
    """AUROC and AUPRC per finding with patient-bootstrap CIs, and the mean AUROC."""
    roc, prc = bootstrap_ranking(
        pred.labels, pred.probs, pred.patients, n=n, seed=seed, level=level
    )
    pos, neg = _counts(pred.labels)
    auroc = {
        f: {
            "value": _f(roc.value[j]),
            "lo": _f(roc.lo[j]),
            "hi": _f(roc.hi[j]),
            "positives": int(pos[j]),
            "negatives": int(neg[j]),
        }
        for j, f in enumerate(findings)
    }
    auprc = {
        f: {
            "value": _f(prc.value[j]),
            "lo": _f(prc.lo[j]),
            "hi": _f(prc.hi[j]),
            "prevalence": _f(pos[j] / (pos[j] + neg[j]) if pos[j] + neg[j] else None),
        }
        for j, f in enumerate(findings)
    }
    m = bootstrap_mean(roc)
    mean = {
        "value": _f(m["value"]),
        "lo": _f(m["lo"]),
        "hi": _f(m["hi"]),
        "defined": m["defined"],
        "undefined": [f for j, f in enumerate(findings) if np.isnan(roc.value[j])],
    }
    return auroc, auprc, mean


def threshold_section(
    fit: Predictions, test: Predictions, findings, used: ThresholdChoice | None = None
) -> tuple[dict, dict]:
    """Thresholds chosen on ``fit`` (validation) per method, and their metrics on ``test``;
    ``used``: the thresholds written for predict (:mod:`cxrkit.evaluate.threshold_choice`),
    applied too, as ``"used"``."""
    thresholds: dict = {}
    applied: dict = {}
    for method in THRESHOLD_METHODS:
        thresholds[method] = {
            f: _f(fit_threshold(fit.labels[:, j], fit.probs[:, j], method))
            for j, f in enumerate(findings)
        }
    if used is not None:
        thresholds["used"] = used.values
    for method in thresholds:
        applied[method] = {}
        for j, f in enumerate(findings):
            t = thresholds[method][f]
            m = threshold_metrics(
                test.labels[:, j], test.probs[:, j], float("nan") if t is None else t
            )
            applied[method][f] = {k: v if isinstance(v, int) else _f(v) for k, v in m.items()}
    return thresholds, applied


def _calibration(labels: np.ndarray, probs: np.ndarray, findings) -> dict:
    cols = range(len(findings))
    brier = np.array([brier_score(labels[:, j], probs[:, j]) for j in cols])
    ece = np.array(
        [expected_calibration_error(labels[:, j], probs[:, j], CALIBRATION_BINS) for j in cols]
    )
    return {
        "brier": dict(zip(findings, map(_f, brier), strict=True)),
        "ece": dict(zip(findings, map(_f, ece), strict=True)),
        "mean_brier": _f(mean_defined(brier)),
        "mean_ece": _f(mean_defined(ece)),
    }


def calibration_section(
    fit: Predictions, test: Predictions, findings, *, temperature: bool = True
) -> dict:
    """Brier, ECE and reliability on ``test``; temperature fitted on ``fit``, before/after."""
    before = _calibration(test.labels, test.probs, findings)
    out = {
        "bins": CALIBRATION_BINS,
        **before,
        "temperature": None,
        "after_temperature": None,
        "reliability": {
            f: reliability_curve(test.labels[:, j], test.probs[:, j], CALIBRATION_BINS)
            for j, f in enumerate(findings)
        },
    }
    if temperature:
        t = fit_temperature(fit.logits, fit.labels)
        if math.isfinite(t):
            out["temperature"] = t
            out["after_temperature"] = _calibration(test.labels, sigmoid(test.logits / t), findings)
    return out


def age_band(age) -> pd.Series:
    """Age in years -> band label (:data:`AGE_BANDS`); NaN for missing or impossible ages."""
    age = pd.to_numeric(pd.Series(age), errors="coerce")
    out = pd.Series(np.nan, index=age.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        out[(age >= lo) & (age < hi)] = name
    return out


def subgroup_rows(pred: Predictions, findings, *, n: int, seed: int) -> list[dict]:
    """Per-finding AUROC with patient-bootstrap CI in each sex, age band and view.

    Each row counts its positive images and the patients they belong to; with fewer than
    :data:`MIN_INTERVAL_PATIENTS` positive patients the interval is left out (None), and
    with fewer than :data:`FEW_POSITIVES` the row is marked ``caution``, as the main
    table's notes do for findings."""
    attributes = {
        "sex": (pred.table["sex"], ("M", "F")),
        "age_band": (age_band(pred.table["age"]), [b[2] for b in AGE_BANDS]),
        "view": (pred.table["view"], ("PA", "AP")),
    }
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
            patients = pred.patients[rows_in]
            for j, f in enumerate(findings):
                pos_patients = int(len(np.unique(patients[y[:, j] == 1])))
                interval = pos_patients >= MIN_INTERVAL_PATIENTS
                rows.append(
                    {
                        "attribute": attribute,
                        "group": group,
                        "finding": f,
                        "n": int(pos[j] + neg[j]),
                        "positives": int(pos[j]),
                        "positive_patients": pos_patients,
                        "auroc": _f(ci.value[j]),
                        "lo": _f(ci.lo[j]) if interval else None,
                        "hi": _f(ci.hi[j]) if interval else None,
                        "caution": pos_patients < FEW_POSITIVES,
                    }
                )
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
    kept_auc = (
        auroc_per_finding(pred.labels[keep], pred.probs[keep])
        if keep.sum() >= 2
        else np.full(len(findings), np.nan)
    )
    return {
        "n_images": int(len(flag)),
        "n_flagged": int(flag.sum()),
        "fraction_flagged": _f(flag.mean()) if len(flag) else None,
        "flagged_images": pred.table.loc[flag, "image_id"].tolist()[:200],
        "score_quantiles": {
            q: _f(np.percentile(pred.ood_score, float(q)))  # type: ignore[arg-type]
            for q in ("50", "90", "99")
        },
        "mean_auroc_all": _f(mean_defined(all_auc)),
        "mean_auroc_without_flagged": _f(mean_defined(kept_auc)),
        "auroc_all": dict(zip(findings, map(_f, all_auc), strict=True)),
        "auroc_without_flagged": dict(zip(findings, map(_f, kept_auc), strict=True)),
        "record": record_summary(record),
    }


# -- provenance and notes -----------------------------------------------------------------
def data_source(info: dict) -> str:
    """ "phantom" (synthetic release), "nih" (the full NIH label file) or "other".

    ``info``: what was read (a prepared folder's ``dataset.json``, or the same keys for a
    release read directly: ``phantom``, ``release_root``, ``label_report``)."""
    if info.get("phantom"):
        return "phantom"
    root = info.get("release_root")
    if root and (Path(root) / "phantoms_manifest.json").exists():
        return "phantom"
    rows = (info.get("label_report") or {}).get("n_images")
    return "nih" if rows == NIH_LABEL_ROWS else "other"


def scoring_notes(
    *,
    source: str,
    split: str,
    fit_split: str | None,
    mean: dict,
    auroc: dict,
    bootstrap: int,
    calibration: dict,
    test: Predictions,
    subgroups: Sequence[dict] = (),
) -> list[str]:
    """The honesty notes of any scored table (a run's split or a predictions file)."""
    notes = []
    if source == "phantom":
        notes.append(
            "Phantom (synthetic) images: these numbers test the pipeline and say "
            "nothing about performance on real chest X-rays."
        )
    elif source == "other":
        notes.append(
            "The labels are not the full NIH label file (112,120 rows), so the test "
            "set is not NIH's; published numbers are not comparable."
        )
    if mean["undefined"]:
        notes.append(
            f"AUROC undefined (one class among the evaluated labels) for: "
            f"{', '.join(mean['undefined'])}; they are null and left out of the mean "
            f"({mean['defined']} findings averaged)."
        )
    few = [
        f"{f} ({v['positives']})"
        for f, v in auroc.items()
        if v["value"] is not None and v["positives"] < FEW_POSITIVES
    ]
    if few:
        notes.append(
            f"Fewer than {FEW_POSITIVES} positive images for: {', '.join(few)}; "
            "their AUROCs are noisy (see the intervals)."
        )
    thin = [f for f, v in auroc.items() if v["value"] is not None and v["lo"] is None]
    if thin:
        notes.append(
            f"No confidence interval for {', '.join(thin)}: fewer than half of the "
            f"{bootstrap} patient resamples contained both classes."
        )
    if mean["value"] is not None and mean["lo"] is None:
        notes.append(
            "No confidence interval for the mean AUROC: fewer than half of the "
            "patient resamples had both classes for every finding in the mean."
        )
    if fit_split is None:
        notes.append(
            "Thresholds and temperature were not fitted: no predictions for other "
            "images were given (--fit-on VAL.csv), and fitting them on the scored "
            "images would flatter them. Calibration (ECE, reliability) is of the "
            "probabilities as given."
        )
    elif split == fit_split:
        notes.append(
            f"Thresholds and temperature were fitted on the evaluated split "
            f"({split}) itself: threshold metrics and calibration after temperature "
            "are optimistic."
        )
    else:
        notes.append(
            f"Thresholds and temperature were fitted on the {fit_split} split only "
            f"and applied unchanged to {split}."
        )
    if fit_split == "train":
        notes.append(
            "Thresholds and temperature were fitted on training images, which the "
            "model has learned: expect them to be off on new images (use val)."
        )
    t = calibration.get("temperature")
    if t is not None and not 0.06 < t < 19.0:
        notes.append(
            f"The fitted temperature ({t:.3g}) is at its search bound; calibration "
            "after temperature scaling is unreliable."
        )
    no_band = int(age_band(test.table["age"]).isna().sum())
    if no_band:
        notes.append(
            f"{count(no_band, 'image')} {'has' if no_band == 1 else 'have'} a "
            "missing or impossible age (over 120) and "
            f"{'is' if no_band == 1 else 'are'} in no age-band subgroup."
        )
    unknown = int(np.isnan(test.labels).sum())
    if unknown:
        notes.append(f"{unknown} unknown labels (NaN) were left out per finding.")
    thin_groups = [r for r in subgroups if r["auroc"] is not None and r["caution"]]
    if thin_groups:
        notes.append(
            f"Subgroups: {len(thin_groups)} AUROC(s) rest on fewer than {FEW_POSITIVES} "
            "positive patients (marked and greyed; no interval below "
            f"{MIN_INTERVAL_PATIENTS})."
        )
    return notes


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


def coverage(image_ids, test_list, train_val_list=None, *, nih: bool = True) -> dict:
    """How many of the official test images a scored table holds (and train_val ones).

    ``nih``: the lists are NIH's (the full label file): the total is the 25,596 of the
    papers; otherwise (a phantom or partial release) the length of its own test list."""
    ids = set(image_ids)
    total = OFFICIAL_TEST_IMAGES if nih or test_list is None else len(test_list)
    out = {
        "nih": nih,
        "official_test_images": total,
        "scored": len(ids),
        "scored_official_test": None,
        "scored_train_val": None,
    }
    if test_list is not None:
        out["scored_official_test"] = len(ids & set(test_list))
    if train_val_list is not None:
        out["scored_train_val"] = len(ids & set(train_val_list))
    return out


# -- outputs ------------------------------------------------------------------------------
def _tables(metrics: dict) -> dict[str, pd.DataFrame]:
    findings = metrics["findings"]
    auroc = pd.DataFrame(
        [
            {
                "finding": f,
                "auroc": metrics["auroc"][f]["value"],
                "auroc_lo": metrics["auroc"][f]["lo"],
                "auroc_hi": metrics["auroc"][f]["hi"],
                "auprc": metrics["auprc"][f]["value"],
                "auprc_lo": metrics["auprc"][f]["lo"],
                "auprc_hi": metrics["auprc"][f]["hi"],
                "positives": metrics["auroc"][f]["positives"],
                "negatives": metrics["auroc"][f]["negatives"],
            }
            for f in findings
        ]
    )
    applied = metrics["threshold_metrics"]  # {} when no thresholds were fitted
    thresholds = pd.DataFrame(
        [{"method": m, "finding": f, **applied[m][f]} for m in applied for f in findings],
        columns=["method", "finding", "threshold", "tp", "fp", "tn", "fn"] if not applied else None,
    )
    for col in ("tp", "fp", "tn", "fn"):
        thresholds[col] = thresholds[col].astype("Int64")  # counts; empty when undefined
    cal = metrics["calibration"]
    after = cal["after_temperature"] or {"brier": {}, "ece": {}}
    calibration = pd.DataFrame(
        [
            {
                "finding": f,
                "brier": cal["brier"][f],
                "ece": cal["ece"][f],
                "brier_after_temperature": after["brier"].get(f),
                "ece_after_temperature": after["ece"].get(f),
                "temperature": cal["temperature"],
            }
            for f in findings
        ]
    )
    subgroups = pd.DataFrame(
        metrics["subgroups"],
        columns=[
            "attribute",
            "group",
            "finding",
            "n",
            "positives",
            "positive_patients",
            "auroc",
            "lo",
            "hi",
            "caution",
        ],
    )
    published = pd.DataFrame(
        metrics["published"],
        columns=["finding", "source", "auroc", "split", "protocol", "comparable", "note"],
    )
    published.insert(
        3,
        "this_run_auroc",
        [metrics["auroc"].get(f, {}).get("value") for f in published["finding"]],
    )
    return {
        "auroc": auroc,
        "threshold_table": thresholds,
        "calibration": calibration,
        "subgroups": subgroups,
        "published": published,
    }  # EvaluationFolder's names


def write_outputs(out: Path, metrics: dict, preds: list[Predictions]) -> dict:
    """metrics.json, the CSV tables and predictions_<split>.csv, each written atomically.

    Returns ``metrics`` as written (plain JSON types, ``None`` for undefined values).
    """
    metrics = jsonable(metrics)
    folder = EvaluationFolder(make_folder(out))
    for pred in preds:
        write_csv(predictions_frame(pred, metrics["findings"]), folder.predictions(pred.split))
    for name, table in _tables(metrics).items():
        write_csv(table, getattr(folder, name))
    write_json(metrics, folder.metrics)
    return metrics


def protocol_line(
    rows: str, cov: dict, *, n_rows: int | None = None, split_text: str | None = None
) -> str:
    """The one sentence every output states: which rows were scored and how many of NIH's
    25,596 official test images they are (a figure on a subset, or one that includes
    train_val images, is not comparable to papers that score the whole list). For a
    release that is not NIH's (phantoms), its own test list is counted instead."""
    k, t, total = cov["scored_official_test"], cov["scored_train_val"], cov["official_test_images"]
    n, nih = cov["scored"], cov.get("nih", True)
    official = "official test" if nih else "test-list"
    if rows == "official-test":
        where = (
            "NIH's official test list"
            if nih
            else "the release's test list (not NIH's release: not comparable to published numbers)"
        )
        text = (
            f"Protocol: {where} (test_list.txt): {k:,} of its {total:,} images scored "
            f"({100 * k / total:.1f} %)."
        )
        if n_rows is not None and n_rows > n:
            text += f" {n_rows - n:,} rows of the file are not on the list and were not scored."
    elif rows == "all":
        text = f"Protocol: all {n:,} rows as given (the model's own split)"
        text += f": {k:,} of the {total:,} {official} images" if k is not None else ""
        text += f" and {t:,} train_val images." if t else "."
    else:
        text = f"Protocol: {split_text or rows}: {n:,} images"
        text += f", {k:,} of the {total:,} {official} images." if k is not None else "."
    if nih and k is not None and k < total:
        text += (
            f" Not comparable to papers that score the whole official test list: "
            f"{'a subset of it' if k else 'none of it'}"
            + (
                f", with {t:,} train_val images, which models trained on NIH's official "
                "split have seen"
                if t
                else ""
            )
            + "."
        )
    return text


def score(
    test: Predictions,
    fit: Predictions | None,
    findings,
    out: str | Path,
    *,
    header: dict,
    run: RunProtocol,
    fit_split: str | None,
    bootstrap: int = 1000,
    subgroup_bootstrap: int = 200,
    seed: int = 0,
    temperature: bool = True,
    notes: tuple[list[str], list[str]] = ([], []),
    expert_source: dict | None = None,
    reference: str = "auto",
    expert_labels: str | Path | None = None,
    ood_record: dict | None = None,
    threshold_method: str = "youden",
    threshold_overrides: dict[str, float] | None = None,
) -> dict:
    """Score a table of predictions: the one evaluation path of runs and predictions files.

    ``test``: the scored images (labels, probabilities, patients, age/sex/view); ``fit``:
    predictions for *other* images that thresholds and the temperature are fitted on
    (None: not fitted). ``header``: what made the predictions (provenance fields of
    ``metrics.json``, the protocol included). ``notes``: source-specific notes before and
    after the common ones. ``expert_source``: ``{"release_root", "files"}`` where
    Google's radiologists' labels are looked for (:mod:`cxrkit.evaluate.radiologists`).
    ``threshold_method`` / ``threshold_overrides``: the thresholds written for predict
    (:func:`~cxrkit.evaluate.threshold_choice.choose_thresholds`, fitted on ``fit`` only),
    recorded with their provenance as ``thresholds["written"]``; too few positives behind
    one is a log warning and a ``Warning:`` note.
    Writes ``metrics.json``, the tables and the predictions into ``out``; returns the
    metrics as written.
    """
    findings = list(findings)
    out = Path(out)
    auroc, auprc, mean = ranking_section(test, findings, n=bootstrap, seed=seed)
    written = few_note = None
    if fit is not None:
        used = choose_thresholds(
            fit.labels,
            fit.probs,
            fit.patients,
            findings,
            method=threshold_method,
            overrides=threshold_overrides,
        )
        thresholds, applied = threshold_section(fit, test, findings, used)
        written = used.record()
        few_note = used.warning(fit_split or "fit")
        if few_note:
            log.warning(few_note)
    else:
        if threshold_overrides:
            raise ValueError(
                "--threshold needs predictions to fit the other thresholds on (--fit-on)"
            )
        thresholds, applied = {m: {f: None for f in findings} for m in THRESHOLD_METHODS}, {}
    subgroups = subgroup_rows(test, findings, n=subgroup_bootstrap, seed=seed)
    calibration = calibration_section(
        fit if fit is not None else test,
        test,
        findings,
        temperature=temperature and fit is not None,
    )
    metrics = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions("scikit-learn"),
        **header,
        "n_images": len(test.table),
        "n_patients": int(test.table["patient_id"].nunique()),
        "findings": findings,
        "bootstrap": {"replicates": bootstrap, "unit": "patient", "seed": seed, "level": 0.95},
        "auroc": auroc,
        "auprc": auprc,
        "mean_auroc": mean,
        "thresholds": {
            "chosen_on": fit_split,
            **thresholds,
            "meaning": THRESHOLD_MEANING,
            "written": written,
        },
        "threshold_metrics": applied,
        "calibration": calibration,
        "subgroups": subgroups,
        "ood": (
            ood_section(test, findings, ood_record)
            if ood_record is not None and test.ood_score is not None
            else None
        ),
        "published": published_rows(findings, run),
        "notes": ([header["protocol"]["line"]] if header.get("protocol") else [])
        + notes[0]
        + scoring_notes(
            source=run.data,
            split=run.split,
            fit_split=fit_split,
            mean=mean,
            auroc=auroc,
            bootstrap=bootstrap,
            calibration=calibration,
            test=test,
            subgroups=subgroups,
        )
        + notes[1]
        + ([f"Warning: {few_note}."] if few_note else [])
        + [
            "Intervals: percentile bootstrap over patients (all images of a drawn patient "
            f"together), {bootstrap} resamples, 95%."
        ],
    }
    against = None
    if expert_source is not None:
        against = evaluate_against_radiologists(
            expert_source,
            test,
            fit,
            findings,
            out,
            split=run.split,
            fit_split=fit_split,
            reference=reference,
            expert_dir=expert_labels,
            n=bootstrap,
            seed=seed,
            phantom=run.data == "phantom",
        )
    if against is not None:
        metrics["notes"].append(
            "Against radiologists: see radiologists.json and the report's section of that "
            "name. Scored: the evaluated images that have Google's expert labels, "
            + "; ".join(
                f"{r['images_in_split']:,} {k} (of its {r['images_in_set']:,} images)"
                for k, r in against["sets"].items()
            )
            + f", among {count(len(test.table), 'evaluated image')}."
        )
    preds = [test] if fit is None or fit is test else [test, fit]
    return write_outputs(out, metrics, preds)


# -- the whole evaluation -----------------------------------------------------------------
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
    chosen = {f: t for f, t in metrics["thresholds"]["used"].items() if t is not None}
    own = is_runs_own(
        lm.checkpoint, lm.checkpoint_info.get("config") or {}, data.prepared.root, folder.root
    )
    sidecar = write_thresholds(
        lm,
        chosen,
        method=threshold_method,
        tta=tta,
        chosen_on=f"{threshold_split} split of {data.split_path} (tta={tta})",
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
    "FORMAT",
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

"""Score a table of predictions (:func:`score`): the one evaluation path of runs
(:func:`cxrkit.evaluate.core.evaluate_checkpoint`) and of any model's predictions file
(:mod:`cxrkit.evaluate.external`). Puts the metric sections (:mod:`cxrkit.evaluate.sections`)
and the notes (:mod:`cxrkit.evaluate.notes`) into ``metrics.json`` (format
``cxrkit-eval/1``) and writes it with its CSV tables (:func:`write_outputs`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cxrkit.artefacts import (
    EvaluationFolder,
    jsonable,
    make_folder,
    versions,
    write_csv,
    write_json,
)
from cxrkit.evaluate.notes import scoring_notes
from cxrkit.evaluate.predictions import Predictions, predictions_frame
from cxrkit.evaluate.published import RunProtocol, published_rows
from cxrkit.evaluate.radiologists import evaluate_against_radiologists
from cxrkit.evaluate.sections import (
    calibration_section,
    ood_section,
    ranking_section,
    subgroup_rows,
    threshold_section,
)
from cxrkit.evaluate.threshold_choice import THRESHOLD_METHODS, choose_thresholds
from cxrkit.messages import count

log = logging.getLogger(__name__)

FORMAT = "cxrkit-eval/1"
THRESHOLD_MEANING = (
    "a finding is called present when its probability (sigmoid of the "
    "model's logit, before temperature scaling) is >= its threshold"
)


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

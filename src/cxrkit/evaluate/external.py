"""Score any model on NIH's protocol from nothing but its predictions (``cxrkit evaluate FILE``).

Most people who work on ChestX-ray14 have a model cxrkit did not train. Given its
predictions (a CSV or a DataFrame: :mod:`cxrkit.evaluate.predictions_file`) and the
release's metadata, :func:`evaluate_predictions` joins each row to NIH's labels, patient,
age, sex and view, and scores it exactly as a cxrkit run is scored
(:func:`cxrkit.evaluate.scoring.score`): the same patient-bootstrap intervals, subgroups,
calibration, published numbers, radiologists' section, report and files, so a run and a
predictions file can be set side by side by ``cxrkit compare``.

The protocol is stated in every output (:func:`cxrkit.evaluate.notes.protocol_line`):

* ``rows="official-test"`` (default): only the rows in NIH's ``test_list.txt``; how many of
  its 25,596 images were scored is said, and a subset is said to be one;
* ``rows="all"``: every row as given (a model's own split); the official-test and
  train_val images among them are counted, and such a figure is said not to be comparable
  with papers that score the whole official list.

``trained_on`` (image ids, or a split file whose train and val rows are the ones the model
saw) refuses a scored patient the model trained on. Thresholds and the temperature are
fitted only on ``fit_on``, predictions for *other* images (their validation split); without
it they are not fitted, and the report says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import read_csv
from cxrkit.data.release import NIHRelease, load_release
from cxrkit.data.splits import LeakageError
from cxrkit.evaluate.notes import coverage, data_source, protocol_line
from cxrkit.evaluate.scoring import score
from cxrkit.evaluate.gallery import write_error_table
from cxrkit.evaluate.predictions import Predictions
from cxrkit.evaluate.predictions_file import PredictionTable, read_predictions
from cxrkit.evaluate.published import RunProtocol
from cxrkit.evaluate.radiologists import REFERENCES
from cxrkit.evaluate.report import write_report
from cxrkit.evaluate.threshold_choice import parse_method
from cxrkit.messages import quote, quote_list

log = logging.getLogger(__name__)

ROWS = ("official-test", "all")
#: probabilities are clipped this far from 0 and 1 before their logit (temperature fitting)
EPS = 1e-7


def _release(release) -> NIHRelease:
    if isinstance(release, NIHRelease):
        return release
    if release is None:
        raise ValueError(
            "the release is needed to join predictions to NIH's labels and "
            "patients: pass --release DIR (a release root, or the folder "
            "holding Data_Entry_2017*.csv)"
        )
    return load_release(release)


def _logits(table: PredictionTable, keep: np.ndarray) -> np.ndarray:
    if table.logits:
        return table.values[keep]
    p = np.clip(table.values[keep], EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _predictions(
    table: PredictionTable, keep: np.ndarray, labels: pd.DataFrame, findings: list[str], split: str
) -> Predictions:
    ids = table.image_ids[keep]
    rows = labels.loc[ids]
    cols = [table.findings.index(f) for f in findings]
    return Predictions(
        split=split,
        table=rows.reset_index()[["image_id", "patient_id", "age", "sex", "view"]],
        labels=rows[findings].to_numpy(np.float64),
        logits=_logits(table, keep)[:, cols],
        probabilities=None if table.logits else table.values[keep][:, cols],
    )


def read_trained_on(path: str | Path, labels: pd.DataFrame) -> pd.DataFrame:
    """The images a model was trained on: ``image_id`` and ``patient_id``.

    A CSV with a ``split`` column (cxrkit's split.csv): its train and val rows (val chose
    the epoch, so it is not held out either); a CSV with an id column: every row; otherwise
    a list of image ids, one a line (as NIH's ``train_val_list.txt``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--trained-on list not found: {path}")
    if path.suffix.lower() == ".csv":
        table = read_csv(path, dtype=str, keep_default_na=False)
        column = next((c for c in ("image_id", "Image Index") if c in table.columns), None)
        if column is None:
            raise ValueError(
                f"{path}, line 1 (header): no id column ('image_id' or "
                f"'Image Index'); the header has {quote_list(table.columns)}"
            )
        if "split" in table.columns:
            table = table[table["split"].isin(["train", "val"])]
        ids, lines = table[column].str.strip(), table.index.to_numpy() + 2
    else:
        text = path.read_text().splitlines()
        pairs = [(i + 1, x.strip()) for i, x in enumerate(text) if x.strip()]
        lines = np.array([i for i, _ in pairs])
        ids, column = pd.Series([x for _, x in pairs], dtype=object), None
    patient = labels["patient_id"]
    known = ids.isin(patient.index).to_numpy()
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        where = f"{path}, line {lines[i]}" + (f", column {quote(column)}" if column else "")
        raise ValueError(
            f"{where}: image id {quote(ids.iloc[i])} is not an image of the "
            f"release's label file ({int((~known).sum()):,} such)"
        )
    return pd.DataFrame({"image_id": ids.to_numpy(), "patient_id": patient.loc[ids].to_numpy()})


def check_patient_overlap(scored: pd.DataFrame, trained: pd.DataFrame, what: str) -> dict:
    """Refuse when a scored patient is also among ``trained``; else the record."""
    both = sorted(set(scored["patient_id"]) & set(trained["patient_id"]))
    if both:
        images = scored[scored["patient_id"].isin(both)]
        examples = [
            f"patient {p} ({images.loc[images['patient_id'] == p, 'image_id'].iloc[0]} "
            f"scored, {trained.loc[trained['patient_id'] == p, 'image_id'].iloc[0]} "
            "trained on)"
            for p in both[:3]
        ]
        raise LeakageError(
            f"{len(both):,} patient(s) with {len(images):,} scored image(s) are also in "
            f"{what}, e.g. {'; '.join(examples)}. A model scored on patients it trained on "
            "looks better than it is: score only held-out patients (or drop these rows)."
        )
    return {
        "file": what,
        "images": len(trained),
        "patients": int(trained["patient_id"].nunique()),
        "patients_in_both": 0,
    }


def _scored_rows(table: PredictionTable, rel: NIHRelease, rows: str) -> np.ndarray:
    """Which rows of the predictions file are scored (a boolean mask): those on NIH's
    official test list (``rows="official-test"``; none there is an error) or all."""
    if rows == "official-test":
        if rel.test is None:
            raise FileNotFoundError(
                f"--rows official-test needs NIH's test_list.txt, not found "
                f"under {rel.root}; pass --rows all to score every row"
            )
        keep = np.isin(table.image_ids, rel.test)
        if not keep.any():
            raise ValueError(
                f"{table.source}: none of its {len(table.image_ids):,} images is in NIH's "
                "official test list; a model's own split is scored with --rows all"
            )
    else:
        keep = np.ones(len(table.image_ids), bool)
    return keep


def _fit_predictions(
    fit_on,
    labels: pd.DataFrame,
    findings: list[str],
    test: Predictions,
    table: PredictionTable,
    logits: bool,
) -> tuple[Predictions | None, dict | None, list[str]]:
    """The ``--fit-on`` predictions (for other images: thresholds and the temperature are
    fitted on them), what ``metrics.json`` records of them, and a note when their patients
    also have scored images. ``(None, None, [])`` without ``fit_on``."""
    if fit_on is None:
        return None, None, []
    fit_table = read_predictions(fit_on, known_ids=labels.index, logits=logits)
    lacking = [f for f in findings if f not in fit_table.findings]
    if lacking:
        raise ValueError(
            f"{fit_table.source}: no column for {', '.join(lacking)}, which "
            f"{table.source} predicts; thresholds need every scored finding"
        )
    shared = sorted(set(fit_table.image_ids) & set(test.table["image_id"]))
    if shared:
        raise ValueError(
            f"{fit_table.source}: {len(shared):,} of its images are also "
            f"scored, e.g. {quote_list(shared, 3)}: thresholds and the "
            "temperature must be fitted on other images (the model's "
            "validation split), never on the scored ones"
        )
    fit = _predictions(fit_table, np.ones(len(fit_table.image_ids), bool), labels, findings, "val")
    both = set(fit.table["patient_id"]) & set(test.table["patient_id"])
    fit_record = {
        "file": fit_table.source,
        "sha256": fit_table.sha256,
        "images": len(fit.table),
        "patients_also_scored": len(both),
    }
    notes: list[str] = []
    if both:
        notes.append(
            f"{len(both):,} patients of {fit_table.source} also have scored "
            "images: thresholds fitted on them may be slightly optimistic."
        )
    return fit, fit_record, notes


def evaluate_predictions(
    predictions,
    *,
    release,
    rows: str = "official-test",
    out: str | Path | None = None,
    name: str | None = None,
    logits: bool = False,
    trained_on: str | Path | None = None,
    fit_on=None,
    bootstrap: int = 1000,
    subgroup_bootstrap: int = 200,
    seed: int = 0,
    temperature: bool = True,
    reference: str = "auto",
    expert_labels: str | Path | None = None,
    images: str | Path | None = None,
    gallery: int = 2,
    report: bool = True,
    threshold_method: str = "youden",
    threshold_overrides: dict[str, float] | None = None,
) -> dict:
    """Score a model's predictions (a CSV path or a DataFrame) on NIH's labels.

    ``release``: a release root (or the folder of ``Data_Entry_2017*.csv``), or a
    :class:`~cxrkit.data.release.NIHRelease`. ``rows``: ``"official-test"`` or ``"all"``
    (module docstring). ``out``: the evaluation folder (default beside a file:
    ``<stem>_eval_<rows>``; required for a DataFrame). ``fit_on``: predictions for other
    images (path or DataFrame) that thresholds and the temperature are fitted on.
    ``threshold_method`` / ``threshold_overrides``: the thresholds chosen on ``fit_on``
    (:mod:`cxrkit.evaluate.threshold_choice`).
    ``trained_on``: see :func:`read_trained_on`. ``gallery``: the most confident errors
    listed per finding and kind (0: none), shown where ``images`` (a folder) has the
    image (:func:`cxrkit.evaluate.gallery.write_error_table`). Returns the ``metrics.json`` dict; writes
    the same folder as evaluating a run (:class:`~cxrkit.artefacts.EvaluationFolder`).
    """
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {', '.join(ROWS)}, got {quote(rows)}")
    parse_method(threshold_method)
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if out is None:
        if isinstance(predictions, pd.DataFrame):
            raise ValueError("out is required when the predictions are a DataFrame")
        out = Path(predictions).with_name(f"{Path(predictions).stem}_eval_{rows}")
    rel = _release(release)
    labels = rel.labels.set_index("image_id")
    table = read_predictions(predictions, known_ids=labels.index, logits=logits)
    n_rows = len(table.image_ids)
    keep = _scored_rows(table, rel, rows)
    findings = list(table.findings)
    test = _predictions(table, keep, labels, findings, "test")
    info = {"release_root": str(rel.root), "files": rel.files, "label_report": rel.report.to_dict()}
    source = data_source(info)  # "nih", "phantom" or "other"
    cov = coverage(test.table["image_id"], rel.test, rel.train_val, nih=source == "nih")
    before = list(table.notes)
    trained = None
    if trained_on is not None:
        trained = check_patient_overlap(
            test.table, read_trained_on(trained_on, labels), str(trained_on)
        )
        before.append(
            f"No scored patient is among the {trained['patients']:,} patients of "
            f"{trained_on} (the images the model trained on)."
        )
    fit, fit_record, overlap = _fit_predictions(fit_on, labels, findings, test, table, logits)
    before += overlap
    split_protocol = "official" if rows == "official-test" else "custom"
    line = protocol_line(rows, cov, n_rows=n_rows)
    header = {
        "source": {
            "kind": "predictions",
            "file": table.source,
            "sha256": table.sha256,
            "rows_in_file": n_rows,
            "values": "logits" if logits else "probabilities",
            "columns": table.columns,
            "absent_findings": table.absent,
        },
        "checkpoint": None,
        "checkpoint_sha256": None,
        "run_dir": None,
        "model": name or (Path(table.source).stem if table.sha256 else "predictions"),
        "epoch": None,
        "tta": None,
        "release": str(rel.root),
        "label_file": rel.files["labels"],
        "label_file_sha256": rel.report.sha256,
        "split": "test",
        "split_protocol": split_protocol,
        "protocol": {"rows": rows, "coverage": cov, "line": line},
        "fit_on": fit_record,
        "trained_on": trained,
    }
    info["labels"] = rel.labels  # for the radiologists' ids, without reading it again
    metrics = score(
        test,
        fit,
        findings,
        out,
        header=header,
        run=RunProtocol(
            data=source, protocol=split_protocol, split="test", n_images=len(test.table)
        ),
        fit_split="val" if fit is not None else None,
        bootstrap=bootstrap,
        subgroup_bootstrap=subgroup_bootstrap,
        seed=seed,
        temperature=temperature,
        notes=(before, []),
        expert_source=info,
        reference=reference,
        expert_labels=expert_labels,
        threshold_method=threshold_method,
        threshold_overrides=threshold_overrides,
    )
    log.debug("scored %s: %s", table.source, line)
    if gallery:
        write_error_table(test, metrics, out, images=images, per_kind=gallery)
    if report:
        write_report(out, None)
    return metrics


__all__ = ["ROWS", "check_patient_overlap", "evaluate_predictions", "read_trained_on"]

"""``cxrkit evaluate --reference radiologists``: the model against radiologists, beside NIH.

NIH's labels were text-mined from reports; Google's radiologists re-read 4,376 of the
images (:mod:`cxrkit.data.expert`). For every expert finding with labels on the evaluated
split's images this section gives, on the *same* images:

* the model's AUROC against the radiologists and against NIH's labels, each with a
  patient-bootstrap CI, and their paired difference (one set of resamples for both:
  :func:`cxrkit.metrics.auroc_reference_difference`);
* the model at its operating point chosen on the validation split (Youden's J against
  NIH's labels there, as ``thresholds.json``), scored against the radiologists;
* NIH's own label against the radiologists (sensitivity, specificity, Cohen's kappa from
  scikit-learn): how noisy the training signal is; on the evaluated images and on the
  whole expert set;
* each individual radiologist against the majority of the *other* readers of the same
  image (:func:`reader_agreement`): the human ceiling; and each reader as a point
  (sensitivity, false-positive rate) against the reference, for the ROC figure.

The expert findings map onto the model's 14 as :data:`cxrkit.data.expert.MAPPINGS` says
(documented there: Nodule or mass = max(Nodule, Mass), Airspace opacity = max over five
opacity findings, Abnormal = 1 - prod(1 - p); Fracture and Other are not predicted).

Written into the evaluation folder: ``radiologists.json`` (format ``cxrkit-radiologists/1``,
with the expert files' paths, sha256 and row counts), ``radiologists.csv`` (one row per
set and finding) and ``radiologists_images.csv`` (one row per image and finding: the
radiologists' label, NIH's, the model's score), which the report draws from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import cohen_kappa_score

from cxrkit.artefacts import finite_or_none as _f
from cxrkit.artefacts import (
    EvaluationFolder,
    jsonable,
    make_folder,
    read_csv,
    read_json,
    write_csv,
    write_json,
)
from cxrkit.data.expert import (
    ALL,
    FOUR,
    GROUND_TRUTH_READERS,
    MAPPINGS,
    ExpertLabels,
    ExpertSet,
    find_expert_folders,
    load_expert_labels,
    model_score,
    nih_label,
)
from cxrkit.data.nih import read_data_entry, read_image_list
from cxrkit.labels import FINDINGS
from cxrkit.metrics import (
    auroc_reference_difference,
    threshold_metrics,
    youden_threshold,
)

log = logging.getLogger(__name__)

FORMAT = "cxrkit-radiologists/1"
REFERENCES = ("auto", "radiologists", "nih")


# -- agreement between two label sets -----------------------------------------------------
def binary_agreement(reference, other) -> dict:
    """``other``'s labels against ``reference`` (0/1; pairs with a NaN are dropped).

    Sensitivity and specificity of ``other`` taking ``reference`` as truth, Cohen's kappa
    (scikit-learn; None when undefined, e.g. both constant), the confusion counts and the
    number of disagreements.
    """
    r = np.asarray(reference, np.float64)
    o = np.asarray(other, np.float64)
    ok = ~(np.isnan(r) | np.isnan(o))
    r, o = r[ok].astype(int), o[ok].astype(int)
    tp, fp = int(((r == 1) & (o == 1)).sum()), int(((r == 0) & (o == 1)).sum())
    fn, tn = int(((r == 1) & (o == 0)).sum()), int(((r == 0) & (o == 0)).sum())
    kappa = None
    if r.size and (len(set(r)) > 1 or len(set(o)) > 1):
        # scikit-learn's kappa; its argument checks cost ~10 ms a call, hundreds of calls
        # here (every reader x finding), and the inputs are already clean 0/1 arrays
        with (
            np.errstate(invalid="ignore", divide="ignore"),
            sklearn.config_context(skip_parameter_validation=True),
        ):
            kappa = _f(cohen_kappa_score(r, o, labels=[0, 1]))
    return {
        "n": int(r.size),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "disagreements": fp + fn,
        "sensitivity": _f(tp / (tp + fn)) if tp + fn else None,
        "specificity": _f(tn / (tn + fp)) if tn + fp else None,
        "kappa": kappa,
    }


def nih_agreement(expert: ExpertSet, nih: pd.DataFrame, images=None) -> list[dict]:
    """NIH's label against the radiologists' for each mapped finding of ``expert``.

    ``nih``: NIH's label table (``image_id`` and the 14 finding columns); ``images``: the
    image ids to use (default: all of the set's).
    """
    labels = (
        expert.labels
        if images is None
        else expert.labels[expert.labels["image_id"].isin(set(images))]
    )
    table = nih.set_index("image_id").loc[labels["image_id"]]
    out = []
    for m in MAPPINGS[expert.name]:
        if not m.nih:
            continue
        rec = binary_agreement(labels[m.expert].to_numpy(), nih_label(m, table))
        out.append({"finding": m.expert, "nih_findings": list(m.nih), **rec})
    return out


def reader_agreement(readers: pd.DataFrame, finding: str) -> tuple[pd.DataFrame, dict]:
    """Each reader against the majority of the *other* readers of the same image.

    ``readers``: one row per (image, reader) with ``image_id``, ``reader_id`` and 0/1/NaN
    (NaN = HEDGE: no call) in ``finding``. A pair counts when the reader made a call and
    the others' calls have a strict majority; ties among the others, or no other call,
    are left out (``ties``), as are the reader's own hedges (``hedged``). Returns the
    per-reader table (n, sensitivity, specificity, kappa, confusion counts) and the
    pooled figures over all pairs plus the mean over readers.
    """
    r = readers[["image_id", "reader_id", finding]].rename(columns={finding: "call"})
    votes = r.groupby("image_id")["call"].agg(yes="sum", calls="count")
    r = r.join(votes, on="image_id")
    own = r["call"].to_numpy()
    hedged = np.isnan(own)
    others_yes = r["yes"].to_numpy() - np.nan_to_num(own)
    others = r["calls"].to_numpy() - (~hedged).astype(int)
    majority = np.where(
        2 * others_yes > others, 1.0, np.where(2 * others_yes < others, 0.0, np.nan)
    )
    majority[others == 0] = np.nan
    ties = int((~hedged & np.isnan(majority)).sum())
    r = r.assign(majority=majority)
    rows = []
    for reader, g in r.groupby("reader_id", sort=True):
        rows.append({"reader_id": str(reader), **binary_agreement(g["majority"], g["call"])})
    per_reader = pd.DataFrame(
        rows,
        columns=[
            "reader_id",
            "n",
            "tp",
            "fp",
            "fn",
            "tn",
            "disagreements",
            "sensitivity",
            "specificity",
            "kappa",
        ],
    )
    pooled = binary_agreement(majority, own)
    used = per_reader[per_reader["n"] > 0]
    mean = {
        k: _f(pd.to_numeric(used[k], errors="coerce").mean()) if len(used) else None
        for k in ("sensitivity", "specificity", "kappa")
    }
    return per_reader, {
        "pooled": pooled,
        "mean_over_readers": mean,
        "readers": len(used),
        "ties": ties,
        "hedged": int(hedged.sum()),
    }


def reader_points(
    readers: pd.DataFrame, reference: pd.Series, finding: str, *, in_reference
) -> list[dict]:
    """Each reader's sensitivity and false-positive rate against ``reference`` (indexed by
    image id): their point on the ROC plane. ``in_reference(reader_id)``: whether that
    reader's calls are part of the reference (which flatters them)."""
    out = []
    for reader, g in readers.groupby("reader_id", sort=True):
        ref = reference.reindex(g["image_id"]).to_numpy(np.float64)
        a = binary_agreement(ref, g[finding].to_numpy())
        if a["n"] == 0:
            continue
        out.append(
            {
                "reader_id": str(reader),
                "n": a["n"],
                "sensitivity": a["sensitivity"],
                "fpr": None if a["specificity"] is None else 1 - a["specificity"],
                "in_reference": bool(in_reference(str(reader))),
            }
        )
    return out


# -- finding and reading the files --------------------------------------------------------
def find_expert_labels(info: dict, expert_dir=None) -> ExpertLabels | None:
    """The expert labels for a release: under ``expert_dir`` if given, else under its
    root; validated against that release's label file and official lists. None when
    there are none. ``info``: ``{"release_root", "files": {"labels", "test", "train_val"}}``
    (a prepared folder's ``dataset.json``, or a release read for a predictions file, which
    also gives the label table already read as ``"labels"``)."""
    base = Path(expert_dir) if expert_dir else Path(info.get("release_root", ""))
    folders = find_expert_folders(base) if str(base) else {}
    if expert_dir and not folders:
        raise FileNotFoundError(
            f"no radiologists' labels under {expert_dir}: expected Google's folders "
            "four_findings_expert_labels/ and/or all_findings_expert_labels/ (or "
            "four_findings/, all_findings/) holding test_labels.csv"
        )
    if not folders:
        return None
    files = info.get("files") or {}
    label_file = files.get("labels")
    if not label_file or not Path(label_file).exists():
        raise FileNotFoundError(
            f"the release's label file {label_file} (recorded for "
            f"{info.get('release_root')}) is needed to check the "
            "radiologists' image ids and is not there"
        )
    # the label table itself when the caller has read it already (a predictions file's
    # release), else read from the recorded file
    nih = info["labels"] if info.get("labels") is not None else read_data_entry(label_file)[0]
    lists = {
        k: read_image_list(files[k]) if files.get(k) and Path(files[k]).exists() else None
        for k in ("train_val", "test")
    }
    return load_expert_labels(
        base,
        nih=nih,
        label_file=str(label_file),
        train_val=lists["train_val"],
        test=lists["test"],
        folders=folders,
    )


# -- the evaluation section ---------------------------------------------------------------
def _ci(c) -> dict:
    return {"value": _f(c.value[0]), "lo": _f(c.lo[0]), "hi": _f(c.hi[0])}


def _frame(pred, findings, nih: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """NIH's labels of all 14 findings (from the release's label file when given: a model
    may predict only some, and Abnormal needs all) and the model's probabilities."""
    ids = pred.table["image_id"].to_numpy()
    labels = (
        pd.DataFrame(pred.labels, columns=findings, index=ids)
        if nih is None
        else nih.set_index("image_id").loc[ids, list(FINDINGS)].astype(np.float64)
    )
    return labels, pd.DataFrame(pred.probs, columns=findings, index=ids)


def _finding_record(
    m,
    s: ExpertSet,
    images: pd.DataFrame,
    labels,
    probs,
    fit_labels,
    fit_probs,
    *,
    n: int,
    seed: int,
    in_reference,
) -> tuple[dict, pd.DataFrame]:
    y_rad = images[m.expert].to_numpy(np.float64)
    known = ~np.isnan(y_rad)
    img = images.loc[known]
    y_rad = y_rad[known]
    ids = img["image_id"].to_numpy()
    y_nih = nih_label(m, labels.loc[ids])
    rec = {
        "finding": m.expert,
        "nih_findings": list(m.nih),
        "combine": m.combine,
        "mapping": m.why,
        "images": int(known.sum()),
        "patients": int(img["patient_id"].nunique()),
        "positives_radiologists": int(y_rad.sum()),
        "positives_nih": None if not m.nih else int(np.nansum(y_nih)),
        "predicted": False,
    }
    score = model_score(m, probs.loc[ids])
    if score is not None and len(ids):
        rec["predicted"] = True
        d = auroc_reference_difference(
            y_rad, y_nih, score, img["patient_id"].to_numpy(), n=n, seed=seed
        )
        rec["auroc_radiologists"] = _ci(d["a"])
        rec["auroc_nih"] = _ci(d["b"])
        rec["difference"] = {"value": _f(d["value"]), "lo": _f(d["lo"]), "hi": _f(d["hi"])}
        if fit_labels is not None:  # the operating point chosen on the threshold split
            t = youden_threshold(nih_label(m, fit_labels), model_score(m, fit_probs))
            op = {}
            for name, y in (("radiologists", y_rad), ("nih", y_nih)):
                tm = threshold_metrics(y, score, t)
                op[name] = {
                    k: (v if isinstance(v, int) else _f(v))
                    for k, v in tm.items()
                    if k in ("sensitivity", "specificity", "ppv", "tp", "fp", "tn", "fn")
                }
            rec["operating_point"] = {"threshold": _f(t), **op}
    elif score is None and m.nih:
        rec["not_predicted_because"] = "the model does not predict " + ", ".join(
            f for f in m.nih if f not in probs.columns
        )
    elif not m.nih:
        rec["not_predicted_because"] = m.why
    if m.nih:
        rec["nih_vs_radiologists"] = binary_agreement(y_rad, y_nih)
    readers = s.readers[s.readers["image_id"].isin(set(ids))]
    if len(readers):
        per_reader, summary = reader_agreement(readers, m.expert)
        rec["readers"] = {**summary, "per_reader": per_reader.to_dict("records")}
        rec["reader_points"] = reader_points(
            readers, img.set_index("image_id")[m.expert], m.expert, in_reference=in_reference
        )
    rows = pd.DataFrame(
        {
            "set": s.name,
            "image_id": ids,
            "patient_id": img["patient_id"].to_numpy(),
            "part": img["part"].to_numpy(),
            "finding": m.expert,
            "radiologists": y_rad.astype(int),
            "nih": pd.array(np.where(np.isnan(y_nih), None, y_nih), dtype="Int64"),  # type: ignore[call-overload]
            "score": np.nan if score is None else score,
        }
    )
    return rec, rows


def _in_reference(set_name: str, phantom: bool):
    if phantom:  # phantom expert files hold the truth: no reader is part of it
        return lambda reader: False
    if set_name == ALL:
        return lambda reader: reader in GROUND_TRUTH_READERS
    return lambda reader: True  # four findings: every reader took part in adjudication


def radiologists_section(
    expert: ExpertLabels,
    test,
    fit,
    findings,
    *,
    split: str,
    fit_split: str | None,
    n: int = 1000,
    seed: int = 0,
    phantom: bool = False,
) -> tuple[dict, pd.DataFrame]:
    """The section's record (``radiologists.json``) and its per-image table.

    ``test``/``fit``: :class:`cxrkit.evaluate.predictions.Predictions` of the evaluated
    split and of the split thresholds are chosen on.
    """
    labels, probs = _frame(test, list(findings), expert.nih)
    fit_labels, fit_probs = (None, None) if fit is None else _frame(fit, list(findings), expert.nih)
    evaluated = set(test.table["image_id"])
    sets, tables, notes = {}, [], []
    for name, s in expert.sets.items():
        images = s.labels[s.labels["image_id"].isin(evaluated)].reset_index(drop=True)
        counts = {
            part: int((images["part"] == part).sum()) for part in sorted(set(s.labels["part"]))
        }
        totals = s.labels["part"].value_counts().to_dict()
        rec: dict = {
            "reference": s.reference,
            "citation": s.citation,
            "files": s.files,
            "images_in_split": len(images),
            "images_in_set": len(s.labels),
            "by_file": {p: {"in_split": counts[p], "in_set": int(totals[p])} for p in counts},
            "findings": [],
            "notes": list(s.notes),
        }
        if name == FOUR and "val" in counts:
            rec["notes"].append(
                f"validation_labels.csv images are train_val images: they are scored only where "
                f"they fall in the evaluated split ({split}); {counts['val']} of "
                f"{totals['val']} do here, the rest are in another split (possibly training)."
            )
        if phantom:
            rec["notes"].append(
                "Phantom release: the expert files hold each image's true "
                "findings (perfect adjudication) and simulated readers; NIH's "
                "labels are the truth with simulated text-mining errors."
            )
        if len(images) == 0:
            notes.append(f"{name}: none of its {len(s.labels):,} images is in the {split} split.")
        else:
            for m in MAPPINGS[name]:
                frec, rows = _finding_record(
                    m,
                    s,
                    images,
                    labels,
                    probs,
                    fit_labels,
                    fit_probs,
                    n=n,
                    seed=seed,
                    in_reference=_in_reference(name, phantom),
                )
                rec["findings"].append(frec)
                tables.append(rows)
        if expert.nih is not None:
            rec["nih_vs_radiologists_whole_set"] = nih_agreement(s, expert.nih)
        sets[name] = rec
    if fit is None:
        notes.append(
            "No operating points: thresholds were not fitted (no predictions for "
            "other images were given)."
        )
    elif split == fit_split:
        notes.append(f"Operating points were chosen on the evaluated split ({split}) itself.")
    section = {
        "format": FORMAT,
        "split": split,
        "threshold_split": fit_split,
        "threshold_rule": "Youden's J on the threshold split against NIH's labels "
        "(mapped as the finding's NIH label)",
        "bootstrap": {"replicates": n, "unit": "patient", "seed": seed, "level": 0.95},
        "checked_against": expert.checked_against,
        "sets": sets,
        "notes": notes,
    }
    per_image = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(
            columns=[
                "set",
                "image_id",
                "patient_id",
                "part",
                "finding",
                "radiologists",
                "nih",
                "score",
            ]
        )
    )
    return section, per_image


def table_rows(section: dict) -> pd.DataFrame:
    """One row per set and finding: the headline numbers (``radiologists.csv``)."""
    rows = []
    for name, rec in section["sets"].items():
        for f in rec["findings"]:
            a, b, d = (f.get(k) or {} for k in ("auroc_radiologists", "auroc_nih", "difference"))
            nv = f.get("nih_vs_radiologists") or {}
            rd = (f.get("readers") or {}).get("pooled") or {}
            op = (f.get("operating_point") or {}).get("radiologists") or {}
            rows.append(
                {
                    "set": name,
                    "finding": f["finding"],
                    "images": f["images"],
                    "positives": f["positives_radiologists"],
                    "predicted": f["predicted"],
                    "auroc_radiologists": a.get("value"),
                    "auroc_radiologists_lo": a.get("lo"),
                    "auroc_radiologists_hi": a.get("hi"),
                    "auroc_nih": b.get("value"),
                    "auroc_nih_lo": b.get("lo"),
                    "auroc_nih_hi": b.get("hi"),
                    "difference": d.get("value"),
                    "difference_lo": d.get("lo"),
                    "difference_hi": d.get("hi"),
                    "model_sensitivity": op.get("sensitivity"),
                    "model_specificity": op.get("specificity"),
                    "nih_sensitivity": nv.get("sensitivity"),
                    "nih_specificity": nv.get("specificity"),
                    "nih_kappa": nv.get("kappa"),
                    "reader_sensitivity": rd.get("sensitivity"),
                    "reader_specificity": rd.get("specificity"),
                    "reader_kappa": rd.get("kappa"),
                }
            )
    return pd.DataFrame(rows)


def evaluate_against_radiologists(
    source: dict,
    test,
    fit,
    findings,
    out: Path,
    *,
    split: str,
    fit_split: str | None,
    reference: str = "auto",
    expert_dir=None,
    n: int = 1000,
    seed: int = 0,
    phantom: bool = False,
) -> dict | None:
    """Find the expert files, run the section and write its files into ``out``.

    ``source``: where the release is (see :func:`find_expert_labels`); ``fit``: None when
    no thresholds are fitted (no operating points).

    ``reference``: ``"auto"`` (when the files are found), ``"radiologists"`` (they must
    be), ``"nih"`` (skip). Returns the section, or None when skipped.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if reference == "nih":
        return None
    expert = find_expert_labels(source, expert_dir)
    if expert is None:
        if reference == "radiologists":
            raise FileNotFoundError(
                f"--reference radiologists: no radiologists' labels under the release root "
                f"{source.get('release_root')}; download Google's expert labels "
                "(four_findings_expert_labels/, all_findings_expert_labels/) next to the "
                "release, or pass --expert-labels DIR"
            )
        log.info("no radiologists' labels found: evaluating against NIH's labels only")
        return None
    section, per_image = radiologists_section(
        expert,
        test,
        fit,
        findings,
        split=split,
        fit_split=fit_split,
        n=n,
        seed=seed,
        phantom=phantom,
    )
    folder = EvaluationFolder(make_folder(out))
    write_csv(per_image, folder.radiologists_images)
    write_csv(table_rows(section), folder.radiologists_table)
    write_json(jsonable(section), folder.radiologists)
    return section


def read_section(folder: str | Path) -> tuple[dict, pd.DataFrame] | None:
    """What :func:`evaluate_against_radiologists` wrote in ``folder``: the section (from
    ``radiologists.json``) and the per-image table (``radiologists_images.csv``, empty when absent); None
    when the folder has no section."""
    layout = EvaluationFolder(Path(folder))
    if not layout.radiologists.exists():
        return None
    images = (
        read_csv(layout.radiologists_images, dtype={"image_id": str})
        if layout.radiologists_images.exists()
        else pd.DataFrame()
    )
    return read_json(layout.radiologists), images


__all__ = [
    "FORMAT",
    "REFERENCES",
    "binary_agreement",
    "evaluate_against_radiologists",
    "find_expert_labels",
    "nih_agreement",
    "radiologists_section",
    "read_section",
    "reader_agreement",
    "reader_points",
    "table_rows",
]

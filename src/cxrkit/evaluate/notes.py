"""The protocol line and the honesty notes every scored table carries: where the data came
from (:func:`data_source`), how much of NIH's official test list was scored
(:func:`coverage`, :func:`protocol_line`) and what a reader must know before trusting the
numbers (:func:`scoring_notes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrkit.evaluate.predictions import Predictions
from cxrkit.evaluate.published import NIH_LABEL_ROWS, OFFICIAL_TEST_IMAGES
from cxrkit.evaluate.sections import FEW_POSITIVES, MIN_INTERVAL_PATIENTS, age_band
from cxrkit.messages import count


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

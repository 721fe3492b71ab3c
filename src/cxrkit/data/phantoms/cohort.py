"""The labels of a phantom release, no pixels: :func:`sample_cohort`.

Labels follow NIH's structure: ~half the images "No Finding", several images per patient
with follow-up numbers, ages and sexes distributed as in NIH, PA views in the majority and
sicker patients more often imaged AP. Findings co-occur as in NIH (Effusion with
Atelectasis, Cardiomegaly and Edema; Pneumonia with Infiltration and Consolidation;
Emphysema with Pneumothorax) and chronic ones (Cardiomegaly, Emphysema, Fibrosis,
Pleural_Thickening, Hernia, Mass, Nodule) persist across a patient's follow-ups. **Rare
findings are boosted**: :data:`TARGET_PREVALENCE` puts every finding on 3.5-14% of images
(see :mod:`cxrkit.data.phantoms.generator`).

Everything is deterministic for a seed: each part of a release draws from its own
``numpy.random.SeedSequence(seed, spawn_key=...)`` stream (:func:`rng_stream`), so patient
7 is the same whatever ``n_patients``. The global RNG is never used.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrkit.labels import FINDINGS

#: Share of images showing each finding (boosted from NIH's for rare ones, see above).
TARGET_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.09,
    "Cardiomegaly": 0.05,
    "Effusion": 0.10,
    "Infiltration": 0.14,
    "Mass": 0.05,
    "Nodule": 0.055,
    "Pneumonia": 0.04,
    "Pneumothorax": 0.05,
    "Consolidation": 0.045,
    "Edema": 0.04,
    "Emphysema": 0.04,
    "Fibrosis": 0.04,
    "Pleural_Thickening": 0.04,
    "Hernia": 0.035,
}
#: Findings a patient has for good (then shown on each follow-up with ``CHRONIC_SHOWN``).
CHRONIC = (
    "Cardiomegaly",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "Mass",
    "Nodule",
)
CHRONIC_SHOWN = 0.85
#: Findings of one image, sampled in this order so each can raise the later ones.
ACUTE = (
    "Pneumonia",
    "Consolidation",
    "Effusion",
    "Edema",
    "Atelectasis",
    "Pneumothorax",
    "Infiltration",
)
#: Log-odds added to a finding when another is present (NIH's common pairs).
CO_OCCURRENCE: dict[str, dict[str, float]] = {
    "Cardiomegaly": {"Effusion": 1.0, "Edema": 1.5},
    "Emphysema": {"Pneumothorax": 1.2},
    "Fibrosis": {"Pleural_Thickening": 0.8},
    "Mass": {"Nodule": 1.0, "Effusion": 0.6},
    "Pneumonia": {"Consolidation": 1.0, "Infiltration": 1.2},
    "Consolidation": {"Infiltration": 0.8, "Effusion": 0.6, "Atelectasis": 0.5},
    "Effusion": {"Atelectasis": 1.3, "Edema": 0.9, "Infiltration": 0.5},
    "Edema": {"Infiltration": 0.9},
}
#: Log-odds per 20 years of age above 47 for chronic findings.
AGE_EFFECT = {
    "Cardiomegaly": 0.4,
    "Emphysema": 0.6,
    "Fibrosis": 0.5,
    "Hernia": 0.8,
    "Mass": 0.3,
    "Nodule": 0.3,
    "Pleural_Thickening": 0.4,
}
#: Baseline log-odds, calibrated by simulation so that the cohort meets TARGET_PREVALENCE
#: (tests/test_phantoms.py checks it). Chronic ones are per patient, the rest per image.
BASE_LOG_ODDS = {
    "Cardiomegaly": -2.89,
    "Emphysema": -3.03,
    "Fibrosis": -3.08,
    "Pleural_Thickening": -3.25,
    "Hernia": -3.31,
    "Mass": -2.96,
    "Nodule": -2.85,
    "Pneumonia": -3.79,
    "Consolidation": -3.69,
    "Effusion": -2.79,
    "Edema": -4.03,
    "Atelectasis": -3.12,
    "Pneumothorax": -3.52,
    "Infiltration": -2.58,
}
#: NIH's most common scanner sizes and pixel spacings (OriginalImage / PixelSpacing columns).
SCANNERS = (
    (2500, 2048, "0.168", 30),
    (2992, 2991, "0.143", 22),
    (3056, 2544, "0.139", 15),
    (2500, 2048, "0.171", 7),
    (2048, 2500, "0.168", 6),
    (2021, 2021, "0.194311", 4),
)


def rng_stream(seed: int, *key: int) -> np.random.Generator:
    """The generator of one part of a release: ``(0,)`` the split, ``(patient, 0)`` a
    patient's labels, ``(patient, 1)`` their anatomy, ``(patient, 2, follow_up)`` an image, ``(patient, 6,
    finding, follow_up)`` an ``independent`` finding (:func:`sample_cohort`)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def check_independent(independent) -> tuple[str, ...]:
    """``independent`` as a tuple of findings in :data:`FINDINGS` order; unknown names fail."""
    unknown = [f for f in independent if f not in FINDINGS]
    if unknown:
        raise ValueError(f"independent: unknown finding(s) {unknown}; known: {', '.join(FINDINGS)}")
    return tuple(f for f in FINDINGS if f in independent)


def sample_cohort(
    *, n_patients: int = 300, images_per_patient=(1, 4), seed: int = 0, independent=()
) -> pd.DataFrame:
    """The labels of a phantom release, one row per image, no pixels.

    Columns: ``image_id, patient_id, follow_up, age, sex, view, findings`` (a tuple in
    :data:`FINDINGS` order, empty for "No Finding"), ``orig_width, orig_height, spacing``.
    Patients are numbered from 1; each has ``images_per_patient`` (inclusive range,
    uniform) images. Per patient: sex (56% M as in NIH), age (NIH's mean 47, sd 17, 3%
    children), a frailty that makes every finding and AP views likelier, and chronic
    findings. Per image: the view and the acute findings.

    Each finding in ``independent`` is then redrawn per image, present with probability
    :data:`TARGET_PREVALENCE` from its own stream ``(patient, 6, finding, follow_up)``:
    independent of view, sex, age, frailty and the other findings (a confound-free
    control; the other labels and every other draw are unchanged).
    """
    independent = check_independent(independent)
    lo, hi = images_per_patient
    if not 1 <= lo <= hi:
        raise ValueError(
            "images_per_patient must be (low, high) with 1 <= low <= high, got "
            f"{images_per_patient}"
        )
    rows = []
    for pid in range(1, n_patients + 1):
        rng = rng_stream(seed, pid, 0)
        sex = "M" if rng.uniform() < 0.565 else "F"
        age = rng.uniform(1, 16) if rng.uniform() < 0.03 else np.clip(rng.normal(47, 16.5), 16, 95)
        frailty = rng.normal()
        n_images = int(rng.integers(lo, hi + 1))
        chronic: list[str] = []  # lists, not sets: set order changes with PYTHONHASHSEED
        for f in CHRONIC:
            z = BASE_LOG_ODDS[f] + 0.4 * frailty + AGE_EFFECT[f] * (age - 47) / 20
            z += sum(CO_OCCURRENCE.get(g, {}).get(f, 0.0) for g in chronic)
            if rng.uniform() < _sigmoid(z):
                chronic.append(f)
        for k in range(n_images):
            age += rng.exponential(0.4)
            ap = rng.uniform() < _sigmoid(-0.55 + 0.9 * frailty + 0.2 * min(k, 3))
            found = [f for f in chronic if rng.uniform() < CHRONIC_SHOWN]
            for f in ACUTE:
                z = BASE_LOG_ODDS[f] + 0.7 * frailty + 0.5 * ap
                z += sum(CO_OCCURRENCE.get(g, {}).get(f, 0.0) for g in found)
                if rng.uniform() < _sigmoid(z):
                    found.append(f)
            for f in independent:
                own = rng_stream(seed, pid, 6, FINDINGS.index(f), k).uniform()
                found = [g for g in found if g != f] + ([f] if own < TARGET_PREVALENCE[f] else [])
            width, height, spacing, _ = SCANNERS[rng.choice(len(SCANNERS), p=_SCANNER_P)]
            rows.append(
                (
                    f"{pid:08d}_{k:03d}.png",
                    pid,
                    k,
                    int(min(age, 95)),
                    sex,
                    "AP" if ap else "PA",
                    tuple(f for f in FINDINGS if f in found),
                    width,
                    height,
                    spacing,
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "image_id",
            "patient_id",
            "follow_up",
            "age",
            "sex",
            "view",
            "findings",
            "orig_width",
            "orig_height",
            "spacing",
        ],
    )


_SCANNER_P = np.array([s[3] for s in SCANNERS], float) / sum(s[3] for s in SCANNERS)

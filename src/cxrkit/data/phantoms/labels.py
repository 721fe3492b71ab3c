"""Phantom label noise and radiologists: NIH-style text-mined labels and expert files.

A phantom knows every image's true findings (what :func:`cxrkit.data.phantoms.render_phantom`
drew). NIH's labels were text-mined from reports and are wrong in both directions, so a
phantom release that published the truth in ``Data_Entry_2017.csv`` would hide the
problem that Google's radiologists' labels expose. :func:`noisy_findings` turns the truth
into NIH-style labels: per finding, a true finding is *missed* with probability ``miss``
and an absent one is *falsely* labelled with probability ``false_alarm``, independently per
image (so the label error is independent of the pixels, given the truth).

Presets (:data:`NOISE_PRESETS`):

* ``"moderate"`` (the default): miss 0.30 and false alarm 0.02 for every finding. At the
  phantoms' ~5% prevalence this makes NIH's label disagree with the truth on ~3.4% of
  images per finding, against 5.9% (Pneumothorax) and 12.5% (Nodule or mass) measured
  between NIH and Google's radiologists on the 4,376 real four-findings images: milder
  than measured, because a demo-sized release (a few thousand images) must still teach a
  small CNN every finding.
* ``"measured"``: the per-finding miss and false-alarm rates of NIH's label against the
  majority of three radiologists on the 810 real all-findings images
  (:data:`MEASURED_NOISE`; tests/test_expert.py recomputes them from the real files),
  except findings with under 30 radiologist-positive images there (Pneumonia 2, Hernia 5,
  Emphysema 7, Fibrosis 13, Edema 23), which keep the moderate rates. Real-world noise:
  most true findings are missed (0.44-0.86), which a small phantom release barely learns.
* ``"none"``: NIH's labels are the truth.

:func:`write_expert_files` writes the truth for a subset of test and train_val images as
Google's expert files (same names, columns and values; see :mod:`cxrkit.data.expert`) into
``four_findings_expert_labels/`` and ``all_findings_expert_labels/`` at the release root,
with simulated readers (:data:`READERS`), each with their own sensitivity and false-alarm
rate per finding. The adjudicated / majority files hold the truth itself (a perfect
adjudication), so "against the radiologists" means "against the truth" on phantoms.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import atomic_path
from cxrkit.data.expert import ALL_FINDINGS, FILES, FOLDER_NAMES, FOUR_FINDINGS, MAPPINGS
from cxrkit.labels import FINDINGS, NO_FINDING

#: NIH vs the majority of three radiologists on the 810 real all-findings images:
#: (miss = P(NIH no | radiologists yes), false alarm = P(NIH yes | radiologists no),
#: radiologist-positive images).
MEASURED_NOISE: dict[str, tuple[float, float, int]] = {
    "Atelectasis": (0.776, 0.067, 303),
    "Cardiomegaly": (0.728, 0.018, 81),
    "Effusion": (0.624, 0.082, 226),
    "Infiltration": (0.787, 0.121, 61),
    "Mass": (0.667, 0.035, 99),
    "Nodule": (0.708, 0.046, 130),
    "Pneumonia": (1.000, 0.015, 2),
    "Pneumothorax": (0.441, 0.056, 136),
    "Consolidation": (0.855, 0.034, 83),
    "Edema": (1.000, 0.010, 23),
    "Emphysema": (0.857, 0.047, 7),
    "Fibrosis": (0.923, 0.025, 13),
    "Pleural_Thickening": (0.796, 0.041, 49),
    "Hernia": (0.600, 0.002, 5),
}
MODERATE = (0.30, 0.02)
MIN_MEASURED_POSITIVES = 30
NOISE_PRESETS = {
    "none": {f: (0.0, 0.0) for f in FINDINGS},
    "moderate": {f: MODERATE for f in FINDINGS},
    "measured": {
        f: (m, fa) if n >= MIN_MEASURED_POSITIVES else MODERATE
        for f, (m, fa, n) in MEASURED_NOISE.items()
    },
}
#: Simulated readers: (number in the four-findings test cohort, in the validation cohort,
#: readers per four-findings image, all-findings readers); per reader and finding a
#: sensitivity in SENSITIVITY and a false-alarm rate in FALSE_ALARM (uniform), and a
#: HEDGE (uncertain) call with probability HEDGE where Google allowed it.
READERS = (8, 8, 3, 5)
SENSITIVITY = (0.70, 0.95)
FALSE_ALARM = (0.01, 0.05)
HEDGE = 0.04
#: Share of test-list / train_val images given four-findings expert labels (all-findings:
#: the PA images among the chosen test images, as Google's 810 are).
EXPERT_FRACTION = (0.6, 0.25)


def _stream(seed: int, *key: int) -> np.random.Generator:
    """Streams disjoint from :mod:`cxrkit.data.phantoms`' (keys 3 and up)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def resolve_noise(noise) -> dict[str, tuple[float, float]]:
    """A preset name, None (= "none"), or ``{"miss": x, "false_alarm": y}`` with numbers or
    per-finding dicts -> ``{finding: (miss, false_alarm)}``."""
    if noise is None:
        noise = "none"
    if isinstance(noise, str):
        if noise not in NOISE_PRESETS:
            raise ValueError(
                f"label noise must be one of {', '.join(NOISE_PRESETS)} or "
                f"{{'miss': ..., 'false_alarm': ...}}, got {noise!r}"
            )
        return dict(NOISE_PRESETS[noise])
    if not isinstance(noise, dict) or set(noise) != {"miss", "false_alarm"}:
        raise ValueError(f"label noise dict needs exactly 'miss' and 'false_alarm', got {noise!r}")
    out: dict = {}
    for f in FINDINGS:
        pair = tuple(
            float(v[f] if isinstance(v, dict) else v) for v in (noise["miss"], noise["false_alarm"])
        )
        if not all(0.0 <= p <= 1.0 for p in pair):
            raise ValueError(f"label noise rates for {f} must be in [0, 1], got {pair}")
        out[f] = pair
    return out


def describe_noise(noise) -> dict:
    """What the manifest records: the preset (or "custom") and the rates used."""
    rates = resolve_noise(noise)
    name = noise if isinstance(noise, str) else ("none" if noise is None else "custom")
    return {
        "preset": name,
        "miss": {f: r[0] for f, r in rates.items()},
        "false_alarm": {f: r[1] for f, r in rates.items()},
    }


def noisy_findings(cohort: pd.DataFrame, noise, seed: int) -> list[tuple[str, ...]]:
    """NIH-style labels for each image of ``cohort`` (from its true ``findings``).

    Each image draws from its own stream ``(patient, 3, follow_up)``, so an image's label
    errors do not depend on the release's size.
    """
    rates = resolve_noise(noise)
    miss = np.array([rates[f][0] for f in FINDINGS])
    fa = np.array([rates[f][1] for f in FINDINGS])
    out = []
    for pid, k, truth in zip(cohort["patient_id"], cohort["follow_up"], cohort["findings"]):
        u = _stream(seed, int(pid), 3, int(k)).uniform(size=len(FINDINGS))
        present = np.array([f in truth for f in FINDINGS])
        label = np.where(present, u >= miss, u < fa)
        out.append(tuple(f for f, y in zip(FINDINGS, label) if y))
    return out


def _yes(flag) -> str:
    return "YES" if flag else "NO"


def _four_truth(findings) -> dict[str, bool]:
    out = {"Fracture": False}  # phantoms draw no fractures
    for m in MAPPINGS["four_findings"]:
        if m.nih:
            out[m.expert] = any(f in findings for f in m.nih)
    return out


def _all_truth(findings) -> dict[str, bool]:
    out = {"Abnormal": bool(findings), "Other": False}
    out.update({f.replace("_", " "): f in findings for f in FINDINGS})
    return out


def _read(truth: bool, sens: float, fa: float, rng: np.random.Generator) -> bool:
    return bool(rng.uniform() < (sens if truth else fa))


def _reader_rates(rng: np.random.Generator, findings) -> dict[str, tuple[float, float]]:
    return {f: (rng.uniform(*SENSITIVITY), rng.uniform(*FALSE_ALARM)) for f in findings}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="ascii") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


FOUR_HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    *FOUR_FINDINGS,
    "Set Id",
]


def _write_four_findings(
    folder: Path, cohort: pd.DataFrame, published: pd.Series, chosen: dict, rng
) -> dict[str, int]:
    """The four-findings set: its test and validation files (the ``chosen`` images, with
    NIH's published labels and the adjudicated truth) and the readers' file (three of
    each part's readers per image); returns how many images each part holds."""
    counts: dict[str, int] = {}
    reader_rows: list[list] = []
    cohorts = {"test": (9_100_000_001, READERS[0]), "val": (9_200_000_001, READERS[1])}
    for part, (first_id, n_readers) in cohorts.items():
        rates = [_reader_rates(rng, FOUR_FINDINGS) for _ in range(n_readers)]
        rows = []
        for i in np.flatnonzero(chosen[part]):
            r = cohort.iloc[i]
            truth = _four_truth(r["findings"])
            rows.append(
                [
                    r["image_id"],
                    published.iloc[i],
                    r["follow_up"],
                    r["patient_id"],
                    r["age"],
                    r["sex"],
                    r["view"],
                    r["orig_width"],
                    r["orig_height"],
                    r["spacing"],
                    r["spacing"],
                    *(_yes(truth[f]) for f in FOUR_FINDINGS),
                    part,
                ]
            )
            for j in sorted(rng.choice(n_readers, size=READERS[2], replace=False)):
                calls = []
                for f in FOUR_FINDINGS:
                    sens, fa = rates[j][f]
                    call = _yes(_read(truth[f], sens, fa, rng))
                    if f in ("Pneumothorax", "Nodule or mass") and rng.uniform() < HEDGE:
                        call = "HEDGE"
                    calls.append(call)
                reader_rows.append(
                    [r["patient_id"], r["image_id"], first_id + int(j), *calls, part]
                )
        _write_csv(folder / FILES["four_findings"][part][0], FOUR_HEADER, rows)
        counts[f"four_findings/{part}"] = len(rows)
    _write_csv(
        folder / FILES["four_findings"]["readers"][0],
        [
            "Patient ID",
            "Image ID",
            "Reader ID",
            "Fracture",
            "Pneumothorax",
            "Airspace opacity",
            "Nodule/mass",
            "Set ID",
        ],
        reader_rows,
    )
    return counts


def _write_all_findings(folder: Path, cohort: pd.DataFrame, pa: np.ndarray, rng) -> int:
    """The all-findings set: the ``pa`` images with their truth, five readers each;
    returns how many images it holds."""
    rates = [_reader_rates(rng, ALL_FINDINGS[1:-1]) for _ in range(READERS[3])]
    rows, reader_rows = [], []
    for i in np.flatnonzero(pa):
        r = cohort.iloc[i]
        truth = _all_truth(r["findings"])
        rows.append([r["image_id"], r["patient_id"], *(_yes(truth[f]) for f in ALL_FINDINGS)])
        for j in range(READERS[3]):
            read = {f: _read(truth[f], *rates[j][f], rng) for f in ALL_FINDINGS[1:-1]}
            abnormal = any(read.values())
            reader_rows.append(
                [
                    r["image_id"],
                    r["patient_id"],
                    9_300_000_001 + j,
                    int(abnormal),
                    *(_yes(read[f]) for f in ALL_FINDINGS[1:-1]),
                    "NO",
                ]
            )
    _write_csv(
        folder / FILES["all_findings"]["test"][0], ["Image ID", "Patient ID", *ALL_FINDINGS], rows
    )
    _write_csv(
        folder / FILES["all_findings"]["readers"][0],
        ["Image ID", "Patient ID", "Reader ID", *ALL_FINDINGS],
        reader_rows,
    )
    return len(rows)


def write_expert_files(
    root: str | Path,
    cohort: pd.DataFrame,
    noisy: list[tuple[str, ...]],
    test: set[str],
    *,
    seed: int,
    fraction: tuple[float, float] = EXPERT_FRACTION,
) -> dict[str, int]:
    """Google-format expert files for a share of the test / train_val images of a phantom
    release (see the module docstring); returns how many images each file holds.

    ``fraction = (0, 0)`` writes none (and removes any left from an earlier release).
    """
    root = Path(root)
    for names in FOLDER_NAMES.values():
        shutil.rmtree(root / names[0], ignore_errors=True)
    if not 0 <= fraction[0] <= 1 or not 0 <= fraction[1] <= 1:
        raise ValueError(f"expert fractions must be in [0, 1], got {fraction}")
    pick = _stream(seed, 0, 3).uniform(size=len(cohort))
    in_test = cohort["image_id"].isin(test).to_numpy()
    chosen = {"test": in_test & (pick < fraction[0]), "val": ~in_test & (pick < fraction[1])}
    if not all(c.any() for c in chosen.values()):
        return {}  # too small a release for both files (Google's set has both)
    published = pd.Series(["|".join(sorted(n)) or NO_FINDING for n in noisy], index=cohort.index)
    four = root / FOLDER_NAMES["four_findings"][0]
    every = root / FOLDER_NAMES["all_findings"][0]
    four.mkdir(parents=True, exist_ok=True)
    every.mkdir(parents=True, exist_ok=True)
    rng = _stream(seed, 0, 4)
    counts = _write_four_findings(four, cohort, published, chosen, rng)
    # all findings: the PA images among the chosen test images, five readers each
    pa = chosen["test"] & (cohort["view"] == "PA").to_numpy()
    if not pa.any():
        shutil.rmtree(every)
        return counts
    counts["all_findings/test"] = _write_all_findings(every, cohort, pa, rng)
    return counts


__all__ = [
    "EXPERT_FRACTION",
    "MEASURED_NOISE",
    "NOISE_PRESETS",
    "READERS",
    "describe_noise",
    "noisy_findings",
    "resolve_noise",
    "write_expert_files",
]

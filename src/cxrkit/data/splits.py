"""Patient-disjoint splits: the official NIH split and grouped random splits.

Why patients, not images: ChestX-ray14 has up to 184 images per patient. A split by image
puts follow-ups of one patient on both sides and inflates AUROC. Every split here assigns
whole patients, and :func:`check_leakage` raises if any patient crosses a split.

Protocols
---------
``official``
    test = NIH's ``test_list.txt``; validation carved out of ``train_val_list.txt`` by
    patient. All 880 images with boxes are in the official test list.
``random``
    a patient-grouped train/val/test split of every image, for CheXNet-style protocols
    (CheXNet used 70/10/20 by patient).

Stratification: :func:`sklearn.model_selection.StratifiedGroupKFold` stratifies one
label and only gives fractions of 1/k, so cxrkit assigns patients greedily, rarest
finding first, towards each split's target share of every finding (the multi-label
"iterative stratification" idea of Sechidis et al. 2011, at patient level). It is
deterministic for a seed and never touches the global RNG.

A split is a CSV (``image_id, patient_id, split``) with a JSON sidecar saying how it was
made; later stages reload it with :func:`load_split`, which re-checks leakage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.artefacts import file_sha256, read_csv, read_json, write_csv, write_json
from cxrkit.labels import FINDINGS
from cxrkit.messages import quote

SPLITS = ("train", "val", "test")


class LeakageError(ValueError):
    """A patient appears in more than one split."""


def _assign_patients(
    labels: pd.DataFrame, targets: dict[str, float], seed: int, findings=FINDINGS
) -> pd.Series:
    """Greedy multi-label stratified assignment of patients to splits.

    ``targets`` maps split name -> fraction of images (sums to 1). Patients are visited
    rarest finding first (random order within ties, from ``seed``); each goes to the split
    whose deficit on that patient's findings (and on image count) is largest.
    Returns a Series patient_id -> split name.
    """
    names = list(targets)
    frac = np.array([targets[n] for n in names], dtype=float)
    if np.any(frac < 0) or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {targets}")
    per_patient = labels.groupby("patient_id", sort=True)[list(findings)].sum()
    n_images = labels.groupby("patient_id", sort=True).size().to_numpy().astype(float)
    pos = per_patient.to_numpy().astype(float)  # (P, F) positives per patient
    totals = np.concatenate([pos.sum(0), [n_images.sum()]])  # per finding, then images
    want = frac[:, None] * totals[None, :]  # (S, F+1) target counts
    have = np.zeros_like(want)
    rng = np.random.default_rng(seed)
    prevalence = np.where(pos.sum(0) > 0, pos.sum(0), np.inf)
    has = pos > 0
    # rarity key: prevalence of the rarest finding the patient has (no finding -> inf)
    rarest = np.where(has, prevalence[None, :], np.inf).min(1)
    order = np.lexsort((rng.random(len(pos)), -n_images, rarest))
    assigned = np.empty(len(pos), dtype=np.int64)
    for p in order:
        cols = np.flatnonzero(has[p])
        cols = np.append(cols, len(totals) - 1)  # image count always counts
        deficit = (want[:, cols] - have[:, cols]) / np.maximum(want[:, cols], 1e-9)
        score = deficit.mean(1)
        score[frac == 0] = -np.inf
        s = int(np.argmax(score))
        assigned[p] = s
        have[s, :-1] += pos[p]
        have[s, -1] += n_images[p]
    return pd.Series(np.array(names)[assigned], index=per_patient.index, name="split")


def official_split(
    labels: pd.DataFrame,
    train_val: list[str],
    test: list[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    findings=FINDINGS,
) -> pd.DataFrame:
    """NIH's split: ``test_list.txt`` as test, a patient-grouped val out of train_val.

    Raises :class:`LeakageError` if NIH's own lists share a patient, and ``ValueError``
    if a label-file image is in neither list or in both.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tv, te = pd.Index(train_val), pd.Index(test)
    both = tv.intersection(te)
    if len(both):
        raise ValueError(
            f"{len(both)} images are in both train_val and test, e.g. {list(both[:5])}"
        )
    ids = pd.Index(labels["image_id"])
    neither = ids.difference(tv.union(te))
    if len(neither):
        raise ValueError(
            f"{len(neither)} label-file images are in neither list, e.g. {list(neither[:5])}"
        )
    out = labels[["image_id", "patient_id"]].copy()
    in_test = out["image_id"].isin(te).to_numpy()
    out["split"] = np.where(in_test, "test", "train")
    tv_rows = labels.loc[~in_test]
    if val_fraction > 0 and len(tv_rows):
        per_patient = _assign_patients(
            tv_rows, {"train": 1 - val_fraction, "val": val_fraction}, seed, findings
        )
        out.loc[~in_test, "split"] = tv_rows["patient_id"].map(per_patient).to_numpy()
    check_leakage(out)
    return out.reset_index(drop=True)


def random_split(
    labels: pd.DataFrame, *, fractions=(0.7, 0.1, 0.2), seed: int = 0, findings=FINDINGS
) -> pd.DataFrame:
    """A patient-grouped, stratified train/val/test split of every image."""
    targets = dict(zip(SPLITS, map(float, fractions), strict=True))
    per_patient = _assign_patients(labels, targets, seed, findings)
    out = labels[["image_id", "patient_id"]].copy()
    out["split"] = out["patient_id"].map(per_patient).to_numpy()
    check_leakage(out)
    return out.reset_index(drop=True)


def check_leakage(split: pd.DataFrame) -> None:
    """Raise :class:`LeakageError` naming patients that appear in more than one split."""
    n_splits = split.groupby("patient_id")["split"].nunique()
    crossing = n_splits[n_splits > 1]
    if len(crossing):
        examples = []
        for pid in crossing.index[:5]:
            where = split.loc[split["patient_id"] == pid].groupby("split")["image_id"].first()
            examples.append(f"patient {pid}: " + ", ".join(f"{s} ({i})" for s, i in where.items()))
        raise LeakageError(f"{len(crossing)} patient(s) cross splits: " + "; ".join(examples))


def split_summary(split: pd.DataFrame, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Images, patients and (with ``labels``) positives per finding, per split."""
    rows = {}
    for name, part in split.groupby("split", sort=False):
        row = {"images": len(part), "patients": part["patient_id"].nunique()}
        if labels is not None:
            sub = labels.loc[labels["image_id"].isin(part["image_id"])]
            row.update({f: int(sub[f].sum()) for f in FINDINGS if f in sub})
        rows[name] = row
    order = [s for s in SPLITS if s in rows] + [s for s in rows if s not in SPLITS]
    return pd.DataFrame(rows).T.loc[order]


def save_split(split: pd.DataFrame, path: str | Path, **provenance) -> Path:
    """Write the split CSV and a ``.json`` sidecar (protocol, seed, inputs, counts, hash)."""
    check_leakage(split)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(split[["image_id", "patient_id", "split"]], path)
    meta = {
        **provenance,
        "sha256": file_sha256(path),
        "counts": {k: int(v) for k, v in split["split"].value_counts().items()},
        "patients": {k: int(v) for k, v in split.groupby("split")["patient_id"].nunique().items()},
    }
    write_json(meta, path.with_suffix(".json"))
    return path


def load_split(path: str | Path) -> pd.DataFrame:
    """Read a split written by :func:`save_split`; checks columns, values and leakage."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file not found: {path} (make one with `cxrkit split`)")
    split = read_csv(path, dtype={"image_id": str, "split": str})
    missing = {"image_id", "patient_id", "split"} - set(split.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    bad = ~split["split"].isin(SPLITS)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{path}, line {i + 2}, field 'split': {quote(split['split'].iloc[i])} "
            f"is not one of {list(SPLITS)}"
        )
    check_leakage(split)
    return split


def split_provenance(path: str | Path) -> dict:
    """The JSON sidecar of a split file ({} if absent)."""
    side = Path(path).with_suffix(".json")
    return read_json(side, missing={})


def box_fold(
    split: pd.DataFrame, boxes: pd.DataFrame, *, fraction: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move a patient-grouped share of the *test* box images' patients into train.

    Under NIH's official split every box image is a test image, so a model that fits
    anything to boxes (``gaussian_attention``'s priors, box supervision) would learn from
    test images. A box fold moves ``fraction`` of the test patients who have boxes --
    with all their test images, so no patient straddles train and test -- into train;
    the other box images stay in test and are the only ones a localisation score may use.

    Returns ``(new_split, moved)`` where ``moved`` lists every image that changed split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"box fold fraction must be in (0, 1), got {fraction}")
    test = split["split"] == "test"
    boxed = split["image_id"].isin(pd.Index(boxes["image_id"]))
    patients = np.sort(split.loc[test & boxed, "patient_id"].unique())
    if len(patients) == 0:
        raise ValueError("no box image is in the test split: nothing to fold")
    rng = np.random.default_rng(seed)
    n_move = max(1, int(round(fraction * len(patients))))
    chosen = rng.choice(patients, size=n_move, replace=False)
    move = test & split["patient_id"].isin(chosen)
    out = split.copy()
    out.loc[move, "split"] = "train"
    check_leakage(out)
    moved = split.loc[move, ["image_id", "patient_id"]].assign(old_split="test", new_split="train")
    return out, moved.reset_index(drop=True)

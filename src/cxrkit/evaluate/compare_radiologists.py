"""``cxrkit compare``'s "Against radiologists" table: each run scored against the radiologists.

For every run whose evaluation folder has ``radiologists.json`` (``cxrkit evaluate`` wrote
it because Google's expert labels were found), one row per expert set and finding: each
run's AUROC against the radiologists and against NIH's labels on the same images, and, when
a run and the first were scored on the same expert images, the difference of their AUROCs
against the radiologists with a paired patient-bootstrap interval
(:func:`cxrkit.metrics.paired_auroc_difference`, from ``radiologists_images.csv``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.evaluate.radiologists import read_section
from cxrkit.evaluate.text import format_ci
from cxrkit.metrics import paired_auroc_difference


def _ci(rec: dict | None) -> str:
    return format_ci(rec, missing="—")


def radiologists_comparison(
    runs: list[tuple[str, Path]], *, bootstrap: int = 1000, seed: int = 0
) -> tuple[pd.DataFrame, list[str]]:
    """``runs``: (name, evaluation folder), the first is the baseline. Empty table when no
    run was evaluated against radiologists."""
    loaded = [(name, read_section(folder)) for name, folder in runs]
    if not any(x is not None for _, x in loaded):
        return pd.DataFrame(), []
    rows: dict[tuple[str, str], dict] = {}
    notes = []
    base_name, base = loaded[0]
    for name, x in loaded:
        if x is None:
            notes.append(
                f"{name}: not evaluated against radiologists (no expert labels found "
                "when it was evaluated, or --reference nih)."
            )
            continue
        section, images = x
        for set_name, rec in section["sets"].items():
            for f in rec["findings"]:
                if not f["predicted"]:
                    continue
                row = rows.setdefault(
                    (set_name, f["finding"]), {"set": set_name, "finding": f["finding"]}
                )
                row[f"{name}: vs radiologists"] = _ci(f.get("auroc_radiologists"))
                row[f"{name}: vs NIH"] = _ci(f.get("auroc_nih"))
                if name != base_name and base is not None:
                    row[f"Δ {name} - {base_name} (vs radiologists)"] = _paired(
                        base[1], images, set_name, f["finding"], bootstrap, seed
                    )
    notes.append(
        "Δ: difference of AUROCs against the radiologists, 95% paired patient-bootstrap "
        "interval, on the expert images both entries scored (their number is given "
        "when it is fewer than either scored); n/a where they share none."
    )
    return pd.DataFrame(list(rows.values())), notes


def _paired(
    a: pd.DataFrame, b: pd.DataFrame, set_name: str, finding: str, n: int, seed: int
) -> str:
    """The paired difference on the expert images both entries scored (how many, said)."""
    pick = lambda t: t[(t["set"] == set_name) & (t["finding"] == finding)]  # noqa: E731
    ta, tb = pick(a), pick(b)
    shared = sorted(set(ta["image_id"]) & set(tb["image_id"]))
    every = len(shared) == len(set(ta["image_id"]) | set(tb["image_id"]))
    if not shared:
        return "n/a (no shared images)"
    ta = ta.set_index("image_id").loc[shared].reset_index()
    tb = tb.set_index("image_id").loc[shared].reset_index()
    if not np.array_equal(ta["radiologists"].to_numpy(), tb["radiologists"].to_numpy()):
        return "n/a (other labels)"
    d = paired_auroc_difference(
        tb["radiologists"].to_numpy(float)[:, None],
        ta["score"].to_numpy(float)[:, None],
        tb["score"].to_numpy(float)[:, None],
        tb["patient_id"].astype(str).to_numpy(),
        n=n,
        seed=seed,
    )
    text = format_ci(
        {"value": d["value"][0], "lo": d["lo"][0], "hi": d["hi"][0]}, signed=True, star=True
    )
    return text if every else f"{text} (on {len(shared):,} shared images)"


__all__ = ["radiologists_comparison"]

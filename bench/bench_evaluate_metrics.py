"""CPU seconds of evaluate's work after the forward passes, at NIH's test-list size.

``cxrkit evaluate`` on the full twin spends most of its time in forward passes; this
times the rest (patient-bootstrap ranking with 1,000 resamples, thresholds, calibration,
subgroups with 200 resamples each) on synthetic predictions of N images (default 25,596,
2,797 patients as in NIH's test list; 8 % positives per finding), in this process, so
that it can be measured when a full evaluate does not fit the time available.

    python bench/bench_evaluate_metrics.py [N ...]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from cxrkit.evaluate import core
from cxrkit.evaluate.predictions import Predictions
from cxrkit.labels import FINDINGS


def run(n: int) -> dict:
    patients = max(1, n * 2797 // 25596)
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(n, 14)) < 0.08).astype(float)
    table = pd.DataFrame(
        {
            "image_id": [f"{i:08d}.png" for i in range(n)],
            "patient_id": np.sort(rng.integers(0, patients, n)),
            "age": rng.uniform(10, 90, n),
            "sex": rng.choice(["M", "F"], n),
            "view": rng.choice(["PA", "AP"], n),
        }
    )
    test = Predictions("test", table, labels, rng.normal(size=(n, 14)) + labels)
    k = n // 3  # a validation split a third the size, as NIH's official val is
    fit = Predictions("val", table.iloc[:k].reset_index(drop=True), labels[:k], test.logits[:k])
    f = list(FINDINGS)
    out = {}
    for name, fn in (
        ("ranking", lambda: core.ranking_section(test, f, n=1000, seed=0)),
        ("thresholds", lambda: core.threshold_section(fit, test, f)),
        ("calibration", lambda: core.calibration_section(fit, test, f, temperature=True)),
        ("subgroups", lambda: core.subgroup_rows(test, f, n=200, seed=0)),
    ):
        c0 = time.process_time()
        fn()
        out[name] = round(time.process_time() - c0, 2)
    out["total"] = round(sum(out.values()), 2)
    return out


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [2560, 25596]
    print(
        "| images | "
        + " | ".join(("ranking", "thresholds", "calibration", "subgroups", "total"))
        + " (CPU s) |"
    )
    print("|---|---|---|---|---|---|")
    for n in sizes:
        r = run(n)
        print(f"| {n:,} | " + " | ".join(str(v) for v in r.values()) + " |", flush=True)

"""Prediction throughput on real NIH files: one image at a time vs batched torch vs ONNX.

All three decode the same real PNGs from ``../shared/nih/images_256`` with the
checkpoint's own preprocessing and return the same probabilities (checked here):

* ``per-image torch``  what a notebook does: ``cxrkit.load(ck).predict(path)`` per file
  (batch of one) -- the baseline;
* ``predict torch``    ``cxrkit predict`` (``predict_files``): batches of ``--batch``;
* ``predict onnx``     the same through the ONNX export and onnxruntime (no torch).

The model is an untrained DenseNet121 (``model.freeze=no-train``, random init; speed does
not depend on the weights) made from the real sample, so the bench needs no download.

    python bench/bench_predict.py [--images 256] [--batch 16] [--model densenet121]

Prints images/s and the ratio to the per-image baseline, run in the same process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
NIH = Path(os.environ.get("CXRKIT_NIH_SAMPLE", REPO.parent / "shared" / "nih"))


def make_checkpoint(work: Path, model: str) -> Path:
    """An untrained ``model`` checkpoint on the real sample (cache 256 px, official split)."""
    from cxrkit.config import load_config
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.prepare import prepare
    from cxrkit.engine.train import fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'dropped 110,331 label-file images not on disk'
        prep = prepare(NIH, work / "prepared", images_root=NIH / "images_256",
                       label_file=NIH / "meta" / "Data_Entry_2017.csv", on_missing="drop",
                       settings=PreprocessSettings(size=256), val_fraction=0.1, progress=False)
    cfg = load_config(REPO / "configs" / "chexnet_densenet121.yaml",
                      [f"data.prepared={prep.root}", f"out={work / 'run'}", f"model.name={model}",
                       "model.pretrained=false", "model.freeze=no-train", "train.epochs=1"])
    fit(cfg, show_progress=False)
    return work / "run" / "best.pt"


def timed(fn, repeats: int = 2):
    """Best wall time of ``repeats`` calls (the first also warms caches) and the result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--model", default="densenet121")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not (NIH / "images_256").is_dir():
        print(f"real NIH sample not found at {NIH} (set CXRKIT_NIH_SAMPLE)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from cxrkit.export import export_onnx
    from cxrkit.onnx_backend import load_onnx
    from cxrkit.inference import load
    from cxrkit.predict import predict_files

    files = sorted((NIH / "images_256").glob("*.png"))[:args.images]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no thresholds: flagged at 0.5 (irrelevant here)
        ck = make_checkpoint(Path(tmp), args.model)
        rec = export_onnx(ck, parity_images=files[:4])
        lm, onnx_model = load(ck), load_onnx(rec["path"])

        def per_image():
            return np.concatenate([lm.predict(str(f)).to_numpy() for f in files])

        variants = {
            "per-image torch (baseline)": per_image,
            f"predict torch, batch {args.batch}": lambda: predict_files(
                lm, files, batch_size=args.batch, progress=False).probabilities,
            f"predict onnx, batch {args.batch}": lambda: predict_files(
                onnx_model, files, batch_size=args.batch, progress=False).probabilities,
        }
        results = {name: timed(fn) for name, fn in variants.items()}

    base_name = next(iter(results))
    base_s, base_p = results[base_name]
    print(f"\n## Prediction on {len(files)} real NIH PNGs (256 px files), {args.model} at "
          f"{lm.input_size} px, {torch.get_num_threads()} torch threads; ONNX parity "
          f"max |dp| {rec['parity']['max_abs_diff_probability']:.1e}\n")
    print("| variant | seconds | images/s | ratio | max abs prob. diff vs baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, (s, p) in results.items():
        diff = float(np.max(np.abs(np.asarray(p) - base_p)))
        print(f"| {name} | {s:.2f} | {len(files) / s:.1f} | {base_s / s:.2f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

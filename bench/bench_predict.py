"""Inference speed on real NIH files: fp32 eager vs cxrkit's fast paths, and predict start-up.

**Throughput** (one process, same images, ratios against fp32 eager run in the same run):
for each precision of :mod:`cxrkit.inference.runtime` -- ``fp32`` (torch fp32 eager, the baseline),
``bf16`` (autocast + channels_last, where the CPU has bf16) and ``onnxruntime`` (what
``auto`` picks on the CPU) --

* ``evaluate``: :func:`cxrkit.evaluate.predictions.predict_split`, i.e. what
  ``cxrkit evaluate`` runs over the sample's official test list (785 images; the cache,
  loader, tensor stage and forward pass), with the mean AUROC to three decimals;
* ``predict``: :func:`cxrkit.inference.predict.predict_files` on ``--images`` real 256 px PNGs
  (decode, cache stage, batches of ``--batch``), what ``cxrkit predict`` runs,

each with its max |dp| against fp32. The model is DenseNet121 at 224 px (CheXNet recipe),
trained ``--train-epochs`` from random init on the sample's train_val images (ImageNet
weights need a download) so that AUROC means something, or ``--checkpoint RUN``.

**Start-up** (``--startup``): one image through ``cxrkit predict`` in a fresh process,
process start to CSV, ``--startup-runs`` times, median and min: the ONNX backend (the
``cxrkit export`` file) and the torch backend (fp32, and auto with its cached export).

    python bench/bench_predict.py [--checkpoint RUN] [--images 128] [--startup]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
NIH = Path(os.environ.get("CXRKIT_NIH_SAMPLE", REPO.parent / "shared" / "nih"))


def make_checkpoint(work: Path, model: str, *, epochs: int = 0) -> Path:
    """A ``model`` checkpoint on the real sample (cache 256 px, official split).

    ``epochs=0``: untrained (random init, ``model.freeze=no-train``; speed does not depend
    on the weights). ``epochs>0``: trained that long from random init on the sample's
    train_val images (ImageNet weights need a download), so that AUROC means something.
    """
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
                       "model.pretrained=false", f"train.epochs={max(epochs, 1)}",
                       *(["model.freeze=no-train"] if epochs == 0 else [])])
    fit(cfg, show_progress=False)
    return work / "run" / "best.pt"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def throughput(ck: Path, files: list[Path], args) -> list[dict]:
    from cxrkit.evaluate.predictions import predict_split
    from cxrkit.inference import load
    from cxrkit.inference.heldout import load_held_out
    from cxrkit.inference.predict import predict_files
    from cxrkit.inference.runtime import cpu_has_bf16
    from cxrkit.metrics import auroc_per_finding, mean_defined, sigmoid

    names = ["fp32", *(["bf16"] if cpu_has_bf16() else []), "onnxruntime"]
    models, load_s = {}, {}
    for name in names:
        load_s[name], models[name] = timed(lambda n=name: load(ck, precision=n))
    data = load_held_out(models["fp32"])
    if args.test_images:  # a quick look: the first N test images by name
        test = data.split.loc[data.split["split"] == "test", "image_id"]
        keep = set(sorted(set(test) & set(data.prepared.cache.ids))[:args.test_images])
        data.split = data.split.loc[(data.split["split"] != "test")
                                    | data.split["image_id"].isin(keep)]
    best: dict[tuple, float] = {}
    outs: dict[tuple, np.ndarray] = {}
    labels = None
    for _ in range(args.repeats):          # interleaved: the machine is shared and noisy
        for name in names:
            lm = models[name]
            s, pred = timed(lambda: predict_split(lm, data, "test", batch_size=64,
                                                  progress=False))
            labels = pred.labels
            best[name, "evaluate"] = min(best.get((name, "evaluate"), 1e9), s)
            outs[name, "evaluate"] = sigmoid(pred.logits)
            s, res = timed(lambda: predict_files(lm, files, batch_size=args.batch,
                                                 progress=False).probabilities)
            best[name, "predict"] = min(best.get((name, "predict"), 1e9), s)
            outs[name, "predict"] = res
    rows = []
    for stage, n in (("evaluate", len(labels)), ("predict", len(files))):
        for name in names:
            p = outs[name, stage]
            row = {"stage": stage, "precision": name, "n": n, "s": best[name, stage],
                   "rate": n / best[name, stage],
                   "ratio": best["fp32", stage] / best[name, stage],
                   "max_dp": float(np.max(np.abs(p - outs["fp32", stage]))),
                   "load_s": load_s[name], "record": models[name].precision}
            if stage == "evaluate":
                row["mean_auroc"] = mean_defined(auroc_per_finding(labels, p))
            rows.append(row)
    return rows


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished child processes: on a loaded machine the
    honest proxy for what a start-up costs on an idle one (wall time includes waiting)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def startup(ck: Path, image: Path, work: Path, args) -> list[dict]:
    """Median wall time of ``cxrkit predict`` on one image in fresh processes."""
    from cxrkit.inference.export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = Path(export_onnx(ck, work / "best.onnx", n_phantoms=1)["path"])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"}
    env.pop(PRECISION_ENV_NAME, None)
    cases = [("onnx backend", [str(onnx_path)]),
             ("torch backend, --precision fp32", [str(ck), "--precision", "fp32"]),
             ("torch backend, auto (cached export)", [str(ck)])]
    rows = []
    for label, argv in cases:
        times, cpu = [], []
        for i in range(args.startup_runs + 1):  # the first run warms the page cache
            out = work / f"startup-{i}.csv"
            cmd = [sys.executable, "-m", "cxrkit.cli", "predict", *argv, str(image),
                   "--out", str(out), "--no-progress"]
            t, c = time.perf_counter(), _children_cpu()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            if i:
                times.append(time.perf_counter() - t)
                cpu.append(_children_cpu() - c)
        rows.append({"case": label, "median": statistics.median(times), "min": min(times),
                     "cpu": statistics.median(cpu), "runs": len(times)})
    code = ("import sys, runpy; sys.argv = ['cxrkit'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('cxrkit.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, "predict", str(onnx_path), str(image),
                        "--out", str(work / "x.csv"), "--no-progress"],
                       capture_output=True, text=True, env=env)
    rows.append({"case": "onnx backend imports torch?", "median": None, "min": None,
                 "runs": 1, "note": "yes" if "\nTORCH" in "\n" + r.stderr else "no"})
    return rows


PRECISION_ENV_NAME = "CXRKIT_PRECISION"


def load_checkpoint_info(ck: Path) -> str:
    """How the benchmarked model was made (trained or not), for the table's title."""
    from cxrkit.engine.checkpoint import load_checkpoint

    c = load_checkpoint(ck)
    train = ((c.get("config") or {}).get("model") or {}).get("freeze")
    epoch = c.get("epoch")
    if train == "no-train":
        return "untrained (random init): AUROC is chance level, only the equality counts"
    return f"trained {0 if epoch is None else int(epoch) + 1} epoch(s) from random init"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="a trained DenseNet121 run (else trains one)")
    ap.add_argument("--train-epochs", type=int, default=1)
    ap.add_argument("--images", type=int, default=128, help="PNG files for the predict stage")
    ap.add_argument("--test-images", type=int, default=0,
                    help="evaluate only the first N test-list images (0: all 785)")
    ap.add_argument("--work", type=Path, help="keep the prepared sample and run here "
                    "(default: a temporary folder)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--startup", action="store_true", help="also measure predict start-up")
    ap.add_argument("--startup-only", action="store_true")
    ap.add_argument("--startup-runs", type=int, default=5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not (NIH / "images_256").is_dir():
        print(f"real NIH sample not found at {NIH} (set CXRKIT_NIH_SAMPLE)", file=sys.stderr)
        return 2
    files = sorted((NIH / "images_256").glob("*.png"))[:args.images]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no thresholds: flagged at 0.5 (irrelevant here)
        work = args.work or Path(tmp)
        os.environ.setdefault("CXRKIT_CACHE", str(work / "cache"))
        ck = args.checkpoint
        if ck is None:
            ck = work / "run" / "best.pt"
            if not ck.exists():
                ck = make_checkpoint(work, "densenet121", epochs=args.train_epochs)
        if ck.is_dir():
            ck = ck / "best.pt"
        load_avg = os.getloadavg()[0]
        if not args.startup_only:
            rows = throughput(ck, files, args)
            trained = (load_checkpoint_info(ck))
            print(f"\n## DenseNet121 (224 px) inference on the CPU: {torch.get_num_threads()} "
                  f"torch threads, load average {load_avg:.1f}, best of {args.repeats}; "
                  f"{trained}\n")
            print("| stage | precision | images | seconds | images/s | x fp32 eager | "
                  "max abs dp vs fp32 | mean AUROC | load s |")
            print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                auc = f"{r['mean_auroc']:.3f}" if "mean_auroc" in r else ""
                print(f"| {r['stage']} | {r['precision']} | {r['n']} | {r['s']:.1f} | "
                      f"{r['rate']:.1f} | {r['ratio']:.2f}x | {r['max_dp']:.1e} | {auc} | "
                      f"{r['load_s']:.1f} |")
            ort = next(r["record"] for r in rows if r["precision"] == "onnxruntime")
            print(f"\nonnxruntime: {ort.get('onnx')}, load-time parity max |dp| "
                  f"{ort.get('parity_max_abs_diff_probability', float('nan')):.1e}")
        if args.startup or args.startup_only:
            rows = startup(ck, files[0], Path(tmp), args)
            print(f"\n## One image through `cxrkit predict`, process start to CSV (median "
                  f"of {args.startup_runs} fresh processes, load average {os.getloadavg()[0]:.1f})\n")
            print("| case | wall s, median | wall s, min | CPU s (user+sys), median |")
            print("|---|---:|---:|---:|")
            for r in rows:
                if r["median"] is None:
                    print(f"| {r['case']} | {r['note']} | | |")
                else:
                    print(f"| {r['case']} | {r['median']:.2f} | {r['min']:.2f} | "
                          f"{r['cpu']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

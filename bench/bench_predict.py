"""Inference speed on real NIH files: fp32 eager vs cxrkit's fast paths, and predict start-up.

**Throughput** (one process, same images, ratios against fp32 eager run in the same run):
for each precision of :mod:`cxrkit.inference.runtime` -- ``fp32`` (torch fp32 eager, the baseline),
``bf16`` (autocast + channels_last, where the CPU has bf16), ``onnxruntime``, and with
OpenVINO installed ``openvino`` (fp32) and ``openvino-bf16`` (where the CPU has bf16);
the table marks the one ``auto`` picks here --

* ``forward``: the network alone (tensor-stage inputs, the cached graph or the torch
  module) at batch 1, 16 and 64 on ``--forward-images`` real test-list images, with the
  max |dp| against fp32 eager on them;

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

**Whole command** (``--command N``): ``cxrkit predict CHECKPOINT`` on N real 256 px PNGs in a
fresh process, process start to CSV, default precision against ``--precision fp32``
(``--command-runs`` each, interleaved, best and median); first the default once with an
empty graph cache, to show what a checkpoint's first run builds and says.

    python bench/bench_predict.py [--checkpoint RUN] [--images 128] [--startup] [--command 256]
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
        prep = prepare(
            NIH,
            work / "prepared",
            images_root=NIH / "images_256",
            label_file=NIH / "meta" / "Data_Entry_2017.csv",
            on_missing="drop",
            settings=PreprocessSettings(size=256),
            val_fraction=0.1,
            progress=False,
        )
    cfg = load_config(
        REPO / "configs" / "chexnet_densenet121.yaml",
        [
            f"data.prepared={prep.root}",
            f"out={work / 'run'}",
            f"model.name={model}",
            "model.pretrained=false",
            f"train.epochs={max(epochs, 1)}",
            *(["model.freeze=no-train"] if epochs == 0 else []),
        ],
    )
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
    from cxrkit.metrics import auroc_per_finding, mean_defined, sigmoid

    names = precisions()
    models, load_s = {}, {}
    for name in names:
        load_s[name], models[name] = timed(lambda n=name: load(ck, precision=n))
    auto = load(ck, precision="auto").precision["used"]
    data = load_held_out(models["fp32"], args.prepared)
    if args.test_images:  # a quick look: the first N test images by name
        test = data.split.loc[data.split["split"] == "test", "image_id"]
        keep = set(sorted(set(test) & set(data.prepared.cache.ids))[: args.test_images])
        data.split = data.split.loc[
            (data.split["split"] != "test") | data.split["image_id"].isin(keep)
        ]
    best: dict[tuple, float] = {}
    outs: dict[tuple, np.ndarray] = {}
    labels = None
    for _ in range(args.repeats):  # interleaved: the machine is shared and noisy
        for name in names:
            lm = models[name]
            s, pred = timed(lambda: predict_split(lm, data, "test", batch_size=64, progress=False))
            labels = pred.labels
            best[name, "evaluate"] = min(best.get((name, "evaluate"), 1e9), s)
            outs[name, "evaluate"] = sigmoid(pred.logits)
            s, res = timed(
                lambda: (
                    predict_files(lm, files, batch_size=args.batch, progress=False).probabilities
                )
            )
            best[name, "predict"] = min(best.get((name, "predict"), 1e9), s)
            outs[name, "predict"] = res
    rows = []
    for stage, n in (("evaluate", len(labels)), ("predict", len(files))):
        for name in names:
            p = outs[name, stage]
            row = {
                "stage": stage,
                "precision": name,
                "n": n,
                "s": best[name, stage],
                "rate": n / best[name, stage],
                "ratio": best["fp32", stage] / best[name, stage],
                "max_dp": float(np.max(np.abs(p - outs["fp32", stage]))),
                "load_s": load_s[name],
                "record": models[name].precision,
            }
            if stage == "evaluate":
                row["mean_auroc"] = mean_defined(auroc_per_finding(labels, p))
            row["auto"] = name == auto
            rows.append(row)
    for r in rows:
        if "mean_auroc" in r:
            r["d_auroc"] = r["mean_auroc"] - rows[0]["mean_auroc"]
    return rows


def precisions() -> list[str]:
    """The precisions this machine runs (see the module docstring)."""
    from cxrkit.inference.runtime import cpu_has_bf16

    names = ["fp32", *(["bf16"] if cpu_has_bf16() else []), "onnxruntime"]
    try:
        from cxrkit.inference.openvino_engine import cpu_has_bf16 as ov_bf16

        names += ["openvino", *(["openvino-bf16"] if ov_bf16() else [])]
    except ImportError as e:
        print(f"note: {e}", file=sys.stderr)
    return names


def forward(ck: Path, files: list[Path], args) -> list[dict]:
    """The network alone at batch 1/16/64 on the same real images, best of ``repeats``."""
    from cxrkit.inference import load

    names = precisions()
    models = {n: load(ck, precision=n) for n in names}
    auto = load(ck, precision="auto").precision["used"]
    ref = models["fp32"]
    x = ref.transform(ref.load_images(files))
    meta = ref._meta(len(files), None)
    rows, probs = [], {}
    for b in args.forward_batches:
        n = len(files) if b > 1 else min(len(files), 16)
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name in names:
                fwd = models[name].forward
                fwd(x[:b], None if meta is None else meta[:b])  # warm this batch size
                t = time.perf_counter()
                out = [
                    fwd(x[i : i + b], None if meta is None else meta[i : i + b])[0]
                    for i in range(0, n, b)
                ]
                best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
                if b == args.forward_batches[-1]:
                    probs[name] = torch.sigmoid(torch.cat(out)).numpy()
        for name in names:
            rows.append(
                {
                    "batch": b,
                    "precision": name,
                    "n": n,
                    "rate": n / best[name],
                    "model": ref.name,
                    "ratio": best["fp32"] / best[name],
                    "auto": name == auto,
                }
            )
    for r in rows:
        r["max_dp"] = float(np.max(np.abs(probs[r["precision"]] - probs["fp32"])))
    return rows


def command(ck: Path, files: list[Path], work: Path, args) -> list[dict]:
    """``cxrkit predict CK FILES --out x.csv`` in fresh processes: default vs fp32."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"}
    env.pop(PRECISION_ENV_NAME, None)
    listing = work / "command-inputs"
    listing.mkdir(exist_ok=True)
    for f in files:  # one folder of N files: the command line stays short
        link = listing / f.name
        if not link.exists():
            link.symlink_to(f)

    def once(argv, cache: Path):
        cmd = [
            sys.executable,
            "-m",
            "cxrkit.cli",
            "predict",
            str(ck),
            str(listing),
            "--out",
            str(work / "command.csv"),
            "--no-progress",
            *argv,
        ]
        t = time.perf_counter()
        r = subprocess.run(
            cmd, capture_output=True, text=True, env={**env, "CXRKIT_CACHE": str(cache)}
        )
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-1500:]}")
        return time.perf_counter() - t, r.stderr

    cold = work / "cold-cache"
    import shutil

    shutil.rmtree(cold, ignore_errors=True)
    first_s, said = once([], cold)
    rows = [
        {
            "case": "default, first run (empty cache: export + compile)",
            "times": [first_s],
            "said": [
                ln
                for ln in said.splitlines()
                if "ONNX graph" in ln or "precision auto" in ln or "OpenVINO" in ln
            ],
        }
    ]
    times: dict[str, list[float]] = {"default (cached graph)": [], "--precision fp32": []}
    for _ in range(args.command_runs):
        times["default (cached graph)"].append(once([], cold)[0])
        times["--precision fp32"].append(once(["--precision", "fp32"], cold)[0])
    rows += [{"case": k, "times": v} for k, v in times.items()]
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
    cases = [
        ("onnx backend", [str(onnx_path)]),
        ("torch backend, --precision fp32", [str(ck), "--precision", "fp32"]),
        ("torch backend, auto (cached export)", [str(ck)]),
    ]
    rows = []
    for label, argv in cases:
        times, cpu = [], []
        for i in range(args.startup_runs + 1):  # the first run warms the page cache
            out = work / f"startup-{i}.csv"
            cmd = [
                sys.executable,
                "-m",
                "cxrkit.cli",
                "predict",
                *argv,
                str(image),
                "--out",
                str(out),
                "--no-progress",
            ]
            t, c = time.perf_counter(), _children_cpu()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            if i:
                times.append(time.perf_counter() - t)
                cpu.append(_children_cpu() - c)
        rows.append(
            {
                "case": label,
                "median": statistics.median(times),
                "min": min(times),
                "cpu": statistics.median(cpu),
                "runs": len(times),
            }
        )
    code = (
        "import sys, runpy; sys.argv = ['cxrkit'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('cxrkit.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "predict",
            str(onnx_path),
            str(image),
            "--out",
            str(work / "x.csv"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    rows.append(
        {
            "case": "onnx backend imports torch?",
            "median": None,
            "min": None,
            "runs": 1,
            "note": "yes" if "\nTORCH" in "\n" + r.stderr else "no",
        }
    )
    return rows


PRECISION_ENV_NAME = "CXRKIT_PRECISION"


def _test_files(n: int) -> list[Path]:
    """The first ``n`` images (by name) of the official test list present in the sample."""
    listed = set((NIH / "meta" / "test_list.txt").read_text().split())
    return [p for p in sorted((NIH / "images_256").glob("*.png")) if p.name in listed][:n]


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
    ap.add_argument(
        "--prepared",
        type=Path,
        help="the checkpoint's prepared folder, where it "
        "has moved (default: the one its config names)",
    )
    ap.add_argument("--images", type=int, default=128, help="PNG files for the predict stage")
    ap.add_argument(
        "--test-images",
        type=int,
        default=0,
        help="evaluate only the first N test-list images (0: all 785)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        help="keep the prepared sample and run here (default: a temporary folder)",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--startup", action="store_true", help="also measure predict start-up")
    ap.add_argument("--startup-only", action="store_true")
    ap.add_argument("--startup-runs", type=int, default=5)
    ap.add_argument("--no-throughput", action="store_true", help="skip the evaluate/predict stages")
    ap.add_argument(
        "--forward-images",
        type=int,
        default=64,
        help="real test-list images for the forward table (0: skip it)",
    )
    ap.add_argument(
        "--forward-batches", type=lambda t: [int(v) for v in t.split(",")], default=[1, 16, 64]
    )
    ap.add_argument(
        "--command",
        type=int,
        default=0,
        metavar="N",
        help="also time the whole `cxrkit predict` on N real PNGs",
    )
    ap.add_argument("--command-runs", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not (NIH / "images_256").is_dir():
        print(f"real NIH sample not found at {NIH} (set CXRKIT_NIH_SAMPLE)", file=sys.stderr)
        return 2
    files = sorted((NIH / "images_256").glob("*.png"))[: args.images]
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
        if args.forward_images and not args.startup_only:
            test = _test_files(args.forward_images)
            rows = forward(ck, test, args)
            print(
                f"\n## {rows[0]['model']} forward pass only, CPU, {torch.get_num_threads()} "
                f"torch threads, {len(test)} real test-list images, best of {args.repeats}, "
                f"load average {load_avg:.1f} -> {os.getloadavg()[0]:.1f}\n"
            )
            print("| batch | precision | images/s | x fp32 eager | max abs dp vs fp32 |")
            print("|---:|---|---:|---:|---:|")
            for r in rows:
                name = r["precision"] + (" (`auto`)" if r["auto"] else "")
                print(
                    f"| {r['batch']} | {name} | {r['rate']:.1f} | {r['ratio']:.2f}x | "
                    f"{r['max_dp']:.1e} |"
                )
        if not args.startup_only and not args.no_throughput:
            rows = throughput(ck, files, args)
            trained = load_checkpoint_info(ck)
            print(
                f"\n## DenseNet121 (224 px) inference on the CPU: {torch.get_num_threads()} "
                f"torch threads, load average {load_avg:.1f}, best of {args.repeats}; "
                f"{trained}\n"
            )
            print(
                "| stage | precision | images | seconds | images/s | x fp32 eager | "
                "max abs dp vs fp32 | mean AUROC | AUROC - fp32 | load s |"
            )
            print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                auc = f"{r['mean_auroc']:.4f}" if "mean_auroc" in r else ""
                dauc = f"{r['d_auroc']:+.1e}" if "d_auroc" in r else ""
                name = r["precision"] + (" (`auto`)" if r["auto"] else "")
                print(
                    f"| {r['stage']} | {name} | {r['n']} | {r['s']:.1f} | "
                    f"{r['rate']:.1f} | {r['ratio']:.2f}x | {r['max_dp']:.1e} | {auc} | "
                    f"{dauc} | {r['load_s']:.1f} |"
                )
            ort = next(r["record"] for r in rows if r["precision"] == "onnxruntime")
            print(
                f"\nonnxruntime: {ort.get('onnx')}, load-time parity max |dp| "
                f"{ort.get('parity_max_abs_diff_probability', float('nan')):.1e}"
            )
        if args.command:
            cfiles = sorted((NIH / "images_256").glob("*.png"))[: args.command]
            rows = command(ck, cfiles, Path(tmp), args)
            print(
                f"\n## `cxrkit predict CHECKPOINT FOLDER --out x.csv` on {len(cfiles)} real "
                f"256 px PNGs, fresh processes, process start to CSV (load average "
                f"{os.getloadavg()[0]:.1f})\n"
            )
            print("| case | wall s, best | wall s, median | runs |")
            print("|---|---:|---:|---:|")
            for r in rows:
                print(
                    f"| {r['case']} | {min(r['times']):.2f} | "
                    f"{statistics.median(r['times']):.2f} | {len(r['times'])} |"
                )
            base = min(rows[2]["times"]) / min(rows[1]["times"])
            print(
                f"\ndefault vs --precision fp32: {base:.2f}x (best of each); the first run "
                f"said: {' / '.join(rows[0]['said']) or '(nothing)'}"
            )
        if args.startup or args.startup_only:
            rows = startup(ck, files[0], Path(tmp), args)
            print(
                f"\n## One image through `cxrkit predict`, process start to CSV (median "
                f"of {args.startup_runs} fresh processes, load average {os.getloadavg()[0]:.1f})\n"
            )
            print("| case | wall s, median | wall s, min | CPU s (user+sys), median |")
            print("|---|---:|---:|---:|")
            for r in rows:
                if r["median"] is None:
                    print(f"| {r['case']} | {r['note']} | | |")
                else:
                    print(f"| {r['case']} | {r['median']:.2f} | {r['min']:.2f} | {r['cpu']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

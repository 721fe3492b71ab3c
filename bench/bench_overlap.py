"""Folder predict with decoding overlapped, against decode-only and infer-only (issue 23).

``cxrkit predict`` on a folder decodes and cache-preprocesses each file in worker processes
(:class:`cxrkit.data.decoder.Decoder`) while the network runs on the previous batch, so a
folder should go at the speed of the slower of the two stages. Measured in one process, on
the same files, side by side:

* ``decode only``: the files through the decoder's workers (decode + cache stage), no model;
* ``infer only``: the already decoded cache-stage images through the model, batches of
  ``--batch``, no decoding;
* ``predict, serial``: decode in this process, then infer, in turn (what ``predict`` did
  before the overlap);
* ``predict, overlapped``: :func:`cxrkit.inference.predict.predict_files` (what ``cxrkit predict``
  runs), with the goal >= 0.85 x min(decode only, infer only) images/s.

``--startup`` also times one image through ``python -m cxrkit.cli predict`` (ONNX backend,
process start to CSV) in fresh processes, this tree against ``--baseline-src`` (another
checkout's ``src``, e.g. ``../main/src``), interleaved run by run.

The model is the ONNX export of a DenseNet121 checkpoint (``--onnx``; make one with
``cxrkit export``); the files are the NIH sample's 1024 px originals, repeated to
``--images``.

    python bench/bench_overlap.py --onnx RUN/best.onnx [--images 156] [--startup]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NIH = Path(os.environ.get("CXRKIT_NIH_SAMPLE", REPO.parent / "shared" / "nih"))


def _rates(variants: list[tuple[str, object]], n: int, repeats: int) -> list[tuple]:
    """``(name, best images/s, median images/s)`` of each variant (a function handling
    ``n`` images) over ``repeats`` rounds, the variants interleaved round by round (a load
    change hits them all alike)."""
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(repeats):
        for name, fn in variants:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return [
        (name, n / min(times[name]), n / statistics.median(times[name])) for name, _ in variants
    ]


def throughput(onnx: Path, files: list[Path], args) -> list[tuple[str, float]]:
    from cxrkit.data.decoder import Decoder, default_workers
    from cxrkit.data.dicom import read_image
    from cxrkit.inference.predict import load_model, predict_files

    model = load_model(onnx, backend="onnx")
    cache = model.preprocessing.cache
    workers = args.workers or default_workers(len(files))
    n, b = len(files), args.batch
    with Decoder(workers) as dec:
        list(dec.imap(files[:2], cache=cache))  # workers started and warm
        decoded = [d.image for d in dec.imap(files, cache=cache)]
        cached = np.stack(decoded)[:, None]
        model.score_cached(cached[:b])  # warm the session

        def decode_only():
            for d in dec.imap(files, cache=cache, ahead=2 * b):
                assert d.ok, d.error

        def infer_only():
            for i in range(0, n, b):
                model.score_cached(cached[i : i + b])

        def serial():
            for i in range(0, n, b):
                batch = np.stack([model.cache_image(read_image(f)) for f in files[i : i + b]])
                model.score_cached(batch[:, None])

        def overlapped():
            r = predict_files(model, files, batch_size=b, progress=False, decoder=dec)
            assert r.n_failed == 0

        return _rates(
            [
                ("decode only (%d worker%s)" % (workers, "s" * (workers > 1)), decode_only),
                ("infer only (batch %d)" % b, infer_only),
                ("predict, serial (decode then infer, one process)", serial),
                ("predict, overlapped (predict_files)", overlapped),
            ],
            n,
            args.repeats,
        )


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def startup(onnx: Path, image: Path, work: Path, args) -> list[dict]:
    """One image through ``python -m cxrkit.cli predict``, this tree vs the baseline."""
    trees = [("this tree", REPO / "src")]
    if args.baseline_src:
        trees.append(("baseline " + str(args.baseline_src), Path(args.baseline_src).resolve()))
    times = {label: [] for label, _ in trees}
    cpu = {label: [] for label, _ in trees}
    for i in range(args.startup_runs + 1):  # the first round warms the page cache
        for label, src in trees:
            env = {**os.environ, "PYTHONPATH": str(src), "PYTHONWARNINGS": "ignore"}
            cmd = [
                sys.executable,
                "-m",
                "cxrkit.cli",
                "predict",
                str(onnx),
                str(image),
                "--out",
                str(work / f"s{i}.csv"),
                "--no-progress",
            ]
            t, c = time.perf_counter(), _children_cpu()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            if i:
                times[label].append(time.perf_counter() - t)
                cpu[label].append(_children_cpu() - c)
    return [
        {
            "case": label,
            "median": statistics.median(times[label]),
            "min": min(times[label]),
            "cpu": statistics.median(cpu[label]),
        }
        for label, _ in trees
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, required=True, help="an exported DenseNet121 .onnx")
    ap.add_argument("--images", type=int, default=156, help="files (the originals, repeated)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decode workers (default: cxrkit's, half the cores)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--startup", action="store_true")
    ap.add_argument("--startup-runs", type=int, default=5)
    ap.add_argument("--baseline-src", type=Path, default=None)
    args = ap.parse_args(argv)
    originals = sorted((NIH / "originals").rglob("*.png"))
    if not originals:
        print(f"NIH originals not found under {NIH} (set CXRKIT_NIH_SAMPLE)", file=sys.stderr)
        return 2
    files = [originals[i % len(originals)] for i in range(args.images)]
    warnings.simplefilter("ignore")
    load0 = os.getloadavg()[0]
    rows = throughput(args.onnx, files, args)
    load1 = os.getloadavg()[0]
    print(
        f"\n## Folder predict, {len(files)} 1024 px PNGs (NIH originals), DenseNet121 "
        f"ONNX, {os.cpu_count()} cores, {args.repeats} interleaved rounds, load average "
        f"{load0:.1f} -> {load1:.1f}\n"
    )
    print(
        "| stage | images/s, best | x min(decode, infer), best | images/s, median | "
        "x min(decode, infer), median |"
    )
    print("|---|---:|---:|---:|---:|")
    floor = min(rows[0][1], rows[1][1])
    floor_med = min(rows[0][2], rows[1][2])
    for name, rate, med in rows:
        print(f"| {name} | {rate:.1f} | {rate / floor:.2f} | {med:.1f} | {med / floor_med:.2f} |")
    if args.startup:
        with tempfile.TemporaryDirectory() as tmp:
            res = startup(args.onnx, originals[0], Path(tmp), args)
        print(
            f"\n## One 1024 px image through `python -m cxrkit.cli predict` (ONNX), "
            f"process start to CSV, {args.startup_runs} fresh processes each, "
            f"interleaved, load average {os.getloadavg()[0]:.1f}\n"
        )
        print("| tree | wall s, median | wall s, min | CPU s (user+sys, children), median |")
        print("|---|---:|---:|---:|")
        for r in res:
            print(f"| {r['case']} | {r['median']:.2f} | {r['min']:.2f} | {r['cpu']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the end-of-training OOD record costs in each engine, and how far each record agrees
with the old torch fp32 one.

The record (:mod:`cxrkit.ood`) needs the pooled features of up to 5,000 train and 5,000
validation images: one forward pass each, which took 293 of 995 s of a one-epoch
DenseNet121 run on the real sample in torch fp32. Since issue 20 the training and
``cxrkit ood`` compute them with the engine ``predict`` uses by default
(:func:`cxrkit.inference.runtime.choose_forward`; OpenVINO bf16 or onnxruntime on a CPU).
This script fits the record with each engine, in one process, on the same images:

    python bench/bench_ood_record.py --prepared DIR [--checkpoint RUN] [--model densenet121]
        [--input-size 224] [--train 300] [--test 200] [--caps 100,200] [--threads 2]

Columns: ``setup`` exports the network to ONNX and compiles/checks it (once per network:
``predict`` loads the same cached graph later, so it is no extra cost of the record; the
export is shared by onnxruntime and OpenVINO, timed on the first of them); ``features+fit``
the record itself (loading, tensor stage, forward passes, image statistics, fit), ``of which
forward`` the network calls alone. Agreement is on the held-out test images, each record
scored on the features of its own engine (what ``predict`` with that engine computes)
against the old record scored on torch fp32 features: max |score difference| over
max(1, |old score|), Spearman's rho of the scores, and the share of equal flags. The row
"old record, openvino-bf16 features" is what ``predict``'s default scored before this.
``--caps`` adds records in auto's engine from a seeded sample of that many train images
(the other way to make a record cheaper).

Without ``--checkpoint`` the model is ``--model`` with random weights, saved to a temporary
checkpoint (timing means the same; the agreement is then of an untrained network's
features).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


class Timed:
    """A forward pass that adds up its own seconds."""

    def __init__(self, forward):
        self.forward, self.seconds = forward, 0.0

    def __call__(self, x, meta):
        t0 = time.perf_counter()
        out = self.forward(x, meta)
        self.seconds += time.perf_counter() - t0
        return out

    def ran_by(self):
        return self.forward.ran_by()

    def describe(self):
        return self.forward.describe()


def random_checkpoint(folder: Path, name: str, cache, input_size: int) -> Path:
    """``name`` with random weights saved as a checkpoint of the prepared cache ``cache``
    (its preprocessing contract built by the rules a new run uses)."""
    from cxrkit._compat import ensure_torchvision
    from cxrkit.data.preprocessing import Preprocessing
    from cxrkit.engine.checkpoint import save_checkpoint
    from cxrkit.models import create_model

    ensure_torchvision()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name)
    c = model.cxr_config
    pre = Preprocessing.build(
        cache=cache,
        model_name=name,
        model_input_size=c.input_size,
        image_size=input_size,
        mean=c.mean,
        std=c.std,
        channels=c.in_chans,
    )
    body = {"model_config": c.to_dict(), "findings": list(c.findings), "preprocess": pre.to_dict()}
    return save_checkpoint({"model": model.state_dict(), **body}, folder / name / "best.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--model", default="densenet121")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--train", type=int, default=300, help="train images (first N)")
    ap.add_argument("--test", type=int, default=200, help="held-out test images scored")
    ap.add_argument("--caps", default="", help="train-image caps in auto's engine, e.g. 100,200")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--fast-predict",
        action="store_true",
        help="also score with the features of predict's default torch-free path (its export)",
    )
    ap.add_argument(
        "--variants", default="fp32,bf16,onnxruntime,openvino-bf16", help="engines to time"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench_ood_record-"))
    os.environ["CXRKIT_CACHE"] = str(scratch / "cache")  # a cold graph cache: honest setup

    from scipy.stats import spearmanr
    from torch.utils.data import Subset

    import cxrkit
    from cxrkit.data.dataset import CXRDataset
    from cxrkit.data.prepare import load_prepared
    from cxrkit.inference.runtime import EagerForward, cpu_has_bf16, graph_forward
    from cxrkit.ood.features import TorchFp32, dataset_features, fit_from_datasets
    from cxrkit.ood.record import OodScorer

    p = load_prepared(args.prepared)
    ck = args.checkpoint or random_checkpoint(
        scratch, args.model, p.cache.settings, args.input_size
    )
    lm = cxrkit.load(ck, precision="fp32")
    name = lm.name + ("" if args.checkpoint else " (random init)")
    ds = {
        s: CXRDataset(p.cache, p.table(s).head(n), lm.findings)
        for s, n in (("train", args.train), ("val", 10**9), ("test", args.test))
    }
    forwards, setup = {}, {}
    for v in args.variants.split(","):
        t0 = time.perf_counter()
        if v == "fp32":
            forwards[v] = TorchFp32(lm.model, lm.device)
        elif v == "bf16":
            if not cpu_has_bf16():
                print("bf16: skipped (no bf16 on this CPU)")
                continue
            forwards[v] = EagerForward("bf16", "bf16", model=lm.model, device=lm.device)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                forwards[v] = graph_forward(lm, v)
        setup[v] = time.perf_counter() - t0
    warm = lm.transform(
        torch.from_numpy(np.stack([ds["val"][i]["image"].numpy() for i in range(8)]))
    )
    for f in forwards.values():  # one untimed batch each: first-call costs are not the record's
        with torch.no_grad():
            f(warm, None)
    auto = "openvino-bf16" if "openvino-bf16" in forwards else next(iter(forwards))
    variants = [(v, v, None) for v in forwards]
    variants += [(f"{auto}, {c} train images", auto, int(c)) for c in args.caps.split(",") if c]
    records, seconds, fwd_s, test = {}, {}, {}, {}
    n_val = len(ds["val"])
    for label, v, cap in variants:
        train = ds["train"]
        if cap is not None and cap < len(train):
            pick = np.sort(np.random.default_rng(0).choice(len(train), cap, replace=False))
            train = Subset(train, pick.tolist())
        timed = Timed(forwards[v])
        t0 = time.perf_counter()
        records[label] = fit_from_datasets(lm.model, train, ds["val"], lm.transform, forward=timed)
        seconds[label], fwd_s[label] = time.perf_counter() - t0, timed.seconds
        if v not in test:
            test[v] = dataset_features(
                lm.model,
                ds["test"],
                lm.transform,
                device="cpu",
                metadata=False,
                forward=forwards[v],
            )
        lm.model.to(memory_format=torch.contiguous_format)  # bf16 made it channels_last
    if (
        args.fast_predict
    ):  # predict's default: the cached export (with preprocessing) in auto's engine
        from cxrkit.inference.fast_predict import load_fast

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = load_fast(ck)
            images = np.stack([ds["test"][i]["image"].numpy() for i in range(len(ds["test"]))])
            test["predict"] = (fast.forward_cached(images)[1], test[auto][1], None)
    ref_f, ref_s, _ = test["fp32"]
    ref = OodScorer(records["fp32"]).score(ref_f, ref_s)
    print(
        f"OOD record of {name} at {lm.input_size} px on {args.prepared}: "
        f"{len(ds['train'])} train + {n_val} val images, {len(ref_f)} test images scored; "
        f"load average {os.getloadavg()[0]:.1f}, {torch.get_num_threads()} threads"
    )
    print(
        "| record's engine | setup s | features+fit s | of which forward s | images/s "
        "| x old | max rel |score diff| | Spearman | flags agree | test flagged |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(label, v, records[label]) for label, v, _ in variants]
    if "openvino-bf16" in test:
        rows.append(("old record, openvino-bf16 features", "openvino-bf16", records["fp32"]))
    if "predict" in test:
        rows.append((f"{auto} record, predict's default path", "predict", records[auto]))
        rows.append(("old record, predict's default path", "predict", records["fp32"]))
    for label, v, rec in rows:
        f, s, _ = test[v]
        r = OodScorer(rec).score(f, s)
        rel = np.abs(r.score - ref.score) / np.maximum(1.0, np.abs(ref.score))
        rho = spearmanr(r.score, ref.score).statistic
        n = rec["train"]["n"] + rec["val"]["n"]
        timing = (
            f"{setup[v] if label == v else 0:.1f} | {seconds[label]:.1f} | {fwd_s[label]:.1f} "
            f"| {n / seconds[label]:.1f} | {seconds['fp32'] / seconds[label]:.2f}"
            if label in seconds
            else " |  |  |  | "
        )
        print(
            f"| {label} | {timing} | {rel.max():.4f} | {rho:.4f} "
            f"| {(r.flag == ref.flag).mean():.1%} | {r.flag.mean():.1%} |"
        )


if __name__ == "__main__":
    main()

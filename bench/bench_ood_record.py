"""What the end-of-training OOD record costs, in fp32 (before) and in the training's bf16.

The record (:mod:`cxrkit.ood`) needs the pooled features of up to 5,000 train and 5,000
validation images: one forward pass each, which took 293 of 995 s of a one-epoch
DenseNet121 run on the real sample. Since issue 20 the passes run in the training's own
precision (bf16 autocast + channels_last by default, as its validation passes do). This
script times :func:`cxrkit.ood.features.fit_from_datasets` both ways, in one process, on
the same images, and checks that the cheaper record flags the same held-out images when
both score fp32 features (what ``predict`` computes):

    python bench/bench_ood_record.py --prepared DIR [--checkpoint RUN] [--model densenet121]
        [--train 200] [--test 200]

Without ``--checkpoint`` the model is ``--model`` with random weights (timing only means
the same thing; the agreement is then of an untrained network's features).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--model", default="densenet121")
    ap.add_argument("--train", type=int, default=200, help="train images (first N)")
    ap.add_argument("--test", type=int, default=200, help="held-out test images scored")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cxrkit.data.dataset import CXRDataset
    from cxrkit.data.prepare import load_prepared
    from cxrkit.data.transforms import eval_transform
    from cxrkit.engine.precision import Precision
    from cxrkit.labels import FINDINGS
    from cxrkit.ood.features import dataset_features, fit_from_datasets
    from cxrkit.ood.record import OodScorer
    from cxrkit.data.preprocessing import Preprocessing

    p = load_prepared(args.prepared)
    if args.checkpoint:
        from cxrkit.inference import load

        lm = load(args.checkpoint, precision="fp32")
        model, pre, name = lm.model, lm.preprocessing, lm.name
    else:
        from cxrkit.models import create_model

        model = create_model(args.model, in_chans=1).eval()
        cfg = model.cxr_config
        pre = Preprocessing.build(
            cache=p.cache.settings,
            model_name=args.model,
            model_input_size=cfg.input_size,
            mean=cfg.mean,
            std=cfg.std,
            channels=1,
            eval_crop_pct=0.875,
        )
        name = f"{args.model} (random init)"
    tf = eval_transform(pre)
    ds = {
        s: CXRDataset(p.cache, p.table(s).head(n), FINDINGS)
        for s, n in (("train", args.train), ("val", 10**9), ("test", args.test))
    }
    records, seconds = {}, {}
    for label, precision in (
        ("fp32", None),
        ("bf16", Precision.choose("bf16", torch.device("cpu"))),
    ):
        t0 = time.perf_counter()
        records[label] = fit_from_datasets(model, ds["train"], ds["val"], tf, precision=precision)
        seconds[label] = time.perf_counter() - t0
        model.to(memory_format=torch.contiguous_format)
    feats, images, _ = dataset_features(model, ds["test"], tf, device="cpu", metadata=False)
    flags = {k: OodScorer(r).score(feats, images) for k, r in records.items()}
    n = len(ds["train"]) + len(ds["val"])
    print(
        f"OOD record of {name} at {pre.input_size} px: {len(ds['train'])} train + "
        f"{len(ds['val'])} val images; load average {os.getloadavg()[0]:.1f}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "| features in | seconds | images/s | x fp32 | val flagged | test flagged (fp32 features) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for k in records:
        print(
            f"| {k} | {seconds[k]:.1f} | {n / seconds[k]:.1f} | {seconds['fp32'] / seconds[k]:.2f} "
            f"| {records[k]['val']['flag_rate']:.1%} | {flags[k].flag.mean():.1%} |"
        )
    a, b = flags["fp32"], flags["bf16"]
    agree = float((a.flag == b.flag).mean())
    corr = float(np.corrcoef(a.score, b.score)[0, 1])
    print(
        f"{len(feats)} test images: flags agree on {agree:.1%}, score correlation {corr:.4f}, "
        f"max |score difference| {np.abs(a.score - b.score).max():.3f}"
    )


if __name__ == "__main__":
    main()

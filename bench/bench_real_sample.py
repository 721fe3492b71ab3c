"""Real-sample benchmark: cxrkit's default recipe vs the naive recipe, on real NIH images.

Data: the 1,789 real 256 px images in ``../shared/nih/images_256`` under the official
split: the 1,004 train_val images are split by patient into train and validation
(``--val-fraction``, multi-label stratified, no patient in both), and both recipes are
evaluated on the sample's 785 test-list images (the official test list, restricted to
the images in the sample) with patient-bootstrap 95 % confidence intervals.

Recipes (same architecture, same data, same epochs, same optimiser and schedule):

* ``naive``  what the usual scripts do: fp32, unweighted BCE, no augmentation
  (a plain resize to the input size), no channels_last.
* ``cxrkit`` ``configs/chexnet_densenet121.yaml`` as shipped: bf16 autocast +
  channels_last, BCE with per-finding positive weights, random-resized-crop/affine/
  intensity augmentation and flips, CheXNet's 256 -> 224 evaluation geometry.

ImageNet weights cannot be downloaded on an offline machine, so both start from random
initialisation unless ``--weights PATH`` (a local timm/torchvision DenseNet121 file) is
given. With ~800 training images and no pretraining the AUROCs are modest; they are
printed as they are.

    python bench/bench_real_sample.py [--epochs 6] [--model densenet121] [--weights FILE]

Writes ``bench/out/real_sample/`` (prepared cache, both runs, their evaluations, a
comparison table/plot/HTML) and prints the per-finding table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "naive": [
        "train.amp=none",
        "train.channels_last=false",
        "train.pos_weight=false",
        "data.augment=false",
        "data.hflip=false",
    ],
    "cxrkit": [],
}


def _fmt(rec: dict | None) -> str:
    if not rec or rec.get("value") is None:
        return "undefined"
    lo, hi = rec.get("lo"), rec.get("hi")
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else " [CI n/a]"
    return f"{rec['value']:.3f}{ci}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nih", type=Path, default=REPO.parent / "shared" / "nih")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "real_sample")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "chexnet_densenet121.yaml")
    ap.add_argument("--model", default=None, help="override the recipe's model")
    ap.add_argument("--weights", default=None, help="local ImageNet weights for the backbone")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--recipes", default="naive,cxrkit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from cxrkit.config import load_config
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.prepare import prepare
    from cxrkit.engine.train import fit
    from cxrkit.evaluate import evaluate_checkpoint
    from cxrkit.explain import localize_checkpoint

    images = args.nih / "images_256"
    if not images.is_dir():
        print(f"real NIH sample not found at {images} (use --nih)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'dropped 110,331 label-file images not on disk'
        prep = prepare(
            args.nih,
            args.work / "prepared",
            images_root=images,
            label_file=args.nih / "meta" / "Data_Entry_2017.csv",
            on_missing="drop",
            settings=PreprocessSettings(size=256),
            protocol="official",
            val_fraction=args.val_fraction,
            seed=0,
            progress=True,
        )
    cached = prep.split[prep.split["image_id"].isin(prep.labels["image_id"])]
    counts = cached["split"].value_counts().to_dict()
    print(
        f"prepared {len(prep.labels)} real images in {time.perf_counter() - t0:.0f} s: "
        f"{counts.get('train', 0)} train / {counts.get('val', 0)} val / "
        f"{counts.get('test', 0)} test"
    )

    results = {}
    for recipe in args.recipes.split(","):
        overrides = [
            f"data.prepared={prep.root}",
            f"out={args.work / 'runs' / recipe}",
            f"train.epochs={args.epochs}",
            f"train.patience={args.epochs}",
            "data.workers=0",
            "model.pretrained=false",
            *RECIPES[recipe],
        ]
        if args.model:
            overrides.append(f"model.name={args.model}")
        if args.weights:
            overrides.append(f"model.weights={args.weights}")
        if args.threads:
            overrides.append(f"train.threads={args.threads}")
        cfg = load_config(args.config, overrides)
        t = time.perf_counter()
        summary = fit(cfg, resume=True, show_progress=sys.stderr.isatty())
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        metrics = evaluate_checkpoint(
            Path(cfg.out), split="test", bootstrap=args.bootstrap, progress=sys.stderr.isatty()
        )
        eval_s = time.perf_counter() - t
        t = time.perf_counter()
        loc = localize_checkpoint(
            Path(cfg.out), split="test", method="gradcam", progress=sys.stderr.isatty()
        )
        results[recipe] = {
            "summary": summary,
            "metrics": metrics,
            "train_s": train_s,
            "eval_s": eval_s,
            "run": Path(cfg.out),
            "localize": loc,
            "localize_s": time.perf_counter() - t,
        }
        print(
            f"{recipe}: trained {summary['epochs_run']} epochs in {train_s:.0f} s "
            f"({summary['images_per_s'] or 0:.1f} img/s last epoch), test mean AUROC "
            f"{_fmt(metrics['mean_auroc'])}"
        )

    names = list(results)
    findings = results[names[0]]["metrics"]["findings"]
    print(
        f"\n## Real NIH sample: {len(findings)} findings, test-list images "
        f"n={results[names[0]]['metrics']['n_images']} "
        f"({results[names[0]]['metrics']['n_patients']} patients), 95 % CI by patient "
        f"bootstrap ({args.bootstrap} replicates)\n"
    )
    print("| finding | test positives | " + " | ".join(f"{n} AUROC [95% CI]" for n in names) + " |")
    print("|---|---:|" + "---|" * len(names))
    for f in findings:
        first = results[names[0]]["metrics"]["auroc"][f]
        row = [_fmt(results[n]["metrics"]["auroc"][f]) for n in names]
        print(f"| {f} | {first['positives']} | " + " | ".join(row) + " |")
    print(
        "| **mean** | | "
        + " | ".join(_fmt(results[n]["metrics"]["mean_auroc"]) for n in names)
        + " |"
    )
    print(
        "\n| recipe | train time (s) | img/s (last epoch) | best val mean AUROC | eval time (s) |"
    )
    print("|---|---:|---:|---:|---:|")
    base = results[names[0]]
    for n in names:
        r = results[n]
        rate = r["summary"]["images_per_s"] or float("nan")
        ratio = rate / (base["summary"]["images_per_s"] or math.nan)
        print(
            f"| {n} | {r['train_s']:.0f} | {rate:.1f} ({ratio:.2f}x) | "
            f"{r['summary']['best_val_mean_auroc']:.3f} | {r['eval_s']:.0f} |"
        )
    print(
        "\n## Grad-CAM against NIH's boxes (sample's box images, all in the test list; "
        "accuracy = share of (image, finding) pairs over T)\n"
    )
    print(
        "| recipe | pairs | pointing hit rate (chance, p) | IoBB>0.1 | IoBB>0.25 | IoU>0.1 | "
        "whole-image box IoBB>0.1 | time (s) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for n in names:
        o = results[n]["localize"]["overall"]
        if o is None:
            print(f"| {n} | 0 | | | | | | |")
            continue
        print(
            f"| {n} | {o['pairs']} | {o['pointing_rate']:.3f} ({o['pointing_chance']:.3f}, "
            f"{o['pointing_p_value']:.2g}) | {o['iobb_accuracy']['0.1']:.3f} | "
            f"{o['iobb_accuracy']['0.25']:.3f} | {o['iou_accuracy']['0.1']:.3f} | "
            f"{o['full_image_iobb_accuracy']['0.1']:.3f} | {results[n]['localize_s']:.0f} |"
        )
    total = time.perf_counter() - t0
    print(f"\ntotal {total / 60:.1f} min")
    try:
        from cxrkit.evaluate.compare import compare_runs

        out = compare_runs([results[n]["run"] for n in names], out=args.work / "compare")
        print(f"comparison (paired bootstrap of the difference, plot, HTML): {out}")
    except ImportError:
        pass
    (args.work / "results.json").write_text(
        json.dumps(
            {
                n: {
                    "train_s": r["train_s"],
                    "eval_s": r["eval_s"],
                    "summary": r["summary"],
                    "mean_auroc": r["metrics"]["mean_auroc"],
                    "localization": r["localize"]["overall"],
                }
                for n, r in results.items()
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

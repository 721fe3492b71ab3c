"""Localisation benchmark on phantoms (exact boxes) and on the real NIH sample's boxes.

Two datasets, each prepared, trained briefly and scored with ``cxrkit localize`` for
every attribution method (and the model's own attention for ``gaussian_attention``):

* ``phantoms``  a phantom release (``--patients``, ``--size`` px) whose boxes are exact;
  by default ``cnn4`` and ``gaussian_attention`` with a 0.5 box fold (its attention
  priors come from the training boxes of other patients).
* ``real``      the 1,789 real 256 px images in ``../shared/nih/images_256``, official
  split (all 569 box images are test images), a model trained from scratch on the
  ~1,000 train_val images. No pretrained weights offline and so few images: expect maps
  near chance; the numbers are printed whatever they are.

For each (dataset, model, method): pairs scored, pointing-game hit rate against its
chance level (the boxes' share of the image) with the exact p-value, accuracy at
T(IoBB) = 0.1 / 0.5 and T(IoU) = 0.1 / 0.5, and the whole-image-box baseline.

    python bench/bench_localize.py phantoms [--patients 300 --size 128 --epochs 12]
    python bench/bench_localize.py real [--epochs 4 --size 256 --input 128]

Writes ``--work`` (default ``bench/out/localize/<dataset>``): prepared folder, runs and
their ``localize-<method>`` folders; prints markdown tables.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("gradcam", "gradcam++", "smoothgrad", "integrated-gradients")


def _prepare(args):
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.phantoms import make_phantoms
    from cxrkit.data.prepare import prepare

    settings = PreprocessSettings(size=args.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'dropped 110,331 label-file images not on disk'
        if args.dataset == "phantoms":
            make_phantoms(
                args.work / "release",
                n_patients=args.patients,
                image_size=args.size,
                seed=args.seed,
                progress=True,
            )
            return prepare(
                args.work / "release", args.work / "prepared", settings=settings, progress=True
            )
        images = args.nih / "images_256"
        if not images.is_dir():
            raise SystemExit(f"real NIH sample not found at {images} (use --nih)")
        return prepare(
            args.nih,
            args.work / "prepared",
            images_root=images,
            label_file=args.nih / "meta" / "Data_Entry_2017.csv",
            on_missing="drop",
            settings=settings,
            protocol="official",
            seed=args.seed,
            progress=True,
        )


def _train(args, prepared, model: str) -> Path:
    from cxrkit.config import load_config
    from cxrkit.engine.train import fit

    out = args.work / "runs" / model
    overrides = [
        f"data.prepared={prepared.root}",
        f"out={out}",
        f"model.name={model}",
        f"train.epochs={args.epochs}",
        f"train.patience={args.epochs}",
        "train.lr=3e-3",
        "train.amp=none",
        "data.batch_size=32",
        "data.workers=0",
        f"train.seed={args.seed}",
    ]
    if args.input:
        overrides.append(f"data.image_size={args.input}")
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    if model == "gaussian_attention":
        overrides.append(f"data.box_fold={args.box_fold}")
    t = time.perf_counter()
    summary = fit(load_config(None, overrides), resume=True, show_progress=sys.stderr.isatty())
    print(
        f"{model}: {summary['epochs_run']} epochs in {time.perf_counter() - t:.0f} s, best "
        f"val mean AUROC {summary['best_val_mean_auroc']:.3f}"
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", choices=("phantoms", "real"))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--nih", type=Path, default=REPO.parent / "shared" / "nih")
    ap.add_argument("--patients", type=int, default=300, help="phantom patients")
    ap.add_argument("--size", type=int, default=None, help="cache side (phantoms 128, real 256)")
    ap.add_argument("--input", type=int, default=None, help="model input side (default: cache)")
    ap.add_argument(
        "--models", default=None, help="default: phantoms cnn4,gaussian_attention; real cnn4"
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--box-fold", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="score only N box images")
    args = ap.parse_args(argv)
    args.size = args.size or (128 if args.dataset == "phantoms" else 256)
    args.work = args.work or REPO / "bench" / "out" / "localize" / args.dataset
    models = (
        args.models or ("cnn4,gaussian_attention" if args.dataset == "phantoms" else "cnn4")
    ).split(",")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from cxrkit.explain.localize import localize_checkpoint

    t0 = time.perf_counter()
    prepared = _prepare(args)
    print(
        f"prepared {len(prepared.labels)} images at {args.size} px, "
        f"{prepared.boxes_in_pixels()['image_id'].nunique()} of them with boxes, in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    rows = []
    for model in models:
        run = _train(args, prepared, model)
        methods = args.methods.split(",") + (["attention"] if model == "gaussian_attention" else [])
        for method in methods:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = localize_checkpoint(
                    run,
                    method=method,
                    out=run / f"localize-{method}",
                    limit=args.limit,
                    progress=sys.stderr.isatty(),
                )
            rows.append((model, method, r, time.perf_counter() - t))
    first = rows[0][2]
    print(
        f"\n## Localisation, {args.dataset}: split {first['split']} ({first['protocol']}), "
        f"{first['space']}\n"
    )
    print(
        "| model | method | pairs | pointing | chance | p | IoBB>0.1 | IoBB>0.5 | IoU>0.1 "
        "| IoU>0.5 | whole-image IoBB>0.1 | s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, method, r, secs in rows:
        o = r["overall"]
        a, u, f = o["iobb_accuracy"], o["iou_accuracy"], o["full_image_iobb_accuracy"]
        print(
            f"| {model} | {method} | {o['pairs']} | {o['pointing_rate']:.3f} | "
            f"{o['pointing_chance']:.3f} | {o['pointing_p_value']:.2g} | {a['0.1']:.3f} | "
            f"{a['0.5']:.3f} | {u['0.1']:.3f} | {u['0.5']:.3f} | {f['0.1']:.3f} | {secs:.0f} |"
        )
    for model, method, r, _ in rows:
        if r["notes"]:
            print(f"\nnotes ({model}, {method}): " + "; ".join(r["notes"]))
            break
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; per-finding tables in each run's "
        "localize-<method>/summary.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

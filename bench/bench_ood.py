"""Out-of-distribution benchmark: which images each model flags, and what the score costs.

Two models, each trained here (cnn4, a few epochs) so that the end of training writes its
OOD record into ``best.pt``:

* ``phantom``  trained on a phantom release; in-distribution set: its phantom test images;
  out: the real NIH radiographs of ``../shared/nih`` (``images_256`` and the 1024 px
  ``originals``).
* ``real``     trained on the real sample's ~1,000 train_val images (official split);
  in: its held-out test-list images; out: phantoms, noise, scikit-image's photographs, and
  the test images rotated 90 degrees, upside down, inverted and mirrored.

For each (model, set): images, share flagged (score > 1), and the AUROC of the score
against the in-distribution set -- also for each part alone (features / image
statistics), which is how the combination was chosen (see :mod:`cxrkit.ood.record`).
Cost: in the same process, prediction of real PNG files without the OOD score
(decode + cache stage + network) against the extra time of the score (features kept by
the hook, image statistics, two Mahalanobis distances), as a ratio.

    python bench/bench_ood.py [--epochs 4 --size 64 --patients 300]

Writes ``--work`` (default ``bench/out/ood``): prepared folders, runs, ``ood.json`` and
``ood.md``; prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _train(prepared: Path, out: Path, epochs: int) -> Path:
    from cxrkit.config import load_config
    from cxrkit.engine.train import fit

    if not (out / "best.pt").exists():
        cfg = load_config(
            None,
            [
                f"data.prepared={prepared}",
                f"out={out}",
                "model.name=cnn4",
                "data.batch_size=32",
                f"train.epochs={epochs}",
                "train.lr=3e-3",
                "train.amp=none",
                "train.patience=100",
            ],
        )
        fit(cfg, show_progress=True)
    return out


def _load(run: Path, args):
    """The run's model; with ``--refit`` its OOD record fitted again with this cxrkit (for
    runs trained by an earlier version of the method)."""
    import cxrkit
    from cxrkit.inference.heldout import ensure_ood_record

    lm = cxrkit.load(run)
    if args.refit:
        ensure_ood_record(lm, force=True)
    return lm


def _split_images(lm, split: str) -> list[np.ndarray]:
    from cxrkit.inference.heldout import load_held_out

    data = load_held_out(lm)
    table = data.table(split)
    cache = data.prepared.cache
    return [np.asarray(cache.images[r]) for r in cache.rows(table["image_id"].tolist())]


def _part_aurocs(lm, in_images, out_sets) -> dict:
    """AUROC of each part's ratio alone, and of the combined score, per out set."""
    from sklearn.metrics import roc_auc_score

    def parts(images):
        res = [
            lm.score_cached(lm.load_images(images[i : i + 64]))[1]
            for i in range(0, len(images), 64)
        ]
        return {k: np.concatenate([r.parts[k] for r in res]) for k in ("features", "image")}

    p_in = parts(in_images)
    out = {}
    for name, imgs in out_sets.items():
        p = parts(imgs)
        y = np.r_[np.zeros(len(p_in["image"])), np.ones(len(p["image"]))]
        out[name] = {k: float(roc_auc_score(y, np.r_[p_in[k], p[k]])) for k in p}
        both = np.maximum(p["features"], p["image"])
        out[name]["combined"] = float(
            roc_auc_score(y, np.r_[np.maximum(p_in["features"], p_in["image"]), both])
        )
        out[name]["flagged_by_features"] = float((p["features"] > 1).mean())
        out[name]["flagged_by_image"] = float((p["image"] > 1).mean())
    return out


def phantom_model(args) -> dict:
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.phantoms import make_phantoms
    from cxrkit.data.prepare import prepare
    from cxrkit.ood.probes import probe_table

    work = args.work / "phantom"
    if not (work / "prepared" / "manifest.json").exists():
        make_phantoms(
            work / "release",
            n_patients=args.patients,
            image_size=args.size,
            seed=args.seed,
            progress=True,
        )
        prepare(
            work / "release",
            work / "prepared",
            settings=PreprocessSettings(size=args.size),
            workers=0,
            progress=True,
            val_fraction=0.2,
        )
    run = _train(work / "prepared", work / "run", args.epochs)
    lm = _load(run, args)
    test = _split_images(lm, "test")
    real = sorted((args.nih / "images_256").glob("*.png")) + sorted(
        (args.nih / "originals").rglob("*.png")
    )
    out_sets = {"real NIH radiographs": real}
    rows = probe_table(lm, ("phantom test images", test), out_sets)
    return {
        "model": "cnn4 trained on phantoms",
        "run": str(run),
        "rows": rows,
        "parts": _part_aurocs(lm, test, {"real NIH radiographs": real[:400]}),
        "record": {k: lm.ood_record[k] for k in ("val", "train", "percentile")},
    }


def real_model(args) -> dict:
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.prepare import prepare
    from cxrkit.ood.probes import (
        noise_images,
        phantom_images,
        photographs,
        probe_table,
        transformed,
    )

    work = args.work / "real"
    if not (work / "prepared" / "manifest.json").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 110,331 label-file images are not in the sample
            prepare(
                args.nih,
                work / "prepared",
                images_root=args.nih / "images_256",
                label_file=args.nih / "meta" / "Data_Entry_2017.csv",
                on_missing="drop",
                settings=PreprocessSettings(size=args.size),
                protocol="official",
                seed=args.seed,
                workers=0,
                progress=True,
                val_fraction=0.2,
            )
    run = _train(work / "prepared", work / "run", args.epochs)
    lm = _load(run, args)
    test = _split_images(lm, "test")
    out_sets = {
        "phantoms": phantom_images(200),
        "noise": noise_images(60),
        "photographs": photographs(),
    }
    out_sets.update(
        {
            f"test images {how}": transformed(test, how)
            for how in ("rotated 90", "upside down", "inverted", "mirrored")
        }
    )
    rows = probe_table(lm, ("real held-out test images", test), out_sets)
    cost = _cost(lm, sorted((args.nih / "images_256").glob("*.png"))[: args.cost_images])
    return {
        "model": "cnn4 trained on the real sample",
        "run": str(run),
        "rows": rows,
        "parts": _part_aurocs(lm, test, out_sets),
        "cost": cost,
        "record": {k: lm.ood_record[k] for k in ("val", "train", "percentile")},
    }


def _cost(lm, files: list[Path], repeats: int = 3) -> dict:
    """Seconds per image of prediction without the score, and of the score's extra work."""
    import torch

    def predict_without():
        for i in range(0, len(files), 16):
            lm.logits_from_cached(lm.load_images(files[i : i + 16]))

    def predict_with():
        for i in range(0, len(files), 16):
            lm.score_cached(lm.load_images(files[i : i + 16]))

    times = {"without": [], "with": []}
    for _ in range(repeats):  # interleaved, best of repeats: the machine is shared
        for name, fn in (("without", predict_without), ("with", predict_with)):
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            times[name].append(time.perf_counter() - t0)
    cached = lm.load_images(files[:64])
    _, feats = lm.forward_cached(cached)
    t0 = time.perf_counter()
    for _ in range(repeats):
        lm.ood_from_cached(cached, feats)
    score_only = (time.perf_counter() - t0) / repeats / len(cached)
    without, with_ = min(times["without"]) / len(files), min(times["with"]) / len(files)
    return {
        "images": len(files),
        "predict_s_per_image": without,
        "predict_with_ood_s_per_image": with_,
        "ood_score_only_s_per_image": score_only,
        "ratio_score_only": score_only / without,
        "ratio_end_to_end": with_ / without - 1,
    }


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [
            f"### {r['model']}",
            "",
            f"Record: fitted on {r['record']['train']['n']} train images, "
            f"{r['record']['val']['flag_rate']:.1%} of {r['record']['val']['n']} val "
            f"images flagged (per-part threshold: {r['record']['percentile']}th percentile).",
            "",
            "| set | kind | images | flagged | AUROC vs in | median score |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in r["rows"]:
            auc = "" if row["auroc"] is None else f"{row['auroc']:.3f}"
            lines.append(
                f"| {row['set']} | {row['kind']} | {row['n']} | {row['flagged']:.1%} "
                f"| {auc} | {row['median_score']:.2f} |"
            )
        lines += [
            "",
            "| out set | AUROC features | AUROC image stats | AUROC combined | "
            "flagged by features | flagged by image stats |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, p in r["parts"].items():
            lines.append(
                f"| {name} | {p['features']:.3f} | {p['image']:.3f} | "
                f"{p['combined']:.3f} | {p['flagged_by_features']:.1%} | "
                f"{p['flagged_by_image']:.1%} |"
            )
        if "cost" in r:
            c = r["cost"]
            lines += [
                "",
                f"Cost on {c['images']} real PNGs (batch 16): prediction "
                f"{c['predict_s_per_image'] * 1e3:.2f} ms/image; the OOD score alone "
                f"{c['ood_score_only_s_per_image'] * 1e3:.3f} ms/image "
                f"(**{c['ratio_score_only']:.1%}** of a prediction); end to end with the "
                f"score {c['predict_with_ood_s_per_image'] * 1e3:.2f} ms/image "
                f"({c['ratio_end_to_end']:+.1%}).",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "ood")
    ap.add_argument("--nih", type=Path, default=REPO.parent / "shared" / "nih")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="cache side, pixels")
    ap.add_argument("--patients", type=int, default=300, help="phantom patients")
    ap.add_argument("--cost-images", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--refit",
        action="store_true",
        help="fit the runs' OOD records again (runs trained by an older version)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    results = [phantom_model(args), real_model(args)]
    (args.work / "ood.json").write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results)
    (args.work / "ood.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

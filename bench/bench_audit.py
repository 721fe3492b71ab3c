"""Shortcut audit benchmark: a planted shortcut on phantoms, and the real NIH sample.

* ``phantoms``  for each seed, two phantom releases that differ only by a planted token
  (``--shortcut FINDING:STRENGTH``, :mod:`cxrkit.data.phantoms.shortcut`): the same
  recipe trains a model on each, and ``cxrkit audit`` runs on each test split. Prints,
  per seed, model and split (test: the token is on random images; val: carved out of
  train_val, it carries the token as training does), the planted finding's AUROC as is /
  chest only / outside only, the Grad-CAM energy inside the chest against its area, and
  the flags raised for the finding. ``--independent FINDING ...`` draws those findings'
  labels independent of view, sex, age and the other findings in both releases (a
  confound-free control: do clean models still read outside the chest?).
* ``real``      the 1,789 real 256 px images of ``../shared/nih`` (official split), a
  model trained from scratch (``--epochs``), audited on test; prints its summary.md.

    python bench/bench_audit.py phantoms [--seeds 1 2 3 --patients 400 --size 64 --epochs 10]
    python bench/bench_audit.py real [--size 128 --epochs 6]

Writes ``--work`` (default ``bench/out/audit/<dataset>``); prints markdown tables and the
load average it ran under.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CXRKIT_PRECISION", "fp32")


def train(
    prepared,
    out: Path,
    *,
    epochs: int,
    seed: int,
    findings: str = "all",
    batch_size: int = 32,
    lr: float = 3e-3,
    scheduler: str = "plateau",
) -> Path:
    from cxrkit.config import load_config
    from cxrkit.engine.train import fit

    cfg = load_config(
        None,
        [
            f"data.prepared={prepared.root}",
            f"out={out}",
            "model.name=cnn4",
            f"data.batch_size={batch_size}",
            f"train.epochs={epochs}",
            f"train.lr={lr}",
            f"train.scheduler={scheduler}",
            "train.amp=none",
            "train.patience=100",
            f"data.findings={findings}",
            f"train.seed={seed}",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(cfg, show_progress=False)
    return out


def phantom_pair(
    work: Path,
    *,
    seed: int,
    patients: int,
    size: int,
    epochs: int,
    shortcut: str,
    findings: str,
    test_fraction: float,
    val_fraction: float,
    batch_size: int = 32,
    lr: float = 3e-3,
    scheduler: str = "plateau",
    independent: tuple[str, ...] = (),
    reuse: bool = False,
) -> dict[tuple[str, str], dict]:
    """Audit records of the clean and the planted model of one seed, on test and val."""
    from cxrkit.audit import audit_run
    from cxrkit.data.cache import PreprocessSettings
    from cxrkit.data.phantoms import make_phantoms
    from cxrkit.data.prepare import prepare

    out = {}
    for kind in ("clean", "planted"):
        root = work / f"seed{seed}" / kind
        if reuse and (root / "run" / "best.pt").exists():  # trained by an earlier call
            for split in ("test", "val"):
                t2 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[kind, split] = audit_run(
                        root / "run", split=split, bootstrap=200, progress=False
                    )
                out[kind, split]["bench_seconds"] = {
                    "train": float("nan"),
                    "audit": time.perf_counter() - t2,
                }
            continue
        make_phantoms(
            root / "release",
            n_patients=patients,
            image_size=size,
            seed=seed,
            test_fraction=test_fraction,
            label_noise="none",
            progress=False,
            shortcut=shortcut if kind == "planted" else None,
            independent=independent,
        )
        p = prepare(
            root / "release",
            root / "prepared",
            settings=PreprocessSettings(size=size),
            val_fraction=val_fraction,
            workers=0,
            progress=False,
        )
        t0 = time.perf_counter()
        run = train(
            p,
            root / "run",
            epochs=epochs,
            seed=seed,
            findings=findings,
            batch_size=batch_size,
            lr=lr,
            scheduler=scheduler,
        )
        t1 = time.perf_counter()
        for split in ("test", "val"):
            t2 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[kind, split] = audit_run(run, split=split, bootstrap=200, progress=False)
            out[kind, split]["bench_seconds"] = {
                "train": t1 - t0,
                "audit": time.perf_counter() - t2,
            }
    return out


def _fmt(c: dict) -> str:
    return "-" if c["value"] is None else f"{c['value']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def run_phantoms(args) -> None:
    finding = args.shortcut.rpartition(":")[0]
    rows = [
        "| seed | model | split | positives | AUROC as is | chest only | outside only | "
        "evidence outside (SD) | evidence in chest (SD) | |shift| outside blanked | "
        "chest blanked | occlusion peak outside (SD) | "
        "inside | occlusion energy in chest | CAM energy in chest | chest area | "
        "flags for the finding | train s | audit s |",
        "|---|---|---|---:|---|---|---|---|---|---|---|---|---|---|---|---:|---|---:|---:|",
    ]
    for seed in args.seeds:
        pair = phantom_pair(
            args.work,
            seed=seed,
            patients=args.patients,
            size=args.size,
            epochs=args.epochs,
            shortcut=args.shortcut,
            findings=args.findings,
            test_fraction=args.test_fraction,
            val_fraction=args.val_fraction,
            batch_size=args.batch_size,
            lr=args.lr,
            scheduler=args.scheduler,
            independent=tuple(args.independent),
            reuse=args.reuse,
        )
        for (kind, split), r in pair.items():
            rr, s = r["region_reliance"][finding], r["saliency"][finding]
            ri, oc = r["region_influence"][finding], r["occlusion"][finding]
            flags = sorted(f["measure"] for f in r["flags"] if f["finding"] == finding)
            rows.append(
                f"| {seed} | {kind} | {split} | {rr['positives']} | {_fmt(rr['auroc'])} | "
                f"{_fmt(rr['auroc_chest_only'])} | {_fmt(rr['auroc_outside_only'])} | "
                f"{_fmt(ri['evidence_outside'])} | {_fmt(ri['evidence_chest'])} | "
                f"{_fmt(ri['mean_shift_outside_blanked'])} | "
                f"{_fmt(ri['mean_shift_chest_blanked'])} | {_fmt(oc['peak_outside'])} | "
                f"{_fmt(oc['peak_inside'])} | {_fmt(oc['energy_inside'])} | "
                f"{_fmt(s['energy_inside'])} | {s['area_inside']['value']:.3f} | "
                f"{', '.join(flags) or 'none'} | {r['bench_seconds']['train']:.0f} | "
                f"{r['bench_seconds']['audit']:.0f} |"
            )
            print(rows[-1], flush=True)
    print(
        f"\nshortcut {args.shortcut}, {args.patients} patients, {args.size} px, cnn4 "
        f"{args.epochs} epochs (batch {args.batch_size}, lr {args.lr}, scheduler "
        f"{args.scheduler}), findings={args.findings}, test fraction "
        f"{args.test_fraction}, val fraction {args.val_fraction}, noise-free labels"
        f"{', independent: ' + ' '.join(args.independent) if args.independent else ''}\n"
    )
    print("\n".join(rows))


def run_real(args) -> None:
    from cxrkit.audit import audit_run
    from cxrkit.data.cache import PreprocessSettings
    from cxrkit.data.prepare import prepare

    images = args.nih / "images_256"
    if not images.is_dir():
        raise SystemExit(f"real NIH sample not found at {images} (use --nih)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'dropped 110,331 label-file images not on disk'
        p = prepare(
            args.nih,
            args.work / "prepared",
            images_root=images,
            label_file=args.nih / "meta" / "Data_Entry_2017.csv",
            on_missing="drop",
            settings=PreprocessSettings(size=args.size),
            protocol="official",
            progress=False,
        )
    t0 = time.perf_counter()
    run = train(p, args.work / "run", epochs=args.epochs, seed=0, lr=1e-3)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = audit_run(run, bootstrap=1000, progress=False)
    print(f"trained {t1 - t0:.0f} s, audited {time.perf_counter() - t1:.0f} s -> {r['out']}\n")
    print((Path(r["out"]) / "summary.md").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=("phantoms", "real"))
    ap.add_argument("--work", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--patients", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--shortcut", default="Effusion:0.8")
    ap.add_argument("--findings", default="all")
    ap.add_argument(
        "--independent",
        nargs="+",
        default=[],
        metavar="FINDING",
        help="labels independent of view, sex, age and other findings (a confound-free cohort)",
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--scheduler", default="plateau")
    ap.add_argument("--test-fraction", type=float, default=0.4)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument(
        "--reuse", action="store_true", help="audit runs already trained in --work again"
    )
    ap.add_argument("--nih", type=Path, default=REPO.parent / "shared" / "nih")
    args = ap.parse_args()
    args.work = args.work or REPO / "bench" / "out" / "audit" / args.dataset
    print(f"load average at start: {os.getloadavg()}", flush=True)
    (run_phantoms if args.dataset == "phantoms" else run_real)(args)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

"""Compose ``gpu_report.json`` and ``gpu_report.md`` from what check.sh's steps left in OUT.

Standard library only (it must report even when the wheels did not install). Every number
comes from a file a step wrote; a step that failed or did not run shows as such, and the
goals of issue 12 are judged only on measured numbers ("not measured" otherwise).
Exit status: 0 when every step is ok, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

NIH_TRAIN_IMAGES = 77_871  # one official-split training epoch
NIH_IMAGES = 112_120  # the whole release, prepared once
NIH_TEST_IMAGES = 25_596
RECIPE_EPOCHS = 30
GOALS = {"densenet121_images_per_s": 3000, "loader_over_train": 3.0, "epoch_s": 30, "recipe_h": 1.0}


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pytest(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = []
    for c in suite.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            el = c.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                msg = (el.get("message") or "").splitlines()
                cases.append(
                    {
                        "test": c.get("name"),
                        "outcome": outcome,
                        "seconds": float(c.get("time", 0)),
                        "message": msg[0][:300] if msg else "",
                    }
                )
                break
        else:
            cases.append(
                {"test": c.get("name"), "outcome": outcome, "seconds": float(c.get("time", 0))}
            )
    counts = {
        k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")
    }
    return {"counts": counts, "cases": cases}


def _merge(parts: list[dict | None]) -> dict | None:
    parts = [p for p in parts if p]
    if not parts:
        return None
    cases = [c for p in parts for c in p["cases"]]
    return {
        "counts": {k: sum(p["counts"][k] for p in parts) for k in parts[0]["counts"]},
        "cases": cases,
    }


def _steps(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, rc, secs, limit = (line.split("\t") + [""] * 5)[:5]
            rows.append(
                {
                    "step": name,
                    "status": status,
                    "exit": rc,
                    "seconds": float(secs or 0),
                    "limit_s": limit,
                }
            )
    return rows


def _fmt(x, spec=".0f", none="not measured"):
    return none if x is None else format(x, spec)


def judge(bench: list | None, cache: dict | None, train: dict | None) -> dict:
    """Issue 12's goals on one H200, from measured numbers only."""
    d = next(
        (
            r
            for r in bench or []
            if r["model"] == "densenet121" and r.get("device", "").startswith("cuda")
        ),
        None,
    )
    out = {}
    rate = d["images_per_s"] if d else None
    out["densenet121_images_per_s"] = {
        "goal": f">= {GOALS['densenet121_images_per_s']}",
        "measured": rate,
        "met": None if rate is None else rate >= GOALS["densenet121_images_per_s"],
    }
    ratio = d["loader_over_train"] if d else None
    out["loader_over_train"] = {
        "goal": f">= {GOALS['loader_over_train']}x",
        "measured": ratio,
        "met": None if ratio is None else ratio >= GOALS["loader_over_train"],
    }
    epoch = NIH_TRAIN_IMAGES / rate if rate else None
    out["epoch_s"] = {
        "goal": f"< {GOALS['epoch_s']} s",
        "measured": epoch,
        "met": None if epoch is None else epoch < GOALS["epoch_s"],
    }
    recipe = None
    prep = (cache or {}).get("prepare_images_per_s_wall")
    if rate and prep and train and train.get("run") and train.get("evaluate_s") is not None:
        run = train["run"]
        per_epoch = run["seconds"] / max(run["epochs_run"], 1)  # train + validation
        scale = NIH_TRAIN_IMAGES / max(run["train_images"], 1)
        n_test = (train.get("eval") or {}).get("n_images") or 1
        recipe = (
            NIH_IMAGES / prep
            + RECIPE_EPOCHS * per_epoch * scale
            + train["evaluate_s"] * NIH_TEST_IMAGES / n_test
        ) / 3600
    out["recipe_h"] = {
        "goal": f"< {GOALS['recipe_h']} h (prepare + {RECIPE_EPOCHS} epochs + evaluate, extrapolated)",
        "measured": recipe,
        "met": None if recipe is None else recipe < GOALS["recipe_h"],
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mode", default="real")
    ap.add_argument("--elapsed", type=float, default=None)
    args = ap.parse_args()
    o = args.out
    steps = _steps(o / "steps.tsv")
    env = _load(o / "env.json")
    wheels = _load(o / "wheels.json")
    tests = _merge([_pytest(o / "pytest.xml"), _pytest(o / "pytest_slow.xml")])
    cache = _load(o / "cache.json")
    bench = (_load(o / "bench_train.json") or []) + (
        _load(o / "bench_train_cudnn_benchmark.json") or []
    )
    train = None
    if (o / "train" / "run.json").exists():
        ev = _load(o / "train" / "eval_metrics.json") or {}
        train = {
            "run": _load(o / "train" / "run.json"),
            "evaluate_s": (_load(o / "train" / "evaluate_time.json") or {}).get("evaluate_s"),
            "eval": {
                "n_images": ev.get("n_images"),
                "split": ev.get("split"),
                "tta": ev.get("tta"),
                "mean_auroc": (ev.get("mean_auroc") or {}).get("value"),
            },
        }
    goals = judge(bench, cache, train) if args.mode == "real" else None
    serve = _load(o / "bench_serve.json")
    report = {
        "mode": args.mode,
        "elapsed_s": args.elapsed,
        "steps": steps,
        "env": env,
        "wheels": wheels,
        "pytest": tests,
        "cache": cache,
        "bench_train": bench,
        "train": train,
        "serve": serve,
        "goals": goals,
    }
    (o / "gpu_report.json").write_text(json.dumps(report, indent=1, default=str))

    md = [
        f"# cxrkit GPU proof kit report ({args.mode}{' run: CPU, tiny sizes' if args.mode == 'dry' else ''})",
        "",
    ]
    if env:
        md += [
            f"- machine: {env.get('gpu') or 'no CUDA GPU'}"
            f"{' (' + str(env.get('gpu_memory_gib')) + ' GiB)' if env.get('gpu') else ''}, "
            f"driver {env.get('driver')}, {env.get('cpu_count')} cores, {env.get('ram_gib')} GiB RAM",
            f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), "
            f"torchvision {env.get('torchvision')}, Python {env.get('python')}, {env.get('glibc')}, "
            f"bf16 {env.get('bf16_supported')}",
        ]
    md += [
        f"- total {args.elapsed:.0f} s" if args.elapsed is not None else "",
        "",
        "| step | status | seconds | limit s |",
        "| --- | --- | ---: | ---: |",
    ]
    md += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} | {s['limit_s']} |" for s in steps]
    if wheels:
        n = len(wheels.get("installed") or [])
        md += [
            "",
            f"wheels: {n} installed into the target folder"
            + (f"; missing: {', '.join(wheels['missing'])}" if wheels.get("missing") else "")
            + (
                f"; for another Python: {', '.join(wheels['wrong_python'])}"
                if wheels.get("wrong_python")
                else ""
            )
            + (f"; {wheels['dry_run_note']}" if wheels.get("dry_run_note") else ""),
        ]
    if tests:
        c = tests["counts"]
        md += [
            "",
            f"pytest tests/test_cuda.py: {c['passed']} passed, {c['failed']} failed, "
            f"{c['error']} errors, {c['skipped']} skipped",
        ]
        md += [
            f"- {x['outcome'].upper()} {x['test']}: {x.get('message', '')}"
            for x in tests["cases"]
            if x["outcome"] in ("failed", "error")
        ]
    if cache:
        md += [
            "",
            f"cache: {cache['drawn_images']} phantoms drawn ({cache['draw_images_per_s']:.0f}/s, "
            f"{cache['source_png_px']} px PNGs) x {cache['copies']} = {cache['release_images']} images; "
            f"prepare {cache['prepare_wall_s']:.1f} s wall = {cache['prepare_images_per_s_wall']:.0f} "
            f"images/s (its own figure: {(cache.get('prepare_build') or {}).get('images_per_s')} images/s, "
            f"{(cache.get('prepare_build') or {}).get('workers')} workers). NIH's PNGs are 1024 px: "
            "decoding them costs more, so this rate bounds the real release's from above.",
        ]
    if bench:
        md += [
            "",
            "| model | px | batch | cudnn.benchmark | train img/s | loader img/s | loader/train | peak GiB | NIH epoch s |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        md += [
            f"| {r['model']} | {r['px']} | {r['batch']} | {r['cudnn_benchmark']} | {r['images_per_s']:.0f} | "
            f"{r['loader_images_per_s']:.0f} | {r['loader_over_train']:.1f}x | "
            f"{_fmt(r['peak_gpu_gib'], '.1f', '-')} | {r['nih_epoch_s']:.1f} |"
            for r in bench
        ]
    if train and train["run"]:
        r, e = train["run"], train["eval"]
        md += [
            "",
            f"train ({r.get('model')}, {r.get('epochs_run')} epochs, {r.get('device')}, "
            f"{r.get('precision')}): status {r.get('status')}, {r.get('seconds', 0):.1f} s, "
            f"{_fmt(r.get('images_per_s'))} img/s last epoch, best val mean AUROC "
            f"{_fmt(r.get('best_val_mean_auroc'), '.3f')}; evaluate on {e.get('n_images')} test "
            f"images in {_fmt(train.get('evaluate_s'), '.1f')} s, mean AUROC "
            f"{_fmt(e.get('mean_auroc'), '.3f')} (phantoms: an end-to-end check, not a result)",
        ]
    if serve and serve.get("rows"):
        md += [
            "",
            "serve (bench/bench_serve.py, HTTP on 127.0.0.1, the trained checkpoint):",
            "",
            "| server | clients | requests | req/s | p50 ms | p95 ms | x unbatched |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        md += [
            f"| {r['config']} | {r['clients']} | {r['requests']} | {r['rps']:.1f} | "
            f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {_fmt(r.get('x_unbatched'), '.2f', '-')} |"
            for r in serve["rows"]
        ]
    if goals:
        md += ["", "| goal (one H200) | target | measured | met |", "| --- | --- | ---: | --- |"]
        md += [
            f"| {k} | {g['goal']} | {_fmt(g['measured'], '.2f')} | "
            f"{'-' if g['met'] is None else ('yes' if g['met'] else 'NO')} |"
            for k, g in goals.items()
        ]
    (o / "gpu_report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    ok = bool(steps) and all(s["status"] == "ok" for s in steps)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Full-release rehearsal: every stage through the CLI on phantom twins of NIH at 3 scales.

For each scale (a seeded, patient-grouped share of NIH's 30,805 patients, drawn by
``cxrkit phantoms --like ../shared/nih/meta --fraction F``, 64 px by default) this runs
each stage the way a user does, as its own ``python -m cxrkit.cli`` process:

=========  =====================================================  ==================
stage      command                                                 per-image count
=========  =====================================================  ==================
validate   ``validate TWIN``                                       all images
prepare    ``prepare TWIN --size 64`` (from scratch)               all images
stats      ``stats PREPARED``                                      all images
train      ``train configs/bench_scale.yaml`` (1 epoch of cnn4)    train + val images
evaluate   ``evaluate RUN --split test`` (1,000 patient            test + val images
           resamples, subgroups, calibration, report)
compare    ``compare RUN RUN_B`` (paired bootstrap, 1,000)         test images
explain    ``explain RUN test --limit 64``                         64
localize   ``localize RUN`` (every box image of the test split)    box images
predict    ``predict RUN FOLDER`` (2,000 files)                    2,000
export     ``export RUN --format onnx`` (with its parity check)    1 (the model)
=========  =====================================================  ==================

Per stage: wall seconds, CPU seconds of the process tree (``getrusage`` of the reaped
children; less sensitive than wall time to other load on the machine), seconds per
1,000 images, peak resident memory of the process tree (psutil, sampled every 0.2 s;
``rss`` and ``anon`` = rss minus file-backed pages, i.e. without the memory-mapped
cache's page cache) and the 1-minute load average (how busy the machine was). The
growth of the per-image cost from the smallest scale to the largest, and the goals of
issue 11 at full scale, are in the table printed at the end and written to
``--results`` (``bench_scale.json`` / ``bench_scale.md``).

Each scale lives in ``--work``/sNN (twin, prepared cache, runs, logs, ``stages.json``).
Stages already measured are not rerun unless named in ``--stages``; the twin and
prepared cache are reused (a twin at a smaller scale is seeded with hard links from
a complete full-scale twin, since an image's bytes do not depend on the fraction).
Setup steps (the twin, a second run for ``compare``: cnn4 for 20 steps, and its
evaluation) are timed and logged but are not stages.

    python bench/bench_scale.py                          # 10 %, 30 %, 100 %
    python bench/bench_scale.py --scales 10 --stages evaluate,report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

from cxrkit.artefacts import write_json

REPO = Path(__file__).resolve().parents[1]
STAGES = (
    "validate",
    "prepare",
    "stats",
    "train",
    "evaluate",
    "compare",
    "explain",
    "localize",
    "predict",
    "export",
)
GIB = 2**30
#: issue 11's goals at full scale (seconds of wall time on the 2-core machine)
GOALS = {
    "growth": 1.25,
    "peak_anon_gib": 3.0,
    "validate_s": 10,
    "stats_s": 15,
    "evaluate_non_forward_s": 90,
    "report_s": 30,
    "report_mb": 15,
    "localize_s": 300,
}
PREDICT_FILES = 2000
EXPLAIN_IMAGES = 64
BATCH = 128  # data.batch_size in configs/bench_scale.yaml


def _tree_sample(proc: psutil.Process, cpu: dict) -> tuple[int, int]:
    """(rss, anon) summed over a process and all its descendants, in bytes; records each
    one's CPU seconds so far in ``cpu`` (pid -> seconds, the last value seen)."""
    rss = anon = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            with p.oneshot():
                m, t = p.memory_info(), p.cpu_times()
        except psutil.Error:
            continue
        rss += m.rss
        anon += m.rss - getattr(m, "shared", 0)
        cpu[(p.pid, p.create_time())] = t.user + t.system
    return rss, anon


def run_cli(args: list[str], log: Path, env: dict) -> dict:
    """Run ``python -m cxrkit.cli ARGS`` (logged to ``log``); its wall/CPU time and peak
    tree memory. Raises if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ cxrkit " + " ".join(args) + "\n")
        fh.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxrkit.cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        peak, cpu_seen = [0, 0], {}
        ps = psutil.Process(proc.pid)
        done = threading.Event()

        def sample():
            while not done.is_set():
                rss, anon = _tree_sample(ps, cpu_seen)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # getrusage counts the stage and the descendants it reaped (not pool workers started
    # from a forkserver, which it never waits for); the samples count every process seen
    # up to its last sample (<= 0.2 s short each). The larger is the better estimate.
    cpu = max(
        (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        sum(cpu_seen.values()),
    )
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"cxrkit {' '.join(args)} failed (exit {rc}); see {log}:\n{tail}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": peak[0] // 2**20,
        "peak_anon_mib": peak[1] // 2**20,
        "load_1min": round((load0 + os.getloadavg()[0]) / 2, 2),
    }


class Scale:
    """One scale's folder, its cached stage results and how to run each stage."""

    def __init__(self, percent: int, work: Path, like: Path, size: int, seed: int):
        self.percent, self.like, self.size, self.seed = percent, like, size, seed
        self.dir = work / f"s{percent}"
        self.twin, self.prep = self.dir / "twin", self.dir / "prepared"
        self.run_a, self.run_b = self.dir / "runs" / "a", self.dir / "runs" / "b"
        self.results_path = self.dir / "stages.json"
        self.results = (
            json.loads(self.results_path.read_text())
            if self.results_path.exists()
            else {"stages": {}, "setup": {}}
        )
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "TQDM_MININTERVAL": "10",
            "PYTHONUNBUFFERED": "1",
        }
        self.work = work
        self.train_steps: int | None = None

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.results, self.results_path)

    def cli(self, name: str, args: list[str], setup: bool = False) -> dict:
        print(f"[{self.percent}%] {name}: cxrkit {' '.join(args)}", flush=True)
        r = run_cli(args, self.dir / "logs" / f"{name}.log", self.env)
        r["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.results["setup" if setup else "stages"][name] = r
        self.save()
        print(
            f"[{self.percent}%] {name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
            f"peak {r['peak_rss_mib']} MiB rss / {r['peak_anon_mib']} MiB anon",
            flush=True,
        )
        return r

    # -- setup ------------------------------------------------------------------------
    def ensure_twin(self) -> dict:
        manifest = self.twin / "phantoms_manifest.json"
        m = json.loads(manifest.read_text()) if manifest.exists() else {}
        if (
            m.get("complete")
            and m["settings"]["fraction"] == self.percent / 100
            and m["settings"]["image_size"] == self.size
        ):
            return m
        full = self.work / "s100" / "twin"
        if self.percent < 100 and (full / "phantoms_manifest.json").exists():
            fm = json.loads((full / "phantoms_manifest.json").read_text())
            if (
                fm.get("complete")
                and fm["settings"]["image_size"] == self.size
                and fm["settings"]["seed"] == self.seed
            ):
                self._link_from(full)
        self.cli(
            "twin",
            [
                "phantoms",
                str(self.twin),
                "--like",
                str(self.like),
                "--fraction",
                str(self.percent / 100),
                "--size",
                str(self.size),
                "--seed",
                str(self.seed),
            ],
            setup=True,
        )
        return json.loads(manifest.read_text())

    def _link_from(self, full: Path) -> None:
        """Hard-link a full twin's images (those of this fraction are kept by phantoms)."""
        for folder in sorted(full.glob("images_[0-9][0-9][0-9]/images")):
            dest = self.twin / folder.relative_to(full)
            dest.mkdir(parents=True, exist_ok=True)
            have = set(os.listdir(dest))
            for name in os.listdir(folder):
                if name.endswith(".png") and name not in have:
                    os.link(folder / name, dest / name)

    def counts(self) -> dict:
        import pandas as pd

        split = pd.read_csv(self.prep / "split.csv")
        n = split["split"].value_counts().to_dict()
        boxes = pd.read_csv(self.twin / "BBox_List_2017.csv")
        test = set(split.loc[split["split"] == "test", "image_id"])
        return {
            "images": len(split),
            "train": n.get("train", 0),
            "val": n.get("val", 0),
            "test": n.get("test", 0),
            "box_images": len(set(boxes.iloc[:, 0]) & test),
        }

    # -- stages -----------------------------------------------------------------------
    def run_stage(self, stage: str) -> None:
        getattr(self, f"stage_{stage}")()

    def stage_validate(self):
        self.cli("validate", ["validate", str(self.twin)])

    def stage_prepare(self):
        if self.prep.exists():
            shutil.rmtree(self.prep)  # from scratch: a cached build would only be resumed
        self.cli(
            "prepare",
            ["prepare", str(self.twin), "--out", str(self.prep), "--size", str(self.size)],
        )

    def stage_stats(self):
        self.cli("stats", ["stats", str(self.prep), "--out", str(self.dir / "stats")])

    def stage_train(self):
        cap = [f"train.max_steps_per_epoch={self.train_steps}"] if self.train_steps else []
        r = self.cli(
            "train",
            [
                "train",
                "configs/bench_scale.yaml",
                "--out",
                str(self.run_a),
                f"data.prepared={self.prep}",
                *cap,
                "--fresh",
                "--no-progress",
            ],
        )
        r["max_steps"] = self.train_steps  # None: one whole epoch
        self.save()

    def stage_evaluate(self):
        r = self.cli(
            "evaluate",
            [
                "evaluate",
                str(self.run_a),
                "--split",
                "test",
                "--bootstrap",
                "1000",
                "--no-progress",
            ],
        )
        self.parse_evaluate(r)
        self.save()

    def parse_evaluate(self, r: dict) -> None:
        """The forward/metrics/report seconds that evaluate logs, added to its result."""
        text = (self.dir / "logs" / "evaluate.log").read_text()
        fwd = re.search(r"forward passes: (\d+) images in ([\d.]+) s(?: \(([\d.]+) s CPU)?", text)
        rep = re.search(r"report: \S+ \(([\d.]+) MB\) in ([\d.]+) s(?: \(([\d.]+) s CPU)?", text)
        r["forward_s"] = float(fwd.group(2)) if fwd else None
        r["non_forward_s"] = round(r["wall_s"] - r["forward_s"], 2) if fwd else None
        if fwd and fwd.group(3):  # CPU: the stage's CPU less the forward passes' CPU
            r["forward_cpu_s"] = float(fwd.group(3))
            r["non_forward_cpu_s"] = round(r["cpu_s"] - r["forward_cpu_s"], 2)
        r["report_mb"], r["report_s"] = (
            (float(rep.group(1)), float(rep.group(2))) if rep else (None, None)
        )
        r["report_cpu_s"] = float(rep.group(3)) if rep and rep.group(3) else None

    def stage_compare(self):
        if not (self.run_b / "eval" / "test" / "metrics.json").exists():
            self.cli(
                "train_b",
                [
                    "train",
                    "configs/bench_scale.yaml",
                    "--out",
                    str(self.run_b),
                    f"data.prepared={self.prep}",
                    "train.seed=1",
                    "train.max_steps_per_epoch=20",
                    "--fresh",
                    "--no-progress",
                ],
                setup=True,
            )
            self.cli(
                "evaluate_b",
                ["evaluate", str(self.run_b), "--split", "test", "--no-report", "--no-progress"],
                setup=True,
            )
        self.cli(
            "compare",
            [
                "compare",
                str(self.run_a),
                str(self.run_b),
                "--out",
                str(self.dir / "compare"),
                "--bootstrap",
                "1000",
                "--no-evaluate-missing",
                "--no-progress",
            ],
        )

    def stage_explain(self):
        self.cli(
            "explain",
            ["explain", str(self.run_a), "test", "--limit", str(EXPLAIN_IMAGES), "--no-progress"],
        )

    def stage_localize(self):
        self.cli("localize", ["localize", str(self.run_a), "--no-progress"])

    def stage_predict(self):
        folder = self.dir / "predict_in"
        if len(list(folder.glob("*.png"))) != PREDICT_FILES:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            pngs = sorted(self.twin.glob("images_[0-9][0-9][0-9]/images/*.png"))
            for p in pngs[:PREDICT_FILES]:
                os.link(p, folder / p.name)
        self.cli(
            "predict",
            [
                "predict",
                str(self.run_a),
                str(folder),
                "--out",
                str(self.dir / "predictions.csv"),
                "--show",
                "5",
                "--no-progress",
            ],
        )

    def stage_export(self):
        self.cli("export", ["export", str(self.run_a), "--format", "onnx"])


def per_image_n(stage: str, c: dict, r: dict) -> int:
    trained = c["train"] if not r.get("max_steps") else min(c["train"], r["max_steps"] * BATCH)
    return {
        "validate": c["images"],
        "prepare": c["images"],
        "stats": c["images"],
        "train": trained + c["val"],
        "evaluate": c["test"] + c["val"],
        "compare": c["test"],
        "explain": EXPLAIN_IMAGES,
        "localize": c["box_images"],
        "predict": PREDICT_FILES,
        "export": 1,
    }[stage]


def summarise(scales: list[Scale]) -> dict:
    """Rows per stage and scale, growth from smallest to largest scale, goal checks."""
    done = [s for s in scales if s.results.get("counts")]
    rows = []
    for stage in STAGES:
        row = {"stage": stage, "scales": {}}
        for s in done:
            r = s.results["stages"].get(stage)
            if r is None:
                continue
            if stage == "evaluate" and (s.dir / "logs" / "evaluate.log").exists():
                s.parse_evaluate(r)
            n = per_image_n(stage, s.results["counts"], r)
            row["scales"][str(s.percent)] = {
                **r,
                "n": n,
                "wall_s_per_1000": round(1000 * r["wall_s"] / n, 3),
                "cpu_s_per_1000": round(1000 * r["cpu_s"] / n, 3),
            }
        have = sorted(row["scales"], key=int)
        base = "10" if "10" in have and have[-1] != "10" else have[0] if have else None
        if len(have) >= 2:  # from the 10 % scale (the goal's) where measured, else the smallest
            lo, hi = row["scales"][base], row["scales"][have[-1]]
            row["growth_wall"] = round(hi["wall_s_per_1000"] / lo["wall_s_per_1000"], 3)
            row["growth_cpu"] = round(hi["cpu_s_per_1000"] / max(lo["cpu_s_per_1000"], 1e-9), 3)
            row["growth_between"] = f"{base}% -> {have[-1]}%"
            if bool(lo.get("max_steps")) != bool(hi.get("max_steps")):
                row["growth_wall"] = row["growth_cpu"] = None  # a capped epoch is not comparable
                row["growth_between"] += " (not comparable: one epoch capped)"
        rows.append(row)
    return {
        "rows": rows,
        "goals": check_goals(rows),
        "counts": {str(s.percent): s.results["counts"] for s in done},
        "twin_seconds": {str(s.percent): s.results.get("twin_seconds") for s in done},
    }


def check_goals(rows: list[dict]) -> list[dict]:
    """Issue 11's goals, checked at the 100 % scale where it was measured."""
    out = []
    for row in rows:
        full = row["scales"].get("100")
        if full is None:
            continue
        st = row["stage"]
        out.append(
            {
                "stage": st,
                "goal": f"peak anon memory <= {GOALS['peak_anon_gib']} GiB",
                "value": round(full["peak_anon_mib"] / 1024, 2),
                "ok": full["peak_anon_mib"] / 1024 <= GOALS["peak_anon_gib"],
            }
        )
        if row.get("growth_cpu") is not None and row["growth_between"].startswith("10%"):
            out.append(
                {
                    "stage": st,
                    "goal": f"per-image CPU cost 100 % / 10 % <= {GOALS['growth']}",
                    "value": row["growth_cpu"],
                    "ok": row["growth_cpu"] <= GOALS["growth"],
                    "wall_growth": row["growth_wall"],
                }
            )
        # time goals: wall (contended here) and CPU seconds (what an idle machine's wall
        # would be for a single-threaded stage; a lower bound of nothing, an upper bound
        # for a stage that uses both cores)
        for key, wall, cpu in (
            ("validate_s", "wall_s", "cpu_s"),
            ("stats_s", "wall_s", "cpu_s"),
            ("localize_s", "wall_s", "cpu_s"),
            ("evaluate_non_forward_s", "non_forward_s", "non_forward_cpu_s"),
            ("report_s", "report_s", "report_cpu_s"),
        ):
            if key.split("_")[0] == st or (st == "evaluate" and key == "report_s"):
                w, c = full.get(wall), full.get(cpu)
                out.append(
                    {
                        "stage": st,
                        "goal": f"{wall} <= {GOALS[key]} s",
                        "value": w,
                        "ok": w is not None and w <= GOALS[key],
                        "cpu_value": c,
                        "cpu_ok": c is not None and c <= GOALS[key],
                    }
                )
        if st == "evaluate":
            v = full.get("report_mb")
            out.append(
                {
                    "stage": st,
                    "goal": f"report size <= {GOALS['report_mb']} MB",
                    "value": v,
                    "ok": v is not None and v <= GOALS["report_mb"],
                }
            )
    return out


def table(summary: dict) -> str:
    pct = sorted({p for r in summary["rows"] for p in r["scales"]}, key=int)
    head = (
        ["stage"]
        + [f"{p}% {k}" for p in pct for k in ("wall s", "CPU s", "CPU s/1k img", "peak MiB")]
        + ["growth wall", "growth CPU"]
    )
    lines = [
        "peak MiB: resident memory of the process tree without file-backed pages (the "
        "memory-mapped cache); growth: per-image cost at the largest scale / at 10 % (or "
        "the smallest, as noted)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in summary["rows"]:
        capped = [
            f"{p}%: {x['max_steps']} steps" for p, x in r["scales"].items() if x.get("max_steps")
        ]
        cells = [r["stage"] + (f" (capped: {', '.join(capped)})" if capped else "")]
        for p in pct:
            x = r["scales"].get(p)
            cells += (
                ["", "", "", ""]
                if x is None
                else [
                    f"{x['wall_s']:.1f}",
                    f"{x['cpu_s']:.1f}",
                    f"{x['cpu_s_per_1000']:.3g}",
                    f"{x['peak_anon_mib']}",
                ]
            )
        span = f" ({r['growth_between']})" if r.get("growth_between") else ""
        cells += [str(r.get("growth_wall", "")), f"{r.get('growth_cpu', '')}{span}"]
        lines.append("| " + " | ".join(cells) + " |")
    ev = next((r for r in summary["rows"] if r["stage"] == "evaluate"), None)
    if ev and ev["scales"]:
        lines += [
            "",
            "| evaluate | " + " | ".join(f"{p}%" for p in pct) + " |",
            "|---|" + "---|" * len(pct),
        ]
        for key in (
            "n",
            "forward_s",
            "forward_cpu_s",
            "non_forward_s",
            "non_forward_cpu_s",
            "report_s",
            "report_cpu_s",
            "report_mb",
        ):
            lines.append(
                f"| {key} | "
                + " | ".join(str(ev["scales"].get(p, {}).get(key, "")) for p in pct)
                + " |"
            )
    if summary["goals"]:
        lines += [
            "",
            "| goal at 100 % | stage | value (wall) | met | CPU s | met on CPU s |",
            "|---|---|---|---|---|---|",
        ]
        yes = {True: "yes", False: "**no**", None: ""}
        for g in summary["goals"]:
            lines.append(
                f"| {g['goal']} | {g['stage']} | {g['value']} | {yes[g['ok']]} | "
                f"{g.get('cpu_value', '')} | {yes[g.get('cpu_ok')]} |"
            )
    counts = summary["counts"]
    lines += [
        "",
        "images per scale: "
        + "; ".join(
            f"{p}%: {c['images']:,} ({c['train']:,} train / {c['val']:,} val / {c['test']:,} test, "
            f"{c['box_images']} box images)"
            for p, c in counts.items()
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", default="10,30,100", help="percent of patients, comma-separated")
    ap.add_argument(
        "--stages",
        default=None,
        help=f"stages to (re)run, comma-separated, of {','.join(STAGES)} "
        "(default: those not yet measured)",
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/cxrkit-bench-scale"))
    ap.add_argument("--like", type=Path, default=REPO.parent / "shared" / "nih" / "meta")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--report-only", action="store_true", help="only summarise what is cached")
    ap.add_argument(
        "--train-steps",
        default="",
        help="PERCENT:STEPS,... cap the train stage's epoch at a scale (when one "
        "epoch does not fit the time there); recorded in the results",
    )
    args = ap.parse_args()
    wanted = STAGES if args.stages is None else tuple(args.stages.split(","))
    unknown = set(wanted) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    percents = [int(p) for p in args.scales.split(",")]
    scales = [Scale(p, args.work, args.like, args.size, args.seed) for p in percents]
    # scales measured earlier but not named now still appear in the summary
    for d in sorted(args.work.glob("s*/stages.json")):
        p = int(d.parent.name[1:])
        if p not in percents:
            scales.append(Scale(p, args.work, args.like, args.size, args.seed))
    scales.sort(key=lambda s: s.percent)
    caps = dict(x.split(":") for x in args.train_steps.split(",") if x)
    for s in scales:
        s.train_steps = int(caps[str(s.percent)]) if str(s.percent) in caps else None
    for s in scales:
        if args.report_only or s.percent not in percents:
            continue
        m = s.ensure_twin()
        s.results["twin_seconds"] = m.get("seconds")
        # all stages in order by default; with --stages, those named, in the order named
        # (the prepared cache and the trained run first where they are missing)
        order = (
            [st for st in STAGES if st not in s.results["stages"]]
            if args.stages is None
            else list(wanted)
        )
        if not (s.prep / "dataset.json").exists() and "prepare" not in order:
            order.insert(0, "prepare")
        if (
            not (s.run_a / "best.pt").exists()
            and "train" not in order
            and any(st in order for st in STAGES[4:])
        ):
            order.insert(order.index("prepare") + 1 if "prepare" in order else 0, "train")
        for stage in order:
            s.run_stage(stage)
            if (s.prep / "split.csv").exists() and (
                stage == "prepare" or "counts" not in s.results
            ):
                s.results["counts"] = s.counts()
                s.save()
    summary = summarise(scales)
    summary["machine"] = {
        "cpus": os.cpu_count(),
        "load_1min_now": os.getloadavg()[0],
        "note": "2 cores shared with other jobs: wall times include "
        "contention (see each stage's load_1min); CPU seconds less so",
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "bench_scale.json").write_text(json.dumps(summary, indent=1))
    text = table(summary)
    (args.results / "bench_scale.md").write_text(
        "# bench_scale: every stage on phantom twins of NIH (64 px)\n\n" + text + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()

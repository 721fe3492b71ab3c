"""Serving speed: real HTTP clients against ``cxrkit serve`` (uvicorn on 127.0.0.1).

For each server configuration (a precision, with or without batching) a fresh
``python -m cxrkit.cli serve CHECKPOINT`` process is started on a free loopback port; after
a warm-up, 1, 4 and 16 concurrent clients (threads, each with its own keep-alive
``httpx.Client``) post real 256 px NIH PNGs to ``/predict`` in turn, ``--requests`` in all
per level or until ``--seconds`` have passed, whichever comes first. Printed per level:
requests/s, p50 and p95 latency (ms), and ratios measured in the same run: against
``--precision fp32`` (batched the same way) and against the same precision unbatched
(``--max-batch 1``: one forward pass per request, what the service did before batching).

    python bench/bench_serve.py --checkpoint RUN [--clients 1,4,16] [--requests 96]
    python bench/bench_serve.py --checkpoint RUN --device cuda --configs fp32,fp32-unbatched

The clients share the machine with the server (2 cores here): a client's own HTTP work
competes with the server's, the same for every configuration, so ratios are fair and
absolute requests/s are a floor.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NIH = Path(os.environ.get("CXRKIT_NIH_SAMPLE", REPO.parent / "shared" / "nih"))

#: name -> (precision, max_batch or None for the service's default)
CONFIGS = {
    "fp32-unbatched": ("fp32", 1),
    "fp32": ("fp32", None),
    "auto-unbatched": ("auto", 1),
    "auto": ("auto", None),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    ck: Path,
    precision: str,
    max_batch: int | None,
    device: str | None,
    log: Path,
    timeout: float = 600.0,
):
    import httpx

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "cxrkit.cli",
        "serve",
        str(ck),
        "--port",
        str(port),
        "--precision",
        precision,
    ]
    if max_batch is not None:
        cmd += ["--max-batch", str(max_batch)]
    if device:
        cmd += ["--device", device]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not start within {timeout:g} s; see {log}")


def run_level(url: str, images: list[bytes], clients: int, requests: int, seconds: float) -> dict:
    """``clients`` threads posting ``images`` until ``requests`` are done or time is up."""
    import httpx

    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    failures: list[str] = []
    stop_at = time.monotonic() + seconds

    def client():
        with httpx.Client(base_url=url, timeout=120.0) as c:
            while True:
                with lock:
                    i = state["next"]
                    if i >= requests or time.monotonic() > stop_at:
                        return
                    state["next"] += 1
                data = images[i % len(images)]
                t = time.perf_counter()
                r = c.post("/predict", files={"file": (f"img{i}.png", data, "image/png")})
                dt = time.perf_counter() - t
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    else:
                        failures.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = (
        (lambda f: lat[min(len(lat) - 1, int(round(f * (len(lat) - 1))))] * 1000)
        if lat
        else (lambda f: float("nan"))
    )
    return {
        "clients": clients,
        "requests": len(lat),
        "failed": len(failures),
        "failures": failures[:3],
        "wall_s": wall,
        "rps": len(lat) / wall if wall else 0.0,
        "p50_ms": q(0.5),
        "p95_ms": q(0.95),
        "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
    }


def _ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def read_images(n: int) -> list[bytes]:
    files = sorted((NIH / "images_256").glob("*.png"))[:n]
    if files:
        return [f.read_bytes() for f in files]
    # no real sample here (the GPU machine): phantom radiographs, 256 px PNGs
    import numpy as np
    from PIL import Image

    from cxrkit.data.phantoms import render_phantom

    out = []
    for i in range(n):
        img, _ = render_phantom(np.random.default_rng(i), (), size=256)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="run folder or best.pt")
    ap.add_argument(
        "--configs",
        default="fp32-unbatched,fp32,auto-unbatched,auto",
        help=f"comma-separated, of {', '.join(CONFIGS)}",
    )
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=96, help="per level (bounded)")
    ap.add_argument("--seconds", type=float, default=45.0, help="per level (bounded)")
    ap.add_argument("--images", type=int, default=64, help="distinct PNGs posted in turn")
    ap.add_argument("--device", default=None, help="the server's --device (cuda for the GPU kit)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    levels = [int(c) for c in args.clients.split(",")]
    images = read_images(args.images)
    rows, info = [], {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            precision, max_batch = CONFIGS[name]
            proc, url = start_server(
                args.checkpoint, precision, max_batch, args.device, Path(tmp) / f"{name}.log"
            )
            try:
                run_level(url, images, 2, 8, 60)  # warm-up
                import httpx

                info[name] = httpx.get(f"{url}/info", timeout=10).json()
                for clients in levels:
                    rows.append(
                        {
                            "config": name,
                            **run_level(url, images, clients, args.requests, args.seconds),
                        }
                    )
                info[name] = httpx.get(f"{url}/info", timeout=10).json()
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    by = {(r["config"], r["clients"]): r for r in rows}
    for r in rows:
        base = "fp32" if not r["config"].endswith("unbatched") else "fp32-unbatched"
        ref = by.get((base, r["clients"]))
        r["x_fp32"] = r["rps"] / ref["rps"] if ref and ref["rps"] else None
        unb = by.get((r["config"].replace("-unbatched", "") + "-unbatched", r["clients"]))
        r["x_unbatched"] = r["rps"] / unb["rps"] if unb and unb["rps"] else None
    print(
        f"\n## cxrkit serve, /predict over HTTP on 127.0.0.1: {len(images)} real 256 px PNGs "
        f"in turn, up to {args.requests} requests or {args.seconds:g} s per level; load "
        f"average {load0:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    print(
        "| server | precision used | batching | clients | requests | req/s | p50 ms | "
        "p95 ms | x fp32 | x unbatched |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        i = info[r["config"]]
        b = i["batching"]
        batching = (
            f"max {b['max_batch']}, {b['max_wait_ms']:g} ms (mean {b['mean_batch']})"
            if b["enabled"]
            else "off"
        )
        print(
            f"| {r['config']} | {i['precision']['used']} | {batching} | {r['clients']} | "
            f"{r['requests']}{' (' + str(r['failed']) + ' failed)' if r['failed'] else ''} | "
            f"{r['rps']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {_ratio(r['x_fp32'])} | "
            f"{_ratio(r['x_unbatched'])} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "info": info,
                    "load_before": load0,
                    "load_after": os.getloadavg()[0],
                },
                indent=1,
            )
        )
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput: what the usual scripts do (fp32 eager) vs cxrkit's fast path.

For each model, a full train step (forward, masked BCE, backward, Adam step) on a batch of
one-channel images, timed in fresh subprocesses so that each variant gets the same
allocator and thread state:

* ``fp32 eager``            float32, NCHW: the usual script (the baseline, ratio 1.0)
* ``bf16 + channels_last``  cxrkit's default (``train.amp=auto``, ``train.channels_last``)
* each of them again with ``GLIBC_TUNABLES`` (huge pages, no mmap/trim churn) set before
  Python starts. On the quiet 2-core development machine they did not speed up the bf16
  path (0.87-0.93x of it without), so cxrkit does not set them; this bench keeps measuring.

Variants run interleaved, ``--repeats`` times, best rate kept (the machine is shared and
noisy; ratios within one run are what to read).

    python bench/bench_train.py [--models densenet121,mobilenet_v3_large,cnn4] [--batch 16]

With a CUDA GPU: ``--device cuda`` measures the same train step on the GPU, and
``--loader PREPARED`` puts the real input pipeline in the loop (memory-mapped cache ->
DataLoader -> batch augmentation on the device -> bf16 step), printing train images/s,
the input pipeline's own images/s (same loader, copy and augmentation, no model), peak GPU
memory and the time one official-split NIH training epoch (77,871 images) would take:

    python bench/bench_train.py --device cuda --models densenet121:256,resnet50 --batch 256 \
        --loader data/nih-256 --workers 14 --steps 20 --json bench_train.json

(``MODEL:BATCH`` sets one model's batch; ``--cudnn-benchmark both`` adds a row with
``torch.backends.cudnn.benchmark`` on, which ``cxrkit train`` leaves off.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = {
    "densenet121": 224,
    "mobilenet_v3_large": 224,
    "cnn4": 128,
    "resnet50": 224,
    "efficientnet_b0": 224,
    "mobilenet_v2": 224,
    "lenet": 128,
    "gaussian_attention": 128,
}
NIH_TRAIN_IMAGES = 77_871  # one official-split training epoch (train_val_list less validation)
TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"


def worker(model_name: str, mode: str, batch: int, steps: int, device: str) -> float:
    import torch

    from cxrkit.engine.losses import MaskedBCE
    from cxrkit.models import create_model

    torch.manual_seed(0)
    size = SIZES.get(model_name, 224)
    dev = torch.device(device)
    model = create_model(model_name, in_chans=1).to(dev)
    fast = mode == "fast"
    if fast:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = MaskedBCE()
    x = torch.randn(batch, 1, size, size, device=dev)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 14, device=dev) < 0.1).float()
    model.train()

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=fast):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def loader_worker(
    model_name: str,
    prepared: str,
    batch: int,
    steps: int,
    device: str,
    workers: int,
    cudnn_benchmark: bool = False,
) -> dict:
    """Train steps fed by the real loader: cache -> DataLoader -> augmentation on device.

    Returns images/s of the train steps, images/s of the input pipeline alone (the same
    loader, host-to-device copy and augmentation, no model), and the peak GPU memory.
    """
    import torch

    from cxrkit.data.dataset import CXRDataset, make_loader
    from cxrkit.data.prepare import load_prepared
    from cxrkit.data.transforms import TrainTransform
    from cxrkit.engine.losses import MaskedBCE
    from cxrkit.models import create_model

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = cudnn_benchmark
    p = load_prepared(prepared)
    ds = CXRDataset(p.cache, p.table("train"))
    size = SIZES.get(model_name, 224)
    kw = {"img_size": size} if model_name.startswith("vit") else {}
    model = create_model(model_name, in_chans=1, **kw).to(dev).to(memory_format=torch.channels_last)
    cfg = model.cxr_config
    tf = TrainTransform(size, mean=cfg.mean, std=cfg.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = MaskedBCE()
    loader = make_loader(
        ds, batch_size=batch, shuffle=True, workers=workers, drop_last=True, pin_memory=cuda
    )
    if len(loader) == 0:
        raise SystemExit(f"{prepared}: {len(ds)} training images, fewer than one batch of {batch}")
    g = torch.Generator().manual_seed(0)  # a CPU generator, as cxrkit train passes

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def batches(n):
        done = 0
        while True:
            for b in loader:
                yield b
                done += 1
                if done >= n:
                    return

    def images_per_s(step) -> float:
        """Images/s of ``step(batch) -> input`` over ``steps`` batches after two warm-up ones."""
        n, t0 = 0, None
        for i, b in enumerate(batches(steps + 2)):
            x = step(b)
            if i == 1:  # warm-up over
                sync()
                t0 = time.perf_counter()
            elif i > 1:
                n += x.shape[0]
        sync()
        return n / (time.perf_counter() - t0)

    # the input pipeline alone: loader + copy + augmentation
    loader_rate = images_per_s(lambda b: tf(b["image"].to(dev, non_blocking=True), g))

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    last = {}

    def train_step(b):
        x = tf(b["image"].to(dev, non_blocking=True), g).contiguous(
            memory_format=torch.channels_last
        )
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = model(x)
        loss = loss_fn(logits.float(), b["labels"].to(dev, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last["loss"] = loss
        return x

    rate = images_per_s(train_step)
    loss = last["loss"]
    if not torch.isfinite(loss):
        raise SystemExit(f"{model_name}: loss became {loss.item()}")
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None
    return {
        "model": model_name,
        "px": size,
        "batch": batch,
        "workers": workers,
        "steps": steps,
        "cudnn_benchmark": cudnn_benchmark,
        "images_per_s": rate,
        "loader_images_per_s": loader_rate,
        "loader_over_train": loader_rate / rate,
        "peak_gpu_gib": peak,
        "nih_epoch_s": NIH_TRAIN_IMAGES / rate,
        "device": str(dev),
        "torch": str(torch.__version__),
        "gpu": torch.cuda.get_device_name(dev) if cuda else None,
    }


def run_variant(model, mode, tunables, args) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = TUNABLES
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        model,
        mode,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="densenet121,mobilenet_v3_large,cnn4")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"))
    ap.add_argument("--loader", metavar="PREPARED", help="real loader from this prepared folder")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (--loader)")
    ap.add_argument(
        "--cudnn-benchmark",
        choices=("off", "on", "both"),
        default="off",
        help="--loader: torch.backends.cudnn.benchmark (cxrkit train leaves it off)",
    )
    ap.add_argument("--json", help="--loader: also write the rows to this JSON file")
    args = ap.parse_args()
    if args.loader:
        print(
            f"\nreal loader in the loop: {args.loader}, batch {args.batch}, {args.workers} "
            f"workers, device {args.device}, {args.steps} timed steps\n"
        )
        print(
            f"{'model':24s} {'px':>4s} {'cudnn.bm':>8s} {'train img/s':>11s} "
            f"{'loader img/s':>12s} {'loader/train':>12s} {'peak GiB':>8s} "
            f"{'NIH epoch (77,871 img)':>22s}"
        )
        rows = []
        for spec in args.models.split(","):
            model, _, bs = spec.partition(":")  # densenet121:256 sets that model's batch
            for bm in (
                [False, True] if args.cudnn_benchmark == "both" else [args.cudnn_benchmark == "on"]
            ):
                r = loader_worker(
                    model,
                    args.loader,
                    int(bs or args.batch),
                    args.steps,
                    args.device,
                    args.workers,
                    bm,
                )
                rows.append(r)
                peak = (
                    f"{r['peak_gpu_gib']:8.1f}" if r["peak_gpu_gib"] is not None else f"{'-':>8s}"
                )
                print(
                    f"{model:24s} {r['px']:4d} {str(bm):>8s} {r['images_per_s']:11.1f} "
                    f"{r['loader_images_per_s']:12.1f} {r['loader_over_train']:11.1f}x "
                    f"{peak} {r['nih_epoch_s']:20.1f} s",
                    flush=True,
                )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
    if args.worker:
        rate = worker(args.worker[0], args.worker[1], args.batch, args.steps, args.device)
        print(json.dumps({"images_per_s": rate}))
        return
    variants = [
        ("fp32 eager", "fp32", False),
        ("bf16 + channels_last", "fast", False),
        ("fp32 eager + tunables", "fp32", True),
        ("bf16 + channels_last + tunables", "fast", True),
    ]
    import torch

    print(
        f"\ntrain step throughput, batch {args.batch}, {args.steps} timed steps, best of "
        f"{args.repeats}, device {args.device}, torch {torch.__version__}, "
        f"{os.cpu_count()} cores\n"
    )
    print(f"{'model':20s} {'px':>4s} {'variant':34s} {'img/s':>8s} {'x fp32 eager':>13s}")
    for model in args.models.split(","):
        best = {name: 0.0 for name, _, _ in variants}
        for _ in range(args.repeats):
            for name, mode, tun in variants:
                best[name] = max(best[name], run_variant(model, mode, tun, args))
        base = best["fp32 eager"]
        for name, _, _ in variants:
            print(
                f"{model:20s} {SIZES.get(model, 224):4d} {name:34s} {best[name]:8.1f} "
                f"{best[name] / base:12.2f}x"
            )
    print("\ngoal: cxrkit's default >= 2x fp32 eager for densenet121 on the CPU")


if __name__ == "__main__":
    main()

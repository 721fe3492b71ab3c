"""Loader throughput: cxrkit's cache + batch augmentation vs decoding PNGs every epoch.

The baseline is what the usual scripts do: a Dataset that opens each PNG with Pillow,
converts it to greyscale and runs torchvision's per-image RandomResizedCrop / ToTensor /
Normalize, in a DataLoader. cxrkit reads uint8 rows from the memory-mapped cache and
augments whole batches (one affine warp per batch). Both produce augmented, normalised
224x224 float batches of the same real NIH images (../shared/nih), in the same process.

    python bench/bench_loader.py [--images 256] [--batch 32] [--workers 0]

Prints a table of images/s and the ratio to the PNG baseline (goal >= 50x).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NIH = Path(os.environ.get("CXRKIT_NIH_SAMPLE", REPO.parent / "shared" / "nih"))

from cxrkit._compat import ensure_torchvision  # noqa: E402

ensure_torchvision()
from torchvision import transforms as T  # noqa: E402

from cxrkit.data.cache import PreprocessSettings, build_cache  # noqa: E402
from cxrkit.data.dataset import CXRDataset, make_loader  # noqa: E402
from cxrkit.data.transforms import TrainTransform  # noqa: E402
from cxrkit.labels import FINDINGS  # noqa: E402


class PngDataset(torch.utils.data.Dataset):
    """The usual script: decode a PNG and transform it, per image, every epoch."""

    def __init__(self, paths, size=224):
        self.paths = list(paths)
        self.tf = T.Compose(
            [T.RandomResizedCrop(size, scale=(0.75, 1.0)), T.ToTensor(), T.Normalize([0.5], [0.25])]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            img = im.convert("L")
        return self.tf(img), torch.zeros(len(FINDINGS))


def time_loader(loader, transform=None, min_images=0):
    """Images/s through the loader (and the batch transform, if any); one warm-up batch."""
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    g = torch.Generator().manual_seed(0)
    for _ in range(100000):
        for batch in it:
            x = batch["image"] if isinstance(batch, dict) else batch[0]
            if transform is not None:
                x = transform(x, g)
            n += x.shape[0]
        if n >= min_images:
            break
        it = iter(loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="images per timed pass")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    originals = sorted((NIH / "originals").rglob("*.png"))
    small = sorted((NIH / "images_256").glob("*.png"))
    if not originals or not small:
        sys.exit(f"real NIH sample not found under {NIH}")
    reps = int(np.ceil(args.images / len(originals)))
    orig_paths = (originals * reps)[: args.images]
    small_paths = small[: args.images]

    rows = []
    common = dict(batch_size=args.batch, num_workers=args.workers, shuffle=True)
    png_1024 = time_loader(torch.utils.data.DataLoader(PngDataset(orig_paths), **common))
    rows.append(("PNG decode 1024px + torchvision per-image (baseline)", png_1024))
    png_256 = time_loader(torch.utils.data.DataLoader(PngDataset(small_paths), **common))
    rows.append(("PNG decode 256px + torchvision per-image", png_256))

    with tempfile.TemporaryDirectory() as tmp:
        items = [(f"{i:06d}_{p.name}", p) for i, p in enumerate(orig_paths)]
        cache = build_cache(
            items,
            Path(tmp) / "cache",
            PreprocessSettings(size=256),
            workers=max(1, os.cpu_count() or 1),
            progress=False,
        )
        table = pd.DataFrame(
            {
                "image_id": [i for i, _ in items],
                "patient_id": 0,
                "age": 50.0,
                "sex": "M",
                "view": "PA",
                **{f: 0 for f in FINDINGS},
            }
        )
        ds = CXRDataset(cache, table)
        loader = make_loader(ds, batch_size=args.batch, shuffle=True, workers=args.workers)
        aug = TrainTransform(224, mean=0.5, std=0.25)
        rows.append(
            (
                "cxrkit cache 256px + batch augmentation",
                time_loader(loader, aug, min_images=4 * args.images),
            )
        )
        rows.append(
            (
                "cxrkit cache 256px, loader only",
                time_loader(loader, None, min_images=8 * args.images),
            )
        )

    print(
        f"\nloader throughput, {args.images} real NIH images, batch {args.batch}, "
        f"{args.workers} workers, torch threads 1, {os.cpu_count()} cores\n"
    )
    print(f"{'loader':58s} {'images/s':>10s} {'x baseline':>11s}")
    for name, rate in rows:
        print(f"{name:58s} {rate:10.1f} {rate / png_1024:10.1f}x")
    print("\ngoal: cache + augmentation >= 50x the 1024px PNG baseline")


if __name__ == "__main__":
    main()

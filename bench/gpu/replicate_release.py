"""Make a K-times larger NIH-layout release out of a phantom release, in seconds.

Why: ``cxrkit phantoms`` renders one image at a time on one core (~50-100 images/s), so
the ~20,000-image release that step 3 of ``check.sh`` prepares would take most of a
borrowed GPU's 15 minutes just to draw. Here a release of ~2,500 drawn images is copied K
times as K disjoint cohorts: every patient becomes K patients (new patient ids, new image
names, hard links to the same PNG files, the same labels, boxes and split membership), so
no copy of a test patient lands in training. ``cxrkit prepare`` then really decodes,
resizes and caches all K * N files with all cores, which is what step 3 measures; the
training speed of step 4 does not depend on the pixels being distinct. Step 5's AUROC on
such a release is an end-to-end check, not a result.

    python bench/gpu/replicate_release.py SRC DST --copies 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

FILES = ("Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt")
PER_FOLDER = 10_000  # NIH's images_NNN/images/ folders hold 10,000 images at most


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: copy
        shutil.copyfile(src, dst)


def replicate(src: Path, dst: Path, copies: int) -> dict:
    """Write ``copies`` disjoint copies of the release at ``src`` into ``dst``."""
    if copies < 1:
        raise ValueError(f"--copies must be >= 1, got {copies}")
    for name in FILES:
        if not (src / name).exists():
            raise FileNotFoundError(f"{src / name}: not an NIH-layout release (no {name})")
    started = time.perf_counter()
    images = {p.name: p for p in src.glob("images_*/images/*.png")}
    lines = (src / "Data_Entry_2017.csv").read_text().splitlines()
    header, rows = lines[0], [r for r in lines[1:] if r]
    pids = [int(r.split(",")[3]) for r in rows]
    stride = 10 ** len(str(max(pids)))  # copy k of patient p is patient k * stride + p
    if copies * stride >= 10**8:
        raise ValueError(f"{copies} copies of {max(pids)} patients overflow NIH's 8-digit ids")

    def rename(image: str, k: int) -> str:
        pid, rest = image.split("_", 1)
        return f"{k * stride + int(pid):08d}_{rest}"

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    entry, n = [header], 0
    for k in range(copies):
        for r in rows:
            f = r.split(",")
            name = rename(f[0], k)
            if f[0] not in images:
                raise FileNotFoundError(f"{src}: {f[0]} is listed but has no PNG")
            folder = dst / f"images_{n // PER_FOLDER + 1:03d}" / "images"
            if n % PER_FOLDER == 0:
                folder.mkdir(parents=True, exist_ok=True)
            _link(images[f[0]], folder / name)
            entry.append(",".join([name, f[1], f[2], str(k * stride + int(f[3])), *f[4:]]))
            n += 1
    (dst / "Data_Entry_2017.csv").write_text("\r\n".join(entry) + "\r\n")
    box = (src / "BBox_List_2017.csv").read_text().splitlines()
    (dst / "BBox_List_2017.csv").write_text(
        "\n".join(
            [
                box[0],
                *(
                    ",".join([rename(b.split(",", 1)[0], k), b.split(",", 1)[1]])
                    for k in range(copies)
                    for b in box[1:]
                    if b
                ),
            ]
        )
        + "\n"
    )
    for name in ("train_val_list.txt", "test_list.txt"):
        names = [x for x in (src / name).read_text().split() if x]
        (dst / name).write_text("\n".join(rename(x, k) for k in range(copies) for x in names))
    manifest = {
        "made_by": "bench/gpu/replicate_release.py",
        "source": str(src),
        "copies": copies,
        "n_images": n,
        "n_patients": copies * len(set(pids)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (dst / "replicate_manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--copies", type=int, default=8)
    args = ap.parse_args()
    print(json.dumps(replicate(args.src, args.dst, args.copies)))


if __name__ == "__main__":
    main()

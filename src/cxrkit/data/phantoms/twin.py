"""A phantom twin of NIH's real release: its rows, patients, boxes, lists and archives.

``make_twin(out_dir, like=META_DIR)`` (``cxrkit phantoms OUT --like META_DIR``) writes one
phantom (:mod:`cxrkit.data.phantoms`) per row of the real ``Data_Entry_2017.csv`` in
``META_DIR``, so that every stage can be rehearsed at NIH's real size and structure
(112,120 images of 30,805 patients, a 25,596-image test list, 984 boxes on 880 images)
without the 45 GB download:

* each image is drawn for its row's patient (one chest per patient, kept over their
  follow-ups), age, sex, view and findings: the image id, follow-up and patient are the
  real ones;
* ``Data_Entry_2017.csv`` and ``BBox_List_2017.csv`` are the real files' own lines
  (bytes unchanged: CRLF, header, spelling), filtered to the images written; so are the
  official ``train_val_list.txt`` / ``test_list.txt``;
* a boxed finding's sign is drawn *inside its real box* (its density change, computed
  where :func:`~cxrkit.data.phantoms.draw_phantom` would place it, is moved and resized
  into the box) and nowhere else, so localisation against NIH's boxes can be scored;
* images lie in NIH's archive layout, ``images_001/images`` ... ``images_012/images``:
  in image-id order of the *full* release, the first archive holds 4,999 images, the
  next ten 10,000 each, the last the rest; an image of a fraction lies where the full
  release has it.

``fraction`` keeps a seeded share of patients (all their images, boxes and list
entries); the shares are nested (10 % of patients is inside 30 % for one seed). Images
are drawn over ``workers`` processes with a progress bar. Each PNG is written atomically,
so a killed run resumes where it stopped; an image's bytes depend only on the seed, the
size and its real row (not on the fraction or the worker count), so the same seed gives
the same bytes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrkit.artefacts import atomic_path, file_sha256, write_bytes, write_json
from cxrkit.data._cache_build import _pool_context
from cxrkit.data.phantoms import (
    MANIFEST_NAME,
    PhantomRelease,
    check_image_size,
    draw_phantom,
    existing_release,
    finding_box,
    generator_versions,
    rng_stream,
    sample_anatomy,
    write_ascii,
)
from cxrkit.data.release import NIHRelease, load_release
from cxrkit.labels import FINDINGS

log = logging.getLogger(__name__)

__all__ = ["ARCHIVE_SIZES", "archive_of", "make_twin", "select_patients"]

#: Images per NIH archive (``images_001`` ... ``images_012``) in image-id order; the last
#: takes the rest (7,121 in the 112,120-image release).
ARCHIVE_SIZES = (4_999,) + (10_000,) * 10
N_ARCHIVES = len(ARCHIVE_SIZES) + 1
NIH_SIDE = 1024  # boxes are in the 1024x1024 space of the released PNGs
#: Images per task sent to a worker: ~0.1-0.5 s of work, so pickling costs < 1 %.
CHUNK = 64


def archive_of(position: int) -> int:
    """The archive number (1-12) of the image at 0-based ``position`` in id order."""
    edge = 0
    for k, n in enumerate(ARCHIVE_SIZES, start=1):
        edge += n
        if position < edge:
            return k
    return N_ARCHIVES


def select_patients(patients: pd.Series, fraction: float, seed: int) -> set[int]:
    """A seeded share of the distinct ``patients`` (at least one).

    Patients are ranked once by a seeded permutation and the first ``fraction`` kept, so
    a smaller fraction is a subset of a larger one for the same seed.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = np.unique(patients.to_numpy())
    order = rng_stream(seed, 0, 2).permutation(len(ids))
    keep = max(1, round(fraction * len(ids)))
    return set(ids[order[:keep]].tolist())


def _lines(path: Path) -> tuple[bytes, list[bytes]]:
    """A text file's header and non-blank data lines, each with its own line end."""
    lines = Path(path).read_bytes().splitlines(keepends=True)
    return lines[0], [ln for ln in lines[1:] if ln.strip()]


def _first_field(line: bytes) -> str:
    return line.split(b",", 1)[0].strip().decode("ascii", "replace")


def _render(job: tuple) -> np.ndarray:
    """One twin image: a phantom of its row, each boxed finding's sign inside its box."""
    seed, size, pid, follow_up, age, sex, view, findings, boxes, anatomy = job
    boxed = sorted({f for f, *_ in boxes})
    unboxed = [f for f in findings if f not in boxed]
    kw = dict(size=size, sex=sex, age=age, view=view, anatomy=anatomy)
    background = draw_phantom(rng_stream(seed, pid, 2, follow_up), unboxed, **kw)
    if not boxes:
        return background.expose()
    # the same stream again, with the boxed findings: their own density changes
    # (draw_phantom consumes its generator the same way whatever the findings)
    signs = draw_phantom(rng_stream(seed, pid, 2, follow_up), [*unboxed, *boxed], **kw).deltas
    density = background.density.copy()
    scale = size / NIH_SIDE
    for f, x, y, w, h in boxes:
        delta = signs.get(f)
        src = finding_box(delta) if delta is not None else None
        if src is None:
            continue
        sx, sy, sw, sh = (int(v) for v in src)
        x0, y0 = int(np.floor(x * scale)), int(np.floor(y * scale))
        x1 = max(x0 + 1, int(np.ceil((x + w) * scale)))
        y1 = max(y0 + 1, int(np.ceil((y + h) * scale)))
        patch = cv2.resize(
            delta[sy : sy + sh, sx : sx + sw],  # type: ignore[index]
            (x1 - x0, y1 - y0),
            interpolation=cv2.INTER_AREA,
        )
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
        if cx1 > cx0 and cy1 > cy0:
            density[cy0:cy1, cx0:cx1] += patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return background.expose(density)


def _draw_chunk(root: str, seed: int, size: int, rows: list[tuple]) -> int:
    """Draw and write the images of ``rows`` not yet on disk; returns how many it wrote."""
    written, anatomy_of, anatomy = 0, None, None
    for image_id, folder, pid, follow_up, age, sex, view, findings, boxes, first_age in rows:
        path = Path(root) / folder / image_id
        if path.exists():  # written atomically by an earlier run
            continue
        if anatomy_of != pid:
            anatomy = sample_anatomy(rng_stream(seed, pid, 1), sex=sex, age=first_age)
            anatomy_of = pid
        image = _render((seed, size, pid, follow_up, age, sex, view, findings, boxes, anatomy))
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {image_id} as PNG")
        with atomic_path(path, durable=False) as tmp:  # re-creatable: no fsync each
            tmp.write_bytes(png.tobytes())
        written += 1
    return written


def _jobs(
    labels: pd.DataFrame, boxes: pd.DataFrame | None, folder_of: dict[str, str], keep: set[int]
) -> list[tuple]:
    """One tuple per kept row, in file order: what a worker needs to draw it."""
    by_image: dict[str, list] = {}
    if boxes is not None:
        for b in boxes.itertuples(index=False):
            by_image.setdefault(b.image_id, []).append((b.finding, b.x, b.y, b.w, b.h))
    kept = labels[labels["patient_id"].isin(keep)]
    onehot = kept[list(FINDINGS)].to_numpy(bool)
    # impossible ages (NaN in the reader) are drawn as NIH's mean; the file keeps them
    ages = kept["age"].fillna(47.0).clip(1, 95).astype(float)
    # a patient's chest is drawn once, for the sex and age of their first row, so that
    # each image is the same whichever of their images a resumed run draws first
    first = (
        pd.DataFrame({"patient_id": kept["patient_id"], "sex": kept["sex"], "age": ages})
        .groupby("patient_id")
        .first()
    )
    rows = []
    for r, age, hot in zip(kept.itertuples(index=False), ages, onehot):
        pid = int(r.patient_id)
        rows.append(
            (
                r.image_id,
                folder_of[r.image_id],
                pid,
                int(r.follow_up),
                float(age),
                str(first.at[pid, "sex"]),
                r.view,
                tuple(f for f, h in zip(FINDINGS, hot) if h),
                by_image.get(r.image_id, []),
                float(first.at[pid, "age"]),
            )
        )
    return rows


def _chunks(rows: list[tuple]) -> list[list[tuple]]:
    """~CHUNK rows per chunk, never splitting a patient (their anatomy is drawn once)."""
    out: list[list[tuple]] = []
    cur: list[tuple] = []
    for row in rows:
        if len(cur) >= CHUNK and row[2] != cur[-1][2]:
            out.append(cur)
            cur = []
        cur.append(row)
    return out + ([cur] if cur else [])


def _prepare_root(root: Path, image_settings: dict) -> None:
    """Refuse a folder holding a real release; remove images an earlier twin drew
    differently (another seed, size, source or generator) and stale temporary files."""
    manifest = root / MANIFEST_NAME
    if (root / "Data_Entry_2017.csv").exists() and not manifest.exists():
        raise FileExistsError(
            f"{root} holds a Data_Entry_2017.csv that is not a phantom release "
            f"(no {MANIFEST_NAME}); refusing to overwrite it"
        )
    try:
        old = json.loads(manifest.read_text()).get("image_settings")
    except (OSError, ValueError):
        old = None
    if manifest.exists() and old != image_settings:
        for png in root.glob("images_[0-9][0-9][0-9]/images/*.png"):
            png.unlink()
    for tmp in root.glob("images_[0-9][0-9][0-9]/images/.*.tmp*"):  # a killed run's
        tmp.unlink()


def _copy_metadata(
    real: NIHRelease, sources: dict[str, Path], root: Path, names: set[str]
) -> tuple[dict[str, Path], dict[str, int]]:
    """The real release's label file, box list and split lists, their own lines filtered to
    the images written (``names``); returns the files and how many lines each kept."""
    files = {
        "labels": root / "Data_Entry_2017.csv",
        "boxes": root / "BBox_List_2017.csv",
        "train_val": root / "train_val_list.txt",
        "test": root / "test_list.txt",
    }
    counts: dict[str, int] = {}
    for key in ("labels", "boxes"):
        header, lines = _lines(sources[key])
        ids = [_first_field(ln) for ln in lines]
        expected = (real.labels if key == "labels" else real.boxes)["image_id"].tolist()  # type: ignore[index]  # boxes: required above
        if ids != expected:
            raise ValueError(
                f"{sources[key]}: its lines do not match the rows read from it "
                "(blank or multi-line records?); cannot copy it line by line"
            )
        kept = [ln for ln, n in zip(lines, ids) if n in names]
        counts[key] = len(kept)
        write_bytes(header + b"".join(kept), files[key])
    for key in ("train_val", "test"):
        listed = [n for n in getattr(real, key) if n in names]
        counts[key] = len(listed)
        write_ascii(files[key], "\n".join(listed))
    return files, counts


def make_twin(
    out_dir,
    like,
    *,
    fraction: float = 1.0,
    image_size: int = 256,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> PhantomRelease:
    """Write the phantom twin of the release whose metadata is in ``like`` (see module
    docstring) to ``out_dir``; returns what was written.

    ``workers`` processes draw the images (default: all cores; 0 draws in this process).
    A complete twin with the same settings is left as it is; a partial one is resumed.
    """
    check_image_size(image_size)
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = in this process), got {workers}")
    started = time.perf_counter()
    like, root = Path(like), Path(out_dir)
    real = load_release(like)
    if not real.has_official_split:
        raise FileNotFoundError(
            f"{like}: the twin needs the official train_val_list.txt and "
            "test_list.txt next to the label file"
        )
    sources = {k: Path(v) for k, v in real.files.items()}
    if "boxes" not in sources:
        raise FileNotFoundError(f"{like}: BBox_List_2017.csv not found")
    keep = select_patients(real.labels["patient_id"], fraction, seed)
    image_settings = {
        "like_sha256": {k: file_sha256(p) for k, p in sorted(sources.items())},
        "image_size": image_size,
        "seed": seed,
    }
    settings = {"like": str(like.resolve()), "fraction": fraction, **image_settings}
    done = existing_release(root, settings)
    if done is not None:
        log.info("phantoms: %s is up to date (same settings and versions)", root)
        return done

    order = sorted(real.labels["image_id"])
    folder_of = {n: f"images_{archive_of(i):03d}/images" for i, n in enumerate(order)}
    rows = _jobs(real.labels, real.boxes, folder_of, keep)
    names = {r[0] for r in rows}
    root.mkdir(parents=True, exist_ok=True)
    _prepare_root(root, image_settings)
    write_json(
        {
            "made_by": "cxrkit.data.twin.make_twin",
            "complete": False,
            "versions": generator_versions(),
            "settings": settings,
            "image_settings": image_settings,
        },
        root / MANIFEST_NAME,
    )
    for png in root.glob("images_[0-9][0-9][0-9]/images/*.png"):
        if png.name not in names:  # drawn for a larger fraction
            png.unlink()
    for folder in sorted({r[1] for r in rows}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _draw_all(root, rows, seed, image_size, workers, progress)

    files, counts = _copy_metadata(real, sources, root, names)
    n_box_images = int(real.boxes.loc[real.boxes["image_id"].isin(names), "image_id"].nunique())  # type: ignore[union-attr, index]  # required above
    archives = pd.Series([r[1].split("/")[0] for r in rows]).value_counts().sort_index()
    seconds = time.perf_counter() - started
    write_json(
        {
            "made_by": "cxrkit.data.twin.make_twin",
            "complete": True,
            "versions": generator_versions(),
            "settings": settings,
            "image_settings": image_settings,
            "sources": {k: str(p) for k, p in sources.items()},
            "n_patients": len(keep),
            "n_images": len(rows),
            "n_train_val_images": counts["train_val"],
            "n_test_images": counts["test"],
            "n_boxes": counts["boxes"],
            "n_box_images": n_box_images,
            "archives": archives.to_dict(),
            "seconds": round(seconds, 1),
            "files": {k: p.name for k, p in files.items()},
        },
        root / MANIFEST_NAME,
    )
    log.info("phantoms: twin of %s, %d images in %.1f s", like, len(rows), seconds)
    return PhantomRelease(
        root,
        files["labels"],
        files["boxes"],
        files["train_val"],
        files["test"],
        root / MANIFEST_NAME,
        len(keep),
        len(rows),
        counts["test"],
        counts["boxes"],
        image_size,
        seed,
    )


def _draw_all(
    root: Path, rows: list[tuple], seed: int, size: int, workers: int | None, progress: bool
) -> None:
    todo = [r for r in rows if not (root / r[1] / r[0]).exists()]
    if workers is None:
        workers = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    chunks = _chunks(todo)
    bar = tqdm(
        total=len(rows),
        initial=len(rows) - len(todo),
        unit="img",
        desc="phantoms",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    try:
        if workers == 0 or len(chunks) <= 1:
            for c in chunks:
                _draw_chunk(str(root), seed, size, c)
                bar.update(len(c))
            return
        with cf.ProcessPoolExecutor(min(workers, len(chunks)), mp_context=_pool_context()) as pool:
            futures = {pool.submit(_draw_chunk, str(root), seed, size, c): len(c) for c in chunks}
            try:
                for f in cf.as_completed(futures):
                    f.result()
                    bar.update(futures[f])
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    except BaseException:
        log.warning(
            "phantoms: stopped with %d of %d images drawn in %s; run again to resume",
            sum(1 for r in rows if (root / r[1] / r[0]).exists()),
            len(rows),
            root,
        )
        raise
    finally:
        bar.close()

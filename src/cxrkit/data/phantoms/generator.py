"""Phantom chest radiographs written in NIH ChestX-ray14's exact layout.

``make_phantoms(out_dir)`` (``cxrkit phantoms OUT_DIR``) writes a small synthetic release
that every cxrkit command reads unchanged, so the whole pipeline can be demonstrated and
tested without the 45 GB download:

* ``images_001/images/00000001_000.png ...``: 8-bit greyscale PNGs, 10,000 per folder
  (``images_002/`` and on for more), named ``<patient:08d>_<follow-up:03d>.png``;
* ``Data_Entry_2017.csv`` in NIH's 2017 form: CRLF line ends, the header with its
  trailing comma, ``|``-separated findings in alphabetical order or ``No Finding``;
* ``BBox_List_2017.csv``: boxes in NIH's 1024x1024 pixel space whatever the PNG size,
  Infiltration spelled ``Infiltrate``; as in NIH, only on test-list images with one of
  the 8 :data:`~cxrkit.labels.BOXED_FINDINGS`, one box per finding, at most 3 per image;
* ``train_val_list.txt`` / ``test_list.txt``: a patient-disjoint split (sorted names);
* ``four_findings_expert_labels/``, ``all_findings_expert_labels/``: radiologists' labels
  in Google's format for a share of the images, holding the *truth* (what was drawn),
  while ``Data_Entry_2017.csv`` holds NIH-style *noisy* labels (misses and false alarms
  per finding; :mod:`cxrkit.data.phantoms.labels`);
* ``phantoms_manifest.json``: the settings and versions that made it (not an NIH file).

The images (:func:`render_phantom`, in :mod:`~cxrkit.data.phantoms.drawing`) show a chest
with soft tissue, lungs, heart, mediastinum, ribs, clavicles and diaphragm, posed, exposed
and noised differently each time; AP (bedside) views magnify the heart and are noisier,
women have breast shadows, older patients fainter bones and a larger heart. Each of the 14
findings is a plausible sign at a plausible place (see
:mod:`cxrkit.data.phantoms.findings`), varying in size, place and intensity, so a
classifier must learn shapes, not pixel statistics. Sign strengths are tuned for the demo:
a 4-block CNN trained from scratch for ~3 CPU-minutes on ~750 images reaches a mean test
AUROC of about 0.85 (not 1.0), while image mean, std and the mean of any 8x8 grid cell
stay below 0.9 AUROC for every finding (see tests/test_phantoms.py).

Labels (:func:`sample_cohort`, in :mod:`~cxrkit.data.phantoms.cohort`) follow NIH's
structure: ~half the images "No Finding", several images per patient with follow-up
numbers, ages and sexes distributed as in NIH, PA views in the majority and sicker
patients more often imaged AP. Findings co-occur as in NIH (Effusion with Atelectasis,
Cardiomegaly and Edema; Pneumonia with Infiltration and Consolidation; Emphysema with
Pneumothorax) and chronic ones (Cardiomegaly, Emphysema, Fibrosis, Pleural_Thickening,
Hernia, Mass, Nodule) persist across a patient's follow-ups. **Rare findings are
boosted**: NIH has Hernia on 0.2% of images and Pneumonia on 1.3%, which in a 300-patient
demo release (~750 images) would leave one or two positives and an undefined test AUROC.
:data:`TARGET_PREVALENCE` puts every finding on 3.5-14% of images (keeping NIH's order:
Infiltration, Effusion and Atelectasis most common) so that a small CNN trained for
minutes has something to learn from for each.

Everything is deterministic for a seed: each part of a release draws from its own
``numpy.random.SeedSequence(seed, spawn_key=...)`` stream (the split; each patient's
labels, anatomy and images), so patient 7 is the same whatever ``n_patients`` and
whatever the image size. The global RNG is never used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrkit.artefacts import write_bytes, write_json
from cxrkit.data.nih import NIH_IMAGE_SIZE
from cxrkit.data.phantoms.anatomy import (
    Anatomy,
    sample_anatomy,
)

# the cohort and the drawing were parts of this module: their names stay reachable here
from cxrkit.data.phantoms.cohort import (
    ACUTE as ACUTE,
    AGE_EFFECT as AGE_EFFECT,
    BASE_LOG_ODDS as BASE_LOG_ODDS,
    CHRONIC as CHRONIC,
    CHRONIC_SHOWN as CHRONIC_SHOWN,
    CO_OCCURRENCE as CO_OCCURRENCE,
    SCANNERS as SCANNERS,
    TARGET_PREVALENCE as TARGET_PREVALENCE,
    check_independent,
    rng_stream as rng_stream,
    sample_cohort as sample_cohort,
)
from cxrkit.data.phantoms.drawing import (
    MIN_SEVERITY as MIN_SEVERITY,
    Drawing as Drawing,
    Exposure as Exposure,
    draw_phantom as draw_phantom,
    finding_box as finding_box,
    render_phantom as render_phantom,
    sample_exposure as sample_exposure,
)
from cxrkit.data.phantoms.labels import (
    EXPERT_FRACTION,
    describe_noise,
    noisy_findings,
    write_expert_files,
)
from cxrkit.data.phantoms.shortcut import (
    CHEST_REGIONS,
    Shortcut,
    burn_token,
    chest_region,
    region_mask_for_file,
    write_chest_regions,
)
from cxrkit.data.splits import random_split
from cxrkit.labels import BOXED_FINDINGS, FINDINGS, NO_FINDING

log = logging.getLogger(__name__)

__all__ = [
    "Anatomy",
    "Drawing",
    "MANIFEST_NAME",
    "PhantomRelease",
    "TARGET_PREVALENCE",
    "draw_phantom",
    "existing_release",
    "finding_box",
    "generator_versions",
    "make_phantoms",
    "render_phantom",
    "rng_stream",
    "sample_anatomy",
    "sample_cohort",
    "write_ascii",
]

IMAGES_PER_FOLDER = 10_000
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
    "Patient Gender,View Position,OriginalImage[Width,Height],"
    "OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
MANIFEST_NAME = "phantoms_manifest.json"
#: Bump when the images or labels a seed produces change, so old releases are remade.
GENERATOR_VERSION = 3  # 2: NIH-style label noise and expert files (phantom_labels)
# 3: chest_regions.npz and the optional planted shortcut (shortcut.py)


# -- the release ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomRelease:
    """What :func:`make_phantoms` wrote (paths are inside ``root``)."""

    root: Path
    label_file: Path
    box_file: Path
    train_val_list: Path
    test_list: Path
    manifest: Path
    n_patients: int
    n_images: int
    n_test_images: int
    n_boxes: int
    image_size: int
    seed: int

    def __str__(self) -> str:
        return (
            f"{self.n_images:,} phantom images of {self.n_patients:,} patients "
            f"({self.image_size}px, seed {self.seed}; {self.n_test_images:,} in the test "
            f"list, {self.n_boxes:,} boxes) in {self.root}"
        )


def _choose_boxes(
    cohort: pd.DataFrame,
    test: set[str],
    rng: np.random.Generator,
    fraction: float = 0.6,
    per_image: int = 3,
) -> dict[str, list[str]]:
    """As NIH: boxes for a share of test images with a boxable finding, <= 3 per image."""
    chosen = {}
    for image_id, findings in zip(cohort["image_id"], cohort["findings"]):
        boxable = [f for f in findings if f in BOXED_FINDINGS]
        if image_id in test and boxable and rng.uniform() < fraction:
            if len(boxable) > per_image:
                boxable = sorted(rng.choice(boxable, per_image, replace=False), key=FINDINGS.index)
            chosen[image_id] = boxable
    return chosen


def _clear_previous(root: Path) -> None:
    """Refuse to write over anything but an earlier phantom release; remove its images."""
    if (root / "Data_Entry_2017.csv").exists() and not (root / MANIFEST_NAME).exists():
        raise FileExistsError(
            f"{root} holds a Data_Entry_2017.csv that is not a phantom release "
            f"(no {MANIFEST_NAME}); refusing to overwrite it"
        )
    if (root / MANIFEST_NAME).exists():
        for png in root.glob("images_[0-9][0-9][0-9]/images/*.png"):
            png.unlink()


def write_ascii(path: Path, text: str) -> None:
    """NIH's files are ASCII; a non-ASCII character here is a bug, so it is not encoded."""
    write_bytes(text.encode("ascii"), path)


#: The largest phantom side: what the image cache accepts (PreprocessSettings.size); one
#: image of side 100,000 would need 10 GB before the first was written.
MAX_IMAGE_SIDE = 4096


def check_image_size(image_size) -> int:
    """``image_size`` if it is a whole number of pixels in 16..:data:`MAX_IMAGE_SIDE`."""
    if (
        isinstance(image_size, bool)
        or not float(image_size).is_integer()
        or not 16 <= image_size <= MAX_IMAGE_SIDE
    ):
        raise ValueError(
            f"image_size must be a whole number of pixels from 16 to "
            f"{MAX_IMAGE_SIDE}, got {image_size!r}"
        )
    return int(image_size)


def _draw_images(
    root: Path,
    cohort: pd.DataFrame,
    noisy,
    test: set,
    boxed: dict,
    *,
    image_size: int,
    seed: int,
    shortcut: Shortcut | None,
    progress: bool,
) -> tuple[list[str], dict, int]:
    """Draw and write every image of ``cohort`` (PNG, NIH's ``images_NNN/images`` folders).

    Returns the NIH box lines (``boxed``: which findings of which image get a box, in
    1024 px coordinates), each image's chest region mask and how many shortcut tokens were
    planted. Each patient's anatomy is drawn once and kept over their follow-ups."""
    anatomy, anatomy_of = None, None  # the current patient's, kept over their follow-ups
    box_lines: list[str] = []
    regions: dict = {}
    planted = 0
    scale = NIH_IMAGE_SIZE / image_size
    for i, row in enumerate(
        tqdm(
            cohort.itertuples(index=False),
            total=len(cohort),
            desc="phantoms",
            unit="img",
            disable=not progress,
        )
    ):
        pid = row.patient_id
        if anatomy_of != pid:
            anatomy = sample_anatomy(rng_stream(seed, pid, 1), sex=row.sex, age=row.age)
            anatomy_of = pid
        drawing = draw_phantom(
            rng_stream(seed, pid, 2, row.follow_up),
            row.findings,
            size=image_size,
            sex=row.sex,
            age=row.age,
            view=row.view,
            anatomy=anatomy,
        )
        image, boxes = drawing.expose(), drawing.boxes()
        if drawing.lungs is None:  # draw_phantom always records them
            raise RuntimeError(f"phantom {row.image_id}: no lung fields drawn")
        chest = chest_region(drawing.lungs)
        regions[row.image_id] = region_mask_for_file(chest)
        token_rng = rng_stream(seed, pid, 5, row.follow_up)  # its own stream: images unchanged
        if shortcut is not None and shortcut.plants(
            token_rng, in_test=row.image_id in test, published=noisy[i]
        ):
            image = burn_token(image, chest, token_rng)
            planted += 1
        folder = root / f"images_{i // IMAGES_PER_FOLDER + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {row.image_id} as PNG")
        write_bytes(png.tobytes(), folder / row.image_id, durable=False)
        for f in (f for f in boxed.get(row.image_id, ()) if f in boxes):
            x, y, w, h = (v * scale for v in boxes[f])
            label = "Infiltrate" if f == "Infiltration" else f
            box_lines.append(f"{row.image_id},{label},{x:.15g},{y:.15g},{w:.15g},{h:.15g}")

    return box_lines, regions, planted


def _write_tables(
    root: Path, published: pd.DataFrame, cohort: pd.DataFrame, test: set, box_lines: list[str]
) -> dict[str, Path]:
    """NIH's label file (the published, noisy labels), box list and official split lists."""
    entry = [DATA_ENTRY_HEADER] + [
        f"{r.image_id},{'|'.join(sorted(r.findings)) or NO_FINDING},{r.follow_up},{r.patient_id},"
        f"{r.age},{r.sex},{r.view},{r.orig_width},{r.orig_height},{r.spacing},{r.spacing}"
        for r in published.itertuples(index=False)
    ]
    names = sorted(cohort["image_id"])
    files = {
        "labels": root / "Data_Entry_2017.csv",
        "boxes": root / "BBox_List_2017.csv",
        "train_val": root / "train_val_list.txt",
        "test": root / "test_list.txt",
    }
    write_ascii(files["labels"], "\r\n".join(entry) + "\r\n")
    write_ascii(files["boxes"], "\n".join([BBOX_HEADER, *box_lines]) + "\n")
    write_ascii(files["train_val"], "\n".join(n for n in names if n not in test))
    write_ascii(files["test"], "\n".join(n for n in names if n in test))
    return files


def make_phantoms(
    out_dir,
    *,
    n_patients: int = 300,
    images_per_patient=(1, 4),
    image_size: int = 256,
    test_fraction: float = 0.25,
    seed: int = 0,
    label_noise="moderate",
    expert_fraction=EXPERT_FRACTION,
    shortcut: str | Shortcut | None = None,
    independent=(),
    progress: bool = True,
) -> PhantomRelease:
    """Write a phantom release in NIH's exact layout to ``out_dir`` (see module docstring).

    ``images_per_patient`` is an inclusive range (mean 2.5 for the default: 300 patients
    give ~750 images). ``test_fraction`` of the images go to ``test_list.txt``, by patient
    and stratified by finding (:func:`cxrkit.data.splits.random_split`). The same
    arguments give the same bytes in every file; an earlier phantom release in
    ``out_dir`` is replaced, anything else there is left alone.

    ``label_noise`` (:mod:`cxrkit.data.phantoms.labels`): ``Data_Entry_2017.csv`` holds
    NIH-style noisy labels (``"moderate"``, ``"measured"``, ``"none"`` or
    ``{"miss": .., "false_alarm": ..}``); the images show the truth, which goes to
    Google-format expert files for ``expert_fraction`` = (test, train_val) shares of the
    images (``(0, 0)``: none). NIH boxes are drawn only where truth and label agree.

    Every release holds its images' true chest regions (``chest_regions.npz``);
    ``shortcut`` (``"FINDING:STRENGTH"`` or a :class:`~cxrkit.data.phantoms.shortcut.Shortcut`)
    plants a spurious token outside the chest (:mod:`cxrkit.data.phantoms.shortcut`).
    ``independent`` (finding names) makes those findings' labels independent of view, sex,
    age and the other findings, at the same prevalence (:func:`sample_cohort`); recorded in
    the manifest's settings only when given, so default releases are unchanged.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    check_image_size(image_size)
    started = time.perf_counter()
    root = Path(out_dir)
    settings = {
        "n_patients": n_patients,
        "images_per_patient": list(images_per_patient),
        "image_size": image_size,
        "test_fraction": test_fraction,
        "seed": seed,
        "label_noise": describe_noise(label_noise),
        "expert_fraction": [float(x) for x in expert_fraction],
    }
    if isinstance(shortcut, str):
        shortcut = Shortcut.parse(shortcut)
    if shortcut is not None:
        settings["shortcut"] = shortcut.record()
    independent = check_independent(independent)
    if independent:
        settings["independent"] = list(independent)
    manifest = root / MANIFEST_NAME  # first, so that an interrupted run can be replaced
    existing = existing_release(root, settings)
    if existing is not None:
        log.info("phantoms: %s is up to date (same settings and versions)", root)
        return existing
    cohort = sample_cohort(
        n_patients=n_patients,
        images_per_patient=images_per_patient,
        seed=seed,
        independent=independent,
    )
    root.mkdir(parents=True, exist_ok=True)
    _clear_previous(root)
    write_json(
        {"made_by": "cxrkit.data.phantoms.make_phantoms", "complete": False, "settings": settings},
        manifest,
    )

    noisy = noisy_findings(cohort, label_noise, seed)  # what "NIH" publishes
    published = cohort.assign(findings=noisy)
    onehot = pd.DataFrame({f: [int(f in t) for t in noisy] for f in FINDINGS})
    table = pd.concat([cohort[["image_id", "patient_id"]], onehot], axis=1)
    split_seed = int(rng_stream(seed, 0).integers(2**31))
    split = random_split(table, fractions=(1 - test_fraction, 0.0, test_fraction), seed=split_seed)
    test = set(split.loc[split["split"] == "test", "image_id"])
    agreed = cohort.assign(
        findings=[
            tuple(f for f in t if f in n) for t, n in zip(cohort["findings"], noisy, strict=True)
        ]
    )
    boxed = _choose_boxes(agreed, test, rng_stream(seed, 0, 1))

    box_lines, regions, planted = _draw_images(
        root,
        cohort,
        noisy,
        test,
        boxed,
        image_size=image_size,
        seed=seed,
        shortcut=shortcut,
        progress=progress,
    )
    files = _write_tables(root, published, cohort, test, box_lines)
    experts = write_expert_files(root, cohort, noisy, test, seed=seed, fraction=expert_fraction)
    write_chest_regions(root, regions)

    seconds = time.perf_counter() - started
    counts = {f: int(onehot[f].sum()) for f in FINDINGS}
    counts[NO_FINDING] = int((onehot.sum(axis=1) == 0).sum())
    write_json(
        {
            "made_by": "cxrkit.data.phantoms.make_phantoms",
            "complete": True,
            "versions": generator_versions(),
            "settings": settings,
            "n_images": len(cohort),
            "n_test_images": len(test),
            "n_boxes": len(box_lines),
            "finding_counts": counts,
            "true_finding_counts": {
                f: int(sum(f in t for t in cohort["findings"])) for f in FINDINGS
            },
            "expert_images": experts,
            "chest_regions": {
                "file": CHEST_REGIONS,
                "region": "lung fields and the mediastinum between them (phantoms.shortcut)",
            },
            **({"shortcut_images": planted} if shortcut is not None else {}),
            "files": {k: p.name for k, p in files.items()},
        },
        manifest,
    )
    log.info(
        "phantoms: %d images in %.1f s (%.0f images/s)",
        len(cohort),
        seconds,
        len(cohort) / max(seconds, 1e-9),
    )
    return PhantomRelease(
        root,
        files["labels"],
        files["boxes"],
        files["train_val"],
        files["test"],
        manifest,
        n_patients,
        len(cohort),
        len(test),
        len(box_lines),
        image_size,
        seed,
    )


def existing_release(root: Path, settings: dict) -> PhantomRelease | None:
    """The release already in ``root`` if a complete run made it with these settings.

    Shared by the default phantoms and the twin (``cxrkit.data.phantoms.twin``), whose manifest
    records its patient count (the twin's settings hold a fraction, not a count)."""
    import json

    try:
        m = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    files = {k: root / name for k, name in m.get("files", {}).items()}
    if (
        not m.get("complete")
        or m.get("settings") != settings
        or m.get("versions") != generator_versions()
        or set(files) != {"labels", "boxes", "train_val", "test"}
        or not all(p.exists() for p in files.values())
    ):
        return None
    return PhantomRelease(
        root,
        files["labels"],
        files["boxes"],
        files["train_val"],
        files["test"],
        root / MANIFEST_NAME,
        m.get("n_patients", settings.get("n_patients")),
        m["n_images"],
        m["n_test_images"],
        m["n_boxes"],
        settings["image_size"],
        settings["seed"],
    )


def generator_versions() -> dict[str, str]:
    from cxrkit import __version__

    return {
        "cxrkit": __version__,
        "generator": str(GENERATOR_VERSION),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }

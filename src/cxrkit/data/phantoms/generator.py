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

The images (:func:`render_phantom`) show a chest with soft tissue, lungs, heart,
mediastinum, ribs, clavicles and diaphragm, posed, exposed and noised differently each
time; AP (bedside) views magnify the heart and are noisier, women have breast shadows,
older patients fainter bones and a larger heart. Each of the 14 findings is a plausible
sign at a plausible place (see :mod:`cxrkit.data.phantoms.findings`), varying in size,
place and intensity, so a classifier must learn shapes, not pixel statistics. Sign
strengths are tuned for the demo: a 4-block CNN trained from scratch for ~3 CPU-minutes
on ~750 images reaches a mean test AUROC of about 0.85 (not 1.0), while image mean, std
and the mean of any 8x8 grid cell stay below 0.9 AUROC for every finding (see
tests/test_phantoms.py).

Labels (:func:`sample_cohort`) follow NIH's structure: ~half the images "No Finding",
several images per patient with follow-up numbers, ages and sexes distributed as in NIH,
PA views in the majority and sicker patients more often imaged AP. Findings co-occur as
in NIH (Effusion with Atelectasis, Cardiomegaly and Edema; Pneumonia with Infiltration
and Consolidation; Emphysema with Pneumothorax) and chronic ones (Cardiomegaly,
Emphysema, Fibrosis, Pleural_Thickening, Hernia, Mass, Nodule) persist across a
patient's follow-ups. **Rare findings are boosted**: NIH has Hernia on 0.2% of images and
Pneumonia on 1.3%, which in a 300-patient demo release (~750 images) would leave one or
two positives and an undefined test AUROC. :data:`TARGET_PREVALENCE` puts every finding
on 3.5-14% of images (keeping NIH's order: Infiltration, Effusion and Atelectasis most
common) so that a small CNN trained for minutes has something to learn from for each.

Everything is deterministic for a seed: each part of a release draws from its own
``numpy.random.SeedSequence(seed, spawn_key=...)`` stream (the split; each patient's
labels, anatomy and images), so patient 7 is the same whatever ``n_patients`` and
whatever the image size. The global RNG is never used.
"""

from __future__ import annotations

import logging
import math
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
    Frame,
    render_thorax,
    sample_anatomy,
    sample_pose,
)
from cxrkit.data.phantoms.findings import OVERLAYS, SHAPE_CHANGES
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
from cxrkit.labels import BOXED_FINDINGS, FINDINGS, NO_FINDING, canonical_finding

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

#: Share of images showing each finding (boosted from NIH's for rare ones, see above).
TARGET_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.09,
    "Cardiomegaly": 0.05,
    "Effusion": 0.10,
    "Infiltration": 0.14,
    "Mass": 0.05,
    "Nodule": 0.055,
    "Pneumonia": 0.04,
    "Pneumothorax": 0.05,
    "Consolidation": 0.045,
    "Edema": 0.04,
    "Emphysema": 0.04,
    "Fibrosis": 0.04,
    "Pleural_Thickening": 0.04,
    "Hernia": 0.035,
}
#: Findings a patient has for good (then shown on each follow-up with ``CHRONIC_SHOWN``).
CHRONIC = (
    "Cardiomegaly",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "Mass",
    "Nodule",
)
CHRONIC_SHOWN = 0.85
#: Findings of one image, sampled in this order so each can raise the later ones.
ACUTE = (
    "Pneumonia",
    "Consolidation",
    "Effusion",
    "Edema",
    "Atelectasis",
    "Pneumothorax",
    "Infiltration",
)
#: Log-odds added to a finding when another is present (NIH's common pairs).
CO_OCCURRENCE: dict[str, dict[str, float]] = {
    "Cardiomegaly": {"Effusion": 1.0, "Edema": 1.5},
    "Emphysema": {"Pneumothorax": 1.2},
    "Fibrosis": {"Pleural_Thickening": 0.8},
    "Mass": {"Nodule": 1.0, "Effusion": 0.6},
    "Pneumonia": {"Consolidation": 1.0, "Infiltration": 1.2},
    "Consolidation": {"Infiltration": 0.8, "Effusion": 0.6, "Atelectasis": 0.5},
    "Effusion": {"Atelectasis": 1.3, "Edema": 0.9, "Infiltration": 0.5},
    "Edema": {"Infiltration": 0.9},
}
#: Log-odds per 20 years of age above 47 for chronic findings.
AGE_EFFECT = {
    "Cardiomegaly": 0.4,
    "Emphysema": 0.6,
    "Fibrosis": 0.5,
    "Hernia": 0.8,
    "Mass": 0.3,
    "Nodule": 0.3,
    "Pleural_Thickening": 0.4,
}
#: Baseline log-odds, calibrated by simulation so that the cohort meets TARGET_PREVALENCE
#: (tests/test_phantoms.py checks it). Chronic ones are per patient, the rest per image.
BASE_LOG_ODDS = {
    "Cardiomegaly": -2.89,
    "Emphysema": -3.03,
    "Fibrosis": -3.08,
    "Pleural_Thickening": -3.25,
    "Hernia": -3.31,
    "Mass": -2.96,
    "Nodule": -2.85,
    "Pneumonia": -3.79,
    "Consolidation": -3.69,
    "Effusion": -2.79,
    "Edema": -4.03,
    "Atelectasis": -3.12,
    "Pneumothorax": -3.52,
    "Infiltration": -2.58,
}
#: NIH's most common scanner sizes and pixel spacings (OriginalImage / PixelSpacing columns).
SCANNERS = (
    (2500, 2048, "0.168", 30),
    (2992, 2991, "0.143", 22),
    (3056, 2544, "0.139", 15),
    (2500, 2048, "0.171", 7),
    (2048, 2500, "0.168", 6),
    (2021, 2021, "0.194311", 4),
)
#: Weakest sign drawn (0..1): below ~0.3 a small CNN at 128 px barely sees some signs
#: (a thin pneumothorax, a small nodule) and a demo-sized release cannot teach them.
MIN_SEVERITY = 0.3
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


def rng_stream(seed: int, *key: int) -> np.random.Generator:
    """The generator of one part of a release: ``(0,)`` the split, ``(patient, 0)`` a
    patient's labels, ``(patient, 1)`` their anatomy, ``(patient, 2, follow_up)`` an image."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def sample_cohort(
    *, n_patients: int = 300, images_per_patient=(1, 4), seed: int = 0
) -> pd.DataFrame:
    """The labels of a phantom release, one row per image, no pixels.

    Columns: ``image_id, patient_id, follow_up, age, sex, view, findings`` (a tuple in
    :data:`FINDINGS` order, empty for "No Finding"), ``orig_width, orig_height, spacing``.
    Patients are numbered from 1; each has ``images_per_patient`` (inclusive range,
    uniform) images. Per patient: sex (56% M as in NIH), age (NIH's mean 47, sd 17, 3%
    children), a frailty that makes every finding and AP views likelier, and chronic
    findings. Per image: the view and the acute findings.
    """
    lo, hi = images_per_patient
    if not 1 <= lo <= hi:
        raise ValueError(
            "images_per_patient must be (low, high) with 1 <= low <= high, got "
            f"{images_per_patient}"
        )
    rows = []
    for pid in range(1, n_patients + 1):
        rng = rng_stream(seed, pid, 0)
        sex = "M" if rng.uniform() < 0.565 else "F"
        age = rng.uniform(1, 16) if rng.uniform() < 0.03 else np.clip(rng.normal(47, 16.5), 16, 95)
        frailty = rng.normal()
        n_images = int(rng.integers(lo, hi + 1))
        chronic: list[str] = []  # lists, not sets: set order changes with PYTHONHASHSEED
        for f in CHRONIC:
            z = BASE_LOG_ODDS[f] + 0.4 * frailty + AGE_EFFECT[f] * (age - 47) / 20
            z += sum(CO_OCCURRENCE.get(g, {}).get(f, 0.0) for g in chronic)
            if rng.uniform() < _sigmoid(z):
                chronic.append(f)
        for k in range(n_images):
            age += rng.exponential(0.4)
            ap = rng.uniform() < _sigmoid(-0.55 + 0.9 * frailty + 0.2 * min(k, 3))
            found = [f for f in chronic if rng.uniform() < CHRONIC_SHOWN]
            for f in ACUTE:
                z = BASE_LOG_ODDS[f] + 0.7 * frailty + 0.5 * ap
                z += sum(CO_OCCURRENCE.get(g, {}).get(f, 0.0) for g in found)
                if rng.uniform() < _sigmoid(z):
                    found.append(f)
            width, height, spacing, _ = SCANNERS[rng.choice(len(SCANNERS), p=_SCANNER_P)]
            rows.append(
                (
                    f"{pid:08d}_{k:03d}.png",
                    pid,
                    k,
                    int(min(age, 95)),
                    sex,
                    "AP" if ap else "PA",
                    tuple(f for f in FINDINGS if f in found),
                    width,
                    height,
                    spacing,
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "image_id",
            "patient_id",
            "follow_up",
            "age",
            "sex",
            "view",
            "findings",
            "orig_width",
            "orig_height",
            "spacing",
        ],
    )


_SCANNER_P = np.array([s[3] for s in SCANNERS], float) / sum(s[3] for s in SCANNERS)


# -- images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposure:
    """How density becomes grey levels: ``black``/``white`` are the densities shown as 0
    and 255, ``gamma`` bends the curve, ``noise`` is the quantum-noise std (fraction of
    full scale), ``heel`` a brightness ramp across the image (anode heel effect)."""

    black: float
    white: float
    gamma: float
    noise: float
    heel: float
    heel_angle: float


def sample_exposure(rng: np.random.Generator, view: str) -> Exposure:
    """Exposure varies image to image; AP (portable) views are flatter and noisier.

    The spread is deliberately wide: it hides a finding's effect on a region's mean grey
    level, so that only its shape gives it away (see tests/test_phantoms.py).
    """
    ap = view == "AP"
    n = rng.normal(size=5).tolist()
    return Exposure(
        black=0.02 + (0.03 if ap else 0.0) + 0.06 * n[0],
        white=(1.35 if ap else 1.22) + 0.1 * n[1],
        gamma=float(np.exp(0.18 * n[2])),
        noise=(0.022 if ap else 0.015) * float(np.exp(0.3 * n[3])),
        heel=0.05 * n[4],
        heel_angle=rng.uniform(0, 2 * np.pi),
    )


Box = tuple[float, float, float, float]


def finding_box(delta: np.ndarray, fraction: float = 0.1) -> Box | None:
    """``(x, y, w, h)`` in pixels around where a finding changed the density by more than
    ``fraction`` of its largest change; ``None`` if it changed nothing."""
    mag = np.abs(delta)
    peak = float(mag.max())
    if peak <= 0:
        return None
    hit = mag > fraction * peak
    rows, cols = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
    x, y = int(cols[0]), int(rows[0])
    return float(x), float(y), float(cols[-1] + 1 - x), float(rows[-1] + 1 - y)


def render_phantom(
    rng: np.random.Generator,
    findings=(),
    *,
    size: int = 256,
    sex: str = "M",
    age: float = 50.0,
    view: str = "PA",
    anatomy: Anatomy | None = None,
) -> tuple[np.ndarray, dict[str, Box]]:
    """Draw one frontal chest radiograph showing ``findings``.

    Returns ``(image, boxes)``: ``image`` is a ``(size, size)`` uint8 array (bright =
    dense), ``boxes`` maps each drawn finding to ``(x, y, w, h)`` in pixels of this image
    around where it changed the picture. ``anatomy`` (from :func:`sample_anatomy`) keeps
    a patient's chest across follow-ups; without it one is drawn from ``rng`` for ``sex``
    and ``age``. Each sign's strength is drawn in [``MIN_SEVERITY``, 1].

    ``rng`` is consumed the same way whatever ``findings`` are, so two calls with equal
    generators differ only by the signs of the findings that differ.
    """
    d = draw_phantom(rng, findings, size=size, sex=sex, age=age, view=view, anatomy=anatomy)
    return d.expose(), d.boxes()


@dataclass(frozen=True)
class Drawing:
    """A phantom before exposure (:func:`draw_phantom`): ``density`` the summed density
    map, ``deltas`` each drawn finding's own change of density (pixels of this image);
    ``expose()`` turns it into the 8-bit radiograph :func:`render_phantom` returns,
    ``boxes()`` its findings' boxes; ``lungs`` the lung fields (0..1) of the chest drawn."""

    density: np.ndarray
    deltas: dict[str, np.ndarray]
    frame: Frame
    exposure: Exposure
    noise_rng: np.random.Generator
    lungs: np.ndarray | None = None

    def boxes(self) -> dict[str, Box]:
        """Each drawn finding's ``(x, y, w, h)`` in pixels (:func:`finding_box`)."""
        return {
            f: box for f, delta in self.deltas.items() if (box := finding_box(delta)) is not None
        }

    def expose(self, density: np.ndarray | None = None) -> np.ndarray:
        """The radiograph of ``density`` (default: this drawing's) under this exposure."""
        return _expose(
            self.density if density is None else density, self.exposure, self.noise_rng, self.frame
        )


def draw_phantom(
    rng: np.random.Generator,
    findings=(),
    *,
    size: int = 256,
    sex: str = "M",
    age: float = 50.0,
    view: str = "PA",
    anatomy: Anatomy | None = None,
) -> Drawing:
    """:func:`render_phantom` before exposure: the density and each finding's own change
    of it, so that a caller can move a sign (``cxrkit.data.phantoms.twin`` draws signs inside
    NIH's real boxes). Same arguments and ``rng`` consumption as :func:`render_phantom`."""
    if view not in ("PA", "AP"):
        raise ValueError(f"view must be 'PA' or 'AP', got {view!r}")
    if size < 16:
        raise ValueError(f"image size must be at least 16 pixels, got {size}")
    wanted = {canonical_finding(f, allow_no_finding=False) for f in findings}
    if anatomy is None:
        anatomy = sample_anatomy(rng, sex=sex, age=age)
    frame = Frame.make(size, sample_pose(rng, view))
    exposure = sample_exposure(rng, view)
    severity = dict(zip(FINDINGS, rng.uniform(MIN_SEVERITY, 1.0, size=len(FINDINGS)).tolist()))
    noise_rng = np.random.default_rng(rng.integers(2**63))

    def sign_rng(f: str) -> np.random.Generator:  # the patient's own placement of a sign
        return np.random.default_rng([anatomy.seed, FINDINGS.index(f)])

    # findings that reshape the chest: each alone (for its box), then all together
    base = thorax = render_thorax(frame, anatomy, view)
    deltas: dict[str, np.ndarray] = {}
    reshaping = [f for f in FINDINGS if f in wanted and f in SHAPE_CHANGES]
    shaped = anatomy
    for f in reshaping:
        thorax = render_thorax(frame, SHAPE_CHANGES[f](anatomy, sign_rng(f), severity[f]), view)
        deltas[f] = thorax.density - base.density
        shaped = SHAPE_CHANGES[f](shaped, sign_rng(f), severity[f])
    if len(reshaping) > 1:
        thorax = render_thorax(frame, shaped, view)
    # findings drawn on top
    density = thorax.density.copy()
    for f in (f for f in FINDINGS if f in wanted and f in OVERLAYS):
        delta = OVERLAYS[f](thorax, sign_rng(f), severity[f])
        density += delta
        deltas[f] = deltas[f] + delta if f in deltas else delta
    return Drawing(
        density, deltas, frame, exposure, noise_rng, lungs=thorax.lung[-1] + thorax.lung[1]
    )


def _expose(density: np.ndarray, e: Exposure, rng: np.random.Generator, frame: Frame) -> np.ndarray:
    """Density -> 8-bit grey levels: detector blur, exposure curve, heel effect, noise."""
    size = frame.size
    # unsharpness: 0.4% of the side (~4 px of a 1024 px NIH image), at least half a pixel
    density = cv2.GaussianBlur(density, (0, 0), max(0.5, 0.004 * size))
    grey = np.clip((density - e.black) / (e.white - e.black), 0, 1) ** e.gamma
    ramp = np.arange(size, dtype=np.float32) / size - 0.5
    grey += e.heel * math.cos(e.heel_angle) * ramp[None, :]
    grey += e.heel * math.sin(e.heel_angle) * ramp[:, None]
    coarse = rng.standard_normal((4, 4)).astype(np.float32)  # uneven exposure
    grey += 0.03 * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0), 0.7)
    grey += (e.noise / 0.403) * grain  # 0.403: std of unit noise blurred with sigma 0.7 px
    return np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)


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
    manifest = root / MANIFEST_NAME  # first, so that an interrupted run can be replaced
    existing = existing_release(root, settings)
    if existing is not None:
        log.info("phantoms: %s is up to date (same settings and versions)", root)
        return existing
    cohort = sample_cohort(n_patients=n_patients, images_per_patient=images_per_patient, seed=seed)
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

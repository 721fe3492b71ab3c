"""One phantom radiograph: :func:`draw_phantom` poses and exposes a thorax
(:mod:`cxrkit.data.phantoms.anatomy`) and draws the wanted findings into it
(:mod:`cxrkit.data.phantoms.findings`); :func:`render_phantom` is the 8-bit image.

The images show a chest with soft tissue, lungs, heart, mediastinum, ribs, clavicles and
diaphragm, posed, exposed and noised differently each time; AP (bedside) views magnify the
heart and are noisier, women have breast shadows, older patients fainter bones and a
larger heart. Each finding's sign strength is drawn in [:data:`MIN_SEVERITY`, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cxrkit.data.phantoms.anatomy import Anatomy, Frame, render_thorax, sample_anatomy, sample_pose
from cxrkit.data.phantoms.findings import OVERLAYS, SHAPE_CHANGES
from cxrkit.labels import FINDINGS, canonical_finding

#: Weakest sign drawn (0..1): below ~0.3 a small CNN at 128 px barely sees some signs
#: (a thin pneumothorax, a small nodule) and a demo-sized release cannot teach them.
MIN_SEVERITY = 0.3


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

"""The normal chest of a phantom radiograph: a patient's shape, its pose, one density map.

Used by :mod:`cxrkit.data.phantoms`; the findings are drawn on top by
:mod:`cxrkit.data.phantoms.findings`.

Body coordinates
    ``x`` grows to the image's right (the patient's *left*, as a frontal radiograph is
    viewed), ``y`` grows downwards. They are dimensionless: the lungs span about
    ``x`` in [-0.74, 0.74] and ``y`` in [-0.7, 0.6], so one unit is roughly 200 mm of
    patient. A :class:`Pose` (scale, shift, rotation) maps them onto the image, where the
    image spans [-1, 1] on both axes. Shapes are written as functions of body coordinates,
    so a finding drawn "in the right lower zone" follows the patient's position.

Density
    A radiograph shows how much each ray is attenuated. :func:`render_thorax` adds up
    layers into one ``density`` map: ~0 for air outside the body, ~1 for the soft tissue
    at mid chest; lung air *subtracts* (``air``), bone adds. ``phantoms.render_phantom``
    then "exposes" it into grey levels, so a finding is simply a change of density.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

RIGHT, LEFT = -1, 1
"""Sides by the patient's anatomy: the right lung is on the image's left (x < 0)."""
SIDES = (RIGHT, LEFT)


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest, kept across their follow-up images (body units unless said).

    Findings that change the shape of the chest (an enlarged heart, hyperinflated or
    collapsing lungs) return a modified copy (``dataclasses.replace``).
    """

    thorax_half_width: float = 0.74  # chest wall at the lung bases
    apex_y: float = -0.70  # top of the lung apices
    dome_y: float = 0.40  # top of the left hemidiaphragm dome
    dome_lift: tuple[float, float] = (0.04, 0.0)  # extra lift of the (right, left) dome
    dome_rise: float = 0.16  # dome height above its costophrenic angle
    heart_ctr: float = 0.45  # cardiothoracic ratio on a PA view (heart / thorax width)
    mediastinum_half_width: float = 0.085
    air: float = 0.62  # density removed by lung air at mid lung
    markings: float = 1.0  # strength of the vessel markings (relative)
    bone: float = 1.0  # bone density (lower in the elderly)
    rib_spacing: float = 0.105  # distance between posterior ribs
    rib_phase: float = 0.0
    breast: float = 0.0  # density of the breast shadows (0 for men)
    stomach_gas: float = 0.5  # size of the gastric air bubble (relative)
    seed: int = 0  # fixes the vessel tree and where findings sit

    def dome(self, side: int, u):
        """Height ``y`` of the diaphragm on ``side`` at lateral distance ``u = side * x``."""
        w = self.thorax_half_width
        top = self.dome_y - self.dome_lift[0 if side == RIGHT else 1]
        return top + self.dome_rise * ((u - 0.42 * w) / (0.58 * w)) ** 2

    def chest_wall(self, y):
        """Lateral lung border ``u`` at height ``y`` (narrow at the apex, widest at the base)."""
        return self.thorax_half_width * np.sqrt(np.clip(0.15 + (y - self.apex_y) / 0.6, 0, 1))

    def apex(self, u):
        """Upper lung border ``y`` at lateral distance ``u`` (a rounded apex)."""
        return self.apex_y + 1.6 * (u - 0.4 * self.thorax_half_width) ** 2

    def heart_width(self, view: str) -> float:
        """Heart width in body units; AP views magnify the heart (it is far from the film)."""
        return self.heart_ctr * 2 * self.thorax_half_width * (1.08 if view == "AP" else 1.0)

    def in_lung(self, side: int, x: float, y: float, margin: float = 0.04) -> bool:
        """Whether ``(x, y)`` lies inside the visible lung (clear of the heart) by ``margin``."""
        u = side * x
        if not (
            u > 0.1 + margin
            and y > self.apex(u) + margin
            and y < self.dome(side, u) - margin
            and u < self.chest_wall(y) - margin
        ):
            return False
        heart_top = self.dome_y - 0.35
        return not (side == LEFT and y > heart_top and u < self.heart_width("PA") * 0.62 + margin)


def sample_anatomy(rng: np.random.Generator, *, sex: str, age: float) -> Anatomy:
    """A patient's chest: mild effects of sex (size, breasts) and age (bone, heart, lungs).

    Heart size, lung height, diaphragm and ribs vary across the normal range; a normal
    heart stays at a cardiothoracic ratio <= 0.5 on a PA view, as radiologists define it.
    """
    u = rng.uniform(size=8).tolist()  # Python floats: numpy scalars would turn the
    n = rng.normal(size=6).tolist()  # float32 image arithmetic into (slower) float64
    female = sex == "F"
    old = min(max((float(age) - 40.0) / 40.0, -1.0), 1.2)
    return Anatomy(
        thorax_half_width=0.74 + 0.035 * n[0] - (0.03 if female else 0.0),
        apex_y=-0.70 + 0.03 * n[1],
        dome_y=0.40 + 0.04 * n[2],
        dome_lift=(0.02 + 0.04 * u[0], 0.0),
        dome_rise=0.16 + 0.08 * u[1],
        heart_ctr=min(
            max(0.44 + 0.03 * n[3] + 0.015 * old + (0.02 if age < 12 else 0.0), 0.36), 0.5
        ),
        mediastinum_half_width=0.08 + 0.015 * u[2] + 0.01 * max(old, 0),
        air=0.62 + 0.06 * n[4],
        markings=0.8 + 0.3 * u[3] + 0.15 * max(old, 0),
        bone=1.0 - 0.25 * max(old, 0) + 0.08 * n[5],
        rib_spacing=0.10 + 0.012 * u[4],
        rib_phase=0.1 * u[5],
        breast=(0.04 + 0.06 * u[6]) if female and age >= 14 else 0.0,
        stomach_gas=u[7],
        seed=int(rng.integers(0, 2**31)),
    )


@dataclass(frozen=True)
class Pose:
    """How the body sits in the image: ``scale`` (image half-widths per body unit), shift of
    the body origin in image units, in-plane rotation in radians."""

    scale: float = 0.9
    shift_x: float = 0.0
    shift_y: float = 0.05
    angle: float = 0.0


def sample_pose(rng: np.random.Generator, view: str) -> Pose:
    """Patient position varies: AP (bedside) views are less centred and more rotated.

    Shifts and scale vary widely on purpose: a convolutional network does not care where
    a sign is, a fixed image region's mean grey level does (see tests/test_phantoms.py).
    """
    spread = 1.5 if view == "AP" else 1.0
    n = rng.normal(size=4).tolist()
    return Pose(
        scale=min(max(0.92 + 0.06 * n[0], 0.78), 1.06),
        shift_x=0.05 * spread * n[1],
        shift_y=0.06 + 0.05 * spread * n[2],
        angle=math.radians(2.0 * spread * n[3]),
    )


@functools.lru_cache(maxsize=8)
def _image_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in image units ([-1, 1]); cached, read-only."""
    c = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    gx, gy = np.meshgrid(c, c)
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


@dataclass(frozen=True)
class Frame:
    """The image grid of one radiograph in body coordinates: ``X``, ``Y`` per pixel."""

    size: int
    pose: Pose
    X: np.ndarray
    Y: np.ndarray

    @classmethod
    def make(cls, size: int, pose: Pose) -> Frame:
        gx, gy = _image_grid(size)
        c, s = math.cos(pose.angle), math.sin(pose.angle)
        dx, dy = gx - pose.shift_x, gy - pose.shift_y
        X = (c * dx + s * dy) / pose.scale
        Y = (-s * dx + c * dy) / pose.scale
        return cls(size, pose, X.astype(np.float32), Y.astype(np.float32))

    @property
    def pixel(self) -> float:
        """Length of one pixel in body units (edges are at least this soft)."""
        return 2.0 / (self.size * self.pose.scale)

    def to_pixels(self, points) -> np.ndarray:
        """Body coordinates ``(N, 2)`` -> pixel coordinates ``(N, 2)`` (x = column, y = row)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        c, s, k = math.cos(self.pose.angle), math.sin(self.pose.angle), self.pose.scale
        ix = k * (c * p[:, 0] - s * p[:, 1]) + self.pose.shift_x
        iy = k * (s * p[:, 0] + c * p[:, 1]) + self.pose.shift_y
        return np.stack([(ix + 1) * self.size / 2 - 0.5, (iy + 1) * self.size / 2 - 0.5], 1)

    def ramp(self, d, width: float = 0.0):
        """Soft inside-indicator of a signed distance ``d`` (> 0 inside), edge >= 1 pixel."""
        w = max(width, self.pixel)
        return np.clip(d * (1.0 / w) + 0.5, 0.0, 1.0)

    def window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """Pixel rows and columns within ``radius`` (body units) of ``(cx, cy)``.

        Small shapes are evaluated only there, which keeps rendering fast.
        """
        ((px, py),) = self.to_pixels([[cx, cy]])
        r = radius * self.size * self.pose.scale / 2 + 2
        lo = lambda v: int(np.clip(np.floor(v - r), 0, self.size))  # noqa: E731
        hi = lambda v: int(np.clip(np.ceil(v + r) + 1, 0, self.size))  # noqa: E731
        return slice(lo(py), hi(py)), slice(lo(px), hi(px))

    def blob(self, cx, cy, rx, ry, angle=0.0, edge=0.0) -> np.ndarray:
        """Soft ellipse of radii ``rx, ry`` (body units) rotated by ``angle``."""
        out = np.zeros((self.size, self.size), np.float32)
        win = self.window(cx, cy, max(rx, ry) + edge)
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = self.X[win] - cx, self.Y[win] - cy
        q = np.sqrt(((c * dx + s * dy) / rx) ** 2 + ((-s * dx + c * dy) / ry) ** 2)
        out[win] = self.ramp((1.0 - q) * min(rx, ry), edge)
        return out

    def gaussian(self, cx, cy, sx, sy, angle=0.0) -> np.ndarray:
        """Gaussian bump (peak 1) of standard deviations ``sx, sy`` in body units."""
        out = np.zeros((self.size, self.size), np.float32)
        win = self.window(cx, cy, 3.5 * max(sx, sy))
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = self.X[win] - cx, self.Y[win] - cy
        out[win] = np.exp(-0.5 * (((c * dx + s * dy) / sx) ** 2 + ((-s * dx + c * dy) / sy) ** 2))
        return out

    def lines(
        self, polylines, thickness: float, weight: float = 1.0, blur: float = 0.004
    ) -> np.ndarray:
        """Draw polylines given in body coordinates (anti-aliased), values in [0, 1].

        ``thickness`` and ``blur`` are in body units, so a line looks the same at any image
        size; lines thinner than a pixel are drawn one pixel wide but fainter.
        """
        canvas: np.ndarray = np.zeros((self.size, self.size), np.float32)
        self.draw_lines(canvas, polylines, thickness, weight)
        sigma = blur * self.size * self.pose.scale / 2
        if sigma > 0.3:
            canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
        return canvas

    def draw_lines(
        self, canvas: np.ndarray, polylines, thickness: float, weight: float = 1.0
    ) -> None:
        """Draw polylines (a list of ``(k, 2)`` arrays or one ``(N, k, 2)`` array, body
        coordinates) onto ``canvas`` in place; see :meth:`lines`."""
        if not len(polylines):
            return
        t_px = thickness * self.size * self.pose.scale / 2
        if isinstance(polylines, np.ndarray):
            n, k, _ = polylines.shape
            pts = list(
                np.round(self.to_pixels(polylines.reshape(-1, 2)) * 16)
                .astype(np.int32)
                .reshape(n, k, 2)
            )
        else:
            lengths = [len(p) for p in polylines]
            flat = np.round(self.to_pixels(np.concatenate(polylines)) * 16).astype(np.int32)
            pts = np.split(flat, np.cumsum(lengths)[:-1])
        cv2.polylines(
            canvas, pts, False, weight * min(1.0, t_px), max(1, int(round(t_px))), cv2.LINE_AA, 4
        )


@functools.lru_cache(maxsize=64)
def vessel_tree(anatomy: Anatomy) -> tuple[tuple[float, np.ndarray], ...]:
    """The patient's pulmonary vessels: branches fanning out of each hilum.

    Returns ``(width, branches)`` per generation: width in body units, branches an
    ``(N, 3, 2)`` array of 3-point polylines. Drawn from ``anatomy.seed`` so that a
    patient's follow-ups show the same tree.
    """
    rng = np.random.default_rng([anatomy.seed, 99])
    side = np.repeat(np.array(SIDES, float), 7)
    angle = np.tile(np.linspace(-1.7, 1.25, 7), 2) + rng.normal(0, 0.12, 14)
    start = np.stack([side * 0.17, np.full(14, -0.06)], 1)
    length, out = 0.15, []
    for width in (0.016, 0.011, 0.007, 0.0045):
        n = len(angle)
        step = np.stack([side * np.cos(angle), np.sin(angle)], 1)
        step *= length * rng.uniform(0.8, 1.2, (n, 1))
        mid = start + step / 2 + rng.normal(0, 0.012, (n, 2))
        out.append((width, np.stack([start, mid, start + step], 1)))
        start, side = np.repeat(start + step, 2, 0), np.repeat(side, 2)
        angle = np.repeat(angle, 2) + np.tile([-0.4, 0.4], n) + rng.normal(0, 0.12, 2 * n)
        length *= 0.78
    return tuple(out)


@dataclass(frozen=True)
class Thorax:
    """One rendered chest: the density map and the layers findings need to draw on it."""

    frame: Frame
    anatomy: Anatomy
    view: str
    density: np.ndarray  # total density (float32, H x W)
    air: np.ndarray  # density removed by lung air (>= 0)
    lung: dict[int, np.ndarray]  # per side: lung field, 0..1 (behind heart too)
    wall_depth: dict[int, np.ndarray]  # per side: distance inside chest wall / apex
    markings: np.ndarray  # vessel markings as drawn (density added)


def _bones(frame: Frame, a: Anatomy, view: str, body_w: float) -> np.ndarray:
    """Bone density (before the patient's bone factor): posterior and anterior ribs as
    curved bands, clavicles, spine, and on AP views the scapulae over the lung fields."""
    X, Y = frame.X, frame.Y
    ax = np.abs(X)
    ribcage = (
        frame.ramp(a.chest_wall(Y) + 0.04 - ax, 0.02)
        * frame.ramp(ax - 0.05, 0.03)
        * frame.ramp(Y - a.apex_y + 0.1, 0.03)
        * frame.ramp(a.dome_y + 0.08 - Y, 0.08)
    )
    phase = (Y - (0.6 * ax**2 + 0.2 * ax) - a.rib_phase) / a.rib_spacing
    ribs = np.clip((np.cos(2 * np.pi * phase) - 0.3) * 1.4, 0, 1)
    phase = (Y + 0.4 * ax - a.rib_phase) / (a.rib_spacing * 1.25)
    anterior = np.clip((np.cos(2 * np.pi * phase) - 0.4) * 1.6, 0, 1)
    ribs += 0.5 * anterior * frame.ramp(ax - 0.25, 0.15)
    spine = frame.ramp(0.055 - np.abs(X), 0.01) * (0.75 + 0.25 * np.cos(2 * np.pi * Y / 0.09))
    cy = -0.68 - (0.07 if view == "AP" else 0.0)
    clavicles = frame.lines(
        [
            np.array(
                [[s * 0.04, cy + 0.05], [s * 0.22, cy], [s * 0.48, cy - 0.03], [s * 0.7, cy - 0.1]]
            )
            for s in SIDES
        ],
        0.035,
    )
    bones = 0.04 * ribs * ribcage + 0.06 * spine + 0.12 * clavicles
    if view == "AP":  # scapulae are not rotated out of the lung fields on AP views
        scap = frame.ramp(ax - 0.55 - 0.3 * (Y + 0.6), 0.015) * frame.ramp(-0.05 - Y, 0.05)
        bones += 0.07 * scap * frame.ramp(Y + 0.72, 0.04) * frame.ramp(body_w - ax, 0.02)
    return bones


def render_thorax(frame: Frame, anatomy: Anatomy, view: str) -> Thorax:
    """Add up the layers of a normal chest into one density map (see module docstring)."""
    X, Y, a = frame.X, frame.Y, anatomy
    ax = np.abs(X)
    w = a.thorax_half_width
    body_w = w + 0.24
    # soft tissue: thicker at the midline (an elliptic cylinder); neck and shoulders on top
    shoulder = -1.4 + 0.65 * np.clip((ax - 0.25) / 0.8, 0, 1) ** 0.7
    body = frame.ramp(body_w - ax, 0.03) * frame.ramp(Y - shoulder, 0.05)
    density = body * (0.5 + 0.5 * np.sqrt(np.clip(1 - (X / body_w) ** 2, 0, 1)))
    if a.breast > 0:
        for side in SIDES:
            density += a.breast * frame.blob(side * 0.45, 0.48, 0.32, 0.22, edge=0.1)

    # heart (a tilted ellipse resting on the left dome) and mediastinum hide the lungs
    hw = a.heart_width(view)
    heart = frame.blob(
        0.17 * hw, a.dome_y - 0.06, 0.56 * hw, 0.25 * (hw / 0.66) ** 0.8, angle=0.45, edge=0.02
    )
    mw = a.mediastinum_half_width * (1.15 if view == "AP" else 1.0)
    mediastinum = frame.ramp(mw - np.abs(X - 0.012), 0.015) * frame.ramp(a.dome_y - Y, 0.1)
    knob = frame.blob(mw, -0.34, 0.065, 0.055, edge=0.015)
    hidden = np.maximum(np.maximum(heart, mediastinum), knob)

    dome_extra = 0.04 if view == "AP" else 0.0  # supine / bedside: poorer inspiration
    lung, wall_depth = {}, {}
    air = np.zeros_like(X)
    for side in SIDES:
        u = side * X
        d_wall = np.minimum(a.chest_wall(Y) - u, Y - a.apex(u))
        d_base = a.dome(side, u) - dome_extra - Y
        d = np.minimum(np.minimum(d_wall, d_base), u - 0.03)
        lung[side] = frame.ramp(d, 0.012)
        wall_depth[side] = d_wall
        air += lung[side] * (0.65 + 0.35 * np.clip(np.minimum(d_wall, d_base) / 0.15, 0, 1))
    air *= a.air * (1.0 - 0.8 * hidden)
    density -= air
    density += 0.05 * heart

    # bones: posterior and anterior ribs as curved bands, clavicles, spine
    bones = _bones(frame, a, view, body_w)
    density += a.bone * bones

    # airways, gastric bubble, hila and vessel markings
    density -= 0.1 * frame.ramp(0.024 - ax, 0.008) * frame.ramp(-0.28 - Y, 0.03)
    gas = 0.04 + 0.06 * a.stomach_gas
    density -= 0.25 * frame.blob(0.32 * w, a.dome_y + 0.04 + gas, 1.6 * gas, gas, edge=0.02)
    lungs = lung[LEFT] + lung[RIGHT]
    vessels = np.zeros_like(X)
    for width, branches in vessel_tree(a):
        frame.draw_lines(vessels, branches, width, min(1.0, width / 0.012))
    vessels = cv2.GaussianBlur(vessels, (0, 0), max(0.3, 0.005 / frame.pixel))
    hila = frame.gaussian(0.17, -0.05, 0.045, 0.07) + frame.gaussian(-0.17, -0.05, 0.045, 0.07)
    markings = (0.05 * a.markings * np.clip(vessels, 0, 1) + 0.1 * hila) * lungs
    density += markings
    return Thorax(frame, anatomy, view, density.astype(np.float32), air, lung, wall_depth, markings)

"""The 14 findings as radiographic signs drawn on a phantom chest.

Each finding is a change of density (see :mod:`cxrkit.data.phantoms.anatomy`): a
``SHAPE_CHANGES`` entry alters the patient's anatomy (an enlarged heart, a lifted or
flattened diaphragm), an ``OVERLAYS`` entry returns a density map to add. Both take a
``severity`` in [0, 1] that sets size and intensity, so a sign ranges from subtle to
obvious. Both get a generator seeded from the patient and the finding, which places a
patient's nodule (say) at the same spot on every follow-up; a shape change and its
overlay get identical streams, so they agree on which side they are on.

Where the signs come from (plain radiology): opacities *replace lung air* (their density
is a fraction of the air they displace, so they show in the lungs and not over the
heart), solid lesions add tissue, a pneumothorax *removes* lung markings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from cxrkit.data.phantoms.anatomy import LEFT, RIGHT, SIDES, Anatomy, Frame, Thorax


def _lerp(lo: float, hi: float, t: float) -> float:
    return lo + (hi - lo) * float(t)


def _side(rng: np.random.Generator, p_right: float = 0.55) -> int:
    return RIGHT if rng.uniform() < p_right else LEFT


def _lung_point(
    a: Anatomy, rng: np.random.Generator, side: int, zone=(0.1, 0.9), margin: float = 0.05
) -> tuple[float, float]:
    """A point inside the visible lung; ``zone`` is the height range as a fraction from
    apex (0) to diaphragm (1)."""
    top, bottom = a.apex_y, a.dome(side, 0.42 * a.thorax_half_width)
    for _ in range(50):
        y = top + (bottom - top) * rng.uniform(*zone)
        x = side * rng.uniform(0.1, a.thorax_half_width)
        if a.in_lung(side, x, y, margin):
            return x, y
    return side * 0.45 * a.thorax_half_width, top + 0.5 * (bottom - top)


def _texture(frame: Frame, rng: np.random.Generator, cells: int = 12) -> np.ndarray:
    """Smooth random field in [0, 1] whose blobs are ~1/cells of the image, at any size."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    fine = cv2.resize(coarse, (frame.size, frame.size), interpolation=cv2.INTER_CUBIC)
    return np.clip(0.5 + 0.45 * fine, 0, 1)


def _sphere(frame: Frame, cx, cy, radius, lobulation=0.0, rng=None) -> np.ndarray:
    """A round lesion: density proportional to its thickness (a sphere's chord)."""
    out = np.zeros((frame.size, frame.size), np.float32)
    win = frame.window(cx, cy, radius * (1 + 2 * lobulation))
    dx, dy = frame.X[win] - cx, frame.Y[win] - cy
    r = np.sqrt(dx * dx + dy * dy)
    if lobulation:
        theta = np.arctan2(dy, dx)
        k, phi = rng.integers(2, 5), rng.uniform(0, 2 * np.pi)
        r = r / (1 + lobulation * np.cos(k * theta + phi))
    q = np.clip(r / radius, 0, 1)
    out[win] = np.sqrt(1 - q * q) * frame.ramp(radius - r, 0.006)
    return out


# -- shape changes ------------------------------------------------------------------------


def _cardiomegaly(a: Anatomy, rng, severity: float) -> Anatomy:
    """Cardiothoracic ratio above 0.5: from moderate (0.62) to gross (0.74)."""
    ctr = max(a.heart_ctr + 0.13, _lerp(0.62, 0.74, severity) + rng.normal(0, 0.01))
    return replace(a, heart_ctr=ctr)


def _emphysema(a: Anatomy, rng, severity: float) -> Anatomy:
    """Hyperinflation: low, flat domes, darker lungs with fewer markings, a narrow heart."""
    return replace(
        a,
        dome_y=a.dome_y + _lerp(0.05, 0.12, severity),
        dome_rise=a.dome_rise * _lerp(0.6, 0.2, severity),
        air=a.air * _lerp(1.12, 1.3, severity),
        markings=a.markings * _lerp(0.8, 0.45, severity),
        apex_y=a.apex_y - 0.03,
        heart_ctr=a.heart_ctr * 0.92,
    )


def _atelectasis_volume_loss(a: Anatomy, rng, severity: float) -> Anatomy:
    """Volume loss: the hemidiaphragm on the collapsed side rises."""
    side = _side(rng, 0.5)
    lift = list(a.dome_lift)
    lift[0 if side == RIGHT else 1] += _lerp(0.06, 0.1, severity)
    return replace(a, dome_lift=(lift[0], lift[1]))


# -- overlays -----------------------------------------------------------------------------


def _atelectasis(t: Thorax, rng, severity: float) -> np.ndarray:
    """A plate-like band or a wedge in a lower zone, replacing air."""
    side = _side(rng, 0.5)
    f, a = t.frame, t.anatomy
    x, y = _lung_point(a, rng, side, (0.6, 0.85))
    mask: np.ndarray = np.zeros((f.size, f.size), np.float32)
    if rng.uniform() < 0.5:  # plate-like (discoid) atelectasis
        half, tilt = _lerp(0.14, 0.22, severity), rng.uniform(-0.3, 0.3)
        d = np.array([np.cos(tilt), np.sin(tilt)]) * half
        mask = f.lines(
            [np.array([[x, y] - d, [x, y] + d])], _lerp(0.035, 0.055, severity), blur=0.008
        )
    else:  # wedge from the hilum towards the base
        base_y = a.dome(side, side * x) - 0.02
        tri = np.array([[side * 0.2, 0.0], [x - side * 0.18, base_y], [x + side * 0.18, base_y]])
        pts = np.round(f.to_pixels(tri) * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_AA, 4)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.01 * f.size)
    return _lerp(0.8, 1.0, severity) * mask * t.air


def _effusion(t: Thorax, rng, severity: float) -> np.ndarray:
    """Fluid at the base: a meniscus (concave, climbing the lateral chest wall as a thin
    stripe) that hides the diaphragm and blunts the costophrenic angle, under a haze of
    fluid layering behind the lower lung."""
    f, a = t.frame, t.anatomy
    sides = SIDES if rng.uniform() < 0.3 else (_side(rng),)
    out = np.zeros((f.size, f.size), np.float32)
    for side in sides:
        u = np.clip(side * f.X / a.thorax_half_width, 0, 1)
        height = _lerp(0.18, 0.42, severity) * rng.uniform(0.85, 1.1)
        angle_y = a.dome(side, a.thorax_half_width)
        level = angle_y - height * (0.45 + 0.55 * u**2)
        fluid = f.ramp(f.Y - level, 0.02) * f.ramp(angle_y + 0.08 - f.Y, 0.04)
        fluid *= 0.65 + 0.35 * f.ramp(f.Y - level - 0.08, 0.15)
        climb = np.clip((f.Y - (level - 0.25 * height)) / (0.25 * height), 0, 1)
        stripe = f.ramp(0.05 * climb - t.wall_depth[side], 0.005) * (climb > 0)
        veil = 0.35 * np.clip((f.Y - (level - 0.3)) / 0.3, 0, 1)  # fluid layering behind
        out += np.maximum(np.maximum(fluid, stripe), veil) * t.lung[side]
    return np.clip(out, 0, 1) * t.air


def _infiltration(t: Thorax, rng, severity: float) -> np.ndarray:
    """Patchy, ill-defined opacities in one or both lungs."""
    f, a = t.frame, t.anatomy
    patches = np.zeros((f.size, f.size), np.float32)
    for _ in range(int(rng.integers(2, 4)) + int(2 * severity)):
        x, y = _lung_point(a, rng, _side(rng), (0.15, 0.9))
        s = _lerp(0.05, 0.09, severity) * rng.uniform(0.8, 1.3)
        patches += f.gaussian(x, y, s * rng.uniform(0.8, 1.4), s, rng.uniform(0, np.pi))
    return _lerp(0.45, 0.7, severity) * np.clip(patches, 0, 1) * _texture(f, rng, 16) * t.air


def _mass(t: Thorax, rng, severity: float) -> np.ndarray:
    """One large (> 3 cm) lobulated round opacity."""
    x, y = _lung_point(t.anatomy, rng, _side(rng), (0.15, 0.85), margin=0.1)
    radius = _lerp(0.1, 0.16, severity)
    return _lerp(0.4, 0.55, severity) * _sphere(t.frame, x, y, radius, 0.08, rng)


def _nodule(t: Thorax, rng, severity: float) -> np.ndarray:
    """One to three small (< 3 cm) round opacities, sometimes calcified (denser)."""
    out = np.zeros((t.frame.size, t.frame.size), np.float32)
    for _ in range(1 if rng.uniform() < 0.7 else int(rng.integers(2, 4))):
        x, y = _lung_point(t.anatomy, rng, _side(rng), (0.1, 0.85))
        dense = 1.5 if rng.uniform() < 0.2 else 1.0
        radius = _lerp(0.05, 0.075, severity)
        out += dense * _lerp(0.5, 0.65, severity) * _sphere(t.frame, x, y, radius)
    return out


def _lobar(t: Thorax, rng, severity: float, sharp: bool):
    """A lobe-shaped region: an envelope cut by a fissure-like edge (sharp or soft).

    Returns ``(region, (x, y), side)``: the region (0..1), its centre and its side."""
    f, a = t.frame, t.anatomy
    side = _side(rng, 0.6)
    x, y = _lung_point(a, rng, side, (0.25, 0.85) if rng.uniform() < 0.75 else (0.1, 0.45))
    s = _lerp(0.09, 0.16, severity)
    envelope = np.clip(1.6 * f.gaussian(x, y, s * 1.2, s, rng.uniform(0, np.pi)), 0, 1)
    tilt = rng.uniform(-0.5, 0.5)
    edge = (f.Y - (y - 0.6 * s)) * np.cos(tilt) + (f.X - x) * np.sin(tilt)
    region = envelope * f.ramp(edge, 0.006 if sharp else 0.06) * t.lung[side]
    return region, (x, y), side


def _consolidation(t: Thorax, rng, severity: float) -> np.ndarray:
    """Dense lobar opacity with a sharp fissural border and air bronchograms."""
    region, (x, y), side = _lobar(t, rng, severity, sharp=True)
    start = np.array([side * 0.2, -0.02])
    tubes = []
    for _ in range(4):
        end = np.array([x, y]) + rng.normal(0, 0.06, 2)
        tubes.append(np.stack([start, (start + end) / 2 + rng.normal(0, 0.02, 2), end]))
    bronchi = t.frame.lines(tubes, 0.01, blur=0.004)
    return _lerp(0.6, 0.9, severity) * region * (1 - 0.45 * bronchi) * t.air


def _pneumonia(t: Thorax, rng, severity: float) -> np.ndarray:
    """A softer, ill-defined lobar patch (no air bronchograms)."""
    region, _, _ = _lobar(t, rng, severity, sharp=False)
    return _lerp(0.45, 0.7, severity) * region * _texture(t.frame, rng, 20) * 1.3 * t.air


def _pneumothorax(t: Thorax, rng, severity: float) -> np.ndarray:
    """Apical/lateral lucency without lung markings, bounded by a thin pleural line."""
    f, a = t.frame, t.anatomy
    side = _side(rng, 0.5)
    gap = _lerp(0.1, 0.2, severity)
    stop = a.apex_y + (a.dome_y - a.apex_y) * _lerp(0.5, 1.0, rng.uniform())
    below = f.ramp(stop - f.Y, 0.06) * t.lung[side]
    depth = t.wall_depth[side]
    space = f.ramp(gap - depth, 0.004) * below
    line = np.exp(-(((depth - gap) / max(0.006, f.pixel)) ** 2)) * below
    collapsed = f.ramp(gap + 0.1 - depth, 0.03) * (1 - space) * below
    return -space * (t.markings + 0.2) + 0.25 * line + 0.08 * collapsed


def _edema(t: Thorax, rng, severity: float) -> np.ndarray:
    """Bilateral perihilar ("bat-wing") haze with Kerley B lines at the bases."""
    f, a = t.frame, t.anatomy
    haze = sum(f.gaussian(s * 0.22, 0.0, _lerp(0.14, 0.22, severity), 0.22) for s in SIDES)
    kerley = []
    for side in SIDES:
        for _ in range(int(rng.integers(3, 7))):
            yy = a.dome(side, 0.65) - rng.uniform(0.03, 0.22)
            uu = a.chest_wall(yy)
            kerley.append(np.array([[side * (uu - 0.005), yy], [side * (uu - 0.06), yy]]))
    lines = f.lines(kerley, 0.006, blur=0.003)
    return (_lerp(0.3, 0.55, severity) * np.clip(haze, 0, 1) + 0.4 * lines) * t.air


def _emphysema_bullae(t: Thorax, rng, severity: float) -> np.ndarray:
    """Emphysema's bullae: avascular lucent areas at the apices (the shape change does the
    hyperinflation)."""
    out = np.zeros((t.frame.size, t.frame.size), np.float32)
    for _ in range(int(rng.integers(0, 3))):
        x, y = _lung_point(t.anatomy, rng, _side(rng, 0.5), (0.05, 0.35))
        rx, ry = _lerp(0.05, 0.1, severity), _lerp(0.04, 0.08, severity)
        out -= t.frame.blob(x, y, rx, ry, edge=0.01)
    return out * (0.1 + t.markings)


def _fibrosis(t: Thorax, rng, severity: float) -> np.ndarray:
    """Reticular lines in the periphery of both upper (or, less often, lower) zones."""
    f, a = t.frame, t.anatomy
    zone = (0.05, 0.5) if rng.uniform() < 0.65 else (0.5, 0.9)
    net = []
    for side in SIDES:
        for _ in range(int(_lerp(25, 45, severity))):
            x, y = _lung_point(a, rng, side, zone, margin=0.02)
            x = side * max(side * x, a.chest_wall(y) - rng.uniform(0.03, 0.22))
            steps = rng.normal(0, 0.035, (3, 2))
            net.append(np.array([x, y]) + np.cumsum(np.vstack([[0, 0], steps]), 0))
    lines = f.lines(net, 0.01, blur=0.004)
    return _lerp(0.6, 0.9, severity) * np.clip(lines, 0, 1) * t.air


def _pleural_thickening(t: Thorax, rng, severity: float) -> np.ndarray:
    """A dense, lumpy band along the chest wall (an apical cap or a lateral segment of
    plaques), sometimes with calcified spots."""
    f, a = t.frame, t.anatomy
    out = np.zeros((f.size, f.size), np.float32)
    for side in SIDES if rng.uniform() < 0.3 else (_side(rng),):
        if rng.uniform() < 0.4:
            y0, y1 = a.apex_y - 0.05, a.apex_y + 0.2
        else:
            y0 = rng.uniform(a.apex_y + 0.2, a.dome_y - 0.3)
            y1 = y0 + _lerp(0.35, 0.7, severity)
        phase = rng.uniform(0, 2 * np.pi, 2)
        lumps = 1 + 0.35 * np.sin(f.Y / 0.04 + phase[0]) + 0.25 * np.sin(f.Y / 0.017 + phase[1])
        thick = _lerp(0.05, 0.08, severity) * lumps
        band = (
            f.ramp(thick - t.wall_depth[side], 0.006)
            * f.ramp(f.Y - y0, 0.03)
            * f.ramp(y1 - f.Y, 0.03)
            * t.lung[side]
        )
        out += band * (t.air + 0.1)
        for _ in range(int(rng.integers(0, 4))):  # calcified plaques: denser than bone
            yy = rng.uniform(max(y0, a.apex_y + 0.05), y1)
            xx = side * (a.chest_wall(yy) - 0.03)
            out += 0.25 * f.blob(xx, yy, 0.018, 0.035, edge=0.006)
    return out


def _hernia(t: Thorax, rng, severity: float) -> np.ndarray:
    """Hiatus hernia: a rounded retrocardiac sac above the diaphragm, its wall a faint
    ring, holding gas over fluid with a flat air-fluid level."""
    f, a = t.frame, t.anatomy
    radius = _lerp(0.11, 0.15, severity)
    x, y = rng.uniform(-0.02, 0.1), a.dome_y - rng.uniform(0.5, 0.8) * radius
    sac = f.blob(x, y, radius * 1.2, radius, edge=0.01)
    inner = f.blob(x, y, radius * 1.05, radius * 0.85, edge=0.008)
    level = y + rng.uniform(-0.2, 0.3) * radius
    gas = inner * f.ramp(level - f.Y, 0.004)
    return 0.2 * (sac - inner) + 0.08 * (inner - gas) - _lerp(0.45, 0.6, severity) * gas


ShapeChange = Callable[[Anatomy, np.random.Generator, float], Anatomy]
Overlay = Callable[[Thorax, np.random.Generator, float], np.ndarray]

SHAPE_CHANGES: dict[str, ShapeChange] = {
    "Atelectasis": _atelectasis_volume_loss,
    "Cardiomegaly": _cardiomegaly,
    "Emphysema": _emphysema,
}
OVERLAYS: dict[str, Overlay] = {
    "Atelectasis": _atelectasis,
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Emphysema": _emphysema_bullae,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}

"""Probe sets for the OOD score: images a chest X-ray model was not trained for, and how
often a model flags them (what ``bench/bench_ood.py`` prints and the tests assert).

Each set is a list of grey ``uint8`` images of any size (the model's cache stage resizes
them as it would any upload): :func:`noise_images` (uniform and Gaussian noise),
:func:`photographs` (scikit-image's sample photographs and their quarters; install
``scikit-image``), :func:`phantom_images` (cxrkit's synthetic radiographs), and
:func:`transformed` (rotated, upside-down, inverted versions of given images).
:func:`probe_table` scores an in-distribution set and each probe set with one model and
reports, per set, the share flagged and the AUROC of the score itself against the
in-distribution set (how well the score ranks foreign above familiar, at any threshold).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrkit.data.dicom import grey_uint8

#: scikit-image sample photographs (``skimage.data``), bundled with the package.
PHOTOGRAPHS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "cat",
    "coins",
    "clock",
    "moon",
    "grass",
    "gravel",
    "brick",
    "hubble_deep_field",
    "immunohistochemistry",
    "page",
    "text",
    "cell",
    "retina",
)
TRANSFORMS = ("rotated 90", "upside down", "inverted", "mirrored")


def noise_images(n: int = 40, *, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Half uniform noise, half Gaussian noise (mean 128, sd 40) images."""
    rng = np.random.default_rng(seed)
    half = n // 2
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(half)] + [
        np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8) for _ in range(n - half)
    ]


def photographs(*, quarters: bool = True) -> list[np.ndarray]:
    """scikit-image's sample photographs in grey (and each one's four quarters)."""
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("photographs need scikit-image (pip install scikit-image)") from e
    out = []
    for name in PHOTOGRAPHS:
        g = grey_uint8(getattr(skimage.data, name)())
        out.append(g)
        if quarters:
            h, w = g.shape[0] // 2, g.shape[1] // 2
            out += [g[:h, :w], g[:h, w:], g[h:, :w], g[h:, w:]]
    return out


def phantom_images(n: int = 100, *, size: int = 256, seed: int = 10_000) -> list[np.ndarray]:
    """``n`` phantom radiographs (half with one finding, PA and AP alternating)."""
    from cxrkit.data.phantoms import render_phantom
    from cxrkit.labels import FINDINGS

    return [
        render_phantom(
            np.random.default_rng(seed + i),
            (FINDINGS[i % len(FINDINGS)],) if i % 2 else (),
            size=size,
            view="PA" if i % 4 < 2 else "AP",
        )[0]
        for i in range(n)
    ]


def transformed(images: Sequence[np.ndarray], how: str) -> list[np.ndarray]:
    """``images`` rotated 90 degrees, upside down, inverted or mirrored (left-right)."""
    ops = {
        "rotated 90": lambda a: np.rot90(a),
        "upside down": lambda a: a[::-1],
        "inverted": lambda a: 255 - a,
        "mirrored": lambda a: a[:, ::-1],
    }
    if how not in ops:
        raise ValueError(f"how must be one of {TRANSFORMS}, got {how!r}")
    return [np.ascontiguousarray(ops[how](np.asarray(a))) for a in images]


def score_images(model, images: Sequence, *, batch_size: int = 64):
    """OOD scores ``(N,)`` of images (arrays or paths) with a Predictor that has a record."""
    if model.ood is None:
        raise ValueError(model.ood_note())
    out = []
    for i in range(0, len(images), batch_size):
        _, res = model.score_cached(model.load_images(list(images[i : i + batch_size])))
        out.append(res.score)
    return np.concatenate(out) if out else np.zeros(0)


def probe_table(
    model,
    in_set: tuple[str, Sequence],
    out_sets: dict[str, Sequence],
    *,
    in_scores: np.ndarray | None = None,
) -> list[dict]:
    """One row per set: ``set``, ``kind`` (in/out), ``n``, ``flagged`` (share, score > 1),
    ``auroc`` (out sets: the score's AUROC against the in-distribution set)."""
    from sklearn.metrics import roc_auc_score

    name, images = in_set
    s_in = score_images(model, images) if in_scores is None else np.asarray(in_scores)
    rows = [
        {
            "set": name,
            "kind": "in",
            "n": int(len(s_in)),
            "flagged": float((s_in > 1).mean()),
            "auroc": None,
            "median_score": float(np.median(s_in)),
        }
    ]
    for label, imgs in out_sets.items():
        s = score_images(model, imgs)
        y = np.r_[np.zeros(len(s_in)), np.ones(len(s))]
        rows.append(
            {
                "set": label,
                "kind": "out",
                "n": int(len(s)),
                "flagged": float((s > 1).mean()),
                "auroc": float(roc_auc_score(y, np.r_[s_in, s])),
                "median_score": float(np.median(s)),
            }
        )
    return rows


__all__ = [
    "PHOTOGRAPHS",
    "TRANSFORMS",
    "noise_images",
    "phantom_images",
    "photographs",
    "probe_table",
    "score_images",
    "transformed",
]

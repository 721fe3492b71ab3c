"""Where each finding tends to be: 2-D Gaussian priors fitted to bounding boxes.

Coordinates are normalised image coordinates in [0, 1]: ``x`` left to right, ``y`` top
to bottom (image rows), ``(0, 0)`` the top-left corner, so a prior is independent of the
image size. For one finding with boxes ``(x, y, w, h)`` in pixels of an image of side
``image_size`` (NIH: 1024):

* ``mean`` = the mean box centre ``((x + w/2)/S, (y + h/2)/S)``;
* ``cov``  = the covariance of the centres (population, ddof=0) plus the mean extent of
  a box, ``diag(mean(w^2)/12, mean(h^2)/12)`` / S^2 (the variance of a point drawn
  uniformly inside a w x h box), so one box still gives a proper, box-sized Gaussian.

A finding without boxes (NIH boxed only 8 of 14) gets the broad central prior: as if
its box were the whole image, mean (0.5, 0.5) and cov diag(1/12, 1/12) (sd 0.29).

Priors are an explicit input: the caller decides which images' boxes may be used (the
training engine uses training images only; official-split box images are test images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from cxrkit.labels import canonical_finding

#: The broad prior: a uniform distribution over the whole image, moment-matched.
BROAD_MEAN = (0.5, 0.5)
BROAD_COV = ((1 / 12, 0.0), (0.0, 1 / 12))


def fit_box_priors(
    boxes: pd.DataFrame, findings: Sequence[str], image_size: float = 1024
) -> dict[str, dict]:
    """Per-finding ``{"mean": [x, y], "cov": [[xx, xy], [xy, yy]], "n_boxes": n}``.

    ``boxes`` has columns ``image_id, finding, x, y, w, h`` (pixels, top-left corner and
    size, in an image of side ``image_size``). Finding names may be NIH's spellings
    ("Infiltrate"); boxes of findings not in ``findings`` are ignored. Plain floats, so
    the result can be stored in a model config and a checkpoint.
    """
    missing = {"finding", "x", "y", "w", "h"} - set(boxes.columns)
    if missing:
        raise KeyError(f"box table lacks column(s) {sorted(missing)}")
    s = float(image_size)
    names = boxes["finding"].map(lambda f: canonical_finding(str(f), allow_no_finding=False))
    out: dict[str, dict] = {}
    for finding in findings:
        finding = canonical_finding(finding, allow_no_finding=False)
        rows = boxes[(names == finding).to_numpy()]
        if len(rows) == 0:
            out[finding] = {
                "mean": list(BROAD_MEAN),
                "cov": [list(r) for r in BROAD_COV],
                "n_boxes": 0,
            }
            continue
        x, y, w, h = (rows[c].to_numpy(dtype=np.float64) / s for c in ("x", "y", "w", "h"))
        centres = np.stack([x + w / 2, y + h / 2], axis=1)
        cov = np.cov(centres.T, ddof=0) if len(rows) > 1 else np.zeros((2, 2))
        cov = cov + np.diag([np.mean(w**2) / 12, np.mean(h**2) / 12])
        out[finding] = {
            "mean": [float(v) for v in centres.mean(0)],
            "cov": [[float(v) for v in r] for r in cov],
            "n_boxes": int(len(rows)),
        }
    return out


def prior_tensors(
    box_priors: Mapping[str, Mapping] | None, findings: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F, 2)`` means and ``(F, 2, 2)`` covariances in ``findings`` order.

    Findings missing from ``box_priors`` (or all, if it is None) get the broad prior.
    Covariances must be symmetric positive definite.
    """
    given = {canonical_finding(k, allow_no_finding=False): v for k, v in (box_priors or {}).items()}
    means, covs = [], []
    for finding in findings:
        p = given.get(finding, {"mean": BROAD_MEAN, "cov": BROAD_COV})
        mean = torch.tensor(p["mean"], dtype=torch.float64).reshape(2)
        cov = torch.tensor(p["cov"], dtype=torch.float64).reshape(2, 2)
        if not torch.allclose(cov, cov.T) or torch.linalg.eigvalsh(cov).min() <= 0:
            raise ValueError(
                f"box prior of {finding}: covariance {cov.tolist()} is not "
                "symmetric positive definite"
            )
        means.append(mean)
        covs.append(cov)
    return torch.stack(means).float(), torch.stack(covs).float()

"""A Gaussian description of a training distribution: low-rank (PCA) covariance + diagonal rest.

:func:`fit_gaussian` fits it with scikit-learn's :class:`~sklearn.decomposition.PCA` on
training vectors (pooled network features, or image statistics); :func:`mahalanobis2`
scores new vectors with numpy alone, so the torch-free ONNX backend scores exactly as the
torch one does. The squared distance of ``x`` is

    d^2 = sum_i z_i^2 / lambda_i  +  sum_j r_j^2 / psi_j,

``z = P (x - mu)`` the coordinates in the top ``k`` principal directions (variances
``lambda``), ``r`` what those directions leave (``psi_j`` its per-dimension variance on
the training vectors, floored at 1e-3 of its mean so a dimension that never varied in
training -- a dead ReLU unit -- does not divide by zero, and at 1e-6 of the mean total
variance so that the float32 rounding of the stored directions cannot dominate). Every
variance is also at least (1e-4 of the mean)^2, so training vectors that do not vary at
all (identical images) still give distances on a sane scale. It is the Mahalanobis distance
under the covariance ``P' diag(lambda) P + diag(psi)`` restricted to each part, the form
used for deep-feature OOD detection (Lee et al., NeurIPS 2018), kept low-rank so that the
record stays small (``k * D`` floats) and well conditioned when there are fewer training
images than feature dimensions.

Why the scoring is hand-written (6 lines): the record lives in a checkpoint read with
``torch.load(weights_only=True)`` and in ONNX metadata (JSON), so it must be plain arrays,
not a pickled scikit-learn object.

Arrays are stored as ``{"dtype": "float32", "shape": [...], "base64": "..."}``: the same
dict is valid in a ``weights_only`` checkpoint and in JSON, and a third of the size of a
list of decimal numbers.
"""

from __future__ import annotations

import base64

import numpy as np

#: Principal directions kept, at most (fewer when there are fewer training vectors).
#: Chosen by measurement (bench/bench_ood.py; 8, 32 and 64 tried): 64 separated phantoms
#: from real films best for a real-trained cnn4 (AUROC 0.984 vs 0.976-0.983).
RANK = 64
#: Cap on ``k * D`` (floats of the direction matrix): 64 Ki floats = 256 KiB as float32.
MAX_DIRECTION_FLOATS = 1 << 16
#: psi is floored at this fraction of its mean.
PSI_FLOOR = 1e-3
#: Every variance is floored at this fraction of the squared mean (a spread of 1e-4).
MAGNITUDE_FLOOR = 1e-8


def encode(a: np.ndarray) -> dict:
    """A float32 array as a checkpoint- and JSON-safe dict."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {
        "dtype": "float32",
        "shape": list(a.shape),
        "base64": base64.b64encode(a.tobytes()).decode("ascii"),
    }


def decode(d: dict) -> np.ndarray:
    """Inverse of :func:`encode` (float64 for scoring)."""
    if not isinstance(d, dict) or d.get("dtype") != "float32":
        raise ValueError(f"not an encoded float32 array: {str(d)[:80]}")
    a = np.frombuffer(base64.b64decode(d["base64"]), dtype="<f4")
    return a.reshape(d["shape"]).astype(np.float64)


def fit_gaussian(
    x: np.ndarray, *, rank: int = RANK, standardize: bool = False, seed: int = 0
) -> dict:
    """Fit on training vectors ``x`` ``(N, D)``; returns the encoded description.

    ``standardize``: divide each dimension by its training standard deviation first (for
    image statistics, whose units differ; network features share one scale and are not).
    """
    from sklearn.decomposition import PCA

    x = np.asarray(x, np.float64)
    n, dim = x.shape
    unit = x.std(0) + 1e-6 if standardize else np.ones(dim)
    x = x / unit
    if n < 3:
        raise ValueError(f"need at least 3 training vectors to describe a distribution, got {n}")
    k = int(max(1, min(rank, n - 1, dim, MAX_DIRECTION_FLOATS // max(dim, 1))))
    # covariance_eigh: one D x D eigendecomposition, cheaper than an SVD of the N x D data
    # when N > D (measured: 0.05 s vs 0.16 s for 1,000 x 256, one thread)
    # single-threaded BLAS: on a small matrix OpenBLAS's threads cost more than they give,
    # and on a busy machine they thrash (measured: 1.1 s vs 0.05 s for 1,000 x 256 on 2 cores)
    from threadpoolctl import threadpool_limits

    solver = "covariance_eigh" if n > dim else "full"
    # errstate: vectors that never vary have no variance to explain a share of (0 / 0)
    with threadpool_limits(1), np.errstate(invalid="ignore", divide="ignore"):
        pca = PCA(n_components=k, svd_solver=solver, random_state=seed).fit(x)
    mu = pca.mean_
    p = pca.components_
    # the smallest variance that means anything: a spread of 1e-4 of each value itself
    # (the covariance floor diag(MAGNITUDE_FLOOR * mu^2), projected onto each direction).
    # Without it, training vectors that do not vary at all (identical images) leave
    # variances of 1e-12, and float32 rounding alone scored the training image itself 3e11
    # times over the threshold. Only directions that hardly vary in training are touched.
    lam = np.maximum(pca.explained_variance_, np.maximum(MAGNITUDE_FLOOR * (p**2 @ mu**2), 1e-12))
    r = (x - mu) - ((x - mu) @ p.T) @ p
    psi = r.var(0)
    # floors: 1e-3 of psi's mean (dead units), and 1e-6 of the mean total variance (so the
    # float32 rounding of the stored directions, ~1e-7 relative, never dominates a distance)
    psi = np.maximum(psi, max(PSI_FLOOR * float(psi.mean()), 1e-6 * float(x.var(0).mean()), 1e-12))
    psi = np.maximum(psi, MAGNITUDE_FLOOR * mu**2)
    return {
        "unit": encode(unit),
        "mean": encode(mu),
        "directions": encode(p),
        "variances": encode(lam),
        "residual_variances": encode(psi),
        "rank": k,
        "dim": int(dim),
        "n_fit": int(n),
        "explained_variance_ratio": float(np.nan_to_num(pca.explained_variance_ratio_).sum()),
    }


class Gaussian:
    """A decoded :func:`fit_gaussian` description, ready to score."""

    def __init__(self, d: dict):
        self.unit = decode(d["unit"])
        self.mu = decode(d["mean"])
        self.p = decode(d["directions"])
        self.lam = decode(d["variances"])
        self.psi = decode(d["residual_variances"])

    def mahalanobis2(self, x: np.ndarray) -> np.ndarray:
        """Squared distances ``(N,)`` of vectors ``x`` ``(N, D)`` (see the module docstring)."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.mu):
            raise ValueError(f"expected vectors of dimension {len(self.mu)}, got {x.shape}")
        c = x / self.unit - self.mu
        z = c @ self.p.T
        r = c - z @ self.p
        return (z**2 / self.lam).sum(1) + (r**2 / self.psi).sum(1)


__all__ = ["Gaussian", "RANK", "decode", "encode", "fit_gaussian"]

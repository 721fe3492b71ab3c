"""Saliency maps for a loaded checkpoint, in the cache image's pixel space.

:func:`saliency_maps` answers "where in this image does the model see finding k?" with
one of four attribution methods, all from well-kept libraries (none hand-written):

``gradcam``               Selvaraju et al. 2017, pytorch-grad-cam ``GradCAM``
``gradcam++``             Chattopadhay et al. 2018, pytorch-grad-cam ``GradCAMPlusPlus``
``smoothgrad``            Smilkov et al. 2017, captum ``NoiseTunnel(Saliency)``
``integrated-gradients``  Sundararajan et al. 2017, captum ``IntegratedGradients``

The CAM methods hook the module named by the model's own registry config
(``cxr_config.saliency_layer``), so every registered model works without a table here;
ViT tokens are reshaped to their patch grid after dropping ``saliency_prefix_tokens``.

Geometry. Maps are computed on the model's tensor-stage input (``lm.transform``: resize
the ``S`` px cache image to ``R = eval_resize``, centre-crop ``input_size``, normalise; all
three from the checkpoint's preprocessing contract, ``lm.preprocessing``) and moved back to the cache image: the ``input_size`` map is pasted at the crop's
offset into an ``R x R`` canvas, then resized to ``S x S``. Cache pixels the centre crop
cut away were never seen by the model and get 0. So a map pixel ``(y, x)`` and a box in
cache pixels (``ImageCache.map_boxes``) refer to the same place.

Units. Every map is scaled per image to [0, 1] (divided by its maximum; CAMs are
min-max scaled by pytorch-grad-cam). Gradient methods keep the positive evidence only:
SmoothGrad averages absolute gradients, Integrated Gradients keeps attributions > 0
summed over input channels. A map of zeros means no positive evidence anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.labels import canonical_finding
from cxrkit.messages import quote

METHODS = ("gradcam", "gradcam++", "smoothgrad", "integrated-gradients")


def finding_targets(findings: Sequence[str], which, n: int) -> list[int]:
    """``which`` (one finding index/name for all ``n`` images, or one per image) -> indices."""
    if isinstance(which, (str, int, np.integer)):
        which = [which] * n
    which = list(which)
    if len(which) != n:
        raise ValueError(
            f"findings: got {len(which)} for {n} images (give one for all, or one per image)"
        )
    out = []
    for w in which:
        if isinstance(w, (int, np.integer)):
            if not 0 <= int(w) < len(findings):
                raise ValueError(
                    f"finding index {int(w)} out of range: the model has {len(findings)} findings"
                )
            out.append(int(w))
            continue
        name = canonical_finding(str(w), allow_no_finding=False)
        if name not in findings:
            raise ValueError(
                f"finding {quote(w)} is not one of the model's findings: {', '.join(findings)}"
            )
        out.append(findings.index(name))
    return out


class _WithMeta(nn.Module):
    """``model(x, meta)`` as a one-argument module (pytorch-grad-cam calls ``model(x)``)."""

    def __init__(self, model: nn.Module, meta: torch.Tensor | None):
        super().__init__()
        self.model, self.meta = model, meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.meta)


def _token_reshape(prefix: int):
    """ViT tokens ``(B, N, D)`` -> ``(B, D, h, w)`` after dropping ``prefix`` tokens."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        t = tokens[:, prefix:]
        side = int(round(t.shape[1] ** 0.5))
        if side * side != t.shape[1]:
            raise ValueError(f"{t.shape[1]} patch tokens do not form a square grid")
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)

    return reshape


def _cam(lm, x: torch.Tensor, meta, targets: list[int], method: str) -> np.ndarray:
    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cfg = lm.model.cxr_config
    if not cfg.saliency_layer:
        raise ValueError(f"model {cfg.name!r} names no saliency_layer in its config")
    layer = lm.model.get_submodule(cfg.saliency_layer)
    reshape = (
        _token_reshape(cfg.saliency_prefix_tokens)
        if cfg.saliency_prefix_tokens is not None
        else None
    )
    cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    x = x.detach().requires_grad_(True)  # gradients flow even if every weight is frozen
    with cls(
        model=_WithMeta(lm.model, meta), target_layers=[layer], reshape_transform=reshape
    ) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(k) for k in targets])
    return np.asarray(maps, np.float32)


def _gradient(
    lm,
    x: torch.Tensor,
    meta,
    targets: list[int],
    method: str,
    *,
    samples: int,
    noise: float,
    steps: int,
) -> np.ndarray:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    def forward(inp, m=None):
        return lm.model(inp, m)

    extra = (meta,) if meta is not None else None
    target = torch.as_tensor(targets, device=x.device)
    if method == "smoothgrad":
        # noise std as a fraction of the input's [0, 1] range, in normalised units
        attr = NoiseTunnel(Saliency(forward)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=samples,
            nt_samples_batch_size=samples,
            stdevs=noise / lm.std,
            target=target,
            additional_forward_args=extra,
            abs=True,
        )
        a = attr.sum(1)
    else:
        black = torch.full_like(x, (0.0 - lm.mean) / lm.std)
        attr = IntegratedGradients(forward).attribute(
            x,
            baselines=black,
            target=target,
            additional_forward_args=extra,
            n_steps=steps,
            internal_batch_size=max(steps, len(x)),
        )
        a = attr.sum(1).clamp_min(0)
    a = a.detach().float()
    peak = a.flatten(1).amax(1).clamp_min(torch.finfo(a.dtype).tiny)
    return (a / peak[:, None, None]).cpu().numpy()


def to_cache_space(
    maps: np.ndarray | torch.Tensor, lm, cache_size: int | None = None
) -> np.ndarray:
    """``(B, s, s)`` maps over the model's input -> ``(B, S, S)`` over the cache image.

    Undoes ``lm.transform``'s geometry (centre crop, then resize) as recorded in
    ``lm.preprocessing``; see the module docstring. ``cache_size``: the side of the images
    the maps are for (default: the contract's cache side).
    """
    p = lm.preprocessing
    cache_size = int(cache_size or p.cache.size)
    m = torch.as_tensor(np.asarray(maps, np.float32))[:, None]
    s, r, off = p.input_size, p.eval_resize, p.crop_offset
    if m.shape[-1] != s:
        m = F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False)
    if r != s:
        canvas = torch.zeros(m.shape[0], 1, r, r)
        canvas[..., off : off + s, off : off + s] = m
        m = canvas
    if r != cache_size:
        m = F.interpolate(
            m,
            size=(cache_size, cache_size),
            mode="bilinear",
            align_corners=False,
            antialias=r > cache_size,
        )
    return m[:, 0].clamp_(0, 1).numpy().astype(np.float32)


def saliency_maps(
    lm,
    images: torch.Tensor,
    findings,
    *,
    method: str = "gradcam",
    meta=None,
    batch_size: int = 16,
    samples: int = 16,
    noise: float = 0.15,
    steps: int = 32,
) -> np.ndarray:
    """Saliency of ``findings`` on ``images`` for the loaded model ``lm``.

    images: uint8 (B,1,S,S) cache-stage images (as LoadedModel.load_images returns);
    findings: one finding index/name for all images, or one per image.
    Returns float32 (B,S,S) maps in [0,1], in the cache image's pixel space.

    ``meta``: patient metadata for models trained with it (else the model's default, with
    a warning). ``samples``/``noise``: SmoothGrad's noisy copies and their std (fraction
    of the [0, 1] intensity range; Smilkov et al. suggest 0.1-0.2). ``steps``: Integrated
    Gradients' path steps from a black image.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if (
        not isinstance(images, torch.Tensor)
        or images.ndim != 4
        or images.shape[1] != 1
        or images.dtype != torch.uint8
    ):
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise ValueError(
            f"images must be a uint8 tensor (B, 1, S, S) from LoadedModel.load_images, got {got}"
        )
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"cache-stage images are square; got {tuple(images.shape[-2:])}")
    n, size = images.shape[0], images.shape[-1]
    targets = finding_targets(lm.findings, findings, n)
    m_all = lm._meta(n, meta)
    out = np.zeros((n, size, size), np.float32)
    lm.model.eval()
    with torch.enable_grad():
        for i in range(0, n, batch_size):
            x = lm.transform(images[i : i + batch_size].to(lm.device)).contiguous()
            m = None if m_all is None else m_all[i : i + batch_size]
            t = targets[i : i + batch_size]
            if method in ("gradcam", "gradcam++"):
                maps = _cam(lm, x, m, t, method)
            else:
                maps = _gradient(lm, x, m, t, method, samples=samples, noise=noise, steps=steps)
            out[i : i + len(x)] = to_cache_space(maps, lm, size)
    lm.model.zero_grad(set_to_none=True)
    return out


def attention_maps(lm, images: torch.Tensor) -> np.ndarray | None:
    """The model's own attention ``(B, F, S, S)`` in cache pixels, or None if it has none.

    For ``gaussian_attention``: each finding's Gaussian over the feature-map cells (it
    does not depend on the image), upsampled to the input and scaled to a maximum of 1.
    """
    fn = getattr(lm.model, "attention_maps", None)
    if fn is None:
        return None
    with torch.no_grad():
        x = lm.transform(images.to(lm.device))
        a = fn(x).float()  # (B, F, h, w), sums to 1
        b, f = a.shape[:2]
        a = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)
        a = a / a.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    maps = to_cache_space(a.reshape(b * f, *a.shape[-2:]).cpu(), lm, images.shape[-1])
    return maps.reshape(b, f, *maps.shape[-2:])


__all__ = ["METHODS", "attention_maps", "finding_targets", "saliency_maps", "to_cache_space"]

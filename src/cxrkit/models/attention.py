"""``gaussian_attention``: each finding pools the feature map under its own 2-D Gaussian.

A CNN trunk gives a feature map ``(B, C, H, W)``. Finding ``k`` owns a learnable
Gaussian over normalised image coordinates (mean ``mu_k`` in [0, 1]^2, covariance
``L_k L_k^T`` from a Cholesky factor with log-diagonal, so it stays positive definite).
Its attention map is that Gaussian evaluated at the centres of the H x W cells and
normalised over the cells (a softmax of ``-0.5 * Mahalanobis^2``), so it sums to 1. The
finding's feature vector is the attention-weighted mean of the map, and a per-finding
linear head (with metadata concatenated) gives its logit.

The attention does not depend on the image: it is where the model looks for a finding,
learned from the labels and initialised from bounding-box priors
(:func:`~cxrkit.models.priors.fit_box_priors`), which makes it an explanation that can be
read directly (:meth:`GaussianAttentionNet.attention_maps`) and supervised with boxes
(:func:`box_attention_loss`).

Trunk: ``backbone="conv"`` (default), a small 4-block CNN at 1/8 resolution that trains
on a CPU (16 x 16 cells at 128 px); or any timm-backed registered name (e.g.
``backbone="densenet121"``, with ``pretrained``/``weights`` as for that model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.models.backbones import ARCHS, create_timm_backbone, timm_facts, timm_feature_map
from cxrkit.models.base import CXRModel
from cxrkit.models.cnn import XRAY_MEAN, XRAY_STD, ConvTrunk
from cxrkit.models.priors import prior_tensors
from cxrkit.models.registry import register_model
from cxrkit.models.weights import refuse_pretrained


class GaussianAttention(nn.Module):
    """One 2-D Gaussian per finding; ``forward(h, w)`` gives ``(F, h, w)`` maps summing to 1.

    Parameters: ``loc`` (F, 2) the mean (x, y); ``log_scale`` (F, 2) the log of the
    Cholesky diagonal; ``shear`` (F,) its lower off-diagonal entry. Units: normalised
    image coordinates (1 = the image's width or height).
    """

    def __init__(self, means: torch.Tensor, covs: torch.Tensor):
        super().__init__()
        chol = torch.linalg.cholesky(covs.double()).float()
        self.loc = nn.Parameter(means.clone().float())
        self.log_scale = nn.Parameter(torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)))
        self.shear = nn.Parameter(chol[:, 1, 0].clone())

    def cholesky(self) -> torch.Tensor:
        """``(F, 2, 2)`` lower-triangular L with covariance L L^T."""
        s = self.log_scale.exp()
        zero = torch.zeros_like(self.shear)
        return torch.stack(
            [torch.stack([s[:, 0], zero], -1), torch.stack([self.shear, s[:, 1]], -1)], -2
        )

    def covariance(self) -> torch.Tensor:
        chol = self.cholesky()
        return chol @ chol.transpose(-1, -2)

    def forward(self, height: int, width: int) -> torch.Tensor:
        dev = self.loc.device
        ys = (torch.arange(height, device=dev, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=dev, dtype=torch.float32) + 0.5) / width
        dx = xs[None, None, :] - self.loc[:, 0, None, None].float()  # (F, 1, W)
        dy = ys[None, :, None] - self.loc[:, 1, None, None].float()  # (F, H, 1)
        s = self.log_scale.float().exp()
        z1 = dx / s[:, 0, None, None]  # L^-1 (dx, dy)
        z2 = (dy - self.shear.float()[:, None, None] * z1) / s[:, 1, None, None]
        logits = -0.5 * (z1**2 + z2**2)  # (F, H, W)
        return torch.softmax(logits.flatten(1), dim=-1).view(-1, height, width)


class PerFindingHead(nn.Module):
    """Logit k = w_k . [features_k, meta] + b_k: a linear layer per finding."""

    def __init__(
        self, in_features: int, num_findings: int, *, meta_features: int = 0, drop_rate: float = 0.0
    ):
        super().__init__()
        fan_in = in_features + meta_features
        bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation
        self.drop = nn.Dropout(drop_rate)
        self.weight = nn.Parameter(torch.empty(num_findings, fan_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_findings).uniform_(-bound, bound))

    def forward(self, pooled: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        if meta is not None:
            meta = meta.to(pooled.dtype)[:, None, :].expand(-1, pooled.shape[1], -1)
            pooled = torch.cat([pooled, meta], dim=-1)
        return (self.drop(pooled) * self.weight).sum(-1) + self.bias


class GaussianAttentionNet(CXRModel):
    """Trunk -> per-finding Gaussian attention pooling -> per-finding linear head."""

    def __init__(
        self,
        *,
        findings,
        in_chans,
        meta_features,
        chans_policy,
        pretrained: bool = False,
        backbone_weights=None,
        backbone: str = "conv",
        width: int = 32,
        drop_rate: float = 0.0,
        box_priors: dict | None = None,
        pretrained_tag: str | None = None,
        **timm_kw,
    ):
        super().__init__(
            findings=findings,
            in_chans=in_chans,
            meta_features=meta_features,
            chans_policy=chans_policy,
        )
        if backbone == "conv":
            refuse_pretrained(
                "gaussian_attention with backbone='conv'", pretrained, backbone_weights
            )
            if timm_kw:
                raise TypeError(f"unexpected keyword(s) {sorted(timm_kw)} for backbone='conv'")
            self.backbone = ConvTrunk(
                self.net_in_chans,
                [width, 2 * width, 4 * width, 8 * width],
                pools=[True, True, True, False],
            )
            channels = self.backbone.num_features
            self.input_size, self.mean, self.std = 128, XRAY_MEAN, XRAY_STD
            self.saliency_layer, self.first_conv = "backbone.blocks.3", "backbone.blocks.0.conv"
        elif backbone in ARCHS:
            self.backbone, self.pretrained_source = create_timm_backbone(  # type: ignore[assignment]
                backbone,
                in_chans=self.net_in_chans,
                pretrained=pretrained,
                backbone_weights=backbone_weights,
                pretrained_tag=pretrained_tag,
                **timm_kw,
            )
            channels = self.backbone.num_features
            for key, value in timm_facts(self.backbone, backbone).items():
                setattr(self, key, value)
        else:
            raise ValueError(f"backbone must be 'conv' or one of {sorted(ARCHS)}, got {backbone!r}")
        self.attention = GaussianAttention(*prior_tensors(box_priors, self.findings))
        self.classifier = PerFindingHead(
            channels, self.num_findings, meta_features=meta_features, drop_rate=drop_rate
        )
        self._timm = backbone != "conv"
        self._map_sizes: dict[tuple[int, ...], tuple[int, ...]] = {}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's feature map ``(B, C, H', W')`` (input already prepared)."""
        return timm_feature_map(self.backbone, x) if self._timm else self.backbone(x)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prepare_input(x)
        meta = self.check_meta(meta, x)
        fmap = self.forward_features(x)
        b, c, h, w = fmap.shape
        if not torch.compiler.is_compiling():  # a cache for attention_maps, not traced
            self._map_sizes[tuple(x.shape[-2:])] = (h, w)
        attn = self.attention(h, w).to(fmap.dtype)  # (F, H, W)
        pooled = torch.einsum("fp,bcp->bfc", attn.reshape(-1, h * w), fmap.reshape(b, c, h * w))
        return self.classifier(pooled, meta)

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F, H', W')``: each finding's attention over the feature-map cells of ``x``.

        Each map sums to 1 and keeps gradients to the attention parameters (for
        :func:`box_attention_loss`). Cell (i, j) covers the input rows
        [i H/H', (i+1) H/H') and columns [j W/W', (j+1) W/W'). The map size is remembered
        per input size, so this costs no trunk pass after the first ``forward``.
        """
        key = tuple(x.shape[-2:])
        if key not in self._map_sizes:
            was_training = self.training
            self.eval()  # don't let this probe touch BatchNorm statistics
            with torch.no_grad():
                self._map_sizes[key] = tuple(
                    self.forward_features(self.prepare_input(x[:1])).shape[-2:]
                )
            self.train(was_training)
        h, w = self._map_sizes[key]
        return self.attention(h, w).unsqueeze(0).expand(x.shape[0], -1, -1, -1)


def box_attention_loss(attention_maps: torch.Tensor, boxes_mask: torch.Tensor) -> torch.Tensor:
    """Mean over (image, finding) pairs with a box of ``-log(attention mass in the box)``.

    ``attention_maps``: ``(B, F, H', W')`` summing to 1 over each map.
    ``boxes_mask``: ``(B, F, Hm, Wm)``, 1 inside finding k's box(es) on image b, 0 elsewhere
    (an all-zero map: no box, ignored), at any resolution covering the same field of view
    (e.g. the input's). It is averaged down to the map's cells, so a cell counts by the
    fraction of it inside the box. 0 when the attention lies entirely inside the box;
    a zero tensor (still in the graph) when no pair has a box. The mass is not smoothed
    (an ``eps`` would flatten the pull towards a far box); only a mass that underflows to
    0 is floored, capping a term at about 87.
    """
    if attention_maps.shape[:2] != boxes_mask.shape[:2]:
        raise ValueError(
            f"attention maps {tuple(attention_maps.shape)} and box masks "
            f"{tuple(boxes_mask.shape)} differ in batch or findings"
        )
    mask = boxes_mask.to(attention_maps.dtype)
    if mask.shape[-2:] != attention_maps.shape[-2:]:
        mask = F.adaptive_avg_pool2d(mask, attention_maps.shape[-2:])  # type: ignore[arg-type]  # a Size is a tuple of ints
    has_box = boxes_mask.flatten(2).amax(-1) > 0
    if not bool(has_box.any()):
        return attention_maps.sum() * 0.0
    mass = (attention_maps * mask).sum((-2, -1))
    return -torch.log(mass[has_box].clamp_min(torch.finfo(mass.dtype).tiny)).mean()


@register_model(uses_box_priors=True)
def gaussian_attention(**kw) -> GaussianAttentionNet:
    """Per-finding Gaussian attention pooling over a small CNN (``backbone="conv"``,
    channels ``width`` x 1, 2, 4, 8, 1/8 resolution) or a timm-backed trunk
    (``backbone="densenet121"`` ...). ``box_priors``: output of ``fit_box_priors``;
    findings without a prior start broad and central."""
    return GaussianAttentionNet(**kw)

"""Small CNNs trained from scratch: ``cnn4`` and ``lenet``.

They need no pretrained weights and run on a laptop CPU at 128 px, which makes them the
baselines every other model must beat, and the demo's model. Both pool globally before
their dense classifier, so any input side works (at least 16 px for cnn4, 32 px for
lenet); 128 px is what they are meant for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from cxrkit.models.base import ClassifierHead, CXRModel
from cxrkit.models.registry import register_model
from cxrkit.models.weights import refuse_pretrained

#: Mean/std of a [0, 1] NIH radiograph, roughly (grey values centre near 0.5 and spread
#: about a quarter of the range). Scratch models only need inputs near zero mean and unit
#: variance; BatchNorm learns the rest.
XRAY_MEAN, XRAY_STD = 0.5, 0.25


class ConvBlock(nn.Sequential):
    """conv (same padding unless ``padding=0``) -> [BatchNorm] -> ReLU -> [2x2 max pool]."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        kernel: int = 3,
        padding: int | None = None,
        batchnorm: bool = True,
        pool: bool = True,
    ):
        layers: dict[str, nn.Module]
        layers = {
            "conv": nn.Conv2d(
                cin,
                cout,
                kernel,
                padding=kernel // 2 if padding is None else padding,
                bias=not batchnorm,
            )
        }
        if batchnorm:
            layers["bn"] = nn.BatchNorm2d(cout)
        layers["act"] = nn.ReLU(inplace=True)
        if pool:
            layers["pool"] = nn.MaxPool2d(2)
        super().__init__(OrderedDict(layers))


class ConvTrunk(nn.Module):
    """A stack of :class:`ConvBlock` s; ``forward`` returns the last feature map."""

    def __init__(
        self,
        in_chans: int,
        channels: Sequence[int],
        *,
        kernel: int = 3,
        padding: int | None = None,
        batchnorm: bool = True,
        pools: Sequence[bool] | None = None,
    ):
        super().__init__()
        pools = list(pools) if pools is not None else [True] * len(channels)
        blocks, cin = [], in_chans
        for cout, pool in zip(channels, pools):
            blocks.append(
                ConvBlock(cin, cout, kernel=kernel, padding=padding, batchnorm=batchnorm, pool=pool)
            )
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class SmallCNN(CXRModel):
    """A :class:`ConvTrunk`, adaptive average pooling, and a dense classifier.

    ``trunk`` holds :class:`ConvTrunk`'s keywords. ``pool_size`` is the side of the
    pooled grid (1: global average pooling); the pooled map is flattened into the
    classifier, as LeNet flattens its 5x5 maps.
    """

    input_size = 128
    mean, std = XRAY_MEAN, XRAY_STD

    def __init__(
        self, *, trunk: dict, pool_size: int, hidden: Sequence[int], drop_rate: float, **common
    ):
        super().__init__(**common)
        self.backbone = net = ConvTrunk(self.net_in_chans, **trunk)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = ClassifierHead(
            net.num_features * pool_size**2,
            self.num_findings,
            meta_features=self.meta_features,
            hidden=hidden,
            drop_rate=drop_rate,
        )
        last = len(net.blocks) - 1
        self.saliency_layer = f"backbone.blocks.{last}"
        self.first_conv = "backbone.blocks.0.conv"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``(B, C, H', W')`` (input already prepared)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prepare_input(x)
        meta = self.check_meta(meta, x)
        pooled = torch.flatten(self.pool(self.forward_features(x)), 1)
        return self.classifier(pooled, meta)


def _common(findings, in_chans, meta_features, chans_policy) -> dict:
    return dict(
        findings=findings, in_chans=in_chans, meta_features=meta_features, chans_policy=chans_policy
    )


@register_model
def cnn4(
    *,
    findings,
    in_chans,
    meta_features,
    chans_policy,
    pretrained=False,
    backbone_weights=None,
    width: int = 32,
    drop_rate: float = 0.5,
) -> SmallCNN:
    """Four conv blocks (3x3 conv, BN, ReLU, 2x2 max pool; ``width`` x 1, 2, 4, 8 channels),
    global average pooling, then a dense classifier (256 -> 128 -> F) with dropout 0.5
    before each linear layer."""
    refuse_pretrained("cnn4", pretrained, backbone_weights)
    trunk = dict(channels=[width, 2 * width, 4 * width, 8 * width])
    return SmallCNN(
        trunk=trunk,
        pool_size=1,
        hidden=(128,),
        drop_rate=drop_rate,
        **_common(findings, in_chans, meta_features, chans_policy),
    )


@register_model
def lenet(
    *,
    findings,
    in_chans,
    meta_features,
    chans_policy,
    pretrained=False,
    backbone_weights=None,
    drop_rate: float = 0.0,
) -> SmallCNN:
    """LeNet-5's shape (LeCun et al. 1998): two 5x5 valid convs (6, 16 channels) with ReLU
    and 2x2 max pooling, maps averaged to 5x5 and flattened (400), dense 120 -> 84 -> F.
    The classic single-finding baseline (e.g. Pneumonia vs the rest)."""
    refuse_pretrained("lenet", pretrained, backbone_weights)
    trunk = dict(channels=[6, 16], kernel=5, padding=0, batchnorm=False)
    return SmallCNN(
        trunk=trunk,
        pool_size=5,
        hidden=(120, 84),
        drop_rate=drop_rate,
        **_common(findings, in_chans, meta_features, chans_policy),
    )

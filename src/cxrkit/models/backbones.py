"""ImageNet architectures from timm, with cxrkit's classifier head and grey-input policy.

Each registered model is a timm network built with ``num_classes=0`` (it returns its
pooled features: global average pooling for CNNs, the class token after the final norm
for ViTs) followed by :class:`~cxrkit.models.base.ClassifierHead`, into which patient
metadata can be fused. Names follow torchvision where timm's differ
(``mobilenet_v3_large`` is timm's ``mobilenetv3_large_100``).

Grey input: with ``chans_policy="fold"`` timm builds a one-channel first convolution
and, when loading ImageNet weights, sums them over R, G, B. The config's mean/std are
the averages of the pretrained per-channel values, the single-channel equivalent.
With ``replicate`` the network keeps three input channels and the model repeats the grey
channel (3x the first-conv compute, identical function at initialisation).

Pretrained tags are timm's defaults except ``densenet121``, which uses torchvision's
ImageNet weights (``densenet121.tv_in1k``), as CheXNet did. ``pretrained_tag=`` picks
another (``timm.list_pretrained('resnet50.*')`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxrkit._compat import ensure_torchvision
from cxrkit.models.base import ClassifierHead, CXRModel
from cxrkit.models.registry import register_model
from cxrkit.models.weights import (
    PretrainedWeightsError,
    cached_hub_file,
    hub_unreachable_reason,
    offline_message,
    read_state_dict,
    summarise_key_mismatch,
    timm_load_report,
)


@dataclass(frozen=True)
class TimmArch:
    timm_name: str  #: timm architecture name
    tag: str  #: default pretrained tag (timm name ``<timm_name>.<tag>``)
    #: module inside the timm network whose output is the last spatial feature map (what
    #: Grad-CAM hooks); ``{last}`` is the index of the last transformer block
    saliency: str


ARCHS: dict[str, TimmArch] = {
    "densenet121": TimmArch("densenet121", "tv_in1k", "features.norm5"),
    "mobilenet_v3_large": TimmArch("mobilenetv3_large_100", "ra_in1k", "blocks.6"),
    "mobilenet_v2": TimmArch("mobilenetv2_100", "ra_in1k", "bn2"),
    "resnet50": TimmArch("resnet50", "a1_in1k", "layer4"),
    "efficientnet_b0": TimmArch("efficientnet_b0", "ra_in1k", "bn2"),
    "vit_small_patch16_224": TimmArch(
        "vit_small_patch16_224", "augreg_in21k_ft_in1k", "blocks.{last}.norm1"
    ),
    "vit_base_patch16_224": TimmArch(
        "vit_base_patch16_224", "augreg2_in21k_ft_in1k", "blocks.{last}.norm1"
    ),
}


def create_timm_backbone(
    model_name: str,
    *,
    in_chans: int,
    pretrained: bool,
    backbone_weights: str | Path | None,
    pretrained_tag: str | None = None,
    **timm_kw,
) -> tuple[nn.Module, str]:
    """A timm network without its classifier, and the name of the ImageNet weights loaded
    ("" for random init or a local file).

    ``backbone_weights``: a local file in timm or torchvision layout (timm's own filter
    remaps torchvision keys and resizes ViT position embeddings). ``pretrained``: by name,
    from the Hugging Face cache or hub; offline -> :class:`PretrainedWeightsError` within
    seconds. A file that leaves any backbone weight unfilled is refused.
    """
    ensure_torchvision()
    import timm

    arch = ARCHS[model_name]
    timm_name = f"{arch.timm_name}.{pretrained_tag or arch.tag}"
    kw = dict(num_classes=0, in_chans=in_chans, **timm_kw)
    if not pretrained and backbone_weights is None:
        return timm.create_model(timm_name, pretrained=False, **kw), ""
    if backbone_weights is not None:
        file: Path | None = Path(backbone_weights)
    else:
        cfg = timm.models.get_pretrained_cfg(timm_name)
        if cfg is None:
            raise PretrainedWeightsError(
                f"timm has no pretrained weights named {timm_name!r}; see "
                f"timm.list_pretrained('{arch.timm_name}.*') for pretrained_tag"
            )
        file = cached_hub_file(cfg.hf_hub_id)
        if file is None:
            why = hub_unreachable_reason()
            if why:
                raise PretrainedWeightsError(offline_message(model_name, timm_name, why))
    overlay = {"file": str(file)} if file is not None else None
    with timm_load_report() as report:
        try:
            net = timm.create_model(
                timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kw
            )
        except TypeError:  # a wrong keyword for the architecture, not a weights problem
            raise
        except Exception as e:  # noqa: BLE001 (hub, file and shape errors all end here)
            detail = " ".join(line.strip() for line in str(e).splitlines()[:3])
            why = f"{type(e).__name__}: {detail[:400]}"
            if backbone_weights is None and file is None:
                raise PretrainedWeightsError(offline_message(model_name, timm_name, why)) from e
            raise PretrainedWeightsError(
                f"{file}: could not load it as {model_name} backbone weights ({why})"
            ) from e
    unfilled = report["missing"] + report["unconverted"]
    if unfilled:
        expected = net.state_dict().keys()
        found = (
            set(read_state_dict(file))
            if file is not None
            else (set(expected) - set(report["missing"])) | set(report["unexpected"])
        )
        raise PretrainedWeightsError(
            f"{file or timm_name} does not fit {model_name}: "
            f"{summarise_key_mismatch(expected, found)}"
            + (f"; {report['unconverted'][0]}" if report["unconverted"] else "")
            + ". Is it a file of another architecture?"
        )
    return net, (timm_name if backbone_weights is None else "")


def timm_facts(net: nn.Module, model_name: str, prefix: str = "backbone.") -> dict:
    """The config facts of a timm network mounted at ``prefix`` (see CXRModelConfig)."""
    cfg = net.pretrained_cfg
    arch = ARCHS[model_name]
    patch_embed = getattr(net, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None) or cfg["input_size"][1:]
    blocks = getattr(net, "blocks", ())
    return dict(
        input_size=int(size[0]),
        # a ViT built for one patch grid refuses other sizes unless built dynamic
        fixed_input_size=patch_embed is not None
        and bool(getattr(patch_embed, "strict_img_size", True))
        and not bool(getattr(patch_embed, "dynamic_img_size", False)),
        mean=float(sum(cfg["mean"]) / len(cfg["mean"])),
        std=float(sum(cfg["std"]) / len(cfg["std"])),
        saliency_layer=prefix + arch.saliency.format(last=len(blocks) - 1),
        saliency_prefix_tokens=int(net.num_prefix_tokens) if patch_embed is not None else None,
        first_conv=prefix + cfg["first_conv"],
    )


def timm_feature_map(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map ``(B, C, H', W')``; ViT tokens are reshaped to their grid."""
    feats = net.forward_features(x)
    if feats.ndim == 4:
        return feats
    tokens = feats[:, net.num_prefix_tokens :]
    h, w = net.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class TimmClassifier(CXRModel):
    """A timm network's pooled features -> metadata fusion -> linear head."""

    def __init__(
        self,
        model_name: str,
        *,
        findings,
        in_chans,
        meta_features,
        chans_policy,
        pretrained: bool = False,
        backbone_weights=None,
        drop_rate: float = 0.0,
        pretrained_tag: str | None = None,
        **timm_kw,
    ):
        super().__init__(
            findings=findings,
            in_chans=in_chans,
            meta_features=meta_features,
            chans_policy=chans_policy,
        )
        self.backbone, self.pretrained_source = create_timm_backbone(
            model_name,
            in_chans=self.net_in_chans,
            pretrained=pretrained,
            backbone_weights=backbone_weights,
            pretrained_tag=pretrained_tag,
            **timm_kw,
        )
        pooled = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.classifier = ClassifierHead(
            pooled, self.num_findings, meta_features=meta_features, drop_rate=drop_rate
        )
        for key, value in timm_facts(self.backbone, model_name).items():
            setattr(self, key, value)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``(B, C, H', W')`` (input already prepared)."""
        return timm_feature_map(self.backbone, x)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prepare_input(x)
        meta = self.check_meta(meta, x)
        return self.classifier(self.backbone(x), meta)


@register_model
def densenet121(**kw) -> TimmClassifier:
    """DenseNet-121 (Huang et al. 2017); with ImageNet weights, Adam 1e-3 and 224 px this
    is CheXNet (Rajpurkar et al. 2017). 7.0 M backbone parameters, 1024 features."""
    return TimmClassifier("densenet121", **kw)


@register_model
def mobilenet_v3_large(**kw) -> TimmClassifier:
    """MobileNetV3-Large 1.0 (Howard et al. 2019): 4.2 M parameters, 1280 features."""
    return TimmClassifier("mobilenet_v3_large", **kw)


@register_model
def mobilenet_v2(**kw) -> TimmClassifier:
    """MobileNetV2 1.0 (Sandler et al. 2018): 2.2 M parameters, 1280 features."""
    return TimmClassifier("mobilenet_v2", **kw)


@register_model
def resnet50(**kw) -> TimmClassifier:
    """ResNet-50 (He et al. 2016): 23.5 M parameters, 2048 features."""
    return TimmClassifier("resnet50", **kw)


@register_model
def efficientnet_b0(**kw) -> TimmClassifier:
    """EfficientNet-B0 (Tan and Le 2019): 4.0 M parameters, 1280 features."""
    return TimmClassifier("efficientnet_b0", **kw)


@register_model
def vit_small_patch16_224(**kw) -> TimmClassifier:
    """ViT-S/16 (Dosovitskiy et al. 2021; AugReg weights): 21.4 M parameters, 384
    features. Input side fixed at build time (``img_size=``, default 224)."""
    return TimmClassifier("vit_small_patch16_224", **kw)


@register_model
def vit_base_patch16_224(**kw) -> TimmClassifier:
    """ViT-B/16 (Dosovitskiy et al. 2021; AugReg2 weights): 85.3 M parameters, 768
    features. Input side fixed at build time (``img_size=``, default 224)."""
    return TimmClassifier("vit_base_patch16_224", **kw)

"""What every cxrkit model shares: the input contract, metadata fusion, frozen norms.

A model takes ``x`` of shape ``(B, in_chans, H, W)``, normalised with its config's
mean/std, and optionally ``meta`` of shape ``(B, meta_features)`` (for NIH: age in years
/ 100, age missing, male, AP view; see ``cxrkit.data.dataset.META_FEATURES``). It returns
raw logits ``(B, F)``, one per finding, with no sigmoid: losses and metrics apply it.

Metadata is fused late, by concatenation to the pooled image features right before the
classifier: the image path stays exactly the pretrained network, and a model without
metadata is the same model with ``meta_features=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class CXRModel(nn.Module):
    """Base class. Subclasses set ``backbone`` and ``classifier`` and the class facts below.

    The facts become the model's :class:`~cxrkit.models.registry.CXRModelConfig`:
    ``input_size`` (pixels), ``mean``/``std`` (for a [0, 1] grey input),
    ``saliency_layer``, ``saliency_prefix_tokens``, ``first_conv`` (dotted module names)
    and ``pretrained_source`` (the weights' name when ImageNet weights were loaded).
    """

    input_size: int = 224
    #: True when the network takes ``input_size`` only (a ViT's position embeddings)
    fixed_input_size: bool = False
    mean: float = 0.5
    std: float = 0.25
    saliency_layer: str = ""
    saliency_prefix_tokens: int | None = None
    first_conv: str = ""
    pretrained_source: str = ""

    def __init__(
        self, *, findings: Sequence[str], in_chans: int, meta_features: int, chans_policy: str
    ):
        super().__init__()
        self.findings = tuple(findings)
        self.in_chans = in_chans
        self.meta_features = meta_features
        #: channels the network itself sees: 3 when a grey input is replicated
        self.net_in_chans = 3 if (in_chans == 1 and chans_policy == "replicate") else in_chans
        self._frozen_norms: tuple[str, ...] = ()

    @property
    def num_findings(self) -> int:
        return len(self.findings)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check the channel count; repeat a grey channel for the ``replicate`` policy."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        if self.net_in_chans != self.in_chans:
            x = x.expand(-1, self.net_in_chans, -1, -1)
        return x

    def check_meta(self, meta: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """``meta`` must be given exactly when the model was built with meta_features > 0."""
        if self.meta_features == 0:
            if meta is not None:
                raise ValueError(
                    "this model was built with meta_features=0 but was given "
                    "meta; build it with meta_features=meta.shape[1] to fuse it"
                )
            return None
        if meta is None:
            raise ValueError(
                f"this model fuses {self.meta_features} metadata features "
                f"(e.g. age, sex, view): call model(x, meta) with meta of shape "
                f"(B, {self.meta_features})"
            )
        if meta.shape != (x.shape[0], self.meta_features):
            raise ValueError(
                f"meta must have shape ({x.shape[0]}, {self.meta_features}), "
                f"got {tuple(meta.shape)}"
            )
        return meta

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but frozen BatchNorm layers stay in eval mode.

        A frozen layer should compute what it computed before training; a BatchNorm in
        train mode would keep updating its running statistics (see ``apply_freeze``).
        """
        super().train(mode)
        for name in self._frozen_norms:
            self.get_submodule(name).eval()
        return self


class ClassifierHead(nn.Module):
    """Concatenate metadata to pooled features, then dropout + (optional MLP) + linear.

    ``hidden`` lists widths of extra ReLU layers, each preceded by dropout (cnn4's "dense
    classifier with heavy dropout"); empty gives a single linear layer (CheXNet's head).
    """

    def __init__(
        self,
        in_features: int,
        num_findings: int,
        *,
        meta_features: int = 0,
        hidden: Sequence[int] = (),
        drop_rate: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features + meta_features
        for h in hidden:
            layers += [nn.Dropout(drop_rate), nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers += [nn.Dropout(drop_rate), nn.Linear(width, num_findings)]
        self.fc = nn.Sequential(*layers)
        self.in_features = in_features
        self.meta_features = meta_features

    def forward(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        if meta is not None:
            features = torch.cat([features, meta.to(features.dtype)], dim=1)
        return self.fc(features)

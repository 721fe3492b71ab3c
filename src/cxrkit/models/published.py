"""``published``: a network trained elsewhere, in cxrkit's shape (``cxrkit import``).

A model someone else trained (CheXNet reproductions, torchxrayvision, a torchvision or
timm classifier) is a registry backbone (:class:`~cxrkit.models.backbones.TimmClassifier`:
the same state-dict keys ``backbone.*`` / ``classifier.*``, the same saliency layer) plus
the two things its authors' code did around the network that cxrkit's contract does not
say on its own:

* **Input normalisation per channel.** cxrkit's preprocessing normalises a grey image with
  one mean/std and repeats it; CheXNet fed ``(x - mean_c) / std_c`` with ImageNet's three
  means. Folding that into the first convolution is not exact (its zero padding would then
  pad a different value), so the model does it itself: the contract feeds the [0, 1] image
  (mean 0, std 1) and :meth:`PublishedClassifier.prepare_input` applies ``channel_mean`` /
  ``channel_std`` to the ``net_in_chans`` channels, exactly as ``Normalize`` did.
* **What the output means.** cxrkit models return logits and cxrkit applies the sigmoid.
  A network whose classifier ended in a ``Sigmoid`` is imported without it (``output:
  "logit"``): cxrkit's own sigmoid of the linear layer is the same number the authors'
  ``Sigmoid`` gave. torchxrayvision's models rescale the sigmoid piecewise-linearly so that
  each finding's operating point lands on 0.5 (its ``op_norm``); ``output: "op_norm"``
  returns the logit of that rescaled value (``op_thresholds`` per output), so cxrkit's
  sigmoid gives torchxrayvision's probability again, within float rounding (<= 1e-7).

Both are plain data in the model config, so ``create_model(**config)`` rebuilds the model
from a checkpoint alone, and the ONNX export carries them inside the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cxrkit.models.backbones import ARCHS, TimmClassifier
from cxrkit.models.registry import register_model

#: What the network's classifier output is before cxrkit's sigmoid.
OUTPUTS = ("logit", "op_norm")
#: ``op_norm``'s rescaled probability is kept in [eps, 1 - eps] before its logit is taken
#: (an exact 0 or 1 would be an infinite logit); the probability moves by at most this.
OP_NORM_EPS = 1e-7


def op_norm_logit(logits: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The logit of torchxrayvision's operating-point rescaling of ``sigmoid(logits)``.

    With ``p = sigmoid(z)`` and threshold ``t``: ``p / (2 t)`` below ``t``, ``1 - (1 - p) /
    (2 (1 - t))`` from ``t`` up, so ``t`` maps to 0.5 and the order of the images is kept.
    """
    p = torch.sigmoid(logits)
    t = thresholds.to(p.dtype)
    q = torch.where(p < t, p / (2 * t), 1 - (1 - p) / (2 * (1 - t)))
    return torch.logit(q, eps=OP_NORM_EPS)


class PublishedClassifier(TimmClassifier):
    """A registry backbone behind its authors' per-channel normalisation, with their
    output rescaling (see the module docstring). Its contract input is the [0, 1] image."""

    mean = 0.0
    std = 1.0

    def __init__(
        self,
        *,
        arch: str = "densenet121",
        channel_mean: Sequence[float] = (0.0,),
        channel_std: Sequence[float] = (1.0,),
        output: str = "logit",
        op_thresholds: Sequence[float] | None = None,
        **kw,
    ):
        if arch not in ARCHS:
            raise ValueError(f"published: arch must be one of {sorted(ARCHS)}, got {arch!r}")
        if output not in OUTPUTS:
            raise ValueError(f"published: output must be one of {OUTPUTS}, got {output!r}")
        super().__init__(arch, **kw)
        self.mean, self.std = 0.0, 1.0  # the contract feeds [0, 1]; the model normalises
        c = self.net_in_chans
        mean = torch.tensor([float(v) for v in channel_mean])
        std = torch.tensor([float(v) for v in channel_std])
        for name, v in (("channel_mean", mean), ("channel_std", std)):
            if v.numel() not in (1, c):
                raise ValueError(
                    f"published: {name} has {v.numel()} values; the network takes {c} channel(s)"
                )
        if not bool((std > 0).all()):
            raise ValueError(f"published: channel_std must be > 0, got {std.tolist()}")
        # not persistent: they are config (plain data), not weights
        self.register_buffer("channel_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("channel_std", std.view(1, -1, 1, 1), persistent=False)
        self.output = output
        if output == "op_norm":
            if op_thresholds is None or len(op_thresholds) != self.num_findings:
                raise ValueError(
                    f"published: output 'op_norm' needs one op_threshold per "
                    f"finding ({self.num_findings}), got {op_thresholds!r}"
                )
            t = torch.tensor([float(v) for v in op_thresholds])
            if not bool(((t > 0) & (t < 1)).all()):
                raise ValueError(f"published: op_thresholds must lie in (0, 1), got {t.tolist()}")
            self.register_buffer("op_thresholds", t, persistent=False)
        elif op_thresholds is not None:
            raise ValueError("published: op_thresholds only go with output 'op_norm'")

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Grey [0, 1] input -> the network's channels, normalised as its authors did."""
        x = super().prepare_input(x)
        return (x - self.channel_mean.to(x.dtype)) / self.channel_std.to(x.dtype)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().forward(x, meta)
        if self.output == "op_norm":
            return op_norm_logit(logits, self.op_thresholds)
        return logits


@register_model
def published(**kw) -> PublishedClassifier:
    """A network trained elsewhere (``cxrkit import``): ``arch`` (a timm-backed registry
    name), its authors' ``channel_mean``/``channel_std`` for the [0, 1] image, and
    ``output`` "logit" or "op_norm" (with ``op_thresholds``)."""
    return PublishedClassifier(**kw)

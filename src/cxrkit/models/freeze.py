"""Which parameters train: ``none``, ``classifier-only``, ``first-N``, ``no-train``.

Counting rule for ``first-N``: a *layer* is a module that owns parameters directly
(``module.parameters(recurse=False)`` is not empty: a convolution, a normalisation layer,
a linear layer, a ViT's token/position embeddings held by the network itself), listed in
``model.named_modules()`` order, which is definition order (a parent before its
children, children in the order their constructor assigned them). Containers, pooling
and activations are not layers. ``first-50`` freezes the first 50 such layers, e.g. for
cxrkit's ``densenet121``: ``conv0``, ``norm0``, the 24 norm/conv layers of dense block 1,
transition 1's norm and conv, and the first 22 of dense block 2.
:func:`parameter_layers` lists them, so a recipe's N can be checked.

A frozen BatchNorm also stops updating its running statistics (``CXRModel.train`` keeps
it in eval mode), so a frozen layer computes what it did before training.
"""

from __future__ import annotations

import re

from torch import nn

from cxrkit.messages import quote

FREEZE_POLICIES = ("none", "classifier-only", "first-N", "no-train")


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module owning parameters directly, in definition order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if next(m.parameters(recurse=False), None) is not None
    ]


def apply_freeze(model: nn.Module, policy: str) -> dict:
    """Set ``requires_grad`` by ``policy``; returns the counts.

    ``none``: all trainable. ``classifier-only``: only the module named by
    ``model.cxr_config.classifier`` (default ``classifier``) trains (a linear probe).
    ``first-N``: the first N layers (see the module docstring) are frozen.
    ``no-train``: everything frozen; the training engine only evaluates.

    Returns ``{"policy", "trainable_params", "frozen_params", "frozen_layers", "layers"}``
    (parameter counts are numbers of scalars).
    """
    layers = parameter_layers(model)
    match = re.fullmatch(r"first-(\d+)", policy.strip())
    if policy == "none":
        frozen = []
    elif policy == "no-train":
        frozen = layers
    elif policy == "classifier-only":
        config = getattr(model, "cxr_config", None)
        head = config.classifier if config is not None else "classifier"
        model.get_submodule(head)  # raises if there is no such module
        frozen = [(n, m) for n, m in layers if not (n == head or n.startswith(head + "."))]
    elif match:
        n = int(match.group(1))
        if n > len(layers):
            raise ValueError(
                f"freeze policy {quote(policy)}: the model has only {len(layers)} "
                "layers with parameters"
            )
        frozen = layers[:n]
    else:
        raise ValueError(
            f"unknown freeze policy {quote(policy)}; expected one of "
            f"{list(FREEZE_POLICIES)} (first-N with N an integer, e.g. first-50)"
        )

    frozen_names = {n for n, _ in frozen}
    for name, module in layers:
        for p in module.parameters(recurse=False):
            p.requires_grad_(name not in frozen_names)
    norms = tuple(n for n, m in frozen if isinstance(m, nn.modules.batchnorm._BatchNorm))
    model._frozen_norms = norms  # type: ignore[assignment]  # nn.Module's __setattr__ is typed for tensors and modules
    for name in norms:
        model.get_submodule(name).eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "policy": policy,
        "trainable_params": trainable,
        "frozen_params": total - trainable,
        "frozen_layers": len(frozen),
        "layers": len(layers),
    }

"""Models: a timm-style registry; ``create_model(name, ...)`` is the one way in.

Registration happens in the family files imported below (explicitly: importing this
package is what registers every model, and nothing else does).
"""

from cxrkit.models import attention, backbones, cnn, published  # noqa: F401  (registers the models)
from cxrkit.models.attention import GaussianAttentionNet, box_attention_loss
from cxrkit.models.base import ClassifierHead, CXRModel
from cxrkit.models.freeze import FREEZE_POLICIES, apply_freeze, parameter_layers
from cxrkit.models.priors import fit_box_priors
from cxrkit.models.registry import (
    CHANS_POLICIES,
    CXRModelConfig,
    UnknownModelError,
    create_model,
    list_models,
    register_model,
    uses_box_priors,
)
from cxrkit.models.weights import PretrainedWeightsError

__all__ = [
    "CHANS_POLICIES",
    "FREEZE_POLICIES",
    "ClassifierHead",
    "CXRModel",
    "CXRModelConfig",
    "GaussianAttentionNet",
    "PretrainedWeightsError",
    "UnknownModelError",
    "apply_freeze",
    "box_attention_loss",
    "create_model",
    "fit_box_priors",
    "list_models",
    "parameter_layers",
    "register_model",
    "uses_box_priors",
]

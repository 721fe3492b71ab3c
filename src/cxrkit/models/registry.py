"""The model registry: :func:`create_model` is the one way in (timm's habit).

Each family file (``cnn.py``, ``backbones.py``, ``attention.py``) ends with small
functions decorated with :func:`register_model`; ``cxrkit.models`` imports those files
explicitly, so registering a function is all it takes for a model to be creatable,
listed by :func:`list_models` and covered by the parametrised tests.

Every model leaves :func:`create_model` with a :class:`CXRModelConfig` as
``model.cxr_config``. It carries what a later stage needs without guessing: the findings
in output order, the input size and the mean/std for a [0, 1] grey input (evaluation
reuses the model's own preprocessing), the module Grad-CAM should hook, the names of the
classifier and the first convolution. ``create_model(**model.cxr_config.to_dict())``
rebuilds the same architecture (same state-dict keys and shapes), which is how a
checkpoint is turned back into a model from the file alone.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from torch import nn

from cxrkit.labels import FINDINGS, canonical_finding
from cxrkit.models.weights import is_cxrkit_state_dict, load_model_state, read_state_dict
from cxrkit.messages import quote

#: How a one-channel (grey) input meets a network: ``fold`` gives the first convolution
#: one input channel (pretrained RGB weights summed over R, G, B, as timm does);
#: ``replicate`` keeps a three-channel first convolution and repeats the grey channel.
CHANS_POLICIES = ("fold", "replicate")

#: Config fields that the model derives itself. ``create_model`` accepts them (so that
#: ``create_model(**config.to_dict())`` works) and only warns if they disagree; a stored
#: ``init`` is kept as provenance (the rebuild itself loads no weights).
DERIVED_FIELDS = (
    "input_size",
    "mean",
    "std",
    "saliency_layer",
    "saliency_prefix_tokens",
    "classifier",
    "first_conv",
    "init",
)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_USES_BOX_PRIORS: set[str] = set()  #: see register_model(uses_box_priors=True)


class UnknownModelError(KeyError):
    """A model name that is not registered (the message lists the registered ones)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class CXRModelConfig:
    """What a model is and how to feed it; stored in every checkpoint (``to_dict``)."""

    name: str  #: registry name, e.g. "densenet121"
    findings: tuple[str, ...]  #: output order of the logits
    in_chans: int  #: channels of the model's input tensor (1 grey, 3 replicated)
    meta_features: int  #: length of the ``meta`` vector fused before the classifier
    chans_policy: str  #: "fold" or "replicate" (see CHANS_POLICIES)
    input_size: int  #: side in pixels the model was designed/pretrained for
    mean: float  #: normalisation of a [0, 1] grey input: (x - mean) / std
    std: float
    saliency_layer: str  #: dotted module name whose output Grad-CAM should hook
    classifier: str  #: dotted module name of the classifier (the head)
    first_conv: str  #: dotted module name of the first convolution
    #: ``None``: the saliency layer outputs (B, C, H, W). An int: it outputs ViT tokens
    #: (B, N, D); drop that many leading (class/register) tokens and reshape to a grid.
    saliency_prefix_tokens: int | None = None
    #: where the initial weights came from: "random", "imagenet:<timm name>", "file:<path>"
    init: str = "random"
    kwargs: dict = field(default_factory=dict)  #: extra constructor arguments (plain data)

    def to_dict(self) -> dict:
        """Plain data (no tensors, no objects): safe for YAML, JSON and ``weights_only``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "kwargs"}
        out["findings"] = list(self.findings)
        out.update(copy.deepcopy(self.kwargs))
        return out


def register_model(fn: Callable[..., nn.Module] | None = None, *, uses_box_priors: bool = False):
    """Register ``fn`` under its own name (``@register_model``, or
    ``@register_model(uses_box_priors=True)``).

    ``fn`` is called with keyword arguments ``findings``, ``in_chans``, ``meta_features``,
    ``chans_policy``, ``pretrained`` (bool: ImageNet weights by name), ``backbone_weights``
    (a local file of backbone weights, or None) and any model-specific keywords. It
    returns a :class:`cxrkit.models.base.CXRModel`.

    ``uses_box_priors``: the model takes ``box_priors`` (:func:`~cxrkit.models.fit_box_priors`
    of the training images' boxes), which training fits for it (:func:`uses_box_priors`):
    the model declares what it needs, and training asks, not the model's name.
    """
    if fn is None:
        return lambda f: register_model(f, uses_box_priors=uses_box_priors)
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(
            f"model {name!r} is registered twice ({_REGISTRY[name].__module__} and {fn.__module__})"
        )
    _REGISTRY[name] = fn
    if uses_box_priors:
        _USES_BOX_PRIORS.add(name)
    return fn


def uses_box_priors(name: str) -> bool:
    """Whether registered model ``name`` takes ``box_priors`` fitted from training boxes."""
    if name not in _REGISTRY:
        raise UnknownModelError(
            f"unknown model {quote(name)}; registered: {', '.join(list_models())}"
        )
    return name in _USES_BOX_PRIORS


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    *,
    findings: Sequence[str] = FINDINGS,
    in_chans: int = 1,
    pretrained: bool = False,
    weights: str | Path | None = None,
    meta_features: int = 0,
    chans_policy: str = "fold",
    **kw,
) -> nn.Module:
    """Build a registered model; its logits have shape ``(B, len(findings))``.

    ``pretrained=True`` fetches ImageNet weights by name (needs a network; fails fast
    with :class:`~cxrkit.models.weights.PretrainedWeightsError` offline). ``weights=PATH``
    loads a local ``.pth``/``.safetensors`` file instead, either ImageNet backbone weights
    (timm or torchvision layout; RGB first-conv weights are folded to one channel) or the
    state dict of a cxrkit model of the same architecture (keys ``backbone.*``,
    ``classifier.*``; a classifier of another shape, e.g. other findings, is left at its
    fresh initialisation with a warning). With ``weights`` given, ``pretrained`` is moot.
    """
    if name not in _REGISTRY:
        raise UnknownModelError(
            f"unknown model {quote(name)}; registered: {', '.join(list_models())}"
        )
    stored = {k: kw.pop(k) for k in DERIVED_FIELDS if k in kw}
    findings = _check_findings(findings)
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (grey) or 3 (grey replicated), got {in_chans}")
    if chans_policy not in CHANS_POLICIES:
        raise ValueError(f"chans_policy must be one of {CHANS_POLICIES}, got {chans_policy!r}")
    if int(meta_features) != meta_features or meta_features < 0:
        raise ValueError(f"meta_features must be an int >= 0, got {meta_features!r}")
    _check_plain(kw)

    state, backbone_weights, init = None, None, "random"
    if weights is not None:
        path = Path(weights).expanduser()
        sd = read_state_dict(path)
        if is_cxrkit_state_dict(sd):
            state = sd
        else:
            backbone_weights = path
            del sd
        init = f"file:{path}"
    model = _REGISTRY[name](
        findings=findings,
        in_chans=in_chans,
        meta_features=int(meta_features),
        chans_policy=chans_policy,
        pretrained=bool(pretrained) and weights is None,
        backbone_weights=backbone_weights,
        **kw,
    )
    if state is not None:
        load_model_state(
            model, state, first_conv=model.first_conv, classifier="classifier", source=str(weights)
        )
    if pretrained and weights is None:
        init = f"imagenet:{model.pretrained_source}"
    elif weights is None and not pretrained and "init" in stored:
        init = str(stored["init"])  # a rebuild from a config keeps the original provenance
    config = CXRModelConfig(
        name=name,
        findings=findings,
        in_chans=in_chans,
        meta_features=int(meta_features),
        chans_policy=chans_policy,
        input_size=int(model.input_size),
        mean=float(model.mean),
        std=float(model.std),
        saliency_layer=model.saliency_layer,
        classifier="classifier",
        first_conv=model.first_conv,
        saliency_prefix_tokens=model.saliency_prefix_tokens,
        init=init,
        kwargs=copy.deepcopy(kw),
    )
    _compare_stored(stored, config)
    model.cxr_config = config
    return model


def _check_findings(findings: Sequence[str]) -> tuple[str, ...]:
    if isinstance(findings, str):
        findings = [findings]
    out = tuple(canonical_finding(f, allow_no_finding=False) for f in findings)
    if not out:
        raise ValueError("findings is empty: a model needs at least one output")
    if len(set(out)) != len(out):
        raise ValueError(f"findings repeat a name: {list(findings)}")
    return out


def _check_plain(kw: dict, where: str = "") -> None:
    """Constructor keywords must be plain data, so the config fits in a checkpoint."""
    for key, value in kw.items():
        _check_plain_value(value, f"{where}{key}")


def _check_plain_value(value, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain_value(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"model keyword {where}: dict keys must be str, got {k!r}")
            _check_plain_value(v, f"{where}.{k}")
        return
    raise TypeError(
        f"model keyword {where}={value!r} is not plain data (str, number, bool, "
        "None, list, dict): the model config must be storable in a checkpoint"
    )


def _compare_stored(stored: dict, config: CXRModelConfig) -> None:
    for key, value in stored.items():
        if key == "init":
            continue
        mine = getattr(config, key)
        if value != mine:
            warnings.warn(
                f"{config.name}: stored config says {key}={value!r} but the model "
                f"built now has {key}={mine!r}; using {mine!r}",
                stacklevel=3,
            )

"""Initial weights: local files, ImageNet weights by name, and failing fast offline.

Hospital and cluster machines often have no internet. timm would then retry the
Hugging Face hub for most of a minute before failing with a message about the hub, not
about what to do. cxrkit instead checks the local hub cache, then whether the hub's host
answers at all (a 3 s TCP connect), and otherwise raises :class:`PretrainedWeightsError`
saying how to bring the weights over and pass them as a file.

Files are read without unpickling code (``weights_only=True``; ``.safetensors`` as such).
"""

from __future__ import annotations

import difflib
import logging
import os
import pickle
import socket
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

#: Top-level module names of cxrkit models: a state dict whose keys all start with one
#: of these is a whole cxrkit model, not a bare (timm/torchvision) backbone.
CXRKIT_PREFIXES = ("backbone.", "classifier.", "attention.")
#: Seconds to wait for the weights host before declaring the machine offline.
PROBE_TIMEOUT_S = 3.0


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that cannot be had (offline, missing or mismatched file)."""


def refuse_pretrained(name: str, pretrained: bool, backbone_weights) -> None:
    """For scratch models: there are no ImageNet weights to load."""
    if pretrained or backbone_weights is not None:
        what = "pretrained=True" if pretrained else f"weights={backbone_weights}"
        raise PretrainedWeightsError(
            f"{name} is trained from scratch and has no ImageNet weights ({what}); use "
            "pretrained=False, or weights=PATH with the state dict of a cxrkit model of the "
            f"same architecture (keys starting {', '.join(CXRKIT_PREFIXES)})"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pth``, ``.pt``, ``.bin``).

    Unwraps ``{"model": ...}`` (cxrkit checkpoints), ``{"state_dict": ...}`` and EMA
    wrappers; strips ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: dict = load_file(str(path), device="cpu")
    else:
        try:  # memory-mapped: a big file costs no RAM until its tensors are used
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # legacy (non-zip) files cannot be mapped; retry, explain errors
            obj = _torch_load(path)
    for key in ("model", "state_dict_ema", "model_ema", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PretrainedWeightsError(
            f"{path}: refused: it holds objects other than tensors and plain data ({e})"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise PretrainedWeightsError(f"{path}: not a readable weights file ({e})") from e


def is_cxrkit_state_dict(state: dict) -> bool:
    """True if every key belongs to a cxrkit model's top-level modules."""
    return bool(state) and all(k.startswith(CXRKIT_PREFIXES) for k in state)


def fold_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt first-conv weights ``(O, I, k, k)`` to ``in_chans`` input channels.

    3 -> 1 sums over R, G, B: a grey image fed as three equal channels gives the same
    activations as that grey image fed to the summed kernel (timm's rule). 1 -> 3 repeats
    and divides by 3 for the same reason.
    """
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    raise PretrainedWeightsError(f"cannot adapt a {have}-channel first conv to {in_chans}")


def load_model_state(
    model: nn.Module, state: dict, *, first_conv: str, classifier: str, source: str
) -> None:
    """Load a whole-model state dict into ``model``.

    The first conv is folded if its channel count differs (an RGB file into a grey
    model); classifier tensors of another shape (other findings, other metadata) are
    skipped with a warning, leaving the fresh head. Anything else must match exactly.
    """
    own = model.state_dict()
    state = dict(state)
    conv_key = f"{first_conv}.weight"
    if conv_key in state and conv_key in own and state[conv_key].shape != own[conv_key].shape:
        state[conv_key] = fold_input_conv(state[conv_key], own[conv_key].shape[1])
    skipped = [
        k
        for k in state
        if k.startswith(classifier + ".") and k in own and state[k].shape != own[k].shape
    ]
    for k in skipped:
        del state[k]
    mismatch = summarise_key_mismatch({k: v for k, v in own.items() if k not in skipped}, state)
    if mismatch:
        raise PretrainedWeightsError(
            f"{source} does not fit this model: {mismatch}. Was it saved from another architecture?"
        )
    if skipped:
        warnings.warn(
            f"{source}: classifier shapes differ from this model's ({len(skipped)} "
            "tensors); the classifier keeps its fresh initialisation",
            stacklevel=3,
        )
    model.load_state_dict({**own, **state}, strict=True)


def summarise_key_mismatch(expected, found, *, shown: int = 3) -> str:
    """How a weights file's keys (``found``) differ from a model's (``expected``), in one
    line: the counts, the first few of each kind (the first missing one with the file's
    keys closest to it), the key prefix that would line most of them up (e.g. a CheXNet
    file whose keys start ``densenet121.``) and, when both sides are mappings (a state
    dict, or name -> shape), each key of another shape with both shapes. Never the lists
    themselves: a DenseNet has 600-odd keys, and a dump of both sides is 75 KB. ``""``
    when they agree.

    The one summary of a state dict's mismatch: model loading (:func:`load_model_state`,
    the backbone loaders) and the importer (``cxrkit.importer.formats``) both use it.
    """
    exp_shapes, found_shapes = _shapes(expected), _shapes(found)
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    parts = []
    if missing:
        close = difflib.get_close_matches(missing[0], sorted(found), n=shown, cutoff=0.5)
        first = f"{missing[0]} (closest present: {', '.join(map(repr, close)) or 'none'})"
        parts.append(
            f"{len(missing)} of the model's {len(expected)} keys missing from the file "
            f"(e.g. {', '.join([first, *missing[1:shown]])})"
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} of the file's {len(found)} keys not in the model "
            f"(e.g. {', '.join(unexpected[:shown])})"
        )
    hint = closest_prefix(missing, unexpected)
    if hint:
        parts.append(hint)
    if exp_shapes is not None and found_shapes is not None:
        shapes = [k for k in sorted(expected & found) if exp_shapes[k] != found_shapes[k]]
        parts += [
            f"{k} has shape {found_shapes[k]} in the file, the model expects {exp_shapes[k]}"
            for k in shapes[:shown]
        ]
        if len(shapes) > shown:
            parts.append(f"{len(shapes) - shown} more of another shape")
    return "; ".join(parts)


def _shapes(keys) -> dict[str, tuple] | None:
    """name -> shape of a state dict or of a name -> shape mapping; None for bare keys."""
    if not isinstance(keys, Mapping):
        return None
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in keys.items()}


def closest_prefix(missing, unexpected) -> str | None:
    """The prefix whose removal from (or addition to) the file's keys lines up the most
    of them with the missing ones, said in words; None when no prefix lines up any."""
    missing_set = set(missing)
    votes: dict[tuple[str, str], int] = {}
    for keys, other, action in (
        (unexpected, missing_set, "strip"),
        (missing, set(unexpected), "add"),
    ):
        for key in keys:
            for i, ch in enumerate(key):
                if ch == "." and key[i + 1 :] in other:
                    votes[(action, key[: i + 1])] = votes.get((action, key[: i + 1]), 0) + 1
                    break
    if not votes:
        return None
    (action, prefix), n = max(votes.items(), key=lambda kv: (kv[1], kv[0]))
    verb = "the file's keys start with" if action == "strip" else "the model's keys start with"
    return (
        f"closest prefix: {verb} {prefix!r} where the other side's do not ({action} it "
        f"and {n} of {len(missing)} missing keys line up)"
    )


# --- ImageNet weights by name -------------------------------------------------------

#: The command that saves timm's ImageNet weights of ``{timm_name}`` to a file. cxrkit's
#: torchvision compatibility import runs first: on a CPU torch with the CUDA-only
#: torchvision wheel, ``import timm`` alone fails (``torchvision::nms does not exist``).
DOWNLOAD_COMMAND = (
    'python -c "from cxrkit._compat import ensure_torchvision; ensure_torchvision(); '
    "import timm, torch; torch.save(timm.create_model('{timm_name}', pretrained=True)"
    ".state_dict(), '{timm_name}.pth')\""
)


def offline_message(model_name: str, timm_name: str, why: str) -> str:
    return (
        f"could not download ImageNet weights for {model_name} (timm '{timm_name}'): {why}. "
        "Where you have internet and cxrkit installed, run\n"
        f"    {DOWNLOAD_COMMAND.format(timm_name=timm_name)}\n"
        f"  (or download model.safetensors from https://huggingface.co/timm/{timm_name}), "
        f"copy the file here and pass it as model.weights={timm_name}.pth (a recipe key or "
        "override), or use model.pretrained=false to start from random weights."
    )


def cached_hub_file(hf_hub_id: str | None) -> Path | None:
    """The weights file of ``hf_hub_id`` if the Hugging Face cache already holds it."""
    if not hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None if it answers.

    Honours ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and an ``HTTPS_PROXY`` (then the proxy is
    what must answer). A TCP connect with a :data:`PROBE_TIMEOUT_S` timeout, no request.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = target.hostname or "huggingface.co"
    port = target.port or (443 if target.scheme in ("https", "") else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as e:
        return f"{host}:{port} unreachable ({e.__class__.__name__}: {e}; no network?)"


@contextmanager
def timm_load_report():
    """Collect the keys timm reports missing while loading pretrained weights.

    timm loads non-strictly when it drops the ImageNet classifier, and only *logs* the
    keys it could not fill. A file of another architecture would load nothing, silently;
    this captures the report so the caller can refuse such a file.
    """
    report: dict[str, list[str]] = {"missing": [], "unexpected": [], "unconverted": []}

    def _catch(record: logging.LogRecord) -> bool:
        """Keep timm's key lists (not printed: the caller summarises them)."""
        msg = record.getMessage()
        for kind, start in (("missing", "Missing keys ("), ("unexpected", "Unexpected keys (")):
            if msg.startswith(start):
                report[kind] += msg[len(start) :].split(")")[0].split(", ")
                return False
        if msg.startswith("Unable to convert pretrained"):
            report["unconverted"].append(msg)
        return True

    logger = logging.getLogger("timm.models._builder")
    level = logger.level
    logger.addFilter(_catch)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield report
    finally:
        logger.removeFilter(_catch)
        logger.setLevel(level)

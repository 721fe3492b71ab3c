"""Reading a published model file in its authors' layout, into a cxrkit model's config and state.

Each format is the layout of real files, as their public code writes and reads them:

``chexnet-state-dict``  ``{"state_dict": ..., "epoch": ...}`` of a torchvision DenseNet-121
                        whose classifier is ``Sequential(Linear(1024, 14), Sigmoid())``,
                        keys prefixed by ``module.`` (DataParallel) and/or a wrapper
                        attribute (``densenet121.``), DenseNet key names old (``norm.1``,
                        ``conv.2``, before torchvision 0.4) or new. RGB, ImageNet mean/std,
                        resize 256, ten 224 px crops (arnoweng/CheXNet).
``chexnet-pickled``     ``{"model": <the whole DenseNet object>, "epoch", "best_loss", ...}``
                        (jrzech/reproduce-chexnet); resize 224, centre crop 224. Unpickled
                        only through an allow-list of torch/torchvision classes.
``torchxrayvision``     the state dict of a torchxrayvision DenseNet-121: one channel in
                        [-1024, 1024], 224 px, 18 outputs in that library's pathology order
                        (blank ones have no operating point), ``op_threshs`` optional.
``torchvision``         a torchvision classifier's state dict, 14 outputs in cxrkit's order
                        (``--arch``: densenet121 or resnet50, whose torchvision layout is
                        timm's); ImageNet preprocessing, resize 256, crop 224.
``timm``                a timm classifier's state dict, 14 outputs (``--arch``: any timm-backed
                        registry model); the preprocessing of timm's data config.

Every error names the file and what was expected (:func:`mismatch_message`).
"""

from __future__ import annotations

import difflib
import math
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cxrkit.labels import FINDINGS, UnknownFindingError, canonical_finding
from cxrkit.models.backbones import ARCHS
from cxrkit.models.weights import (
    PretrainedWeightsError,
    read_state_dict,
    summarise_key_mismatch,
)

FORMATS = ("chexnet-state-dict", "chexnet-pickled", "torchxrayvision", "torchvision", "timm")
#: Tried in this order by ``format="auto"`` (torchvision/timm need ``arch``, so come last).
AUTO_ORDER = ("chexnet-pickled", "chexnet-state-dict", "torchxrayvision")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CheXNet's label order (both reproductions), which is also cxrkit's FINDINGS order.
CHEXNET_OUTPUTS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
#: torchxrayvision's output order (its ``datasets.default_pathologies``).
XRV_OUTPUTS = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)
#: torchvision archs whose state-dict layout is timm's (checked: same keys, same outputs).
TORCHVISION_ARCHS = ("densenet121", "resnet50")

#: The classes a pickled CheXNet model may hold (torchvision's DenseNet-121 with a
#: Sequential(Linear, Sigmoid) classifier, optionally inside DataParallel).
PICKLE_ALLOWED = (
    "torchvision.models.densenet.DenseNet",
    "torchvision.models.densenet._DenseBlock",
    "torchvision.models.densenet._DenseLayer",
    "torchvision.models.densenet._Transition",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.parallel.data_parallel.DataParallel",
)


class ImportFormatError(ValueError):
    """A file that does not hold what its format says (the message names file and format)."""


@dataclass
class Published:
    """A published file read in its format: what cxrkit builds, and how its authors ran it."""

    format: str
    path: Path
    arch: str  #: registry arch (timm-backed) of the network
    #: the file's weights in the authors' network layout (torchvision/timm keys, prefixes
    #: and old names resolved): what their code loads
    authors_state: dict[str, torch.Tensor]
    outputs: list[str]  #: the file's output names, in its order ("" blank)
    in_chans: int  #: channels of the first convolution (1 or 3)
    channel_mean: tuple[float, ...]  #: the authors' normalisation of the [0, 1] image
    channel_std: tuple[float, ...]
    input_size: int = 224
    resize: int = 224  #: the authors' resize before the centre crop
    classifier: str = "classifier"  #: the authors' classifier module (its ``.weight``)
    sigmoid_in_model: bool = False  #: the authors' classifier ended in a Sigmoid
    op_thresholds: list[float] | None = None  #: torchxrayvision's operating points
    hflip_trained: bool | None = None
    module: torch.nn.Module | None = None  #: the unpickled model (chexnet-pickled)
    extra: dict = field(default_factory=dict)  #: plain facts of the wrapper (epoch, ...)
    notes: list[str] = field(default_factory=list)

    def mapping(self) -> list[dict]:
        """Per output of the file: its name, the cxrkit finding it is, or why it is dropped."""
        rows = []
        for i, name in enumerate(self.outputs):
            row = {"index": i, "name": name, "finding": None, "dropped": None}
            t = None if self.op_thresholds is None else self.op_thresholds[i]
            if not name:
                row["dropped"] = "blank: no finding trained on this output"
            elif t is not None and math.isnan(t):  # no operating point: a constant 0.5
                row["dropped"] = "no operating point (the library outputs a constant 0.5)"
            else:
                try:
                    row["finding"] = canonical_finding(name, allow_no_finding=False)
                except UnknownFindingError:
                    row["dropped"] = "not one of cxrkit's 14 findings"
            rows.append(row)
        return rows

    def findings(self) -> list[str]:
        """The mapped findings, in cxrkit's order."""
        mapped = {r["finding"] for r in self.mapping() if r["finding"]}
        return [f for f in FINDINGS if f in mapped]


# -- errors ---------------------------------------------------------------------------------
def mismatch_message(source, expected: dict, got: dict, *, what: str) -> str | None:
    """One line about keys/shapes of ``got`` against ``expected`` (name -> shape), or None:
    :func:`cxrkit.models.weights.summarise_key_mismatch` after the file and what it missed."""
    summary = summarise_key_mismatch(expected, got)
    return f"{source}: does not fit {what}: {summary}" if summary else None


def _fail(path: Path, fmt: str, why: str) -> ImportFormatError:
    return ImportFormatError(f"{path}: not a {fmt} file: {why}")


# -- reading ---------------------------------------------------------------------------------
def read_published(
    path: str | Path, fmt: str, *, arch: str | None = None, outputs: list[str] | None = None
) -> Published:
    """Read ``path`` as format ``fmt`` (one of :data:`FORMATS`, or "auto")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if fmt == "auto":
        tried = []
        for f in AUTO_ORDER:
            try:
                return read_published(path, f, arch=arch, outputs=outputs)
            except ImportFormatError as e:
                tried.append(f"{f} ({str(e).split(': ', 2)[-1][:160]})")
        raise ImportFormatError(
            f"{path}: unknown format; tried {'; '.join(tried)}. A torchvision "
            "or timm state dict needs --format torchvision|timm and --arch"
        )
    readers = {
        "chexnet-state-dict": _chexnet_state_dict,
        "chexnet-pickled": _chexnet_pickled,
        "torchxrayvision": _torchxrayvision,
        "torchvision": _library_state_dict,
        "timm": _library_state_dict,
    }
    if fmt not in readers:
        raise ImportFormatError(
            f"{path}: unknown format {fmt!r}; formats: "
            f"{', '.join(FORMATS)} (or auto: tries {', '.join(AUTO_ORDER)})"
        )
    pub = readers[fmt](path, fmt, arch=arch)
    if outputs is not None:
        if len(outputs) != len(pub.outputs):
            raise ImportFormatError(
                f"{path}: {len(outputs)} output names given, the file has "
                f"{len(pub.outputs)} outputs"
            )
        pub.outputs = list(outputs)
    if not pub.findings():
        raise ImportFormatError(
            f"{path}: none of its outputs {pub.outputs} is one of cxrkit's "
            f"findings ({', '.join(FINDINGS)})"
        )
    return pub


def _weights_only_state(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path)
    except PretrainedWeightsError as e:
        raise _fail(path, fmt, str(e).split(": ", 1)[-1]) from e


_OLD_DENSENET = re.compile(r"\.(norm|relu|conv)\.([12])\.")


def densenet_keys(state: dict[str, torch.Tensor], path: Path, fmt: str) -> dict[str, torch.Tensor]:
    """torchvision DenseNet-121 keys: ``module.`` and wrapper prefixes off, old names new."""
    anchor = "features.conv0.weight"
    hits = [k for k in state if k.endswith(anchor)]
    if not hits:
        close = difflib.get_close_matches(anchor, list(state), n=3, cutoff=0.4)
        raise _fail(
            path,
            fmt,
            f"no DenseNet key {anchor!r} (closest present: "
            f"{', '.join(repr(c) for c in close) or 'none'})",
        )
    prefix = hits[0][: -len(anchor)]
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if prefix and k.startswith(prefix.removeprefix("module.")):
            k = k[len(prefix.removeprefix("module.")) :]
        out[_OLD_DENSENET.sub(lambda m: f".{m.group(1)}{m.group(2)}.", k)] = v
    return with_batch_counts(out)


def with_batch_counts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Files saved before torch 0.4 have no BatchNorm ``num_batches_tracked`` (a training
    counter that evaluation never reads): add it as 0 where a layer lacks it."""
    out = dict(state)
    for k in state:
        if k.endswith(".running_mean"):
            out.setdefault(
                k[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long)
            )
    return out


def _classifier(state: dict, path: Path, fmt: str, n_out: int | None) -> tuple[str, bool]:
    """``("classifier", False)`` for a bare Linear, ``("classifier.0", True)`` for
    ``Sequential(Linear, Sigmoid)``; the Linear's shape is checked."""
    for name, sig in (("classifier.0", True), ("classifier", False)):
        w = state.get(f"{name}.weight")
        if w is not None:
            if w.ndim != 2 or w.shape[1] != 1024 or (n_out is not None and w.shape[0] != n_out):
                raise _fail(
                    path,
                    fmt,
                    f"classifier {name}.weight has shape {tuple(w.shape)}, "
                    f"expected ({n_out or 'N'}, 1024)",
                )
            return name, sig
    close = difflib.get_close_matches("classifier.0.weight", list(state), n=3, cutoff=0.4)
    raise _fail(
        path,
        fmt,
        "no classifier key 'classifier.0.weight' or 'classifier.weight' "
        f"(closest present: {', '.join(repr(c) for c in close) or 'none'})",
    )


def _chexnet(path, fmt, state, *, resize: int, module=None, extra=None) -> Published:
    state = densenet_keys(state, path, fmt)
    name, sigmoid = _classifier(state, path, fmt, len(CHEXNET_OUTPUTS))
    conv = state["features.conv0.weight"]
    if conv.shape[1] != 3:
        raise _fail(
            path,
            fmt,
            f"features.conv0.weight has shape {tuple(conv.shape)}, expected "
            "(64, 3, 7, 7) (CheXNet takes RGB)",
        )
    return Published(
        format=fmt,
        path=path,
        arch="densenet121",
        authors_state=state,
        outputs=list(CHEXNET_OUTPUTS),
        in_chans=3,
        channel_mean=IMAGENET_MEAN,
        channel_std=IMAGENET_STD,
        resize=resize,
        classifier=name,
        sigmoid_in_model=True if module is not None else sigmoid,
        hflip_trained=True,
        module=module,
        extra=extra or {},
    )


def _chexnet_state_dict(path: Path, fmt: str, arch=None) -> Published:
    return _chexnet(path, fmt, _weights_only_state(path, fmt), resize=256)


def _chexnet_pickled(path: Path, fmt: str, arch=None) -> Published:
    obj = load_pickled_model(path)
    module = obj.get("model")
    if isinstance(module, torch.nn.parallel.DataParallel):
        module = module.module
    if not isinstance(module, torch.nn.Module):
        raise _fail(
            path,
            fmt,
            f"expected {{'model': <a DenseNet object>, ...}}, its 'model' is "
            f"{type(module).__name__}",
        )
    extra = {k: v for k, v in obj.items() if isinstance(v, (int, float, str))}
    state = module_state(module)
    old = any(_OLD_DENSENET.search(k) for k in state)
    pub = _chexnet(path, fmt, state, resize=224, module=None if old else module, extra=extra)
    classifier = vars(module).get("_modules", {}).get("classifier")
    pub.sigmoid_in_model = isinstance(classifier, torch.nn.Sequential) and isinstance(
        classifier[-1], torch.nn.Sigmoid
    )
    if old:  # today's torchvision classes cannot run a pre-0.4 object: rebuild theirs fresh
        pub.notes.append(
            "the pickled DenseNet has pre-0.4 layer names; the parity reference "
            "is a fresh torchvision densenet121 with its weights"
        )
    return pub


def load_pickled_model(path: Path) -> dict:
    """Unpickle ``{"model": <module>, ...}`` allowing only :data:`PICKLE_ALLOWED` classes.

    The classes the pickle names are listed first, without running anything
    (``get_unsafe_globals_in_checkpoint``); any outside the allow-list refuses the file,
    naming them. Then ``torch.load(weights_only=True)`` with exactly those classes as safe
    globals builds the objects (their own ``__setstate__``; nothing from the file runs).
    A legacy file (``torch.save`` before torch 1.6, not a zip) stores each module class with
    a record that torch's restricted unpickler does not read, so it is refused with the
    one-line re-save (in the user's trusted environment) that makes it a zip file.
    """
    import zipfile

    fmt = "chexnet-pickled"
    if not zipfile.is_zipfile(path):
        return _load_legacy_pickle(path)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:
        raise _fail(path, fmt, f"not a readable torch file ({type(e).__name__}: {e})") from e
    if set(found) - set(PICKLE_ALLOWED):
        raise _refused(path, sorted(set(found) - set(PICKLE_ALLOWED)))
    classes = [_resolve(name) for name in found]
    try:
        with torch.serialization.safe_globals(classes):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL (\S+)", str(e))
        raise _refused(path, [named.group(1) if named else str(e).splitlines()[0]]) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise _fail(path, fmt, f"not a readable torch file ({str(e).splitlines()[0]})") from e
    if not isinstance(obj, dict) or "model" not in obj:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise _fail(path, fmt, f"expected a dict with a 'model' entry, found {got}")
    return obj


#: What a legacy (pre-1.6) pickle of such a model needs besides :data:`PICKLE_ALLOWED`:
#: the tensor rebuild functions torch itself allows in ``weights_only`` loads.
LEGACY_ALLOWED = (
    "collections.OrderedDict",
    "builtins.set",
    "torch.Size",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
)


def _load_legacy_pickle(path: Path) -> dict:
    """A legacy file: torch's own legacy reader (its storage records), with a pickle module
    whose ``find_class`` resolves only :data:`PICKLE_ALLOWED` and :data:`LEGACY_ALLOWED`
    (the standard way to restrict unpickling; any other global stops the load before it
    is looked up, so nothing else can be called). torch's restricted unpickler cannot be
    used: it refuses the class records this format writes for each module."""
    import _compat_pickle
    import types

    allowed = set(PICKLE_ALLOWED) | set(LEGACY_ALLOWED)

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2: Python 2 names
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            dotted = f"{module}.{name}"
            if dotted not in allowed:
                raise pickle.UnpicklingError(f"GLOBAL {dotted} is not allowed")
            return _resolve(dotted)

    restricted = types.ModuleType("cxrkit_restricted_pickle")
    restricted.Unpickler = RestrictedUnpickler
    restricted.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()
    restricted.__version__ = pickle.format_version
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # source-change warnings of old module classes
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL (\S+)", str(e))
        raise _refused(path, [named.group(1) if named else str(e).splitlines()[0]]) from e
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise _fail(
            path, "chexnet-pickled", f"not a readable torch file ({str(e).splitlines()[0]})"
        ) from e
    if not isinstance(obj, dict) or "model" not in obj:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise _fail(path, "chexnet-pickled", f"expected a dict with a 'model' entry, found {got}")
    return obj


def _refused(path: Path, names: list[str]) -> ImportFormatError:
    return ImportFormatError(
        f"{path}: refused: it pickles {len(names)} object type(s) outside the allow-list of a "
        f"torchvision DenseNet: {', '.join(names[:6])}; nothing from the file was run. If you "
        "trust it, load it in its own code and save model.state_dict() (format "
        "chexnet-state-dict)"
    )


def _resolve(dotted: str):
    import importlib

    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def module_state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The persistent parameters and buffers of an unpickled module, read from its
    attribute dicts (no method of the object is called)."""
    d = vars(module)
    skip = d.get("_non_persistent_buffers_set") or set()
    out = {}
    for table, names in (("_parameters", ()), ("_buffers", skip)):
        for k, v in (d.get(table) or {}).items():
            if v is not None and k not in names:
                out[prefix + k] = v.detach()
    for k, child in (d.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state(child, f"{prefix}{k}."))
    return out


def _torchxrayvision(path: Path, fmt: str, arch=None) -> Published:
    state = _weights_only_state(path, fmt)
    op = state.pop("op_threshs", None)
    state = densenet_keys(state, path, fmt)
    name, _ = _classifier(state, path, fmt, None)
    n = state[f"{name}.weight"].shape[0]
    conv = state["features.conv0.weight"]
    if conv.shape[1] != 1:
        raise _fail(
            path,
            fmt,
            f"features.conv0.weight has shape {tuple(conv.shape)}, expected "
            "(64, 1, 7, 7) (torchxrayvision takes one channel)",
        )
    if n != len(XRV_OUTPUTS):
        raise _fail(
            path,
            fmt,
            f"{n} outputs, expected torchxrayvision's {len(XRV_OUTPUTS)} "
            "(pass the output names if the order is another)",
        )
    thresholds = None
    if op is not None:
        if op.shape != (n,):
            raise _fail(path, fmt, f"op_threshs has shape {tuple(op.shape)}, expected ({n},)")
        thresholds = [float(v) for v in op]
    outputs = [
        o if (thresholds is None or not math.isnan(thresholds[i])) else ""
        for i, o in enumerate(XRV_OUTPUTS)
    ]
    # [0, 1] image -> torchxrayvision's [-1024, 1024]: (x - 0.5) / (1 / 2048)
    return Published(
        format=fmt,
        path=path,
        arch="densenet121",
        authors_state=state,
        outputs=outputs,
        in_chans=1,
        channel_mean=(0.5,),
        channel_std=(1 / 2048,),
        resize=224,
        classifier=name,
        op_thresholds=thresholds,
        hflip_trained=False,
    )


def _library_state_dict(path: Path, fmt: str, arch: str | None = None) -> Published:
    allowed = TORCHVISION_ARCHS if fmt == "torchvision" else tuple(ARCHS)
    arch = _registry_arch(arch, allowed, path, fmt)
    state = with_batch_counts(_weights_only_state(path, fmt))
    cfg = library_cfg(arch)
    head = cfg["classifier"]
    w = state.get(f"{head}.weight")
    if w is None:
        close = difflib.get_close_matches(f"{head}.weight", list(state), n=3, cutoff=0.4)
        raise _fail(
            path,
            fmt,
            f"no classifier key {head + '.weight'!r} of a {arch} "
            f"(closest present: {', '.join(repr(c) for c in close) or 'none'})",
        )
    if w.shape[0] != len(FINDINGS):
        raise _fail(
            path,
            fmt,
            f"{head}.weight has shape {tuple(w.shape)}: {w.shape[0]} outputs, "
            f"expected {len(FINDINGS)} (cxrkit's findings, in its order)",
        )
    conv = state.get(f"{cfg['first_conv']}.weight")
    in_chans = int(conv.shape[1]) if conv is not None else 3
    mean, std = cfg["mean"], cfg["std"]
    if in_chans == 1:  # one channel: the average, as timm folds RGB weights
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Published(
        format=fmt,
        path=path,
        arch=arch,
        authors_state=state,
        outputs=list(FINDINGS),
        in_chans=in_chans,
        channel_mean=tuple(mean),
        channel_std=tuple(std),
        input_size=cfg["input_size"],
        resize=cfg["resize"] if fmt == "timm" else 256,
        classifier=head,
    )


def _registry_arch(arch: str | None, allowed, path: Path, fmt: str) -> str:
    by_timm = {a.timm_name: name for name, a in ARCHS.items()}
    name = by_timm.get(arch, arch)
    if name not in allowed:
        raise ImportFormatError(
            f"{path}: format {fmt} needs --arch, one of {', '.join(allowed)}; got {arch!r}"
        )
    return name


def library_cfg(arch: str) -> dict:
    """timm's facts for ``arch``: classifier and first-conv names, mean/std, input size and
    the eval resize its data config gives (``floor(size / crop_pct)``)."""
    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    cfg = timm.models.get_pretrained_cfg(f"{ARCHS[arch].timm_name}.{ARCHS[arch].tag}")
    size = int(cfg.input_size[-1])
    return {
        "classifier": cfg.classifier,
        "first_conv": cfg.first_conv,
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
        "input_size": size,
        "resize": math.floor(size / (cfg.crop_pct or 0.875)),
    }


__all__ = [
    "AUTO_ORDER",
    "CHEXNET_OUTPUTS",
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PICKLE_ALLOWED",
    "TORCHVISION_ARCHS",
    "XRV_OUTPUTS",
    "ImportFormatError",
    "Published",
    "densenet_keys",
    "library_cfg",
    "load_pickled_model",
    "mismatch_message",
    "module_state",
    "read_published",
]

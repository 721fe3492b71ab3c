"""The preprocessing contract: how an image reaches the network, decided once, stored once.

Both stages' settings live here, in one place: :class:`PreprocessSettings` (the cache
stage, also stored in every cache manifest) and :class:`Preprocessing` (the whole
contract, cache stage included). :mod:`cxrkit.data.images` implements the cache stage
and imports its settings from here (the import goes one way).

A :class:`Preprocessing` is built at training (:meth:`Preprocessing.build`) from the
prepared cache, the model's registry config and the ``data`` settings, written into the
checkpoint (``"preprocess"``), and read back by every later stage
(:meth:`Preprocessing.from_checkpoint`). It is the only thing that the training and
evaluation transforms, TenCrop / flip test-time augmentation, inference
(:class:`cxrkit.inference.LoadedModel`), the ONNX export and its torch-free backend,
saliency back-mapping and box supervision consult, so they cannot disagree.

The two stages, in pixels:

1. **cache stage** (``cache``): decode to grey ``uint8``, then
   :func:`cxrkit.data.images.preprocess` (CLAHE, chest crop, resize to ``cache.size``).
2. **tensor stage**: ``/ 255``; training: a random resized crop of the whole cache image
   to ``input_size`` (the whole image when ``data.augment=false``); evaluation: resize to
   ``eval_resize`` then centre-crop ``input_size``; TenCrop: resize to ``tencrop_resize``
   then the four corners, the centre and their mirrors; then ``(x - mean) / std`` and the
   grey channel repeated to ``channels``.

The rules, applied once in :meth:`Preprocessing.build`:

* ``input_size`` is ``data.image_size`` if set, else the model's registry input size
  (``cxr_config.input_size``: 224 for the ImageNet networks, 128 for ``cnn4``), but, for a
  model that takes any size, never larger than the cache side (a default must not
  upsample silently).
* A fixed-size model (a ViT: its position embeddings are built for one grid) takes only its
  own size; any other ``data.image_size`` is a :class:`~cxrkit.config.ConfigError` naming
  the field and the allowed size, raised before the first step.
* An input larger than the cache trains on upsampled images: :class:`UpsampledInputWarning`
  says so and gives the two ways out.
* ``eval_resize`` is ``data.eval_resize`` if set (>= ``input_size``), else it follows the
  input size: ``input_size / data.eval_crop_pct`` (the recipes' 0.875 is CheXNet's 256 ->
  224), or ``input_size`` (no crop) when that is unset too. So ``data.image_size=128`` on a
  224 px recipe evaluates at 146 -> 128, not at 256 -> 128 (the central 25 % of the
  image). A ``data.eval_resize`` set by hand that crops more than the recipe's ratio
  (``1 / eval_crop_pct``, else 256/224) is a :class:`~cxrkit.config.ConfigError` naming
  both keys and the largest value allowed. ``tencrop_resize`` is ``eval_resize`` when that
  leaves a margin to crop from, else CheXNet's ratio ``input_size * 256 / 224`` (ten crops
  of the whole image would be one view).
* ``hflip``: whether training showed mirrored images (``data.augment and data.hflip``);
  mirrored test-time views are only consistent with such a model (see
  :func:`mirrored_tta_note`).

Checkpoints written before the contract had its own format (``"preprocess"`` without
``"format"``, ``eval_resize`` possibly ``None``, no ``tencrop_resize`` or ``hflip``) load
through the same rules those versions used, so they predict exactly as before.

Torch-free on purpose: the ONNX backend reads the same object from the exported file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from cxrkit.config import ConfigError

#: Version of the cache-stage algorithms (:func:`cxrkit.data.images.preprocess`: crop rule,
#: CLAHE parameters, resize). Stored with every :class:`PreprocessSettings`; bump it when
#: their output changes, so old caches are rebuilt and settings from old checkpoints fail
#: loudly, not silently.
PREPROCESS_VERSION = 1

FORMAT = "cxrkit-preprocess/2"
#: CheXNet's evaluation geometry: resize to 256, crop 224.
CHEXNET_RESIZE_RATIO = 256 / 224


class UpsampledInputWarning(UserWarning):
    """The model input is larger than the cached images: training sees upsampled images."""


@dataclass(frozen=True)
class PreprocessSettings:
    """How a decoded X-ray becomes a cached image; stored in manifests and checkpoints."""

    size: int = 256  #: side of the square output, pixels
    clahe: bool = False  #: contrast-limited histogram equalisation after resizing
    crop: bool = False  #: crop to the exposed chest region (see :func:`crop_box`)

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)):
            raise TypeError(f"PreprocessSettings.size must be an int, got {self.size!r}")
        if not 8 <= int(self.size) <= 4096:
            raise ValueError(f"PreprocessSettings.size must be 8..4096 pixels, got {self.size}")
        object.__setattr__(self, "size", int(self.size))
        for name in ("clahe", "crop"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(
                    f"PreprocessSettings.{name} must be True or False, got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, bool(getattr(self, name)))

    def to_dict(self) -> dict:
        """Plain JSON-able dict, with the algorithm version (:data:`PREPROCESS_VERSION`)."""
        return {
            "size": self.size,
            "clahe": self.clahe,
            "crop": self.crop,
            "version": PREPROCESS_VERSION,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSettings:
        """Inverse of :meth:`to_dict`; unknown keys or another algorithm version raise."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"version"})
        if unknown:
            raise ValueError(f"unknown preprocessing setting(s) {unknown}; known: {sorted(known)}")
        version = d.get("version", PREPROCESS_VERSION)
        if version != PREPROCESS_VERSION:
            raise ValueError(
                f"these settings were written by preprocessing version {version}, this "
                f"cxrkit has version {PREPROCESS_VERSION}: images would not match; "
                "rebuild the cache (cxrkit prepare)"
            )
        return cls(**{k: d[k] for k in known if k in d})


@dataclass(frozen=True)
class Preprocessing:
    """How an image reaches the network (pixels; see the module docstring)."""

    cache: PreprocessSettings  #: cache stage: side, CLAHE, chest crop
    input_size: int  #: side of the network input
    eval_resize: int  #: evaluation resize before the centre crop (>= input_size)
    tencrop_resize: int  #: TenCrop resize before the ten crops (>= input_size)
    mean: float  #: normalisation of the [0, 1] image: (x - mean) / std
    std: float
    channels: int  #: 1 (grey) or 3 (grey repeated)
    #: training showed mirrored images (None: unknown, a checkpoint without a config)
    hflip: bool | None = None

    def __post_init__(self):
        for name in ("input_size", "eval_resize", "tencrop_resize", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"preprocessing {name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("eval_resize", "tencrop_resize"):
            if getattr(self, name) < self.input_size:
                raise ValueError(
                    f"preprocessing {name} ({getattr(self, name)}) must be >= "
                    f"input_size ({self.input_size})"
                )
        if self.channels not in (1, 3):
            raise ValueError(f"preprocessing channels must be 1 or 3, got {self.channels}")
        if not float(self.std) > 0:
            raise ValueError(f"preprocessing std must be > 0, got {self.std}")
        object.__setattr__(self, "mean", float(self.mean))
        object.__setattr__(self, "std", float(self.std))

    # -- geometry --------------------------------------------------------------------------
    @property
    def cache_size(self) -> int:
        return self.cache.size

    @property
    def crop_offset(self) -> int:
        """Pixels cut from the top and the left of the ``eval_resize`` image by the crop."""
        return (self.eval_resize - self.input_size) // 2

    @property
    def train_scale(self) -> float:
        """Input pixels per cache pixel in training without augmentation (whole image)."""
        return self.input_size / self.cache.size

    def cache_box_to_train_input(self, x: float, y: float, w: float, h: float):
        """A box in cache pixels -> ``(x0, y0, x1, y1)`` in training-input pixels (float)."""
        s = self.train_scale
        return x * s, y * s, (x + w) * s, (y + h) * s

    # -- stored form -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain data (JSON, YAML, ``torch.load(weights_only=True)``)."""
        return {
            "format": FORMAT,
            "cache": self.cache.to_dict(),
            "input_size": self.input_size,
            "eval_resize": self.eval_resize,
            "tencrop_resize": self.tencrop_resize,
            "mean": self.mean,
            "std": self.std,
            "channels": self.channels,
            "hflip": self.hflip,
        }

    def record(self) -> dict:
        """:meth:`to_dict` plus a sentence saying what a caller must feed (ONNX sidecar)."""
        return {
            **self.to_dict(),
            "input": (
                "grey uint8 image, cache stage applied (cache), then /255, resize to "
                "eval_resize, centre crop input_size, (x - mean) / std, repeated to `channels`"
            ),
        }

    @classmethod
    def from_dict(cls, d: dict, *, hflip: bool | None = None) -> Preprocessing:
        """Inverse of :meth:`to_dict`; also reads the pre-contract form (see module doc).

        ``hflip``: for the old form, which did not record it (the caller reads the
        training config).
        """
        if not isinstance(d, dict) or "cache" not in d or "input_size" not in d:
            raise ValueError(f"not a preprocessing record: {d!r}"[:300])
        fmt = d.get("format")
        if fmt not in (None, FORMAT):
            raise ValueError(
                f"preprocessing format {fmt!r} is newer than this cxrkit ({FORMAT}); upgrade cxrkit"
            )
        size = int(d["input_size"])
        eval_resize = int(d.get("eval_resize") or size)
        tencrop = d.get("tencrop_resize")
        if tencrop is None:  # the rule every checkpoint before the contract was evaluated with
            tencrop = legacy_tencrop_resize(size, d.get("eval_resize"))
        return cls(
            cache=PreprocessSettings.from_dict(d["cache"]),
            input_size=size,
            eval_resize=eval_resize,
            tencrop_resize=int(tencrop),
            mean=float(d["mean"]),
            std=float(d["std"]),
            channels=int(d.get("channels", 1)),
            hflip=d["hflip"] if "hflip" in d else hflip,
        )

    @classmethod
    def from_checkpoint(cls, ck: dict, where: Any = "checkpoint") -> Preprocessing:
        """The contract of a loaded checkpoint dict (new or pre-contract form)."""
        if "preprocess" not in ck:
            raise ValueError(f"{where}: no 'preprocess' entry; not a trained cxrkit model")
        data = (ck.get("config") or {}).get("data") or {}
        hflip = None
        if "hflip" in data:
            hflip = bool(data["hflip"]) and bool(data.get("augment", True))
        try:
            return cls.from_dict(ck["preprocess"], hflip=hflip)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{where}: bad preprocessing record ({e})") from e

    # -- the one place the rules live ------------------------------------------------------
    @classmethod
    def for_run(cls, cfg, cache: PreprocessSettings, model) -> Preprocessing:
        """The contract of a training run: ``cfg`` a :class:`~cxrkit.config.RunConfig`,
        ``cache`` the prepared cache's settings, ``model`` the built registry model (its
        ``cxr_config`` gives the default size and mean/std; ``fixed_input_size`` says
        whether it takes one size only)."""
        mc, dc = model.cxr_config, cfg.data
        return cls.build(
            cache=cache,
            model_name=mc.name,
            model_input_size=mc.input_size,
            mean=mc.mean,
            std=mc.std,
            channels=cfg.model.in_chans,
            fixed_input_size=bool(getattr(model, "fixed_input_size", False)),
            image_size=dc.image_size,
            eval_resize=dc.eval_resize,
            eval_crop_pct=dc.eval_crop_pct,
            hflip=bool(dc.augment and dc.hflip),
        )

    @classmethod
    def build(
        cls,
        *,
        cache: PreprocessSettings,
        model_name: str,
        model_input_size: int,
        mean: float,
        std: float,
        channels: int,
        fixed_input_size: bool = False,
        image_size: int | None = None,
        eval_resize: int | None = None,
        eval_crop_pct: float | None = None,
        hflip: bool = False,
    ) -> Preprocessing:
        """The contract of a new run (the rules in the module docstring).

        ``image_size`` / ``eval_resize``: ``data.image_size`` / ``data.eval_resize`` (None:
        the defaults). Raises :class:`~cxrkit.config.ConfigError` for a size the model
        cannot take; warns :class:`UpsampledInputWarning` for an input larger than the
        cache.
        """
        for field_name, value in (
            ("data.image_size", image_size),
            ("data.eval_resize", eval_resize),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(
                    f"{field_name} must be a positive whole number of pixels, got {value!r}"
                )
        native = int(model_input_size)
        if fixed_input_size:
            if image_size is not None and image_size != native:
                raise ConfigError(
                    f"data.image_size={image_size}: {model_name} takes only {native} px "
                    f"inputs (allowed: {native}; its position embeddings are built for one "
                    f"patch grid). Leave data.image_size unset or set it to {native}, or "
                    f"build the model for another side with model.kwargs.img_size=N."
                )
            size = native
        else:
            size = image_size if image_size is not None else min(native, cache.size)
        if eval_resize is not None and eval_resize < size:
            raise ConfigError(
                f"data.eval_resize={eval_resize} is smaller than the model "
                f"input ({size} px): the centre crop needs eval_resize >= "
                f"{size}"
            )
        if size > cache.size:
            source = (
                f"data.image_size={size}"
                if image_size is not None
                else f"{model_name}'s fixed input size {size}"
            )
            warnings.warn(
                f"{source} is larger than the cached images ({cache.size} px): the model "
                f"will train and predict on images upsampled {size / cache.size:.2g}x, with "
                f"no more detail than {cache.size} px. Prepare a cache of at least {size} px "
                f"(cxrkit prepare ... --size {size})"
                + ("" if fixed_input_size else f" or set data.image_size={cache.size}")
                + ".",
                UpsampledInputWarning,
                stacklevel=2,
            )
        resize = eval_resize_for(size, eval_resize, eval_crop_pct)
        return cls(
            cache=cache,
            input_size=size,
            eval_resize=resize,
            tencrop_resize=resize if resize > size else chexnet_resize(size),
            mean=float(mean),
            std=float(std),
            channels=int(channels),
            hflip=bool(hflip),
        )


def eval_resize_for(size: int, eval_resize: int | None, crop_pct: float | None) -> int:
    """The evaluation resize of an input of ``size`` px (the rule in the module docstring):
    derived from ``crop_pct`` unless ``eval_resize`` is set, which may crop at most the
    recipe's ratio."""
    derived = int(round(size / crop_pct)) if crop_pct else size
    if eval_resize is None:
        return derived
    largest = int(round(size / crop_pct)) if crop_pct else chexnet_resize(size)
    if eval_resize > largest:
        kept = (size / eval_resize) ** 2
        raise ConfigError(
            f"data.eval_resize={eval_resize} with a {size} px input: evaluation would see "
            f"the central {kept:.0%} of each image while training saw all of it (the "
            f"recipe's ratio allows at most {largest} px"
            + (f" with data.eval_crop_pct={crop_pct:g}" if crop_pct else ", CheXNet's 256/224")
            + f"). Leave data.eval_resize unset (it follows the input size: {derived} px) or "
            f"set data.eval_resize={largest} or less."
        )
    return eval_resize


def chexnet_resize(size: int) -> int:
    """The resize CheXNet's 256 -> 224 geometry gives an input of ``size`` px."""
    return int(round(size * CHEXNET_RESIZE_RATIO))


def legacy_tencrop_resize(size: int, eval_resize: int | None) -> int:
    """TenCrop's resize for a pre-contract checkpoint: ``eval_resize`` or 256/224 of the input."""
    return int(eval_resize) if eval_resize else chexnet_resize(size)


#: Test-time augmentations that show the model mirrored images.
MIRRORED_TTA = ("flip", "tencrop")


def mirrored_tta_note(p: Preprocessing, tta: str) -> str | None:
    """Why ``tta`` does not fit a model trained without flips (None: it fits).

    cxrkit *warns* rather than refuses: the mirrored views are a valid, if usually worse,
    estimate that the user asked for by name, and refusing would strand thresholds that
    were already chosen with that TTA. The note goes into the warning and into
    ``metrics.json`` (``tta_mirror``), so the choice is on record.
    """
    if tta not in MIRRORED_TTA or p.hflip is not False:
        return None
    views = "the mirrored image" if tta == "flip" else "five of its ten crops are mirrored"
    return (
        f"test-time augmentation '{tta}' shows the model mirrored radiographs ({views}), "
        "but it was trained without flips (data.hflip=false): a mirrored chest (heart on "
        "the right) is an image it never saw, which usually lowers AUROC. Use tta none, "
        "or train with data.hflip=true."
    )


__all__ = [
    "CHEXNET_RESIZE_RATIO",
    "FORMAT",
    "MIRRORED_TTA",
    "PREPROCESS_VERSION",
    "PreprocessSettings",
    "Preprocessing",
    "UpsampledInputWarning",
    "chexnet_resize",
    "legacy_tencrop_resize",
    "mirrored_tta_note",
]

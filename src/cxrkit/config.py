"""Run settings as typed dataclasses: YAML in, YAML out, ``key=value`` overrides.

A recipe in ``configs/`` is a YAML file with three sections, ``data``, ``model`` and
``train``, plus ``out`` (the run folder). Unknown keys are errors that name the key and
the section, so a typo never silently falls back to a default. The resolved config is
saved in every run folder and inside every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from cxrkit.messages import quote, quote_list

AMP_MODES = ("auto", "bf16", "fp16", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("plateau", "cosine", "none")
LOSSES = ("bce", "focal")


class ConfigError(ValueError):
    """A recipe or override that names an unknown key or an invalid value."""


@dataclass
class DataConfig:
    prepared: str = "demo/prepared"      #: folder written by ``cxrkit prepare``
    split_file: str | None = None        #: a split CSV; default: the prepared folder's split.csv
    findings: str | list[str] = "all"    #: "all", one finding (binary task) or a list
    batch_size: int = 32
    eval_batch_size: int | None = None   #: default: 2 x batch_size
    workers: int = 0                     #: DataLoader processes (the cache is fast; 0 is fine)
    #: model input side; default: the model's registry size (cxr_config.input_size), at most
    #: the cache's side (see cxrkit.preprocessing)
    image_size: int | None = None
    eval_resize: int | None = None       #: eval resize before centre crop (CheXNet: 256 -> 224)
    augment: bool = True                 #: random crop/affine/intensity jitter in training
    hflip: bool = False                  #: horizontal flips (off: the heart is on the left)
    box_fold: float = 0.0                #: share of box patients moved test -> train (see splits)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.box_fold < 1.0:
            raise ConfigError(f"data.box_fold must be in [0, 1), got {self.box_fold}")


@dataclass
class ModelConfig:
    name: str = "cnn4"                   #: a name from ``cxrkit.models.list_models()``
    pretrained: bool = False             #: ImageNet weights by name (needs a network)
    weights: str | None = None           #: or a local weights file
    in_chans: int = 1                    #: 1 (grey) or 3 (grey replicated)
    freeze: str = "none"                 #: none | classifier-only | first-N | no-train
    metadata: bool = False               #: fuse age, sex and view with the image features
    box_supervision: float = 0.0         #: weight of the box attention loss (gaussian_attention)
    kwargs: dict = field(default_factory=dict)  #: passed to the model's constructor

    def __post_init__(self):
        if self.in_chans not in (1, 3):
            raise ConfigError(f"model.in_chans must be 1 or 3, got {self.in_chans}")


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9                #: SGD only
    scheduler: str = "plateau"           #: CheXNet: x0.1 when val loss plateaus
    plateau_factor: float = 0.1
    plateau_patience: int = 1
    warmup_epochs: float = 0.0           #: cosine only
    loss: str = "bce"
    pos_weight: bool = True              #: weight positives by negatives/positives per finding
    focal_gamma: float = 2.0
    amp: str = "auto"                    #: auto: bf16 on CPU and CUDA (fp16 + scaler if no bf16)
    channels_last: bool = True
    compile: bool = False                #: torch.compile the model
    grad_accum: int = 1                  #: batches per optimiser step
    grad_clip: float | None = None
    patience: int = 5                    #: early stopping: epochs without a better val AUROC
    seed: int = 0
    max_steps_per_epoch: int | None = None  #: cap (for smoke tests and quick looks)
    threads: int | None = None           #: torch CPU threads; default: all cores
    log_every: int = 20                  #: steps between TensorBoard/CSV step logs

    def __post_init__(self):
        checks = (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("loss", LOSSES),
                  ("amp", AMP_MODES))
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name} must be one of {list(allowed)}, "
                                  f"got {quote(getattr(self, name))}")
        if self.epochs < 0 or self.grad_accum < 1 or self.lr <= 0:
            raise ConfigError("train.epochs must be >= 0, train.grad_accum >= 1, train.lr > 0")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/run"                #: the run folder

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d or {})
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = set(d) - set(sections) - {"out"}
        if unknown:
            raise ConfigError(f"unknown section(s) {quote_list(sorted(unknown))}; expected "
                              "data, model, train, out")
        kwargs = {}
        for name, klass in sections.items():
            sub = d.get(name) or {}
            if not isinstance(sub, dict):
                raise ConfigError(f"section {quote(name)} must be a mapping, got {quote(sub)}")
            allowed = {f.name for f in fields(klass)}
            bad = set(sub) - allowed
            if bad:
                raise ConfigError(f"unknown key(s) {quote_list(sorted(bad))} in section {name!r}; "
                                  f"known: {sorted(allowed)}")
            types = {f.name: str(f.type) for f in fields(klass)}
            sub = {k: _coerce(v, types[k], f"{name}.{k}") for k, v in sub.items()}
            try:
                kwargs[name] = klass(**sub)
            except TypeError as e:
                raise ConfigError(f"section {name!r}: {e}") from e
        if "out" in d:
            kwargs["out"] = str(d["out"])
        return cls(**kwargs)


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (d or {}).items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {quote(item)} is not key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        value = _parse_value(raw)
        parts = key.strip().split(".")
        target = d
        for p in parts[:-1]:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {quote(item)}: {quote(p)} is not a section")
        target[parts[-1]] = value
    return d


def _coerce(value, type_name: str, where: str):
    """Numbers written as strings (``1e-3`` in YAML 1.1) become numbers; else unchanged."""
    if isinstance(value, str) and type_name.split(" |")[0] in ("float", "int"):
        try:
            return float(value) if type_name.startswith("float") else int(value)
        except ValueError:
            raise ConfigError(f"{where}: {quote(value)} is not a number") from None
    return value


def _parse_value(raw: str):
    """YAML scalar, except that ``1e-4`` is a float (YAML 1.1 wants ``1.0e-4``)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe (or defaults when ``path`` is None) and apply overrides."""
    d = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config not found: {path}")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping with data/model/train sections")
    return RunConfig.from_dict(apply_overrides(d, overrides or []))

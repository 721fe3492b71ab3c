"""Run settings as typed dataclasses: YAML in, YAML out, ``key=value`` overrides.

A recipe in ``configs/`` is a YAML file with three sections, ``data``, ``model`` and
``train``, plus ``out`` (the run folder). Unknown keys are errors that name the key and
the section, so a typo never silently falls back to a default. The resolved config is
saved in every run folder and inside every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from cxrkit.artefacts import write_text
from cxrkit.labels import UnknownFindingError, resolve_findings
from cxrkit.messages import quote, quote_list, shorten

AMP_MODES = ("auto", "bf16", "fp16", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("plateau", "cosine", "none")
LOSSES = ("bce", "focal")


class ConfigError(ValueError):
    """A recipe or override that names an unknown key or an invalid value."""


class _Checked:
    """Type and range checks shared by the sections (run from ``__post_init__``).

    The field types are the annotations; a YAML value of another type (``epochs: 1.5``,
    ``augment: "no"``) is refused here, naming the key, instead of failing later inside
    a loop or a library with a ``TypeError``.
    """

    SECTION = ""

    def _check_types(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # a mixin: self is a dataclass
            value = getattr(self, f.name)
            allowed = [t.strip() for t in str(f.type).split("|")]
            if not any(_is_a(value, t) for t in allowed):
                said = [a if a != "float" else "a finite float" for a in allowed]
                raise ConfigError(
                    f"{self.SECTION}.{f.name} must be {' or '.join(said)}, "
                    f"got {quote(value)} ({type(value).__name__})"
                )

    def _at_least(self, name: str, low, *, above: bool = False) -> None:
        value = getattr(self, name)
        if value is not None and (value <= low if above else value < low):
            raise ConfigError(
                f"{self.SECTION}.{name} must be {'>' if above else '>='} {low}, got {quote(value)}"
            )


def _is_a(value, type_name: str) -> bool:
    if type_name == "None":
        return value is None
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":  # finite: a NaN lr or an infinite box_fold is no setting
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if type_name == "str":
        return isinstance(value, str)
    if type_name == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if type_name == "dict":
        return isinstance(value, dict)
    raise AssertionError(f"no check for field type {type_name!r}")  # a new field type


@dataclass
class DataConfig(_Checked):
    SECTION = "data"

    prepared: str = "demo/prepared"  #: folder written by ``cxrkit prepare``
    split_file: str | None = None  #: a split CSV; default: the prepared folder's split.csv
    findings: str | list[str] = "all"  #: "all", one finding (binary task) or a list of the 14
    batch_size: int = 32  #: training images per optimiser step (all ranks)
    eval_batch_size: int | None = None  #: default: 2 x batch_size
    workers: int = 0  #: DataLoader processes (the cache is fast; 0 is fine)
    #: model input side; default: the model's registry size (cxr_config.input_size), at most
    #: the cache's side (see cxrkit.data.preprocessing)
    image_size: int | None = None
    #: eval resize before the centre crop; default: follows the input size through
    #: eval_crop_pct (no crop when that is unset too). Refused when it would crop more
    #: than the recipe's ratio (see cxrkit.preprocessing)
    eval_resize: int | None = None
    #: share of the eval resize the centre crop keeps (timm's crop_pct; CheXNet's 224 of
    #: 256 is 0.875): eval_resize = input size / eval_crop_pct
    eval_crop_pct: float | None = None
    augment: bool = True  #: random crop/affine/intensity jitter in training
    hflip: bool = False  #: horizontal flips (off: the heart is on the left)
    box_fold: float = 0.0  #: share of box patients moved test -> train (see splits)

    def __post_init__(self):
        self._check_types()
        for name in ("batch_size", "eval_batch_size", "image_size", "eval_resize"):
            self._at_least(name, 1)
        self._at_least("workers", 0)
        if self.eval_crop_pct is not None and not 0.0 < self.eval_crop_pct <= 1.0:
            raise ConfigError(f"data.eval_crop_pct must be in (0, 1], got {self.eval_crop_pct}")
        if not 0.0 <= self.box_fold < 1.0:
            raise ConfigError(f"data.box_fold must be in [0, 1), got {self.box_fold}")
        try:
            resolve_findings(self.findings)
        except UnknownFindingError as e:
            raise ConfigError(f"data.findings: {e}") from None


@dataclass
class ModelConfig(_Checked):
    SECTION = "model"

    name: str = "cnn4"  #: a name from ``cxrkit.models.list_models()``
    pretrained: bool = False  #: ImageNet weights by name (needs a network)
    weights: str | None = None  #: or a local weights file
    in_chans: int = 1  #: 1 (grey) or 3 (grey replicated)
    freeze: str = "none"  #: none | classifier-only | first-N | no-train
    metadata: bool = False  #: fuse age, sex and view with the image features
    box_supervision: float = 0.0  #: weight of the box attention loss (gaussian_attention)
    kwargs: dict = field(default_factory=dict)  #: passed to the model's constructor

    def __post_init__(self):
        self._check_types()
        self._at_least("box_supervision", 0.0)
        if self.in_chans not in (1, 3):
            raise ConfigError(f"model.in_chans must be 1 or 3, got {self.in_chans}")


@dataclass
class TrainConfig(_Checked):
    SECTION = "train"

    epochs: int = 10  #: passes over the training split (raise to extend a run)
    optimizer: str = "adam"  #: adam | adamw | sgd
    lr: float = 1e-3  #: initial learning rate
    weight_decay: float = 0.0  #: L2 (adam, sgd) or decoupled (adamw) weight decay
    momentum: float = 0.9  #: SGD only
    scheduler: str = "plateau"  #: plateau (CheXNet: x0.1 when val loss stalls) | cosine | none
    plateau_factor: float = 0.1  #: plateau: learning-rate factor per plateau
    plateau_patience: int = 1  #: plateau: epochs without a lower val loss before it acts
    warmup_epochs: float = 0.0  #: cosine only: linear warm-up, in epochs
    loss: str = "bce"  #: bce | focal
    pos_weight: bool = True  #: weight positives by negatives/positives per finding
    focal_gamma: float = 2.0  #: focal loss only: the focusing exponent
    amp: str = "auto"  #: auto: bf16 on CPU and CUDA (fp16 + scaler if no bf16)
    channels_last: bool = True  #: NHWC memory layout (faster convolutions on CPU and GPU)
    compile: bool = False  #: torch.compile the model
    grad_accum: int = 1  #: batches per optimiser step
    grad_clip: float | None = None  #: clip the gradient norm to this (None: no clipping)
    patience: int = 5  #: early stopping: epochs without a better val AUROC
    seed: int = 0  #: seeds weights, shuffling and augmentation per epoch
    max_steps_per_epoch: int | None = None  #: cap (for smoke tests and quick looks)
    threads: int | None = None  #: torch CPU threads; default: all cores
    log_every: int = 20  #: steps between TensorBoard/CSV step logs
    #: fit the out-of-distribution record into best.pt at the end (cxrkit.ood); false skips
    #: it (predict and serve then give no OOD score; `cxrkit ood RUN` adds it later)
    ood_record: bool = True

    def __post_init__(self):
        self._check_types()
        checks = (
            ("optimizer", OPTIMIZERS),
            ("scheduler", SCHEDULERS),
            ("loss", LOSSES),
            ("amp", AMP_MODES),
        )
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"train.{name} must be one of {list(allowed)}, got {quote(getattr(self, name))}"
                )
        for name in ("epochs", "grad_accum", "max_steps_per_epoch", "threads", "log_every"):
            self._at_least(name, 1)
        for name in (
            "weight_decay",
            "warmup_epochs",
            "focal_gamma",
            "patience",
            "plateau_patience",
            "seed",
            "momentum",
        ):
            self._at_least(name, 0)
        for name in ("lr", "plateau_factor", "grad_clip"):
            self._at_least(name, 0, above=True)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)  #: what is read
    model: ModelConfig = field(default_factory=ModelConfig)  #: what is trained
    train: TrainConfig = field(default_factory=TrainConfig)  #: how it is trained
    out: str = "runs/run"  #: the run folder

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            write_text(text, path)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d or {})
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = set(d) - set(sections) - {"out"}
        if unknown:
            raise ConfigError(
                f"unknown section(s) {quote_list(sorted(unknown))}; expected "
                "data, model, train, out"
            )
        kwargs = {}
        for name, klass in sections.items():
            sub = d.get(name) or {}
            if not isinstance(sub, dict):
                raise ConfigError(f"section {quote(name)} must be a mapping, got {quote(sub)}")
            allowed = {f.name for f in fields(klass)}
            bad = set(sub) - allowed
            if bad:
                raise ConfigError(
                    f"unknown key(s) {quote_list(sorted(bad))} in section {name!r}; "
                    f"known: {sorted(allowed)}"
                )
            types = {f.name: str(f.type) for f in fields(klass)}
            sub = {k: _coerce(v, types[k], f"{name}.{k}") for k, v in sub.items()}
            try:
                kwargs[name] = klass(**sub)
            except TypeError as e:
                raise ConfigError(f"section {name!r}: {e}") from e
        if "out" in d:
            kwargs["out"] = str(d["out"])
        return cls(**kwargs)


#: Keys that may differ when a run is resumed: they change neither the model nor what it
#: has learnt so far. ``train.epochs`` extends (or shortens) a run -- with
#: ``scheduler=cosine`` the remaining schedule is stretched to the new length;
#: ``train.patience`` changes when it stops; ``out`` may differ when the folder was moved.
#: Any other difference is refused (``cxrkit train`` names the keys; ``--fresh`` restarts).
RESUMABLE: tuple[str, ...] = (
    "train.epochs",
    "train.patience",
    "data.workers",
    "train.threads",
    "train.log_every",
    "train.ood_record",
    "out",
)


def config_differences(old: dict, new: dict, *, allowed=RESUMABLE) -> list[tuple]:
    """``(key, old value, new value)`` for each dotted key that differs outside ``allowed``.

    ``old`` and ``new`` are :meth:`RunConfig.to_dict` dicts (``old`` as a checkpoint
    recorded it); a key missing from ``old`` counts as its default.
    """
    base = RunConfig().to_dict()

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key in ("data", "model", "train"):
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(base), flat(base)
    a.update(flat(old or {}))
    b.update(flat(new or {}))
    return [
        (k, a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if k not in allowed and a.get(k) != b.get(k)
    ]


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (d or {}).items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {quote(item)} is not key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        value = _parse_value(raw, f"override {quote(item)}")
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


#: Most values a YAML document may hold once its aliases are expanded. A recipe holds about
#: a hundred; 380 bytes of nested anchors (a "billion laughs") expand to billions, which
#: any later walk over the value (a check, an error message) would spend minutes and
#: gigabytes on.
MAX_YAML_VALUES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases expand past
    :data:`MAX_YAML_VALUES` values, or refer to themselves, before constructing it."""

    def construct_document(self, node):
        _expanded_size(node, {}, set())
        return super().construct_document(node)


def _expanded_size(node, sizes: dict, open_: set) -> int:
    """Values under ``node`` with every alias expanded (each shared node counted once per
    use, computed once); raises :class:`ConfigError` past :data:`MAX_YAML_VALUES`."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise ConfigError("a YAML alias refers to the value that contains it")
    open_.add(key)
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(v, sizes, open_) for v in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(
            _expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value
        )
    open_.discard(key)
    if n > MAX_YAML_VALUES:
        raise ConfigError(
            f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values "
            "(nested anchors, a 'billion laughs'?)"
        )
    sizes[key] = n
    return n


def load_yaml(text: str, where: str):
    """Parse YAML ``text`` safely and within bounds; errors name ``where`` (one line).

    ``yaml.safe_load`` builds no objects but plain data; on top, aliases may not expand
    past :data:`MAX_YAML_VALUES` values, and nesting too deep for the parser is refused.
    """
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: plain data only
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        why = shorten(" ".join(str(e).split()), 300)  # one line
        raise ConfigError(f"{where}: not valid YAML ({why})") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None


def _parse_value(raw: str, where: str):
    """YAML scalar, except that ``1e-4`` is a float (YAML 1.1 wants ``1.0e-4``)."""
    value = load_yaml(raw, where)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe (or defaults when ``path`` is None) and apply overrides."""
    d: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{path}: not a readable UTF-8 text file ({getattr(e, 'strerror', None) or e})"
            ) from None
        d = load_yaml(text, str(path)) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping with data/model/train sections")
    return RunConfig.from_dict(apply_overrides(d, overrides or []))


def field_docs(klass) -> dict[str, str]:
    """Each field's ``#:`` comment in the source of ``klass`` (the field's documentation).

    Sphinx's two forms: ``#:`` after the field on its line, or ``#:`` lines just above it.
    The comments are the documentation readers of this file see; reading them back keeps
    ``--show-config`` and the code from drifting apart (a test checks every field has one).
    """
    import inspect
    import io
    import tokenize

    docs, names = {}, {f.name for f in fields(klass)}
    source = inspect.getsource(klass)
    field_name: str | None = None
    above: list[str] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
            field_name = tok.string
            if above:
                docs[field_name] = " ".join(above)
        elif tok.type == tokenize.COMMENT and tok.string.startswith("#:"):
            text = tok.string[2:].strip()
            if field_name:  # on the field's own line
                docs[field_name] = text
            else:  # a line above the next field
                above.append(text)
        elif tok.type == tokenize.NEWLINE:  # the end of a statement: nothing carries over
            field_name, above = None, []
    return docs


def describe_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, each value followed by its field's meaning.

    What ``cxrkit train CONFIG --show-config`` prints; the YAML part reads back as the
    same config.
    """

    def scalar(value) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        return text.removesuffix("...").strip()

    top = field_docs(RunConfig)
    lines = [
        "# the resolved config; change any key with section.key=value (e.g. data.image_size=224)"
    ]
    for name, klass in {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}.items():
        lines.append(f"{name}:  # {top[name]}")
        docs = field_docs(klass)
        for f in fields(klass):
            entry = f"{f.name}: {scalar(getattr(getattr(cfg, name), f.name))}"
            lines.append(f"  {entry:<38} # {docs.get(f.name, '')}")
    lines.append(f"{'out: ' + scalar(cfg.out):<40} # {top['out']}")
    return "\n".join(lines) + "\n"

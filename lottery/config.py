"""The experiment schema: dataclasses, YAML loading, dotted overrides, validation, hashing."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lottery.steps import is_step_string

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
REQUIRED = "???"


class ConfigError(ValueError):
    """A bad config. Names the dotted key and the file it came from."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        self.key, self.source = key, source
        where = f" (in {source})" if source else ""
        prefix = f"config key '{key}': " if key else "config: "
        super().__init__(prefix + message + where)


@dataclass
class ModelConfig:
    name: str = REQUIRED
    init: str = "kaiming_normal"
    width: int = 0  # 0 means the architecture's standard width
    batchnorm: bool = True


@dataclass
class DataConfig:
    name: str = REQUIRED
    path: Optional[str] = None
    root: str = field(default_factory=lambda: os.environ.get("DATA_ROOT", "./data"))
    download: bool = False
    subset: Optional[int] = None
    val_size: int = 0
    augment: Optional[bool] = None  # None: the dataset's standard choice
    test_subset: Optional[int] = None


@dataclass
class TrainConfig:
    steps: str = "1ep"
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: list[str] = field(default_factory=list)
    gamma: float = 0.1
    warmup: str = "0it"
    schedule: str = "step"
    eval_every: str = "1ep"
    eval_batch_size: int = 1000
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    cudnn_benchmark: str = "auto"
    compile: bool = False
    progress: str = "auto"


@dataclass
class PruneConfig:
    method: str = "magnitude"
    fraction: float = 0.2
    scope: str = "global"
    layer_rates: dict[str, float] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    rounds: Optional[int] = None  # None: the method's default (SynFlow 100, others 1)
    schedule: str = "exponential"
    samples_per_class: int = 10
    grasp_temperature: float = 200.0
    isometry: bool = False
    isometry_steps: int = 100
    density: Optional[float] = None


@dataclass
class TicketConfig:
    levels: int = 5
    rewind_step: str = "0it"
    checkpoint_every: str = "1ep"


@dataclass
class TrackConfig:
    enabled: bool = True
    uri: Optional[str] = None
    experiment: Optional[str] = None


@dataclass
class SearchConfig:
    objective: str = "accuracy"
    target_density: Optional[float] = None
    pruner: str = "median"
    multi_objective: bool = False
    heartbeat_seconds: int = 60
    max_retries: int = 2
    startup_trials: int = 5  # finished trials before the median pruner starts pruning


@dataclass
class RunConfig:
    root: str = "./runs"


@dataclass
class Config:
    exp: str = "default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    ticket: TicketConfig = field(default_factory=TicketConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Keys that do not change what is computed stay out of the run hash, so that
# e.g. adding levels or moving the data folder continues the same run.
UNHASHED_KEYS = (
    "exp", "seed", "track", "search", "run", "data.root", "data.download",
    "ticket.levels", "ticket.checkpoint_every", "train.device", "train.progress",
)

CHOICES = {
    "train.optimizer": ("sgd", "adam", "adamw"),
    "train.schedule": ("step", "cosine", "constant"),
    "train.amp": ("auto", "off", "bf16", "fp16"),
    "train.channels_last": ("auto", "on", "off"),
    "train.cudnn_benchmark": ("auto", "on", "off"),
    "train.progress": ("auto", "on", "off"),
    "prune.scope": ("global", "layerwise"),
    "prune.schedule": ("exponential", "linear"),
    "search.objective": ("accuracy", "steps_to_dense"),
    "search.pruner": ("median", "hyperband", "none"),
}
STEP_KEYS = ("train.steps", "train.warmup", "train.eval_every", "ticket.rewind_step", "ticket.checkpoint_every")
PRUNE_METHODS = ("magnitude", "random", "snip", "grasp", "synflow", "coreset")


def _type_name(kind) -> str:
    return getattr(kind, "__name__", str(kind))


def _coerce(value: Any, kind, key: str, source: str | None):
    """Check `value` against the annotation `kind`, allowing int -> float."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {value!r}", key, source)
        return [_coerce(item, args[0], key, source) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key, source)
        return {str(name): _coerce(item, args[1], f"{key}.{name}", source) for name, item in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith(STEP_KEYS):
        return str(value) + "it" if isinstance(value, int) else value
    if kind is str and isinstance(value, int) and not isinstance(value, bool) and "milestones" in key:
        return f"{value}it"
    if isinstance(value, bool) and kind is str and "off" in CHOICES.get(key, ()):
        return "on" if value else "off"  # YAML reads on/off as booleans
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"expected {_type_name(kind)}, got a bool ({value!r})", key, source)
    if not isinstance(value, kind):
        raise ConfigError(f"expected {_type_name(kind)}, got {type(value).__name__} ({value!r})", key, source)
    return value


def _merge(node, values: dict, prefix: str, source: str | None):
    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping, got {values!r}", prefix.rstrip(".") or None, source)
    hints = typing.get_type_hints(type(node))
    for name, value in values.items():
        key = prefix + str(name)
        if name not in hints:
            valid = ", ".join(prefix + n for n in hints)
            raise ConfigError(f"unknown key; valid keys here: {valid}", key, source)
        current = getattr(node, name)
        if dataclasses.is_dataclass(current):
            _merge(current, value, key + ".", source)
        else:
            setattr(node, name, _coerce(value, hints[name], key, source))


def set_dotted(config: Config, key: str, value: Any, source: str | None = None) -> None:
    """Set one dotted key, e.g. ("train.lr", 0.05)."""
    *parents, leaf = key.split(".")
    tree: dict = {leaf: value}
    for parent in reversed(parents):
        tree = {parent: tree}
    _merge(config, tree, "", source)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value", None, "command line")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def experiment_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    return EXPERIMENTS_DIR / f"{name_or_path}.yaml"


def load_config(name_or_path: str | None = None, overrides: list[str] | tuple = (), validate_names: bool = True) -> Config:
    """Load experiments/NAME.yaml (or a path), apply dotted overrides, validate."""
    config = Config()
    if name_or_path is not None:
        path = experiment_path(name_or_path)
        if not path.is_file():
            known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
            raise ConfigError(f"experiment file {path} not found; known experiments: {', '.join(known)}", None, str(path))
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"invalid YAML: {error}", None, str(path)) from None
        config.exp = path.stem
        _merge(config, values, "", str(path))
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value, "command line")
    validate(config, str(experiment_path(name_or_path)) if name_or_path else None, validate_names)
    return config


def validate(config: Config, source: str | None = None, check_names: bool = True) -> None:
    """Range, choice and name checks. Raises ConfigError naming the key."""
    flat = flatten(config)
    for key, value in flat.items():
        if value == REQUIRED:
            raise ConfigError("is required but missing", key, source)
    for key in STEP_KEYS:
        if not is_step_string(flat[key]):
            raise ConfigError(f"bad step string {flat[key]!r}: use forms like '160ep', '500it' or '2ep100it'", key, source)
    for index, milestone in enumerate(config.train.milestones):
        if not is_step_string(milestone):
            raise ConfigError(f"bad step string {milestone!r}", f"train.milestones[{index}]", source)
    for key, options in CHOICES.items():
        if flat[key] not in options:
            raise ConfigError(f"{flat[key]!r} is not one of {', '.join(options)}", key, source)
    if config.prune.method not in PRUNE_METHODS:
        raise ConfigError(f"unknown method {config.prune.method!r}; valid: {', '.join(PRUNE_METHODS)}", "prune.method", source)
    if not 0.0 < config.prune.fraction < 1.0:
        raise ConfigError(f"must be in (0, 1), got {config.prune.fraction}", "prune.fraction", source)
    for name, rate in config.prune.layer_rates.items():
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"must be in [0, 1), got {rate}", f"prune.layer_rates.{name}", source)
    if config.prune.density is not None and not 0.0 < config.prune.density <= 1.0:
        raise ConfigError(f"must be in (0, 1], got {config.prune.density}", "prune.density", source)
    if config.search.target_density is not None and not 0.0 < config.search.target_density <= 1.0:
        raise ConfigError(f"must be in (0, 1], got {config.search.target_density}", "search.target_density", source)
    _check_positive(config, source)
    if check_names:
        _check_registry_names(config, source)


def _check_positive(config: Config, source: str | None) -> None:
    checks = {
        "train.batch_size": config.train.batch_size > 0,
        "train.eval_batch_size": config.train.eval_batch_size > 0,
        "train.lr": config.train.lr > 0,
        "train.momentum": 0 <= config.train.momentum < 1,
        "train.weight_decay": config.train.weight_decay >= 0,
        "train.gamma": config.train.gamma > 0,
        "data.val_size": config.data.val_size >= 0,
        "data.subset": config.data.subset is None or config.data.subset > 0,
        "ticket.levels": config.ticket.levels >= 0,
        "prune.rounds": config.prune.rounds is None or config.prune.rounds >= 1,
        "prune.samples_per_class": config.prune.samples_per_class >= 1,
        "seed": config.seed >= 0,
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"out of range: {flatten(config)[key]!r}", key, source)


def _check_registry_names(config: Config, source: str | None) -> None:
    from lottery.data import dataset_names, is_dataset_name
    from lottery.models import is_model_name, model_names

    if not is_model_name(config.model.name):
        raise ConfigError(f"unknown model {config.model.name!r}; valid: {model_names()}", "model.name", source)
    if not is_dataset_name(config.data.name):
        raise ConfigError(f"unknown dataset {config.data.name!r}; valid: {', '.join(dataset_names())}", "data.name", source)
    if config.data.name == "npz" and not config.data.path:
        raise ConfigError("the npz dataset needs data.path (a .npz file)", "data.path", source)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def flatten(config: Config | dict, prefix: str = "") -> dict[str, Any]:
    tree = to_dict(config) if dataclasses.is_dataclass(config) else config
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = prefix + name
        if isinstance(value, dict) and dataclasses.is_dataclass(_field_type(key)):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _field_type(key: str):
    node: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            return None
        node = hints[part]
    return node


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_yaml(text: str, source: str | None = None) -> Config:
    config = Config()
    _merge(config, yaml.safe_load(text) or {}, "", source)
    validate(config, source)
    return config


def config_hash(config: Config) -> str:
    """A stable 8-character hash over everything that changes the computation."""
    flat = flatten(config)
    kept = {k: v for k, v in flat.items() if not any(k == u or k.startswith(u + ".") for u in UNHASHED_KEYS)}
    canonical = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def replace(config: Config, **dotted) -> Config:
    """A copy with dotted keys changed, e.g. replace(c, **{"train.lr": 0.1})."""
    result = copy.deepcopy(config)
    for key, value in dotted.items():
        set_dotted(result, key, value)
    return result

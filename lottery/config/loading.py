"""From YAML files and dotted overrides to a Config: type checks, where each value came from, the run hash."""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import site
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from lottery.config.schema import CHOICES, STEP_KEYS, Config
from lottery.config.tree import to_dict
from lottery.config.validation import validate
from lottery.errors import ConfigError

COMMAND_LINE = "command line"
# Where `--exp NAME` (and `--space NAME`) look, in order: the environment variable, ./experiments (./configs/search),
# the source checkout, and where a wheel installs them (<prefix>/share/lottery/, see pyproject.toml).
SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent


def _type_name(kind) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind)


def _as_float(value: Any, key: str, source: str | None) -> float:
    """Every form Python's float() takes ('5e-4' too, which YAML 1.1 reads as a string); finite only."""
    if isinstance(value, bool):
        raise ConfigError(f"expected float, got a bool ({value!r})", key, source)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"expected float, got str ({value!r})", key, source) from None
    if not isinstance(value, (int, float)):
        raise ConfigError(f"expected float, got {type(value).__name__} ({value!r})", key, source)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", key, source)
    return float(value)


def _coerce(value: Any, kind, key: str, source: str | None):
    """Check `value` against the annotation `kind`, allowing int -> float and YAML's on/off booleans."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _coerce(value, inner[0], key, source)
    if value is None:
        raise ConfigError(f"expected {_type_name(kind)}, got no value (null)", key, source)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {value!r}", key, source)
        return [_coerce(item, args[0], key, source) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key, source)
        return {str(name): _coerce(item, args[1], f"{key}.{name}", source) for name, item in value.items()}
    if kind is float:
        return _as_float(value, key, source)
    if kind is str and isinstance(value, int) and not isinstance(value, bool) and (
            key.endswith(STEP_KEYS) or "milestones" in key):
        return f"{value}it"  # a bare number of steps means iterations
    if kind is str and isinstance(value, int) and not isinstance(value, bool) and key == "run.pack":
        return str(value)
    if isinstance(value, bool) and kind is str and "off" in CHOICES.get(key, ()):
        return "on" if value else "off"  # YAML reads on/off as booleans
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"expected {_type_name(kind)}, got a bool ({value!r})", key, source)
    if not isinstance(value, kind):
        raise ConfigError(f"expected {_type_name(kind)}, got {type(value).__name__} ({value!r})", key, source)
    return value


def _merge(config: Config, node, values, prefix: str, source: str | None) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping, got {values!r}", prefix.rstrip(".") or None, source)
    hints = typing.get_type_hints(type(node))
    for name, value in values.items():
        key = prefix + str(name)
        if name not in hints or str(name).startswith("_"):
            valid = ", ".join(prefix + n for n in hints if not n.startswith("_"))
            raise ConfigError(f"unknown key; valid keys here: {valid}", key, source)
        current = getattr(node, name)
        if dataclasses.is_dataclass(current):
            _merge(config, current, value, key + ".", source)
        else:
            setattr(node, name, _coerce(value, hints[name], key, source))
            if source is not None:
                config._sources[key] = source


def set_dotted(config: Config, key: str, value: Any, source: str | None = None) -> None:
    """Set one dotted key, e.g. ("train.lr", 0.05)."""
    parts = key.split(".")
    if not key or any(not part.strip() for part in parts):
        raise ConfigError("a dotted key needs a name between every pair of dots, e.g. train.lr", key, source)
    tree: dict = {parts[-1]: value}
    for parent in reversed(parts[:-1]):
        tree = {parent: tree}
    _merge(config, config, tree, "", source)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value", None, COMMAND_LINE)
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _installed_dirs(name: str) -> list[Path]:
    return [Path(prefix) / "share" / "lottery" / name for prefix in (sys.prefix, site.getuserbase())]


def shipped_dirs(variable: str, local: str, installed: str) -> list[Path]:
    """Existing folders to look up shipped files in, in order, without repeats."""
    candidates = [os.environ.get(variable), local, SOURCE_ROOT / local, *_installed_dirs(installed)]
    seen, found = set(), []
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if path.is_dir() and path.resolve() not in seen:
            seen.add(path.resolve())
            found.append(path)
    return found


def experiment_dirs() -> list[Path]:
    return shipped_dirs("LOTTERY_EXPERIMENTS", "experiments", "experiments")


def known_experiments() -> list[str]:
    return sorted({path.stem for folder in experiment_dirs() for path in folder.glob("*.yaml")})


def space_dirs() -> list[Path]:
    return shipped_dirs("LOTTERY_SEARCH_SPACES", "configs/search", "search_spaces")


def known_spaces() -> list[str]:
    return sorted({path.stem for folder in space_dirs() for path in folder.glob("*.yaml")})


def _lookup(name_or_path: str, folders: list[Path], default: str) -> Path:
    """A YAML path as given, or NAME.yaml from the first folder that has it."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists() or os.sep in name_or_path:
        return candidate
    for folder in folders:
        if (folder / f"{name_or_path}.yaml").is_file():
            return folder / f"{name_or_path}.yaml"
    return Path(default) / f"{name_or_path}.yaml"


def space_path(name_or_path: str) -> Path:
    """A search space file as given, or NAME looked up in space_dirs()."""
    return _lookup(name_or_path, space_dirs(), "configs/search")


def experiment_path(name_or_path: str) -> Path:
    """An experiment file as given, or NAME looked up in experiment_dirs()."""
    return _lookup(name_or_path, experiment_dirs(), "experiments")


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans several)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def _not_found(name_or_path: str, path: Path) -> str:
    shipped = f"shipped experiments: {', '.join(known_experiments()) or 'none'}"
    if path.is_dir():
        return f"experiment {path} is a folder, not a YAML file; {shipped}"
    if path == Path("experiments") / f"{name_or_path}.yaml":  # a bare name that no folder holds
        folders = ", ".join(f"{folder}/" for folder in experiment_dirs()) or "no experiments/ folder"
        return f"experiment {name_or_path!r} not found (looked in {folders}); {shipped}"
    return f"experiment file {path} not found; {shipped}"


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content; ConfigError naming the file for binary, non-UTF-8 or malformed YAML."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the {what}: {error.strerror}", None, str(path)) from None
    if b"\x00" in data:
        raise ConfigError(f"the {what} is a binary file, not YAML", None, str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"the {what} is not UTF-8 text ({error.reason} at byte {error.start})",
                          None, str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {yaml_problem(error)}", None, str(path)) from None


def merge_file(config: Config, path: Path) -> None:
    values = read_yaml(path, "experiment file")
    _merge(config, config, values if values is not None else {}, "", str(path))


def load_config(name_or_path: str | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Load experiments/NAME.yaml (or a path), apply dotted overrides, validate the schema's rules."""
    config = Config()
    if name_or_path is not None:
        path = experiment_path(name_or_path)
        if not path.is_file():
            raise ConfigError(_not_found(name_or_path, path))
        config.exp = path.stem
        merge_file(config, path)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value, COMMAND_LINE)
    validate(config, str(experiment_path(name_or_path)) if name_or_path else None)
    return config


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_dict(values: dict, source: str | None = None) -> Config:
    """A validated Config from a plain tree (to_dict's output)."""
    config = Config()
    _merge(config, config, values, "", source)
    validate(config, source)
    return config


def from_yaml(text: str, source: str | None = None) -> Config:
    config = Config()
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {yaml_problem(error)}", None, source) from None
    _merge(config, config, values or {}, "", source)
    validate(config, source)
    return config


def replace(config: Config, **dotted) -> Config:
    """A copy with dotted keys changed, e.g. replace(c, **{"train.lr": 0.1})."""
    result = copy.deepcopy(config)
    for key, value in dotted.items():
        set_dotted(result, key, value)
    return result

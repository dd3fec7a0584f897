"""Search spaces: YAML over dotted config keys, parsed and checked before any trial runs.

A space file looks like

    run: ticket                # or baselines: prune at init to baseline.density and train once
    search: {multi_objective: true}          # search.* settings (optional)
    fixed: {baseline.density: 0.05}          # keys every trial shares (optional)
    params:
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
      ticket.levels: {type: int, low: 2, high: 6}
      baseline.method: {type: categorical, choices: [synflow, snip]}
      baseline.rounds: {type: int, low: 1, high: 100, log: true, when: {baseline.method: synflow}}

This module knows no Optuna: `sample` takes a `suggest(param)` function, so the search engine
(lottery/search.py) plugs in `trial.suggest_*` and tests can plug in anything.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lottery.config import Config, ConfigError, flatten, parse_override, set_dotted, source_of, validate
from lottery.config.loading import known_spaces, read_yaml, space_path
from lottery.search.objective import check_selection
from lottery.workflows.preflight import check_names

PARAM_TYPES = ("int", "float", "categorical")
RUNNERS = ("ticket", "baselines")
SPACE_KEYS = ("params", "fixed", "search", "run", "description")
PARAM_FIELDS = {
    "int": {"type", "low", "high", "log", "step", "when"},
    "float": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
# Searching these would change where or how the search itself runs, not what a trial computes.
UNSEARCHABLE_SECTIONS = ("exp", "run", "track", "search")


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()
    when: dict = field(default_factory=dict)  # condition key -> allowed values (tuple)

    def boundary_values(self) -> list:
        """The values whose validity implies every sampled value's: range ends, or each choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def is_active(self, config: Config) -> bool:
        flat = flatten(config)
        return all(flat[key] in allowed for key, allowed in self.when.items())


@dataclass
class SearchSpace:
    path: Path
    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    runner: str = "ticket"
    description: str = ""

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def source(self) -> str:
        """Where its values come from, as errors say it."""
        return f"search space {self.path}"

    def param(self, key: str) -> Optional[Param]:
        return next((param for param in self.params if param.key == key), None)


def load_space(path: str | Path) -> SearchSpace:
    """Read and check the file's structure (types, ranges, keys). Raises ConfigError naming file and key."""
    given = str(path)
    path = space_path(given)
    source = f"search space {path}"
    if not path.is_file():
        what = f"search space {given!r}" if Path(given).suffix not in (".yaml", ".yml") and len(Path(given).parts) == 1 \
            else f"search space file {path}"
        raise ConfigError(f"{what} not found; shipped spaces (--space NAME): {', '.join(known_spaces()) or 'none'}")
    raw = read_yaml(path, "search space")
    if not isinstance(raw, dict):
        raise ConfigError("a search space must be a mapping with a 'params' section", None, source)
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(SPACE_KEYS)}", None, source)
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError("'params' must be a non-empty mapping of dotted config keys", "params", source)
    runner = raw.get("run", "ticket")
    if runner not in RUNNERS:
        raise ConfigError(f"{runner!r} is not one of {', '.join(RUNNERS)}", "run", source)
    fixed = _fixed_values(raw, source)
    all_keys = {str(key) for key in params_raw}
    params: list[Param] = []
    for key, spec in params_raw.items():
        params.append(_parse_param(str(key), spec, params, all_keys, source))
    return SearchSpace(path, params, fixed, runner, str(raw.get("description", "")))


def _fixed_values(raw: dict, source: str) -> dict[str, Any]:
    fixed: dict[str, Any] = {}
    search = raw.get("search") or {}
    if not isinstance(search, dict):
        raise ConfigError("expected a mapping of search.* settings", "search", source)
    fixed.update({f"search.{name}": value for name, value in search.items()})
    explicit = raw.get("fixed") or {}
    if not isinstance(explicit, dict):
        raise ConfigError("expected a mapping of dotted config keys", "fixed", source)
    fixed.update({str(key): value for key, value in explicit.items()})
    return fixed


def _number(value, key: str, name: str, source: str, integer: bool):
    wanted = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"search space: '{name}' must be {wanted}, got {value!r}", key, source)
    if not math.isfinite(value):
        raise ConfigError(f"search space: '{name}' must be finite, got {value!r}", key, source)
    return value


def _parse_param(key: str, spec, earlier: list[Param], all_keys: set[str], source: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"search space: expected a mapping with 'type', got {spec!r}", key, source)
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"search space: unknown param type {kind!r}; valid: {', '.join(PARAM_TYPES)}", key, source)
    extra = sorted(set(spec) - PARAM_FIELDS[kind])
    if extra:
        raise ConfigError(f"search space: unknown field(s) {', '.join(extra)} for a {kind} param; valid: "
                          f"{', '.join(sorted(PARAM_FIELDS[kind]))}", key, source)
    when = _parse_when(key, spec.get("when"), earlier, all_keys, source)
    if kind == "categorical":
        return Param(key, kind, choices=_parse_choices(key, spec.get("choices"), source), when=when)
    integer = kind == "int"
    for name in ("low", "high"):
        if name not in spec:
            raise ConfigError(f"search space: a {kind} param needs '{name}'", key, source)
    low = _number(spec["low"], key, "low", source, integer)
    high = _number(spec["high"], key, "high", source, integer)
    if low >= high:
        raise ConfigError(f"search space: empty or inverted range: low={low!r} must be below high={high!r} "
                          "(for a single value use 'fixed')", key, source)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"search space: 'log' must be true or false, got {log!r}", key, source)
    if log and low <= 0:
        raise ConfigError(f"search space: a log range needs low > 0, got low={low!r}", key, source)
    step = spec.get("step")
    if step is not None:
        step = _number(step, key, "step", source, integer)
        if step <= 0:
            raise ConfigError(f"search space: 'step' must be positive, got {step!r}", key, source)
        if log:
            raise ConfigError("search space: 'step' and 'log' cannot be combined", key, source)
    return Param(key, kind, low=low if integer else float(low), high=high if integer else float(high),
                 log=log, step=step, when=when)


def _parse_choices(key: str, choices, source: str) -> tuple:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"search space: 'choices' must be a non-empty list, got {choices!r}", key, source)
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise ConfigError(f"search space: choices must be numbers, strings, booleans or null; got {choice!r}",
                              key, source)
    if len({json.dumps(choice) for choice in choices}) != len(choices):
        raise ConfigError(f"search space: duplicate choices in {choices!r}", key, source)
    return tuple(choices)


def _parse_when(key: str, when, earlier: list[Param], all_keys: set[str], source: str) -> dict:
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"search space: 'when' must map config keys to a value or a list of values, got {when!r}",
                          key, source)
    conditions = {}
    for condition_key, allowed in when.items():
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        condition_key = str(condition_key)
        if condition_key == key:
            raise ConfigError("search space: a param cannot depend on itself", key, source)
        parent = next((param for param in earlier if param.key == condition_key), None)
        if parent is None and condition_key in all_keys:
            raise ConfigError(f"search space: condition on {condition_key} must come after it", key, source)
        if parent is not None and parent.kind == "categorical":
            never = [value for value in allowed if value not in parent.choices]
            if never:
                raise ConfigError(f"search space: condition {condition_key} in {list(allowed)}: {never} is never "
                                  f"sampled (choices: {list(parent.choices)})", key, source)
        conditions[condition_key] = allowed
    return conditions


def check_space(space: SearchSpace, config: Config) -> None:
    """Check every key and every range end against the config schema, before any trial runs."""
    source = space.source
    known = flatten(Config())
    param_keys = {param.key for param in space.params}
    for key in [*space.fixed, *param_keys]:
        _check_known(key, known, source)
    for param in space.params:
        if param.key.split(".")[0] in UNSEARCHABLE_SECTIONS:
            raise ConfigError("search space: run.*, track.* and search.* configure the search itself and "
                              "cannot be searched", param.key, source)
        for condition_key in param.when:
            if condition_key not in known:
                raise ConfigError(f"search space: 'when' names an unknown config key {condition_key!r}",
                                  param.key, source)
        for value in param.boundary_values():
            trial = copy.deepcopy(config)
            try:
                set_dotted(trial, param.key, value)
                validate(trial)
                check_names(trial)
            except ConfigError as error:
                raise ConfigError(f"search space: value {value!r} is invalid: {_reason(error, param.key)}",
                                  param.key, source) from None
    if space.runner == "baselines" and config.baseline.density is None:
        raise ConfigError("search space: run: baselines needs a fixed baseline.density (in 'fixed' or the "
                          "experiment)", "baseline.density", source)
    if space.runner == "baselines" and config.search.objective == "steps_to_dense":
        raise ConfigError("search space: the steps_to_dense objective needs the dense level of run: ticket",
                          "search.objective", source)


def _check_known(key: str, known: dict, source: str) -> None:
    if key in known:
        return
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else "`lottery ticket --help` lists every key"
    raise ConfigError(f"search space: unknown config key; {hint}", key, source)


def _reason(error: ConfigError, key: str) -> str:
    """The error's message, without repeating the key when it is the param's own."""
    text = str(error)
    prefix = f"config key '{error.key}': "
    if error.key == key and text.startswith(prefix):
        return text[len(prefix):]
    return text


def search_config(base: Config, space: SearchSpace, overrides: list[str] | tuple = ()) -> Config:
    """The config every trial starts from: experiment, then the space's fixed keys, then the command line."""
    config = copy.deepcopy(base)
    source = space.source
    overridden = {parse_override(text)[0] for text in overrides}
    known = flatten(Config())
    for key, value in space.fixed.items():
        _check_known(key, known, source)
        if key not in overridden:
            set_dotted(config, key, value, source)
    validate(config, source)  # the schema's ranges, search.* included
    check_selection(config, source_of(config, "data.val_size"))
    check_space(space, config)
    return config


Suggest = Callable[[Param], Any]


def sample(space: SearchSpace, config: Config, suggest: Suggest) -> tuple[Config, dict[str, Any]]:
    """Draw one trial: each active param in file order via `suggest`. Returns (trial config, sampled values).

    A param is active when its `when` conditions hold on the config with the values drawn so far,
    so `baseline.rounds` can follow `baseline.method`.
    """
    trial = copy.deepcopy(config)
    values: dict[str, Any] = {}
    for param in space.params:
        if not param.is_active(trial):
            continue
        value = suggest(param)
        set_dotted(trial, param.key, value, space.source)
        values[param.key] = value
    validate(trial, space.source)
    return trial, values


def apply_values(config: Config, values: dict[str, Any], source: str = "search trial") -> Config:
    """A copy of `config` with the given dotted values set (e.g. a stored trial's params)."""
    trial = copy.deepcopy(config)
    for key, value in values.items():
        set_dotted(trial, key, value, source)
    validate(trial, source)
    return trial

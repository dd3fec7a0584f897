"""The config as a tree: plain dicts, flat dotted keys, where values came from, and the run hash."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any

from lottery.config.schema import UNHASHED_KEYS, Config


def to_dict(config: Config) -> dict:
    tree = dataclasses.asdict(config)
    tree.pop("_sources", None)
    return tree


def flatten(config: Config | dict, prefix: str = "") -> dict[str, Any]:
    tree = to_dict(config) if isinstance(config, Config) else config
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


def source_of(config: Config, key: str, default: str | None = None) -> str | None:
    """Where `key`'s value came from: the command line, a file, or `default` for a schema default."""
    while key:
        if key in config._sources:
            return config._sources[key]
        key = key.rpartition(".")[0]
    return default


def config_hash(config: Config) -> str:
    """A stable 8-character hash over everything that changes what the run directory's stages compute."""
    kept = {k: v for k, v in flatten(config).items()
            if not any(k == u or k.startswith(u + ".") for u in UNHASHED_KEYS)}
    canonical = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]

"""Help text generated from the config schema and the registries, so it cannot go stale."""
from __future__ import annotations

import dataclasses
import textwrap
import types
import typing

from lottery.config import Config, known_experiments
from lottery.config.schema import CHOICES

def _type_name(kind) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping to {_type_name(args[1])}"
    return kind.__name__ if isinstance(kind, type) else str(kind)


def registry_choices() -> dict[str, str]:
    from lottery.data import dataset_names
    from lottery.models import INITIALIZERS, model_names
    from lottery.pruning.methods import METHODS

    return {"model.name": model_names(), "model.init": ", ".join(INITIALIZERS),
            "data.name": ", ".join(dataset_names()), "baseline.method": ", ".join(METHODS)}


def config_reference(width: int = 100) -> str:
    """Every config key by section: type, default and valid choices."""
    registries = registry_choices()
    lines = ["config keys (override any with key=value; defaults shown are the schema's, an experiment may set others):"]
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name.startswith("_"):
            continue
        value = getattr(defaults, section.name)
        if not dataclasses.is_dataclass(value):
            lines.append(f"  {section.name}: {type(value).__name__} (default {value!r})")
            continue
        lines.append(f"  {section.name}:")
        hints = typing.get_type_hints(type(value))
        for key in dataclasses.fields(value):
            dotted = f"{section.name}.{key.name}"
            default = getattr(value, key.name)
            shown = "required" if default == "???" else f"default {default!r}"
            text = f"{dotted}: {_type_name(hints[key.name])}, {shown}"
            choices = CHOICES.get(dotted) and ", ".join(CHOICES[dotted]) or registries.get(dotted)
            if choices:
                text += f"; one of {choices}"
            lines.extend(textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="        "))
    return "\n".join(lines)


def experiments_line() -> str:
    return f"shipped experiments (--exp NAME, or a path to a YAML file): {', '.join(known_experiments())}"

"""Training lengths as strings: "160ep", "500it", "2ep100it" <-> iteration counts."""
from __future__ import annotations

import re

_STEP_PATTERN = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")


class StepError(ValueError):
    """A step string that cannot be parsed."""


def is_step_string(text) -> bool:
    if isinstance(text, bool):
        return False
    if isinstance(text, int):
        return text >= 0
    if not isinstance(text, str) or not text:
        return False
    return _STEP_PATTERN.match(text.strip()) is not None


def parse_steps(text, iterations_per_epoch: int) -> int:
    """Convert "2ep100it" (or a plain int) to a number of iterations."""
    if isinstance(text, bool):
        raise StepError(f"not a step count: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise StepError(f"step count must be >= 0, got {text}")
        return text
    if not isinstance(text, str):
        raise StepError(f"not a step count: {text!r}")
    match = _STEP_PATTERN.match(text.strip())
    if not text.strip() or match is None:
        raise StepError(f"bad step string {text!r}: use forms like '160ep', '500it' or '2ep100it'")
    epochs, iterations = (int(group) if group else 0 for group in match.groups())
    if epochs and iterations_per_epoch <= 0:
        raise StepError("iterations per epoch must be positive to convert epochs")
    return epochs * iterations_per_epoch + iterations


def format_steps(iterations: int, iterations_per_epoch: int) -> str:
    """Inverse of parse_steps: 1100 with 500 per epoch -> "2ep100it"."""
    if iterations < 0:
        raise StepError(f"step count must be >= 0, got {iterations}")
    if iterations_per_epoch <= 0:
        return f"{iterations}it"
    epochs, rest = divmod(iterations, iterations_per_epoch)
    if epochs and rest:
        return f"{epochs}ep{rest}it"
    if epochs:
        return f"{epochs}ep"
    return f"{rest}it"

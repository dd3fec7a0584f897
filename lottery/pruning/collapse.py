"""Layer collapse: a prunable layer with no weight left cuts the network.

Every prune reports its collapsed layers; `critical_compression` bisects for the largest log10
compression that still has none (also importable from prune.py).
"""
from __future__ import annotations

import logging
import math
from typing import Callable

from torch import nn

from lottery.pruning.mask import Mask

logger = logging.getLogger(__name__)


def compression_of(density: float) -> float:
    """log10(1 / density): compression c means density 10^-c (the SynFlow convention)."""
    return math.inf if density <= 0 else -math.log10(density)


def density_of(compression: float) -> float:
    return 10.0 ** (-compression)


def report_collapse(mask: Mask, context: str = "") -> list[str]:
    """The collapsed layers of `mask`, logged as a warning when there are any."""
    collapsed = mask.collapsed()
    if collapsed:
        logger.warning("layer collapse%s at density %.3g: no weights left in %s",
                       f" ({context})" if context else "", mask.density(), ", ".join(collapsed))
    return collapsed


def bisect_critical(collapses: Callable[[float], bool], low: float, high: float, tol: float) -> float:
    """Largest compression in [low, high] with no collapse, to within `tol`, assuming monotone collapse."""
    if tol <= 0 or high < low:
        raise ValueError(f"need low <= high and tol > 0, got low={low}, high={high}, tol={tol}")
    if collapses(low):
        raise ValueError(f"the network already collapses at the lowest compression searched ({low})")
    if not collapses(high):
        logger.info("no collapse up to compression %.3g (the top of the search range)", high)
        return high
    while high - low > tol:
        middle = (low + high) / 2
        if collapses(middle):
            high = middle
        else:
            low = middle
    return low


def critical_compression(model: nn.Module, method, batches=None, input_shape=None, low: float = 0.0,
                         high: float = 8.0, tol: float = 0.05, **kw) -> float:
    """The largest log10 compression at which `method` (pruning from scratch each time) collapses no layer.

    Bisection to `tol`; keyword arguments go to `prune` (scope, rounds, schedule, mask, seed, ...).
    """
    from lottery.pruning.prune import prune  # prune.py imports this module

    def collapses(compression: float) -> bool:
        return bool(prune(model, method, compression=compression, batches=batches, input_shape=input_shape,
                          **kw).collapsed)

    critical = bisect_critical(collapses, low, high, tol)
    logger.info("critical compression of %s: %.3f", getattr(method, "__name__", method), critical)
    return critical

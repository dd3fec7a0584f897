"""Layer collapse and compression: a prunable layer with no weight left cuts the network.

Compression c means density 10^-c (SynFlow's convention). Every prune reports its collapsed layers;
`bisect_critical` searches for the largest compression that still has none (prune.critical_compression
runs it with a method).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from lottery.pruning.mask import Mask

logger = logging.getLogger(__name__)


def compression_of(density: float) -> float:
    """log10(1 / density); 0.0 (never -0.0) for a dense network, inf for an empty one."""
    return math.inf if density <= 0 else -math.log10(density) + 0.0  # + 0.0 turns -0.0 into 0.0


def density_of(compression: float) -> float:
    return 10.0 ** (-compression)


def report_collapse(mask: Mask, context: str = "") -> list[str]:
    """The collapsed layers of `mask`, logged as a warning when there are any."""
    collapsed = mask.collapsed()
    if collapsed:
        logger.warning("layer collapse%s at density %.3g: no weights left in %s",
                       f" ({context})" if context else "", mask.density(), ", ".join(collapsed))
    return collapsed


@dataclass
class CriticalSearch:
    """The outcome of a bisection: the largest compression probed without collapse, and every probe."""

    compression: float  # of the last probe that did not collapse (the lower end of the final bracket)
    precision: float  # width of the final bracket: the true boundary lies within [compression, + precision)
    probes: list[tuple[float, bool]] = field(default_factory=list)  # (compression, collapsed), in order

    @property
    def density(self) -> float:
        return density_of(self.compression)


def bisect_critical(collapses: Callable[[float], bool], low: float, high: float, tol: float) -> CriticalSearch:
    """Largest compression in [low, high] with no collapse, to within `tol`, assuming monotone collapse.

    `low` is taken as known not to collapse and `high` as known to collapse (the caller picks them so:
    dense, and one weight left), so neither end costs a probe. Each probe is logged once.
    """
    if tol <= 0 or high <= low:
        raise ValueError(f"need low < high and tol > 0, got low={low}, high={high}, tol={tol}")
    search = CriticalSearch(low, high - low)
    while high - low > tol:
        middle = (low + high) / 2
        collapsed = bool(collapses(middle))
        search.probes.append((middle, collapsed))
        logger.info("probe: compression %.3f (density %.3g): %s", middle, density_of(middle),
                    "collapse" if collapsed else "no collapse")
        if collapsed:
            high = middle
        else:
            low = middle
    search.compression, search.precision = low, high - low
    return search

"""`lottery prune`: prune the seeded θ0 with no training and report the mask (for a structured method, the
smaller network; for a dynamic one, rigl or set, the random mask its training starts from), or search for a
method's critical compression."""
from __future__ import annotations

import logging
from typing import Optional

from lottery.config import Config, ConfigError
from lottery.pruning.collapse import compression_of, density_of
from lottery.pruning.mask import Mask
from lottery.pruning.methods import get_method
from lottery.pruning.prune import PruneResult, PruneSpec, critical_compression
from lottery.run.context import make_model
from lottery.workflows.baselines import coreset_network, prune_model, pruning_batches, small_dense_network

logger = logging.getLogger(__name__)


def check_target(density: Optional[float], compression: Optional[float], critical: bool) -> None:
    if not critical and density is None and compression is None:
        raise ConfigError("give --density, --compression or --critical", "--density", "command line")
    if density is not None and not 0 < density <= 1:
        raise ConfigError(f"must be in (0, 1], got {density}", "--density", "command line")
    if compression is not None and compression < 0:
        raise ConfigError(f"must be >= 0, got {compression}", "--compression", "command line")


def prune_report(config: Config, method: str, density: Optional[float] = None, compression: Optional[float] = None,
                 out: Optional[str] = None) -> dict:
    """Prune θ0 once; the JSON-ready report (method, density, compression, layers, collapsed)."""
    from lottery.workflows.preflight import check_config

    dataset = check_config(config)
    model = make_model(config, dataset)
    entry = get_method(method)
    target = density if density is not None else density_of(compression)
    if entry.structured:
        return _structured_report(config, dataset, model, method, target)
    if entry.dynamic:
        from lottery.pruning.dynamic import initial_mask

        template = Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
        result = PruneResult.of(initial_mask(template, target, config.baseline.distribution, config.seed))
    else:
        result = prune_model(config, dataset, model, method, density=density, compression=compression)
    if out:
        result.mask.save(out)
    return {"method": method, "density": result.density, "compression": compression_of(result.density),
            "layers": result.layers, "collapsed": list(result.collapsed),
            "bn_mode": PruneSpec.from_config(config, method).effective_bn_mode}


def _structured_report(config: Config, dataset, model, method: str, target: float) -> dict:
    from lottery.pruning.small_dense import counted_weights

    if method == "small_dense":
        smaller, widths = small_dense_network(config, dataset, target)
        patterns = {"ignore": config.prune.ignore, "include": config.prune.include}
        achieved = counted_weights(smaller, **patterns) / counted_weights(model, **patterns)
        extra = {"widths": widths.widths}
    else:
        smaller = coreset_network(config, dataset, model, target)
        achieved = counted_weights(smaller) / counted_weights(model)
        extra = {}
    layers = {name: {"kept": flags.numel(), "total": flags.numel(), "density": 1.0}
              for name, flags in Mask.ones(smaller).items()}
    return {"method": method, "density": achieved, "compression": compression_of(achieved), "layers": layers,
            "collapsed": [], "structured": True, **extra}


def critical_report(config: Config, method: str) -> dict:
    """The critical compression of `method` on θ0 (bisection; see pruning.prune.critical_compression)."""
    from lottery.workflows.preflight import check_config

    if get_method(method).structured:
        raise ConfigError(f"{method} removes whole units and keeps at least one per layer: it has no critical "
                          "compression", "--method", "command line")
    if get_method(method).dynamic:
        raise ConfigError(f"{method} changes its mask while it trains: it has no critical compression at "
                          "initialisation", "--method", "command line")
    dataset = check_config(config)
    model = make_model(config, dataset)
    batches = pruning_batches(config, dataset) if get_method(method).needs_data else None
    spec = PruneSpec.from_config(config, method)
    search = critical_compression(model, spec, batches, dataset.input_shape,
                                  Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include))
    return {"method": method, "critical_compression": search.compression, "density": search.density,
            "precision": search.precision, "probes": [{"compression": c, "collapsed": hit} for c, hit in search.probes],
            "bn_mode": spec.effective_bn_mode}

"""`lottery prune`: prune the seeded θ0 with no training and report the mask."""
from __future__ import annotations

import json
import logging

from lottery.baselines import prune_model, pruning_batches
from lottery.config import Config, ConfigError
from lottery.experiment import load_data, make_model
from lottery.levels import compression_of

logger = logging.getLogger(__name__)


def run_prune_command(args, config: Config) -> int:
    if not args.critical and args.density is None and args.compression is None:
        raise ConfigError("give --density, --compression or --critical", "--density")
    if args.density is not None and not 0 < args.density <= 1:
        raise ConfigError(f"must be in (0, 1], got {args.density}", "--density")
    if args.compression is not None and args.compression < 0:
        raise ConfigError(f"must be >= 0, got {args.compression}", "--compression")
    dataset = load_data(config)
    model = make_model(config, dataset)
    if args.critical:
        return _critical(args, config, dataset, model)
    result = prune_model(config, dataset, model, args.method, density=args.density, compression=args.compression)
    if args.out:
        result.mask.save(args.out)
    report = {
        "method": args.method,
        "density": result.density,
        "compression": compression_of(result.density),
        "layers": result.layers,
        "collapsed": list(result.collapsed),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(_format_report(report))
    return 0


def _critical(args, config: Config, dataset, model) -> int:
    from lottery.pruning.collapse import critical_compression

    from lottery.pruning.mask import Mask

    needs_data = args.method in ("snip", "grasp")
    value = critical_compression(
        model, args.method, mask=Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include),
        batches=pruning_batches(config, dataset) if needs_data else None,
        input_shape=dataset.input_shape, scope=config.prune.scope, rounds=config.prune.rounds,
        schedule=config.prune.schedule, seed=config.seed, temperature=config.prune.grasp_temperature,
    )
    if args.json:
        print(json.dumps({"method": args.method, "critical_compression": value}))
    else:
        print(f"{args.method}: critical compression 10^{value:.2f} (density {10 ** -value:.3g})")
    return 0


def _format_report(report: dict) -> str:
    width = max(len(name) for name in report["layers"])
    lines = [f"{'layer':<{width}}  {'kept':>10}  {'total':>10}  {'density':>8}"]
    for name, info in report["layers"].items():
        lines.append(f"{name:<{width}}  {info['kept']:>10}  {info['total']:>10}  {info['density']:>8.4f}")
    lines.append(f"{report['method']}: total density {report['density']:.6f}, "
                 f"compression 10^{report['compression']:.3f}")
    if report["collapsed"]:
        lines.append(f"COLLAPSED layers (no weights left): {', '.join(report['collapsed'])}")
    return "\n".join(lines)

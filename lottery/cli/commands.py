"""The commands: each parses its arguments, calls a workflow and prints. No computation lives here."""
from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path


def command_line(argv) -> str:
    return "lottery " + " ".join(shlex.quote(a) for a in argv)


def _config(args):
    from lottery.config import load_config

    return load_config(args.exp, args.overrides)


def train(args, argv) -> int:
    from lottery.workflows.dense import run_dense

    run_dense(_config(args), command_line(argv))
    return 0


def _experiment_config(args):
    from lottery.config import COMMAND_LINE, set_dotted
    from lottery.orchestrate.experiment import parse_seeds

    config = _config(args)
    if args.seeds is not None:
        set_dotted(config, "experiment.seeds", parse_seeds(args.seeds), COMMAND_LINE)
    return config


def ticket(args, argv) -> int:
    from lottery.orchestrate.experiment import run_experiment

    run_experiment(_experiment_config(args), command_line(argv), dry_run=args.dry_run)
    return 0


def plan(args, argv) -> int:
    from lottery.orchestrate.experiment import run_experiment

    run_experiment(_experiment_config(args), command_line(argv), dry_run=True)
    return 0


def branch(args, argv) -> int:
    from lottery.workflows.branches import parse_levels, run_branch

    levels = parse_levels(args.levels)
    run_branch(_config(args), args.name, levels, command_line(argv))
    return 0


def baselines(args, argv) -> int:
    from lottery.workflows.baselines import parse_densities, parse_methods, run_baselines

    methods, densities = parse_methods(args.methods), parse_densities(args.densities)
    run_baselines(_config(args), methods, densities, args.at, command_line(argv))
    return 0


def prune(args, argv) -> int:
    from lottery.report.tables import layer_table
    from lottery.workflows.prune import check_target, critical_report, prune_report

    check_target(args.density, args.compression, args.critical)
    config = _config(args)
    if args.critical:
        report = critical_report(config, args.method)
        if args.json:
            print(json.dumps(report))
        else:
            print(f"{args.method}: critical compression 10^{report['critical_compression']:.3f} "
                  f"(density {report['density']:.3g}): the last compression probed without layer collapse; "
                  f"collapse sets in within +{report['precision']:.3f} ({len(report['probes'])} probes)")
        return 0
    report = prune_report(config, args.method, args.density, args.compression, args.out)
    if args.json:
        print(json.dumps(report))
        return 0
    print(layer_table(report["layers"]))
    print(f"{report['method']}: total density {report['density']:.6f}, compression 10^{report['compression']:.3f}")
    if report["collapsed"]:
        print(f"COLLAPSED layers (no weights left): {', '.join(report['collapsed'])}")
    return 0


def search(args, argv) -> int:
    from lottery.config import load_config
    from lottery.search.objective import selection
    from lottery.search.request import DEFAULT_STORAGE, SearchRequest
    from lottery.search.space import load_space, search_config

    space = load_space(args.space)
    config = search_config(load_config(args.exp, args.overrides), space, args.overrides)
    request = SearchRequest(config, space, args.trials, args.storage or DEFAULT_STORAGE, args.study,
                            command_line(argv))
    from lottery.search.engine import run_search  # optuna only once the request is valid

    try:
        outcome = run_search(request)
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to resume study {request.name}", file=sys.stderr)
        return 130
    counts = ", ".join(f"{count} {state.lower()}" for state, count in outcome.counts.items() if count)
    print(f"study {outcome.study_name}: {counts}\nresults: {outcome.directory}")
    if selection(config) == "test_set":
        print(f"selected on the test set (search.objective={config.search.objective}): the best trial's test "
              "accuracy is optimistic")
    else:
        print(f"selected on the validation split (search.objective={config.search.objective})")
    if outcome.best is not None:
        print(f"best trial {outcome.best['number']}: {outcome.best['values']} {outcome.best['params']}")
    for trial in outcome.pareto:
        print(f"pareto trial {trial['number']}: {trial['values']} {trial['params']}")
    return 0


def report(args, argv) -> int:
    from lottery.report.aggregate import build_experiment_report, is_experiment_dir
    from lottery.report.run_report import build_report

    if is_experiment_dir(Path(args.run_dir)):
        built = build_experiment_report(Path(args.run_dir), Path(args.out) if args.out else None)
        print((built.directory / "aggregate.md").read_text())
        print(f"report written to {built.directory}: {', '.join(path.name for path in built.files)}")
        return 0
    built = build_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(built.table)
    print(f"\nreport written to {built.directory}: {', '.join(path.name for path in built.files)}")
    return 0


def evaluate(args, argv) -> int:
    from lottery.config import ConfigError
    from lottery.workflows.evaluate import RobustnessSpec, parse_corruptions, parse_severities, run_evaluation

    if not 0 <= args.margin < 100:
        raise ConfigError(f"must be in [0, 100) accuracy points, got {args.margin}", "--margin", "command line")
    if args.seed < 0:
        raise ConfigError(f"must be >= 0, got {args.seed}", "--seed", "command line")
    spec = RobustnessSpec(parse_corruptions(args.corruptions), parse_severities(args.severities), args.seed,
                          args.margin / 100)
    outcome = run_evaluation(Path(args.run_dir), spec, command_line(argv), args.overrides)
    print(outcome.table)
    if outcome.skipped:
        print(f"skipped (network not rebuilt): {', '.join(outcome.skipped)}")
    print(f"\nwritten: {outcome.files['json']}, {outcome.files['figure']}")
    return 0


def sync(args, argv) -> int:
    from lottery.tracking.sync import sync_run

    outcome = sync_run(Path(args.run_dir), args.overrides, command_line(argv), force=args.force)
    if outcome.unchanged:
        print(f"nothing to sync: {args.run_dir} is unchanged since its last sync to {outcome.uri}, experiment "
              f"'{outcome.experiment}' (--force uploads it again)")
        return 0
    if outcome.error is not None:
        print(f"error: sync to {outcome.uri} failed: {outcome.error}", file=sys.stderr)
        return 1
    print(f"synced {outcome.stages} stages of {args.run_dir} to {outcome.uri}, experiment "
          f"'{outcome.experiment}', parent run {outcome.parent_run_id}")
    return 0


def bench(args, argv) -> int:
    import logging

    from lottery.benchmarks.registry import format_table, run_all, select, write_report

    report = run_all(select(args.only), args.quick)
    write_report(args.out, report)
    info = report["environment"]
    print(format_table(report["results"]))
    print(f"load average {info['load_average_start']} -> {info['load_average_end']} on {info['cpu_count']} cores, "
          f"torch threads {info['torch_threads']}; JSON in {args.out}")
    missed = [entry["name"] for entry in report["results"] if entry["met"] is False]
    if missed:
        logging.getLogger("lottery").warning("bench: goals missed by %s", ", ".join(missed))
    return 0


def reproduce(args, argv) -> int:
    from lottery.orchestrate.reproduce import reproduce_dst, reproduce_lth, reproduce_snip

    {"lth": reproduce_lth, "snip": reproduce_snip, "dst": reproduce_dst}[args.paper](args.overrides)
    return 0


def export(args, argv) -> int:
    from lottery.workflows.export import export_level

    summary = export_level(args.run_dir, args.level, args.format, args.out)
    ratio = summary["tensor_bytes"] / summary["dense_tensor_bytes"] if summary["dense_tensor_bytes"] else math.nan
    print(f"level {summary['level']} (density {summary['density']:.4f}) written as {summary['format']} to "
          f"{summary['out']}: {summary['tensor_bytes']} bytes of tensors, {ratio:.1%} of dense")
    return 0


def instability(args, argv) -> int:
    from lottery.run.layout import RunLayout
    from lottery.workflows.instability import format_markdown, run_instability

    config = _config(args)
    rows = run_instability(config, args.rewind_steps, args.level, command=command_line(argv))
    print(format_markdown(rows), end="")
    print(f"results: {RunLayout.of(config).instability_dir(args.level)}")
    return 0


COMMANDS = {name: globals()[name] for name in ("train", "ticket", "plan", "branch", "baselines", "prune", "search",
                                                "report", "evaluate", "sync", "bench", "reproduce", "export",
                                                "instability")}

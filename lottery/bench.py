"""`lottery bench`: the framework measured against its anchors, as a table and a JSON file.

    lottery bench [--only masking,data_pipeline] [--quick] [--out bench.json]

Each benchmark lives in lottery/benchmarks/<name>.py and returns BenchEntry rows (name, value,
unit, goal, met, details). Ratios are measured side by side in this one process, interleaved,
with warm-up and repeats, and reported as medians (lottery/benchmarks/timing.py). The JSON also
records what the numbers depend on: load average, torch threads and OpenMP settings.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from lottery.benchmarks.result import BenchEntry
from lottery.benchmarks.timing import load_average
from lottery.cli import EXIT_CONFIG, register

logger = logging.getLogger(__name__)

# name -> module with run(quick: bool) -> list[BenchEntry], in the order they run.
BENCHMARKS = {
    "masking": "lottery.benchmarks.masking",
    "data_pipeline": "lottery.benchmarks.data_pipeline",
    "scoring": "lottery.benchmarks.scoring",
    "orchestration": "lottery.benchmarks.orchestration",
    "tracking": "lottery.benchmarks.tracking_overhead",
    "mask_storage": "lottery.benchmarks.mask_storage",
    "sparse_export": "lottery.benchmarks.sparse_export",
}
ENVIRONMENT_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def select(only: str | None) -> list[str]:
    """The benchmark names to run, in registry order; ValueError naming any unknown name."""
    if only is None or not only.strip():
        return list(BENCHMARKS)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"--only: unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in wanted]


def run_benchmark(name: str, quick: bool) -> tuple[list[BenchEntry], dict]:
    """One benchmark's entries, and its wall time and the load average around it."""
    module = importlib.import_module(BENCHMARKS[name])
    before, start = load_average(), time.perf_counter()
    logger.info("bench: running %s%s (load average %s)", name, " (quick)" if quick else "", before)
    entries = module.run(quick)
    context = {"seconds": time.perf_counter() - start, "load_average_before": before, "load_average_after": load_average()}
    for entry in entries:
        if not math.isfinite(entry.value):
            logger.warning("bench: %s gave a non-finite value %r", entry.name, entry.value)
    return entries, context


def environment(quick: bool) -> dict:
    return {
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "environment_variables": {name: os.environ.get(name) for name in ENVIRONMENT_VARIABLES},
        "load_average_start": load_average(),
    }


def run_all(names: list[str], quick: bool) -> dict:
    """The whole report: {"environment": ..., "benchmarks": {name: context}, "results": [entry, ...]}."""
    report = {"environment": environment(quick), "benchmarks": {}, "results": []}
    for name in names:
        entries, context = run_benchmark(name, quick)
        report["benchmarks"][name] = context
        report["results"].extend(entry.to_json() for entry in entries)
    report["environment"]["load_average_end"] = load_average()
    return report


def _format_value(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def format_table(results: list[dict]) -> str:
    """Rows of name, value with unit, goal, and PASS / FAIL (or - without a goal)."""
    rows = [("benchmark", "value", "goal", "met")]
    for entry in results:
        verdict = "-" if entry["met"] is None else ("PASS" if entry["met"] else "FAIL")
        rows.append((entry["name"], f"{_format_value(entry['value'])} {entry['unit']}", entry["goal"] or "-", verdict))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}" for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_report(path, report: dict) -> None:
    from lottery.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(report, indent=2, default=str) + "\n")


@register("bench")
def bench_command(args, argv) -> int:
    """The CLI entry point: run, print the table, write the JSON."""
    try:
        names = select(args.only)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    report = run_all(names, args.quick)
    write_report(args.out, report)
    environment_info = report["environment"]
    print(format_table(report["results"]))
    print(f"load average {environment_info['load_average_start']} -> {environment_info['load_average_end']} "
          f"on {environment_info['cpu_count']} cores, torch threads {environment_info['torch_threads']}; "
          f"JSON in {args.out}")
    missed = [entry["name"] for entry in report["results"] if entry["met"] is False]
    if missed:
        logger.warning("bench: goals missed by %s", ", ".join(missed))
    return 0

"""The benchmark registry and the report `lottery bench` prints and writes.

Each benchmark lives in lottery/benchmarks/<name>.py and returns BenchEntry rows (name, value, unit, goal,
met, details). Ratios are measured side by side in one process, interleaved, with warm-up and repeats,
and reported as medians (timing.py). The JSON also records what the numbers depend on: load average,
torch threads and OpenMP settings.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import torch

from lottery.benchmarks.result import BenchEntry
from lottery.benchmarks.timing import load_average
from lottery.config import ConfigError
from lottery.report.tables import format_table as layout_table
from lottery.run.files import atomic_write_text

logger = logging.getLogger(__name__)

# name -> module with run(quick: bool) -> list[BenchEntry], in the order they run.
BENCHMARKS = {
    "masking": "lottery.benchmarks.masking",
    "data_pipeline": "lottery.benchmarks.data_pipeline",
    "scoring": "lottery.benchmarks.scoring",
    "bookkeeping": "lottery.benchmarks.bookkeeping",
    "orchestrator": "lottery.benchmarks.orchestrator",
    "tracking": "lottery.benchmarks.tracking_overhead",
    "mask_storage": "lottery.benchmarks.mask_storage",
    "sparse_export": "lottery.benchmarks.sparse_export",
    "packing": "lottery.benchmarks.packing",
    "gpu": "lottery.benchmarks.gpu",
    "critical": "lottery.benchmarks.critical",  # a measurement, not a speed: no goal
}
ENVIRONMENT_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def select(only: str | None) -> list[str]:
    """The benchmark names to run, in registry order; ValueError naming any unknown name."""
    if only is None or not only.strip():
        return list(BENCHMARKS)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}", "--only",
                          "command line")
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
    rows = [[entry["name"], f"{_format_value(entry['value'])} {entry['unit']}", entry["goal"] or "-",
             "-" if entry["met"] is None else ("PASS" if entry["met"] else "FAIL")] for entry in results]
    return layout_table(["benchmark", "value", "goal", "met"], rows, left=(0, 1, 2, 3))


def write_report(path, report: dict) -> None:
    atomic_write_text(Path(path), json.dumps(report, indent=2, default=str) + "\n")

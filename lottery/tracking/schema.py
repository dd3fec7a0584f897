"""What every MLflow run of lottery is called and carries: one schema, so the UI can filter, group and chart
IMP against its baselines without hand work.

Every stage run has the params `kind` (imp, baseline, branch, dense; search trials are `trial`), `method`
(`imp` for IMP levels, the pruning method for baselines, the branch for branches), `series` (the line it belongs
to in the figures), `level` (IMP and branch levels, and the level a baseline's density is matched to), `density`
(4 significant figures; the exact value is the metric `density`), `at`, `seed` and `branch`. MLflow's search has
no OR or IN on params, so `params.kind` and `params.method` are the filters to use.
"""
from __future__ import annotations

import math
import re
from typing import Optional

from lottery.run.layout import BASELINE, BRANCH, DENSE, LEVEL, StageRef

KIND = {LEVEL: "imp", BASELINE: "baseline", BRANCH: "branch", DENSE: "dense"}
# How a method is written in its paper; others keep their registry name.
DISPLAY = {"synflow": "SynFlow", "snip": "SNIP", "grasp": "GraSP", "rigl": "RigL", "set": "SET"}
DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description


def method_of(ref: StageRef) -> str:
    if ref.kind == LEVEL:
        return "imp"
    if ref.kind == BRANCH:
        return ref.branch
    return DENSE if ref.kind == DENSE else ref.method


def series_of(ref: StageRef) -> str:
    """The series as a metric-name-safe word: imp, dense, reinit, snip, snip_at_rewind."""
    if ref.kind == BASELINE and ref.at != "init":
        return metric_name(f"{ref.method}_at_{ref.at}")
    return metric_name(method_of(ref))


def metric_name(text: str) -> str:
    """MLflow metric and param names allow letters, digits, _ - . / and spaces."""
    return re.sub(r"[^\w\-./ ]", "_", text)


def short_density(density: float) -> str:
    return f"{density:.4g}"


def stage_run_name(ref: StageRef, density: float) -> str:
    """`IMP L3 d=0.512`, `SNIP d=0.512`, `SNIP@rewind d=0.512`, `reinit L3 d=0.512`, `dense`."""
    d = f"d={density:.3g}"
    if ref.kind == LEVEL:
        return f"IMP L{ref.level} {d}"
    if ref.kind == BRANCH:
        return f"{ref.branch} L{ref.level} {d}"
    if ref.kind == DENSE:
        return "dense"
    base = ref.method.split("-", 1)
    name = DISPLAY.get(base[0], base[0]) + (f"-{base[1]}" if len(base) > 1 else "")
    return f"{name}{'' if ref.at == 'init' else '@' + ref.at} {d}"


def stage_params(ref: StageRef, density: float, seed: int, level: Optional[int] = None) -> dict:
    """The schema's params of a stage run; `level`: the IMP level a baseline's density equals, if any."""
    params = {"kind": KIND[ref.kind], "method": method_of(ref), "series": series_of(ref),
              "density": short_density(density), "seed": seed}
    if ref.kind in (LEVEL, BRANCH):
        level = ref.level
    if level is not None:
        params["level"] = level
    if ref.kind == BASELINE:
        params["at"] = ref.at
    if ref.kind == BRANCH:
        params["branch"] = ref.branch
    return params


def stage_description(ref: StageRef, density: float, seed: int, exp: str, command: str,
                      level: Optional[int] = None) -> str:
    what = {LEVEL: f"IMP level {ref.level}: trained from the rewind point θk with level {ref.level}'s mask",
            DENSE: "the dense network, trained from θ0",
            BRANCH: f"the {ref.branch} control on IMP level {ref.level}'s mask",
            BASELINE: f"{ref.method} pruned once at {'θ0' if ref.at == 'init' else 'θk'}, then trained"}[ref.kind]
    matched = f", IMP level {level}'s density" if ref.kind == BASELINE and level is not None else ""
    return f"{what}; density {density:.6g}{matched}. Experiment {exp}, seed {seed}. Command: `{command}`"


def stage_run(ref: StageRef, density: float, seed: int, exp: str, command: str,
              level: Optional[int] = None) -> tuple[str, dict, dict]:
    """(name, params, tags) of a stage's MLflow run: the schema's params, the same keys as tags (editable in the
    UI, and filterable as tags.kind), and the description."""
    params = stage_params(ref, density, seed, level)
    tags = {key: str(params[key]) for key in ("kind", "method", "series", "level") if key in params}
    tags[DESCRIPTION_TAG] = stage_description(ref, density, seed, exp, command, params.get("level"))
    return stage_run_name(ref, density), params, tags


def matched_level(density: float, level_densities: list[float]) -> Optional[int]:
    """The IMP level (1..L) whose exact density is `density`, or None."""
    for level, value in enumerate(level_densities, start=1):
        if math.isclose(value, density, rel_tol=1e-9, abs_tol=0.0):
            return level
    return None


def seed_run_name(seed: int) -> str:
    return f"seed {seed}"


def experiment_run_name(exp: str, hash8: str) -> str:
    return f"{exp} {hash8}"

"""Robustness beyond test accuracy: per series and density, the accuracy on clean and corrupted test sets,
the mean corruption accuracy, and the prune potential (Liebenwein et al. 2021, "Lost in Pruning").

The prune potential of a series under a condition (clean, one corruption averaged over its severities, or
the mean over all corruptions and severities) is the largest share of weights removed, 1 - density, at
which the series' accuracy under that condition is within `margin` of the unpruned network's accuracy under
the same condition. The unpruned network is the run's level 0 (else its `dense` stage). When no pruned
network qualifies the potential is 0 (the unpruned network itself, density 1).
"""
from __future__ import annotations

from statistics import fmean
from typing import Optional

from lottery.report.tables import format_table, number

CLEAN, MEAN = "clean", "mean"
REFERENCES = ("level_00", "dense")


def stage_point(result: dict, corruptions: list[str], severities: list[int]) -> dict:
    """One stage's accuracies: clean, per corruption and severity, per corruption (mean over severities), mean."""
    cells = {name: {str(s): result["corruptions"][name][str(s)]["acc"] for s in severities} for name in corruptions}
    per_corruption = {name: fmean(cells[name].values()) for name in corruptions}
    return {"stage": result["stage"], "series": result["series"], "density": result["density"],
            CLEAN: result["clean"]["acc"], "corruptions": cells, "corruption_mean": per_corruption,
            MEAN: fmean(value for name in corruptions for value in cells[name].values()) if corruptions else None}


def accuracy(point: dict, condition: str) -> Optional[float]:
    if condition in (CLEAN, MEAN):
        return point[condition]
    return point["corruption_mean"][condition]


def prune_potential(points: list[dict], reference: dict, condition: str, margin: float) -> dict:
    """The sparsest point within `margin` of the reference under `condition`, as density and 1 - density."""
    bar = accuracy(reference, condition) - margin
    within = [point["density"] for point in points if accuracy(point, condition) >= bar]
    density = min(within, default=1.0)
    return {"density": density, "prune_potential": 1.0 - density}


def summarize(results: list[dict], corruptions: list[str], severities: list[int], margin: float) -> dict:
    """The run's robustness summary from its stages' results (see lottery.workflows.evaluate)."""
    points = [stage_point(result, corruptions, severities) for result in results]
    series: dict[str, list[dict]] = {}
    for point in points:
        series.setdefault(point["series"], []).append(point)
    for members in series.values():
        members.sort(key=lambda point: -point["density"])
    by_stage = {point["stage"]: point for point in points}
    reference = next((by_stage[key] for key in REFERENCES if key in by_stage), None)
    conditions = [CLEAN, *corruptions, MEAN] if corruptions else [CLEAN]
    potentials = {} if reference is None else {
        label: {condition: prune_potential(members, reference, condition, margin) for condition in conditions}
        for label, members in series.items()}
    return {"corruptions": list(corruptions), "severities": list(severities), "margin": margin,
            "conditions": conditions, "reference": reference["stage"] if reference else None,
            "series": series, "prune_potential": potentials}


def robustness_table(summary: dict, markdown: bool = False) -> str:
    """One row per series and density: clean, each corruption (mean over severities), the mean corruption."""
    conditions = summary["conditions"]
    headers = ["series", "density", *conditions]
    show = number(4)
    rows = [[label, show(point["density"]), *(show(accuracy(point, condition)) for condition in conditions)]
            for label, members in summary["series"].items() for point in members]
    table = format_table(headers, rows, markdown)
    potentials = summary["prune_potential"]
    if not potentials:
        return f"{table}\nno unpruned network (level_00 or dense) in the run: no prune potential"
    lines = [f"prune potential (largest share of weights removed within {100 * summary['margin']:g} points of "
             f"{summary['reference']}):"]
    lines += [f"  {label}: " + ", ".join(f"{condition} {entry['prune_potential']:.3f}"
                                         for condition, entry in values.items())
              for label, values in potentials.items()]
    return "\n".join([table, *lines])

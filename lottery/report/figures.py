"""The one figure factory and the figures of a run: accuracy vs density, per-layer density, accuracy vs step,
and accuracy vs density under each corruption (robustness).

Figures use matplotlib's object API (Figure + Agg canvas): no pyplot, no global state. Every figure labels
both axes, and density axes tick and label every density that is plotted.
"""
from __future__ import annotations

import io
import math
from typing import Optional, Sequence

ZERO_DENSITY_FLOOR = 1e-4  # where a collapsed layer (density 0) is drawn on a log axis


def new_figure(width: float = 7.0, height: float = 4.5, rows: int = 1, columns: int = 1):
    """(figure, axes) on an Agg canvas; with rows or columns > 1 the axes are a flat list, row by row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")  # room for labels without bbox "tight"
    FigureCanvasAgg(figure)
    if rows == columns == 1:
        return figure, figure.subplots()
    return figure, list(figure.subplots(rows, columns, squeeze=False).flat)


def png_bytes(figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def density_label(density: float) -> str:
    """A tick label that tells neighbouring densities apart: 0.8, 0.512, 0.0144, 0.00115."""
    if density <= 0:
        return "0"
    digits = max(0, -math.floor(math.log10(density))) + 2
    return f"{density:.{digits}f}".rstrip("0").rstrip(".")


TICK_MERGE = 1.02  # densities closer than this ratio share one tick


def density_axis(axes, densities: Sequence[float], label: str = "density (fraction of weights kept, log scale)"):
    """A log x axis, sparser to the right, with a labelled tick at every plotted density. Densities within 2 % of
    a tick already placed share it, the first given keeping it (a small-dense control's 0.0357 beside its level's
    0.0358), so no two labels print over each other."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks: list[float] = []
    for density in densities:  # in the order given: the first series' (the ticket's) densities keep their ticks
        if density and density > 0 and all(max(density, tick) / min(density, tick) >= TICK_MERGE for tick in ticks):
            ticks.append(density)
    ticks.sort()
    axes.set_xscale("log")
    if ticks:
        axes.xaxis.set_major_locator(FixedLocator(ticks))
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_xticks(ticks, [density_label(d) for d in ticks], rotation=45 if len(ticks) > 6 else 0,
                        fontsize=7 if len(ticks) > 10 else 8)
        low, high = min(ticks), max(ticks)
        axes.set_xlim(high * 1.15, low / 1.15)  # inverted: sparser to the right
    axes.set_xlabel(label)


def level_colours(count: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(count - 1, 1)) for i in range(count)]


def accuracy_vs_density_figure(series, metric: str = "final_test_acc", ylabel: str = "final test accuracy",
                               dense_accuracy: Optional[float] = None, title: str = "test accuracy vs density"):
    """One line per series (report.run_report.Series), sparser to the right; the dense run as a dashed line."""
    figure, axes = new_figure()
    densities = []
    for entry in series:
        if entry.kind == "dense":
            if entry.rows and entry.rows[0].get(metric) is not None:
                axes.axhline(entry.rows[0][metric], color="grey", linestyle="--", label="dense")
            continue
        points = sorted(((r["density"], r[metric]) for r in entry.rows
                         if r.get("density") and r.get(metric) is not None), reverse=True)
        if points:
            densities += [p[0] for p in points]
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, label=entry.label,
                      linewidth=2.0 if entry.kind == "ticket" else 1.2)
    if dense_accuracy is not None:
        axes.axhline(dense_accuracy, color="grey", linestyle="--", label="dense")
    density_axis(axes, densities)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)
    return figure


def layer_density_figure(entry):
    """Per-layer density, one line per level (density 0 drawn at a floor with a red cross)."""
    from matplotlib.ticker import FuncFormatter

    rows = [row for row in entry.rows if row.get("layers")]
    figure, axes = new_figure(max(7.0, 0.45 * max((len(r["layers"]) for r in rows), default=1)), 4.5)
    names = list(rows[0]["layers"]) if rows else []
    for row, colour in zip(rows, level_colours(len(rows))):
        values = [row["layers"].get(name) for name in names]
        shown = [ZERO_DENSITY_FLOOR if v == 0 else v for v in values]
        axes.plot(range(len(names)), shown, marker="o", markersize=3, color=colour,
                  label=f"level {row.get('level')} ({density_label(row.get('density') or 0)})")
        zeros = [i for i, v in enumerate(values) if v == 0]
        if zeros:
            axes.plot(zeros, [ZERO_DENSITY_FLOOR] * len(zeros), "x", color="red", markersize=8)
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xlabel("layer")
    axes.set_ylabel("layer density (log scale)")
    axes.set_title(f"per-layer density by level ({entry.label})")
    axes.grid(True, which="both", alpha=0.3)
    if rows:
        axes.legend(fontsize=7, ncol=2 if len(rows) > 8 else 1)
    return figure


def accuracy_vs_step_figure(entry):
    """Test accuracy against training step, one line per level (or density), coloured sparse-to-dense."""
    stages = [stage for stage in entry.stages if stage.history]
    figure, axes = new_figure()
    for stage, colour in zip(stages, level_colours(len(stages))):
        steps = [record["step"] for record in stage.history if record.get("test_acc") is not None]
        accuracy = [record["test_acc"] for record in stage.history if record.get("test_acc") is not None]
        level = stage.row.get("level")
        density = density_label(stage.row.get("density") or 0)
        label = f"level {level} ({density})" if isinstance(level, int) else f"density {density}"
        axes.plot(steps, accuracy, color=colour, label=label, linewidth=1.2)
    axes.set_xlabel("training step")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"test accuracy vs step ({entry.label})")
    axes.grid(True, alpha=0.3)
    if stages:
        axes.legend(fontsize=7, ncol=2 if len(stages) > 8 else 1)
    return figure


def robustness_figure(summary: dict):
    """Accuracy vs density, one panel per condition (clean, each corruption averaged over its severities, the
    mean corruption), one line per series; the unpruned network's accuracy as a dashed line."""
    from lottery.report.robustness import accuracy

    conditions = summary["conditions"]
    columns = min(3, len(conditions))
    rows = math.ceil(len(conditions) / columns)
    figure, panels = new_figure(4.2 * columns, 3.4 * rows, rows, columns)
    reference = next((point for members in summary["series"].values() for point in members
                      if point["stage"] == summary["reference"]), None)
    plotted = [p["density"] for members in summary["series"].values() for p in members if 0 < p["density"] < 1]
    levels = [p["density"] for p in summary["series"].get("ticket", []) if 0 < p["density"] < 1]
    for panel, condition in zip(panels, conditions):
        for label, members in summary["series"].items():
            points = [(p["density"], accuracy(p, condition)) for p in members if 0 < p["density"] < 1]
            if points:
                panel.plot(*zip(*points), marker="o", markersize=3, label=label,
                           linewidth=2.0 if label == "ticket" else 1.2)
        if reference is not None:
            panel.axhline(accuracy(reference, condition), color="grey", linestyle="--", label="unpruned")
        density_axis(panel, levels or plotted, label="density (log scale)")  # ticks at the levels when there are
        if levels:
            panel.set_xlim(max(plotted) * 1.15, min(plotted) / 1.15)
        panel.set_ylabel("test accuracy")
        titles = {"clean": "clean", "mean": "mean over corruptions"}
        panel.set_title(titles.get(condition, f"{condition} (mean over severities)"), fontsize=9)
        panel.grid(True, which="major", alpha=0.3)
    for panel in panels[len(conditions):]:
        panel.set_visible(False)
    if panels and panels[0].lines:
        panels[0].legend(fontsize=7)
    figure.suptitle("test accuracy vs density, clean and corrupted")
    return figure

"""Tables and figures from a run directory: the same ones locally (`lottery report`) and in MLflow.

Sources, all inside the run directory:
  level_NN/metrics.json                          ticket levels ({"row": ..., "history": [...]})
  dense/metrics.json                             the dense model (`lottery train`)
  branches/<name>/level_NN/metrics.json          ablation branches
  baselines/<at>/<method>/density_D/metrics.json pruning at initialisation
  results.json, branches/<name>/results.json, baselines/results.json
                                                 the summary rows, used where no stage has metrics

Figures use matplotlib's object API (Figure + Agg canvas): no pyplot, no global state.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lottery.io import atomic_write_text, read_json, write_json

logger = logging.getLogger(__name__)

TICKET = "ticket"
DENSE = "dense"
# Run-directory folder -> tracking-key prefix used by the orchestrators (baselines.py, branches.py).
KEY_PREFIXES = {"baselines/": "baseline/", "branches/": "branch/"}
ZERO_DENSITY_FLOOR = 1e-4  # where a collapsed layer (density 0) is drawn on a log axis


@dataclass
class StageRecord:
    """One trained stage (a level, a baseline or a branch level) read from its metrics.json."""

    directory: Path
    key: str  # the tracking key: "level_03", "branch/reinit/level_03", "baseline/init/snip/density_0.100000"
    series: str  # "ticket", "dense", "branch reinit", "snip", "snip@rewind"
    kind: str  # "ticket" | "dense" | "branch" | "baseline"
    row: dict
    history: list[dict]


@dataclass
class Series:
    """One line on the accuracy-vs-density figure."""

    label: str
    kind: str  # "ticket" | "dense" | "branch" | "baseline"
    rows: list[dict] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)


def stage_key(run_dir: Path, directory: Path) -> str:
    relative = directory.relative_to(run_dir).as_posix()
    for folder, prefix in KEY_PREFIXES.items():
        if relative.startswith(folder):
            return prefix + relative[len(folder):]
    return relative


def _baseline_label(row: dict, method: str = "baseline", at: str = "init") -> str:
    method, at = row.get("method") or method, row.get("at") or at
    return method if at == "init" else f"{method}@{at}"


def _series_of(relative: str, row: dict) -> tuple[str, str]:
    """(label, kind) of the stage in run-directory folder `relative`."""
    parts = relative.split("/")
    if parts[0] == "branches":
        return f"branch {parts[1]}", "branch"
    if parts[0] == "baselines":
        return _baseline_label(row, parts[-2], parts[1] if len(parts) > 3 else "init"), "baseline"
    if parts[0] == DENSE:
        return DENSE, DENSE
    return TICKET, TICKET


def find_stages(run_dir: Path) -> list[StageRecord]:
    """Every finished stage (DONE and metrics.json) under the run directory, in a stable order."""
    run_dir = Path(run_dir)
    stages = []
    patterns = ("level_*/metrics.json", "dense/metrics.json", "branches/*/level_*/metrics.json",
                "baselines/**/metrics.json")
    for path in [path for pattern in patterns for path in sorted(run_dir.glob(pattern))]:
        if not (path.parent / "DONE").exists():
            continue
        try:
            data = read_json(path)
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(data, dict) or "row" not in data:
            raise ValueError(f"{path}: expected an object with 'row' and 'history'")
        label, kind = _series_of(path.parent.relative_to(run_dir).as_posix(), data["row"])
        stages.append(StageRecord(path.parent, stage_key(run_dir, path.parent), label, kind, data["row"],
                                  data.get("history") or []))
    return stages


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of result rows")
    return rows


def _summary_rows(run_dir: Path) -> dict[tuple[str, str], list[dict]]:
    """Rows from the results.json files, grouped by series (used when a series has no stage dirs)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in _read_rows(run_dir / "results.json"):
        groups.setdefault((TICKET, TICKET), []).append(row)
    for path in sorted(run_dir.glob("branches/*/results.json")):
        for row in _read_rows(path):
            groups.setdefault((f"branch {path.parent.name}", "branch"), []).append(row)
    for row in _read_rows(run_dir / "baselines" / "results.json"):
        groups.setdefault((_baseline_label(row), "baseline"), []).append(row)
    return groups


def load_series(run_dir: Path) -> list[Series]:
    """Ticket first, then branches, then baselines; rows sorted by level or decreasing density."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    series: dict[str, Series] = {}
    for stage in find_stages(run_dir):
        entry = series.setdefault(stage.series, Series(stage.series, stage.kind))
        entry.rows.append(stage.row)
        entry.stages.append(stage)
    for (label, kind), rows in _summary_rows(run_dir).items():
        if label not in series:
            series[label] = Series(label, kind, rows)
    if not series:
        raise FileNotFoundError(f"{run_dir}: no results.json and no finished stage (level_NN/metrics.json); "
                                "is it a run directory?")
    order = {TICKET: 0, DENSE: 1, "branch": 2, "baseline": 3}
    ordered = sorted(series.values(), key=lambda s: (order[s.kind], s.label))
    for entry in ordered:
        entry.rows.sort(key=_row_order)
        entry.stages.sort(key=lambda stage: _row_order(stage.row))
    return ordered


def _row_order(row: dict):
    level = row.get("level")
    return (level if isinstance(level, int) else math.inf, -(row.get("density") or 0.0))


# -- table ------------------------------------------------------------------------------------------

COLUMNS = ("series", "level", "density", "compression", "final acc", "best acc", "early-stop step")


def table_rows(series: list[Series]) -> list[dict]:
    """One dict per results row with the report's columns (None where unknown)."""
    table = []
    for entry in series:
        for row in entry.rows:
            density = row.get("density")
            compression = row.get("compression")
            if compression is None and density:
                compression = math.log10(1.0 / density)
            table.append({"series": entry.label, "level": row.get("level"), "density": density,
                          "compression": compression, "final acc": row.get("final_test_acc"),
                          "best acc": row.get("best_test_acc"), "early-stop step": row.get("early_stop_step")})
    return table


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "density":
        return f"{value:.4f}"
    if column == "compression":
        return f"{value:.3f}"
    if column in ("final acc", "best acc"):
        return f"{value:.4f}"
    return str(value)


def format_markdown(table: list[dict]) -> str:
    cells = [[_cell(column, row[column]) for column in COLUMNS] for row in table]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(COLUMNS)]
    right = [i > 0 for i in range(len(COLUMNS))]

    def line(values) -> str:
        return "| " + " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(COLUMNS), rule] + [line(values) for values in cells])


def sparsity_report(series: list[Series]) -> dict:
    """Per stage (by tracking key): overall density, per-layer densities, collapsed layers."""
    report = {}
    for entry in series:
        named = [(stage.key, stage.row) for stage in entry.stages] or \
            [(f"{entry.label}/{index}", row) for index, row in enumerate(entry.rows)]
        for name, row in named:
            report[name] = {"density": row.get("density"), "layers": row.get("layers") or {},
                            "collapsed": row.get("collapsed") or []}
    return report


# -- figures ----------------------------------------------------------------------------------------

def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")  # room for labels without bbox "tight"
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def accuracy_vs_density_figure(series: list[Series]):
    """Final test accuracy against density (log x, sparser to the right), one line per series."""
    figure, axes = _figure()
    for entry in series:
        if entry.kind == DENSE and entry.rows and entry.rows[0].get("final_test_acc") is not None:
            axes.axhline(entry.rows[0]["final_test_acc"], color="grey", linestyle="--", label="dense")
            continue
        points = sorted(((r["density"], r["final_test_acc"]) for r in entry.rows
                         if r.get("density") and r.get("final_test_acc") is not None), reverse=True)
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, label=entry.label,
                      linewidth=2.0 if entry.kind == TICKET else 1.2)
    axes.set_xscale("log")
    _plain_log_labels(axes.xaxis, *sorted(axes.get_xlim()))
    axes.invert_xaxis()
    axes.set_xlabel("density (fraction of prunable weights kept, log scale)")
    axes.set_ylabel("final test accuracy")
    axes.set_title("test accuracy vs density")
    axes.grid(True, which="both", alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)
    return figure


def _plain_log_labels(axis, low: float, high: float) -> None:
    """0.8 rather than 8x10^-1 on a log axis; minor ticks labelled only when it spans under 1.5 decades."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    narrow = low > 0 and math.log10(high / low) < 1.5
    axis.set_minor_formatter(plain if narrow else NullFormatter())


def _level_colours(count: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(count - 1, 1)) for i in range(count)]


def layer_density_figure(entry: Series):
    """Per-layer density, one line per level (density 0 drawn at a floor with a red cross)."""
    rows = [row for row in entry.rows if row.get("layers")]
    figure, axes = _figure(max(7.0, 0.45 * max((len(r["layers"]) for r in rows), default=1)), 4.5)
    names = list(rows[0]["layers"]) if rows else []
    for row, colour in zip(rows, _level_colours(len(rows))):
        values = [row["layers"].get(name) for name in names]
        shown = [ZERO_DENSITY_FLOOR if v == 0 else v for v in values]
        axes.plot(range(len(names)), shown, marker="o", markersize=3, color=colour,
                  label=f"level {row.get('level')} ({row.get('density', 0):.3g})")
        zeros = [i for i, v in enumerate(values) if v == 0]
        if zeros:
            axes.plot(zeros, [ZERO_DENSITY_FLOOR] * len(zeros), "x", color="red", markersize=8)
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    axes.set_yscale("log")
    _plain_log_labels(axes.yaxis, *sorted(axes.get_ylim()))
    axes.set_ylabel("layer density (log scale)")
    axes.set_title(f"per-layer density by level ({entry.label})")
    axes.grid(True, which="both", alpha=0.3)
    if rows:
        axes.legend(fontsize=7, ncol=2 if len(rows) > 8 else 1)
    return figure


def accuracy_vs_step_figure(entry: Series):
    """Test accuracy against training step, one line per level (or density), coloured sparse-to-dense."""
    stages = [stage for stage in entry.stages if stage.history]
    figure, axes = _figure()
    for stage, colour in zip(stages, _level_colours(len(stages))):
        steps = [record["step"] for record in stage.history if record.get("test_acc") is not None]
        accuracy = [record["test_acc"] for record in stage.history if record.get("test_acc") is not None]
        level = stage.row.get("level")
        label = f"level {level} ({stage.row.get('density', 0):.3g})" if level is not None \
            else f"density {stage.row.get('density', 0):.3g}"
        axes.plot(steps, accuracy, color=colour, label=label, linewidth=1.2)
    axes.set_xlabel("training step")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"test accuracy vs step ({entry.label})")
    axes.grid(True, alpha=0.3)
    if stages:
        axes.legend(fontsize=7, ncol=2 if len(stages) > 8 else 1)
    return figure


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


def figures(series: list[Series]) -> dict[str, object]:
    """File name -> matplotlib Figure for every figure the run directory supports."""
    made = {"accuracy_vs_density.png": accuracy_vs_density_figure(series)}
    for entry in series:
        if entry.kind == TICKET and any(row.get("layers") for row in entry.rows):
            made["layer_density.png"] = layer_density_figure(entry)
        if any(stage.history for stage in entry.stages):
            made[f"accuracy_vs_step_{_slug(entry.label)}.png"] = accuracy_vs_step_figure(entry)
    return made


# -- the report -------------------------------------------------------------------------------------

@dataclass
class Report:
    directory: Path
    table: str
    files: list[Path]
    figures: dict[str, object]


def build_report(run_dir: Path, out_dir: Optional[Path] = None, save_figures: bool = True) -> Report:
    """Write report.md, sparsity.json and (with save_figures) the PNGs to out_dir (default RUN_DIR/report)."""
    run_dir = Path(run_dir)
    series = load_series(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = format_markdown(table_rows(series))
    made = figures(series)
    files = []
    if save_figures:
        for name, figure in made.items():
            figure.savefig(out_dir / name, dpi=110)
            files.append(out_dir / name)
    write_json(out_dir / "sparsity.json", sparsity_report(series))
    images = "\n".join(f"![{name}]({name})" for name in made) if save_figures else ""
    atomic_write_text(out_dir / "report.md", f"# {run_dir}\n\n{table}\n\n{images}\n")
    files += [out_dir / "sparsity.json", out_dir / "report.md"]
    return Report(out_dir, table, files, made)


def publish(run_dir: Path, tracker, parent) -> None:
    """Log figures (log_figure, PNG), the table, the sparsity report, masks and results files to the parent run.

    Does nothing when tracking is off or has failed. A report error is logged, never raised: the
    run it describes is already complete on disk. Each figure is rendered once, for MLflow only;
    `lottery report` writes them locally.
    """
    if not getattr(tracker, "enabled", False) or getattr(tracker, "degraded", False):
        return
    run_dir = Path(run_dir)
    try:
        report = build_report(run_dir, save_figures=False)
        for name, figure in report.figures.items():
            parent.log_figure(figure, f"figures/{name}")
        parent.log_artifact(report.directory / "report.md", "report")
        parent.log_artifact(report.directory / "sparsity.json", "report")
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("report for %s not published: %s", run_dir, error)
    for path in _published_files(run_dir):
        relative = path.parent.relative_to(run_dir).as_posix()
        folder = f"masks/{relative}" if path.name == "mask.pt" else (None if relative == "." else relative)
        parent.log_artifact(path, folder)


def _published_files(run_dir: Path) -> list[Path]:
    names = ["config.yaml", "results.json", "branches/*/results.json", "baselines/results.json",
             "level_*/mask.pt", "branches/*/level_*/mask.pt", "baselines/**/mask.pt"]
    return [path for pattern in names for path in sorted(run_dir.glob(pattern)) if path.is_file()]

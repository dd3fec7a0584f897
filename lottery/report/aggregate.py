"""Seeds aggregated: per series (IMP, each baseline, each branch) and density, the mean, standard deviation, n and
a 95% t confidence interval of the final test accuracy and of the accuracy at the early-stopping step, and at each
density IMP's paired difference to each baseline across seeds, with its interval.

The inputs are the seeds' results.json rows (runs/<exp>/<hash>/seed_<s>/); the outputs go to
runs/<exp>/<hash>/report/: aggregate.json, aggregate.md, accuracy_vs_density_<metric>.png (mean, shaded ± std).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lottery.errors import NotFoundError
from lottery.report.figures import density_axis, new_figure
from lottery.report.tables import format_table
from lottery.run.files import atomic_write_text, write_json
from lottery.run.layout import RunLayout, StageRef
from lottery.run.results import read_rows

METRICS = {"final_test_acc": "final test accuracy", "early_stop_test_acc": "test accuracy at the early-stopping step"}
IMP = "ticket"


@dataclass
class Summary:
    """mean, std (n - 1), n and the 95% t interval of some values."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> "Summary":
        from scipy.stats import t

        n = len(values)
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if n > 1 else 0.0
        half = t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
        return cls(mean, std, n, mean - half, mean + half)

    def text(self, digits: int = 4) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} ({self.n})"


def density_key(density: float) -> str:
    return f"{density:.6f}"


@dataclass
class Aggregate:
    seeds: list[int]
    # metric -> series -> density key -> Summary
    summaries: dict[str, dict[str, dict[str, Summary]]] = field(default_factory=dict)
    # metric -> baseline series -> density key -> Summary of IMP - baseline over paired seeds
    paired: dict[str, dict[str, dict[str, Summary]]] = field(default_factory=dict)
    densities: dict[str, float] = field(default_factory=dict)  # density key -> density
    dense: dict[str, Summary] = field(default_factory=dict)  # metric -> the dense level's summary
    variants: dict[str, str] = field(default_factory=dict)  # series -> the settings behind its folder hash

    def series(self) -> list[str]:
        names = {name for metric in self.summaries.values() for name in metric}
        return sorted(names, key=lambda name: (name != IMP, not name.startswith("branch"), name))

    def label(self, series: str) -> str:
        """The series as tables and legends show it: `snip-05b804 (scope=global)` rather than the bare hash."""
        variant = self.variants.get(series)
        return f"{series} ({variant})" if variant else series


def is_experiment_dir(directory: Path) -> bool:
    """runs/<exp>/<hash>: seed folders below, and no run directory's config.yaml of its own."""
    return directory.is_dir() and not (directory / "config.yaml").exists() and any(
        RunLayout.SEED_PATTERN.match(path.name) for path in directory.iterdir())


def collect(experiment_dir: Path) -> dict[int, list[dict]]:
    """seed -> its results rows."""
    layout = RunLayout(Path(experiment_dir).parent.parent, Path(experiment_dir).parent.name,
                       Path(experiment_dir).name, 0)
    seeds = layout.seeds()
    if not seeds:
        raise NotFoundError(f"{experiment_dir}: no seed_<s> run directories: is it an experiment folder "
                            "(runs/<exp>/<hash>)?")
    return {seed: read_rows(layout.for_seed(seed)) for seed in seeds}


def aggregate(rows_by_seed: dict[int, list[dict]]) -> Aggregate:
    result = Aggregate(sorted(rows_by_seed))
    values: dict[str, dict[str, dict[str, dict[int, float]]]] = {metric: {} for metric in METRICS}
    for seed, rows in rows_by_seed.items():
        for row in rows:
            ref = StageRef.from_key(row.get("stage", ""))
            if ref is None or row.get("density") is None or ref.kind == "dense":
                continue
            key = density_key(row["density"])
            result.densities[key] = row["density"]
            if row.get("variant"):
                result.variants[ref.series] = row["variant"]
            for metric in METRICS:
                value = row.get(metric)  # no early-stopping accuracy without a validation split
                if value is not None:
                    values[metric].setdefault(ref.series, {}).setdefault(key, {})[seed] = value
                    if ref.kind == "level" and row.get("level") == 0:
                        values[metric].setdefault("_dense", {}).setdefault(key, {})[seed] = value
    for metric, by_series in values.items():
        dense = by_series.pop("_dense", {})
        if dense:
            result.dense[metric] = Summary.of(list(next(iter(dense.values())).values()))
        result.summaries[metric] = {series: {key: Summary.of(list(by_seed.values()))
                                             for key, by_seed in by_density.items()}
                                    for series, by_density in by_series.items()}
        imp = by_series.get(IMP, {})
        result.paired[metric] = {}
        for series, by_density in by_series.items():
            if series == IMP:
                continue
            for key, by_seed in by_density.items():
                common = sorted(set(by_seed) & set(imp.get(key, {})))
                if common:
                    result.paired[metric].setdefault(series, {})[key] = Summary.of(
                        [imp[key][seed] - by_seed[seed] for seed in common])
    return result


def side_by_side(result: Aggregate, metric: str = "final_test_acc", markdown: bool = False) -> str:
    """A row per density, a column per series: `mean ± std (n)`."""
    series = result.series()
    keys = sorted(result.densities, key=lambda key: -result.densities[key])
    rows = [[key] + [result.summaries[metric].get(name, {}).get(key).text()
                     if result.summaries[metric].get(name, {}).get(key) else "-" for name in series] for key in keys]
    return format_table(["density", *map(result.label, series)], rows, markdown=markdown)


def paired_table(result: Aggregate, metric: str = "final_test_acc") -> str:
    """IMP minus each baseline at equal density: mean [95% interval] (n)."""
    baselines = sorted(result.paired.get(metric, {}))
    keys = sorted(result.densities, key=lambda key: -result.densities[key])
    rows = []
    for key in keys:
        cells = []
        for name in baselines:
            found = result.paired[metric][name].get(key)
            cells.append(f"{found.mean:+.4f} [{found.low:+.4f}, {found.high:+.4f}] ({found.n})" if found else "-")
        rows.append([key, *cells])
    return format_table(["density", *[f"IMP - {result.label(name)}" for name in baselines]], rows, markdown=True)


def figure(result: Aggregate, metric: str = "final_test_acc"):
    """The mean per series with a shaded ± 1 std interval, on a log density axis with every density ticked.

    ± std, not the 95% t interval: with 2-3 seeds t's factor (12.7 at n = 2) makes the bands wider than the
    whole accuracy range and the figure unreadable; the t intervals are in aggregate.md and aggregate.json.
    """
    figure_, axes = new_figure(7.5, 4.8)
    for name in result.series():
        by_density = result.summaries[metric].get(name, {})
        points = sorted(((result.densities[key], summary) for key, summary in by_density.items()),
                        key=lambda point: -point[0])
        if not points:
            continue
        xs = [density for density, _ in points]
        line, = axes.plot(xs, [s.mean for _, s in points], marker="o", markersize=3.5, label=result.label(name),
                          linewidth=2.0 if name == IMP else 1.2)
        axes.fill_between(xs, [s.mean - s.std for _, s in points], [s.mean + s.std for _, s in points],
                          color=line.get_color(), alpha=0.15, linewidth=0)
    dense = result.dense.get(metric)
    if dense is not None:
        axes.axhline(dense.mean, color="grey", linestyle="--", linewidth=1, label=f"dense ({dense.text()})")
    density_axis(axes, list(result.densities.values()))
    axes.set_ylabel(f"{METRICS[metric]}, mean ± std (shaded)")
    axes.set_title(f"accuracy vs density over {len(result.seeds)} seed(s)")
    axes.grid(True, which="major", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)
    else:  # no stage has this metric yet (all failed, or none finished): say so rather than draw empty axes
        axes.text(0.5, 0.5, f"no finished stage has {METRICS[metric]} yet", transform=axes.transAxes,
                  ha="center", va="center")
    return figure_


def series_metric_name(series: str) -> str:
    """A figure's series as an MLflow metric word: ticket -> imp, "branch reinit" -> reinit, snip@rewind ->
    snip_at_rewind (the names of lottery.tracking.schema's `series` param)."""
    if series == IMP:
        return "imp"
    return series.removeprefix("branch ").replace("@", "_at_").replace(" ", "_")


def curve_metrics(result: Aggregate, margin: float) -> tuple[list[tuple[int, dict]], dict]:
    """The accuracy-vs-density chart as MLflow metrics, and the headline numbers.

    Per density, densest first, at step = its index: `curve/density`, `curve/log10_density` and
    `curve/<series>/<metric>` (the mean over seeds), so the UI's line chart with X axis `curve/log10_density`
    draws every series against density on a log scale. The summary: the dense mean and,
    per series, the sparsest density whose mean final test accuracy is within `margin` accuracy points of dense.
    """
    keys = sorted(result.densities, key=lambda key: -result.densities[key])
    points = []
    for step, key in enumerate(keys):
        # MLflow 3.17 has no log scale for a metric X axis: log10 density is the log axis
        values = {"curve/density": result.densities[key], "curve/log10_density": math.log10(result.densities[key])}
        for metric, by_series in result.summaries.items():
            for name, by_density in by_series.items():
                if key in by_density:
                    values[f"curve/{series_metric_name(name)}/{metric}"] = by_density[key].mean
        points.append((step, values))
    summary = {}
    dense = result.dense.get("final_test_acc")
    if dense is not None:
        summary["summary/dense/final_test_acc"] = dense.mean
        for name, by_density in result.summaries.get("final_test_acc", {}).items():
            matching = [key for key in keys if key in by_density and by_density[key].mean >= dense.mean - margin / 100]
            if matching:
                sparsest = min(matching, key=lambda key: result.densities[key])
                summary[f"summary/{series_metric_name(name)}/sparsest_matching_density"] = result.densities[sparsest]
                summary[f"summary/{series_metric_name(name)}/final_test_acc_there"] = by_density[sparsest].mean
    return points, summary


def log_curves(handle, result: Aggregate, margin: float) -> None:
    """curve_metrics logged to a parent run (the experiment's or a seed's)."""
    points, summary = curve_metrics(result, margin)
    for step, values in points:
        handle.log_metrics(values, step=step)
    handle.log_metrics(summary)


def _json(result: Aggregate) -> dict:
    def plain(tree):
        return {series: {key: vars(summary) for key, summary in by_key.items()} for series, by_key in tree.items()}

    return {"seeds": result.seeds, "densities": result.densities,
            "summaries": {metric: plain(tree) for metric, tree in result.summaries.items()},
            "paired_imp_minus_baseline": {metric: plain(tree) for metric, tree in result.paired.items()},
            "dense": {metric: vars(summary) for metric, summary in result.dense.items()},
            "variants": result.variants}


@dataclass
class ExperimentReport:
    directory: Path
    aggregate: Aggregate
    table: str
    files: list[Path]
    figures: dict


def build_experiment_report(experiment_dir: Path, out_dir: Optional[Path] = None) -> ExperimentReport:
    experiment_dir = Path(experiment_dir)
    result = aggregate(collect(experiment_dir))
    out_dir = Path(out_dir) if out_dir is not None else experiment_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {f"accuracy_vs_density_{metric}.png": figure(result, metric) for metric in METRICS}
    for name, made in figures.items():
        made.savefig(out_dir / name, dpi=110)
    write_json(out_dir / "aggregate.json", _json(result))
    sections = [f"# {experiment_dir}: {len(result.seeds)} seed(s) {result.seeds}"]
    for metric, label in METRICS.items():
        sections += [f"## {label}: mean ± std (n)", side_by_side(result, metric, markdown=True),
                     f"## IMP minus each baseline, {label}: mean [95% t interval] (n seeds)",
                     paired_table(result, metric)]
    sections += [f"![{name}]({name})" for name in figures]
    atomic_write_text(out_dir / "aggregate.md", "\n\n".join(sections) + "\n")
    files = [out_dir / name for name in figures] + [out_dir / "aggregate.json", out_dir / "aggregate.md"]
    return ExperimentReport(out_dir, result, side_by_side(result), files, figures)

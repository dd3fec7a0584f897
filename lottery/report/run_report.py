"""Tables and figures of one run directory: the same ones locally (`lottery report`) and in MLflow.

The sources are the finished stages (each stage folder's metrics.json, found through the run layout) and,
where a series has no stage folders, the rows of results.json.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lottery.errors import CorruptFileError, NotFoundError
from lottery.report.figures import accuracy_vs_density_figure, accuracy_vs_step_figure, layer_density_figure
from lottery.report.tables import series_table
from lottery.run.files import atomic_write_text, read_json, write_json
from lottery.run.layout import RunLayout, StageRef
from lottery.run.results import read_rows

logger = logging.getLogger(__name__)

KIND_OF = {"level": "ticket", "dense": "dense", "branch": "branch", "baseline": "baseline"}
SERIES_ORDER = {"ticket": 0, "dense": 1, "branch": 2, "baseline": 3}


@dataclass
class StageRecord:
    """One trained stage (a level, a baseline or a branch level) read from its metrics.json."""

    directory: Path
    ref: StageRef
    row: dict
    history: list[dict]
    times: dict = field(default_factory=dict)  # start_ms, end_ms of the training that finished the stage

    @property
    def key(self) -> str:
        return self.ref.key


@dataclass
class Series:
    """One line on the accuracy-vs-density figure."""

    label: str
    kind: str  # "ticket" | "dense" | "branch" | "baseline"
    rows: list[dict] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)


def find_stages(run_dir: Path) -> list[StageRecord]:
    """Every finished stage (DONE and metrics.json) under the run directory, in table order."""
    stages = []
    for ref, directory in RunLayout.at(run_dir).stage_dirs():
        data = read_json(directory / "metrics.json", "stage record")
        if "row" not in data:
            raise CorruptFileError(f"{directory / 'metrics.json'}: expected an object with 'row' and 'history'")
        stages.append(StageRecord(directory, ref, data["row"], data.get("history") or [], data.get("times") or {}))
    return stages


def load_series(run_dir: Path) -> list[Series]:
    """Ticket first, then dense, branches, baselines; rows sorted by level or decreasing density."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotFoundError(f"run directory {run_dir} not found")
    series: dict[str, Series] = {}
    for stage in find_stages(run_dir):
        entry = series.setdefault(stage.ref.series, Series(stage.ref.series, KIND_OF[stage.ref.kind]))
        entry.rows.append(stage.row)
        entry.stages.append(stage)
    fallback: dict[str, Series] = {}  # series known only from results.json rows
    for row in read_rows(RunLayout.at(run_dir)):
        ref = StageRef.from_key(row.get("stage", ""))
        if ref is not None and ref.series not in series:
            fallback.setdefault(ref.series, Series(ref.series, KIND_OF[ref.kind])).rows.append(row)
    series.update(fallback)
    if not series:
        raise NotFoundError(f"{run_dir}: no results.json and no finished stage (level_NN/metrics.json); "
                            "is it a run directory?")
    ordered = sorted(series.values(), key=lambda s: (SERIES_ORDER[s.kind], s.label))
    for entry in ordered:
        entry.rows.sort(key=_row_order)
        entry.stages.sort(key=lambda stage: _row_order(stage.row))
    return ordered


def _row_order(row: dict):
    level = row.get("level")
    return (level if isinstance(level, int) else math.inf, -(row.get("density") or 0.0))


def table_rows(series: list[Series]) -> list[dict]:
    """One dict per results row with the report's columns, labelled by series."""
    return [{**row, "series": entry.label} for entry in series for row in entry.rows]


def sparsity_report(series: list[Series]) -> dict:
    """Per stage (by tracking key): overall density, per-layer densities, collapsed layers."""
    report = {}
    for entry in series:
        named = [(stage.key, stage.row) for stage in entry.stages] or \
            [(row.get("stage") or f"{entry.label}/{index}", row) for index, row in enumerate(entry.rows)]
        for name, row in named:
            report[name] = {"density": row.get("density"), "layers": row.get("layers") or {},
                            "collapsed": row.get("collapsed") or []}
    return report


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


def figures(series: list[Series]) -> dict[str, object]:
    """File name -> matplotlib Figure for every figure the run directory supports."""
    made = {"accuracy_vs_density.png": accuracy_vs_density_figure(series)}
    for entry in series:
        if entry.kind == "ticket" and any(row.get("layers") for row in entry.rows):
            made["layer_density.png"] = layer_density_figure(entry)
        if any(stage.history for stage in entry.stages):
            made[f"accuracy_vs_step_{_slug(entry.label)}.png"] = accuracy_vs_step_figure(entry)
    return made


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
    out_dir = Path(out_dir) if out_dir is not None else RunLayout.at(run_dir).report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    table = series_table(table_rows(series))
    made = figures(series)
    files = []
    if save_figures:
        for name, figure in made.items():
            figure.savefig(out_dir / name, dpi=110)
            files.append(out_dir / name)
    write_json(out_dir / "sparsity.json", {"stages": sparsity_report(series)})
    images = "\n".join(f"![{name}]({name})" for name in made) if save_figures else ""
    atomic_write_text(out_dir / "report.md", f"# {run_dir}\n\n{table}\n\n{images}\n")
    files += [out_dir / "sparsity.json", out_dir / "report.md"]
    return Report(out_dir, table, files, made)


def publish(layout: RunLayout, tracker, parent, margin: float) -> None:
    """Log figures (PNG), the table, the sparsity report, masks and results to the parent run.

    `margin`: experiment.evaluate.margin, in accuracy points, for the summary metrics' "matches dense".
    Does nothing when tracking is off or has failed. A report error is logged, never raised: the
    run it describes is already complete on disk. Each figure is rendered once, for MLflow only;
    `lottery report` writes them locally.
    """
    if not tracker.enabled or tracker.degraded:
        return
    run_dir = layout.run_dir
    try:
        report = build_report(run_dir, save_figures=False)
        for name, figure in report.figures.items():
            parent.log_figure(figure, f"figures/{name}")
        parent.log_artifact(report.directory / "report.md", "report")
        parent.log_artifact(report.directory / "sparsity.json", "report")
    except (OSError, ValueError, KeyError, TypeError, CorruptFileError, NotFoundError) as error:
        logger.warning("report for %s not published: %s", run_dir, error)
    try:
        from lottery.report.aggregate import aggregate, log_curves

        log_curves(parent, aggregate({0: read_rows(layout)}), margin)
    except (OSError, ValueError, KeyError, TypeError, CorruptFileError, NotFoundError) as error:
        logger.warning("accuracy curves of %s not logged: %s", run_dir, error)
    for path in [layout.config_file, layout.results_file]:
        if path.is_file():
            parent.log_artifact(path)
    for ref, directory in layout.stage_dirs():
        for name in ("mask.pt", "final_mask.pt"):  # final_mask.pt: where dynamic sparse training ended
            if (directory / name).is_file():
                parent.log_artifact(directory / name, f"masks/{ref.relative}")

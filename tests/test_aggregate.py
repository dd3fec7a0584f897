"""Seeds aggregated: mean, std, n, 95% t intervals, paired IMP - baseline differences, the figure and the table."""
from __future__ import annotations

import math
import statistics

import pytest
from matplotlib.collections import PolyCollection

from lottery.cli import main
from lottery.report.aggregate import Summary, aggregate, build_experiment_report, figure, side_by_side
from lottery.run.files import write_json

# Two densities, three seeds; IMP, snip and a branch, with made-up accuracies.
ACCURACY = {  # series -> density -> per-seed final accuracies
    "level": {1.0: [0.90, 0.92, 0.91], 0.8: [0.93, 0.95, 0.94], 0.64: [0.92, 0.93, 0.97]},
    "snip": {0.8: [0.91, 0.92, 0.90], 0.64: [0.88, 0.90, 0.89]},
    "reinit": {0.64: [0.85, 0.86, 0.87]},
}


def _rows(seed: int) -> list[dict]:
    rows = []
    for level, density in enumerate((1.0, 0.8, 0.64)):
        accuracy = ACCURACY["level"][density][seed]
        rows.append({"stage": f"level_{level:02d}", "kind": "level", "level": level, "density": density,
                     "final_test_acc": accuracy, "early_stop_test_acc": accuracy - 0.01})
    for density, values in ACCURACY["snip"].items():
        rows.append({"stage": f"baseline/init/snip/density_{density:.6f}", "kind": "baseline", "method": "snip",
                     "at": "init", "level": None, "density": density, "final_test_acc": values[seed],
                     "early_stop_test_acc": None})
    rows.append({"stage": "branch/reinit/level_02", "kind": "branch", "branch": "reinit", "level": 2, "density": 0.64,
                 "final_test_acc": ACCURACY["reinit"][0.64][seed], "early_stop_test_acc": 0.8})
    return rows


def test_summary_is_mean_std_and_a_t_interval():
    values = [0.90, 0.92, 0.97]
    summary = Summary.of(values)
    assert summary.mean == pytest.approx(statistics.fmean(values))
    assert summary.std == pytest.approx(statistics.stdev(values))
    half = 4.302652729749462 * statistics.stdev(values) / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (summary.low, summary.high) == pytest.approx((summary.mean - half, summary.mean + half))
    assert summary.text() == f"{summary.mean:.4f} ± {summary.std:.4f} (3)"
    single = Summary.of([0.5])
    assert single.std == 0 and single.low == single.high == 0.5 and single.n == 1


def test_aggregate_groups_by_series_and_density_and_pairs_imp_with_each_baseline():
    result = aggregate({seed: _rows(seed) for seed in range(3)})
    assert result.seeds == [0, 1, 2]
    assert result.series() == ["ticket", "branch reinit", "snip"]
    final = result.summaries["final_test_acc"]
    assert final["ticket"]["0.800000"].mean == pytest.approx(0.94)
    assert final["snip"]["0.640000"].n == 3
    paired = result.paired["final_test_acc"]["snip"]["0.640000"]
    differences = [a - b for a, b in zip(ACCURACY["level"][0.64], ACCURACY["snip"][0.64])]
    assert paired.mean == pytest.approx(statistics.fmean(differences))
    assert paired.std == pytest.approx(statistics.stdev(differences))
    assert "snip" not in result.summaries["early_stop_test_acc"]  # no early-stopping accuracy: left out
    assert result.dense["final_test_acc"].mean == pytest.approx(0.91)


def test_the_table_has_a_row_per_density_and_a_column_per_series():
    result = aggregate({seed: _rows(seed) for seed in range(3)})
    lines = side_by_side(result).splitlines()
    assert lines[0].split() == ["density", "ticket", "branch", "reinit", "snip"]
    assert lines[2].startswith("1.000000") and lines[-1].startswith("0.640000")
    assert f"{statistics.fmean(ACCURACY['snip'][0.64]):.4f} ± " in lines[-1] and "(3)" in lines[-1]


def test_the_figure_shades_mean_plus_minus_std_per_series_and_ticks_every_density():
    result = aggregate({seed: _rows(seed) for seed in range(3)})
    axes = figure(result).axes[0]
    assert axes.get_xscale() == "log" and axes.xaxis_inverted()
    assert axes.get_xlabel() and "std" in axes.get_ylabel()
    bands = [c for c in axes.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3
    names = [line.get_label() for line in axes.get_lines() if not line.get_label().startswith("dense")]
    snip = bands[names.index("snip")].get_paths()[0].vertices
    expected = result.summaries["final_test_acc"]["snip"]["0.640000"]
    at = snip[abs(snip[:, 0] - 0.64) < 1e-9, 1]  # the band's lower and upper edge at density 0.64
    assert (at.min(), at.max()) == pytest.approx((expected.mean - expected.std, expected.mean + expected.std))
    assert sorted(axes.get_xticks()) == pytest.approx([0.64, 0.8, 1.0])
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["0.64", "0.8", "1"]


def test_a_figure_with_no_finished_stage_says_so_instead_of_an_empty_legend(recwarn):
    rows = [{key: value for key, value in row.items() if key != "final_test_acc"} for row in _rows(0)]
    axes = figure(aggregate({0: rows})).axes[0]
    assert axes.get_legend() is None and not axes.get_lines()
    assert [text.get_text() for text in axes.texts] == ["no finished stage has final test accuracy yet"]
    assert not [warning for warning in recwarn if "legend" in str(warning.message)]


def test_report_on_an_experiment_folder_writes_the_aggregate(tmp_path, capsys):
    experiment = tmp_path / "runs" / "toy" / "abcd1234"
    for seed in range(3):
        write_json(experiment / f"seed_{seed}" / "results.json", {"rows": _rows(seed)})
    report = build_experiment_report(experiment)
    assert {path.name for path in report.files} >= {"aggregate.json", "aggregate.md",
                                                     "accuracy_vs_density_final_test_acc.png"}
    assert main(["report", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "mean ± std" in out and "IMP - snip" in out

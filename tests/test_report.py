"""`lottery report`: the table and figures from a run directory built directly on disk."""
from __future__ import annotations

import json

import pytest
from matplotlib.image import imread

from lottery.cli import main
from lottery.run.files import write_json
from lottery.report.figures import accuracy_vs_density_figure
from lottery.report.run_report import build_report, find_stages, load_series, table_rows
from lottery.report.tables import OPTIMISTIC_NOTE, series_table
from lottery.run.files import read_json
from tests.conftest_mlflow import make_run_dir, tiny_tracked_config


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path, tiny_tracked_config("sqlite:///unused.db", "report"))


def test_series_cover_ticket_branches_and_each_baseline_method(run_dir):
    series = load_series(run_dir)
    assert [(s.label, s.kind) for s in series] == [
        ("ticket", "ticket"), ("dense", "dense"), ("branch reinit", "branch"), ("random", "baseline"),
        ("snip", "baseline")]
    ticket = series[0]
    assert [row["level"] for row in ticket.rows] == [0, 1, 2]
    assert [stage.key for stage in ticket.stages] == ["level_00", "level_01", "level_02"]
    assert [stage.key for stage in series[1].stages] == ["dense"]
    assert [stage.key for stage in series[2].stages] == ["branch/reinit/level_01", "branch/reinit/level_02"]
    snip = series[4]
    assert [stage.key for stage in snip.stages] == ["baseline/init/snip/density_0.800000",
                                                    "baseline/init/snip/density_0.640000"]
    assert snip.rows[0]["density"] > snip.rows[1]["density"]


def test_unfinished_stages_are_left_out(run_dir):
    (run_dir / "level_02" / "DONE").unlink()
    keys = [stage.key for stage in find_stages(run_dir)]
    assert "level_01" in keys and "level_02" not in keys


def test_table_lists_every_row_with_its_numbers(run_dir):
    table = table_rows(load_series(run_dir))
    assert len(table) == 3 + 1 + 2 + 4
    level1 = next(row for row in table if row["series"] == "ticket" and row["level"] == 1)
    stored = json.loads((run_dir / "level_01" / "metrics.json").read_text())["row"]
    assert level1["density"] == stored["density"]
    assert level1["final_test_acc"] == stored["final_test_acc"]
    assert level1["early_stop_step"] == 30
    text, note = series_table(table).split("\n\n")
    assert note == OPTIMISTIC_NOTE  # the max-accuracy column is labelled as optimistic
    lines = text.splitlines()
    assert lines[0].startswith("| series") and "early-stop acc" in lines[0] and "max acc" in lines[0]
    assert len(lines) == 2 + len(table)
    assert f"{stored['density']:.4f}" in lines[3]
    assert len({len(line) for line in lines}) == 1, "columns are aligned"


def test_build_report_writes_pngs_table_and_sparsity(run_dir, tmp_path):
    report = build_report(run_dir, tmp_path / "out")
    names = {path.name for path in report.files}
    assert {"accuracy_vs_density.png", "layer_density.png", "accuracy_vs_step_ticket.png",
            "accuracy_vs_step_branch_reinit.png", "accuracy_vs_step_dense.png", "accuracy_vs_step_snip.png",
            "accuracy_vs_step_random.png",
            "report.md", "sparsity.json"} == names
    for path in report.files:
        if path.suffix == ".png":
            assert imread(path).shape[0] > 100, path
    assert report.table in (tmp_path / "out" / "report.md").read_text()
    sparsity = read_json(tmp_path / "out" / "sparsity.json")["stages"]
    assert sparsity["baseline/init/random/density_0.640000"]["collapsed"] == ["features.2.weight"]
    assert sparsity["baseline/init/random/density_0.640000"]["layers"]["features.2.weight"] == 0.0
    assert sparsity["level_00"]["layers"]["output.weight"] == 1.0
    assert sum(not entry["collapsed"] for entry in sparsity.values()) == len(sparsity) - 1
    assert len(sparsity) == 10


def test_accuracy_vs_density_axes_are_log_and_one_line_per_series(run_dir):
    series = load_series(run_dir)
    figure = accuracy_vs_density_figure(series)
    axes = figure.axes[0]
    assert axes.get_xscale() == "log"
    assert axes.xaxis_inverted()
    assert [line.get_label() for line in axes.lines] == [s.label for s in series]
    dense_line = axes.lines[1]  # a horizontal reference at the dense accuracy
    assert set(dense_line.get_ydata()) == {series[1].rows[0]["final_test_acc"]}
    ticket_line = axes.lines[0]
    assert list(ticket_line.get_xdata()) == sorted((r["density"] for r in series[0].rows), reverse=True)


def test_results_json_alone_is_enough_for_the_table(tmp_path):
    run_dir = tmp_path / "only_results"
    write_json(run_dir / "results.json", {"rows": [
        {"stage": "level_00", "kind": "level", "level": 0, "density": 1.0, "compression": 0.0,
         "final_test_acc": 0.9, "best_test_acc": 0.91, "early_stop_step": None},
        {"stage": "level_01", "kind": "level", "level": 1, "density": 0.8, "compression": 0.097,
         "final_test_acc": 0.92, "best_test_acc": 0.93, "early_stop_step": 40}]})
    report = build_report(run_dir)
    assert (run_dir / "report" / "accuracy_vs_density.png").is_file()
    assert "0.9200" in report.table and "| ticket" in report.table


def test_report_command_prints_the_table_and_writes_files(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    assert "| series" in out and "branch reinit" in out and "snip" in out
    assert (tmp_path / "fig" / "accuracy_vs_density.png").is_file()


def test_report_command_names_a_missing_or_broken_run_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err
    broken = tmp_path / "broken"
    (broken / "level_00").mkdir(parents=True)
    (broken / "level_00" / "DONE").touch()
    (broken / "level_00" / "metrics.json").write_text("{not json")
    assert main(["report", str(broken)]) == 1
    assert "level_00/metrics.json" in capsys.readouterr().err

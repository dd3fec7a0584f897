"""`lottery reproduce lth|snip`: the papers' headline LeNet-300-100 results, on CPU.

lth:  Frankle & Carbin 2019, Figure 3/4: IMP at 20% per layer (output 10%), 18 levels, plus
      the random-reinit branch at levels 3, 7, 12 and 15; accuracy at the early-stopping step.
snip: Lee et al. 2019, Table 1: SNIP at 95% and 98% sparsity against the dense network.
"""
from __future__ import annotations

import logging
from pathlib import Path

from lottery.config import load_config
from lottery.report.figures import density_axis, new_figure
from lottery.report.tables import format_table
from lottery.run.files import atomic_write_text, write_json

logger = logging.getLogger(__name__)

LTH_REINIT_LEVELS = [3, 7, 12, 15]
LTH_CHECKPOINTS = (0.51, 0.21, 0.07, 0.036, 0.019)  # fractions of weights the README reports
SNIP_PAPER_ERRORS = {"dense": 1.7, 0.05: 1.6, 0.02: 2.4}  # test error in %, SNIP Table 1


def _nearest(rows: list[dict], density: float) -> dict:
    return min(rows, key=lambda row: abs(row["density"] - density))


def _accuracy(row: dict) -> float:
    value = row.get("early_stop_test_acc")
    return row["final_test_acc"] if value is None else value


def lth_summary(ticket_rows: list[dict], reinit_rows: list[dict]) -> dict:
    """The claims the README reports, computed from the results rows."""
    dense = _accuracy(ticket_rows[0])
    nearest = {f"{target:.3f}": _nearest(ticket_rows, target) for target in LTH_CHECKPOINTS}
    beats_dense = [row for row in ticket_rows[1:] if row["density"] >= 0.135]
    reinit_pairs = []
    for reinit in reinit_rows:
        ticket = next(row for row in ticket_rows if row["level"] == reinit["level"])
        reinit_pairs.append({"level": reinit["level"], "density": reinit["density"],
                             "ticket": _accuracy(ticket), "reinit": _accuracy(reinit)})
    return {
        "dense_accuracy": dense,
        "accuracy_at": {key: {"density": row["density"], "accuracy": _accuracy(row)} for key, row in nearest.items()},
        "tickets_beat_dense_down_to_13_5pct": all(_accuracy(row) > dense for row in beats_dense),
        "tickets_beat_dense_by_0_3_points": all(_accuracy(row) >= dense + 0.003 for row in beats_dense),
        "reinit_worse": all(pair["reinit"] < pair["ticket"] for pair in reinit_pairs),
        "reinit": reinit_pairs,
    }


def lth_figure_objects(ticket_rows: list[dict], reinit_rows: list[dict]) -> dict:
    """File name -> Figure: accuracy at the early-stopping step, and the early-stopping iteration, vs density."""
    figures = {}
    for name, key, ylabel in (("lth_accuracy.png", None, "test accuracy at early-stop step"),
                              ("lth_early_stop.png", "early_stop_step", "early-stopping iteration")):
        figure, axes = new_figure(6, 4)
        for label, rows, style in (("ticket (rewind to θ0)", ticket_rows, "o-"), ("random reinit", reinit_rows, "s--")):
            axes.plot([row["density"] for row in rows], [_accuracy(row) if key is None else row[key] for row in rows],
                      style, label=label)
        density_axis(axes, [row["density"] for row in [*ticket_rows, *reinit_rows]],
                     "fraction of weights remaining (log scale)")
        axes.set_ylabel(ylabel)
        axes.set_title("LeNet-300-100 on MNIST, IMP (Frankle & Carbin 2019)")
        axes.grid(True, which="major", alpha=0.3)
        axes.legend()
        figures[name] = figure
    return figures


def lth_figures(ticket_rows: list[dict], reinit_rows: list[dict], out_dir: Path) -> list[Path]:
    paths = []
    for name, figure in lth_figure_objects(ticket_rows, reinit_rows).items():
        path = out_dir / name
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


def _lth_markdown(summary: dict, ticket_rows: list[dict], reinit_rows: list[dict]) -> str:
    reinit = {row["level"]: _accuracy(row) for row in reinit_rows}
    cells = [[str(row["level"]), f"{100 * row['density']:.2f}", f"{_accuracy(row):.4f}", str(row["early_stop_step"]),
              "" if reinit.get(row["level"]) is None else f"{reinit[row['level']]:.4f}"] for row in ticket_rows]
    lines = [format_table(["level", "% weights", "ticket acc (early stop)", "early-stop step", "reinit acc"], cells,
                          markdown=True)]
    lines += ["", f"dense accuracy: {summary['dense_accuracy']:.4f}"]
    for target, info in summary["accuracy_at"].items():
        lines.append(f"at ~{100 * float(target):.1f}% (level density {100 * info['density']:.2f}%): "
                     f"{info['accuracy']:.4f}")
    lines.append(f"tickets beat dense down to 13.5%: {summary['tickets_beat_dense_down_to_13_5pct']} "
                 f"(by >= 0.3 points: {summary['tickets_beat_dense_by_0_3_points']})")
    lines.append(f"random reinit worse at every branch level: {summary['reinit_worse']}")
    return "\n".join(lines) + "\n"


def reproduce_lth(overrides: list[str]) -> dict:
    from lottery.workflows.branches import run_branch
    from lottery.workflows.ticket import run_ticket

    config = load_config("lenet300", overrides)
    outcome = run_ticket(config, "lottery reproduce lth")
    levels = [level for level in LTH_REINIT_LEVELS if level <= config.ticket.levels]
    reinit_rows = run_branch(config, "reinit", levels, "lottery reproduce lth")
    out_dir = outcome.run_dir / "reproduce"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = lth_summary(outcome.rows, reinit_rows)
    lth_figures(outcome.rows, reinit_rows, out_dir)
    write_json(out_dir / "lth.json", summary)
    text = _lth_markdown(summary, outcome.rows, reinit_rows)
    atomic_write_text(out_dir / "lth.md", text)
    print(text)
    print(f"figures and tables: {out_dir}")
    return summary


def reproduce_snip(overrides: list[str]) -> dict:
    from lottery.run.layout import RunLayout
    from lottery.workflows.baselines import run_baselines
    from lottery.workflows.dense import run_dense

    config = load_config("snip_lenet300", overrides)
    dense = run_dense(config, "lottery reproduce snip")
    rows = run_baselines(config, ["snip"], [0.05, 0.02], "init", "lottery reproduce snip")
    cells = []
    entries = [("dense", dense, SNIP_PAPER_ERRORS["dense"])]
    entries += [(f"SNIP {100 * (1 - row['density']):.0f}%", row, SNIP_PAPER_ERRORS[round(row["density"], 2)])
                for row in rows]
    summary = {}
    for label, row, paper in entries:
        final_error = 100 * (1 - row["final_test_acc"])
        early_stop_error = 100 * (1 - _accuracy(row))
        summary[label] = {"final_error": final_error, "early_stop_error": early_stop_error, "paper_error": paper,
                          "density": row["density"]}
        cells.append(["LeNet-300-100", label, f"{final_error:.2f}%", f"{early_stop_error:.2f}%", f"{paper:.1f}%"])
    out_dir = RunLayout.of(config).run_dir / "reproduce"
    write_json(out_dir / "snip.json", summary)
    text = format_table(["network", "sparsity", "test error (ours, final)", "test error (ours, early stop)", "paper"],
                        cells, markdown=True) + "\n"
    atomic_write_text(out_dir / "snip.md", text)
    print(text)
    print(f"tables: {out_dir}")
    return summary

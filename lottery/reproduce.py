"""`lottery reproduce lth|snip`: the papers' headline LeNet-300-100 results, on CPU.

lth:  Frankle & Carbin 2019, Figure 3/4: IMP at 20% per layer (output 10%), 18 levels, plus
      the random-reinit branch at levels 3, 7, 12 and 15; accuracy at the early-stopping step.
snip: Lee et al. 2019, Table 1: SNIP at 95% and 98% sparsity against the dense network.
"""
from __future__ import annotations

import logging
from pathlib import Path

from lottery.cli import register
from lottery.config import load_config
from lottery.io import atomic_write_text, write_json

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


def lth_figures(ticket_rows: list[dict], reinit_rows: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, key, ylabel in (("lth_accuracy.png", None, "test accuracy at early-stop step"),
                              ("lth_early_stop.png", "early_stop_step", "early-stopping iteration")):
        figure, axis = plt.subplots(figsize=(6, 4))
        for label, rows, style in (("ticket (rewind to θ0)", ticket_rows, "o-"), ("random reinit", reinit_rows, "s--")):
            xs = [100 * row["density"] for row in rows]
            ys = [_accuracy(row) if key is None else row[key] for row in rows]
            axis.plot(xs, ys, style, label=label)
        axis.set_xscale("log")
        axis.invert_xaxis()
        axis.set_xlabel("% of weights remaining")
        axis.set_ylabel(ylabel)
        axis.set_title("LeNet-300-100 on MNIST, IMP (Frankle & Carbin 2019)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
        path = out_dir / name
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths


def _lth_markdown(summary: dict, ticket_rows: list[dict], reinit_rows: list[dict]) -> str:
    lines = ["| level | % weights | ticket acc (early stop) | early-stop step | reinit acc |", "|---|---|---|---|---|"]
    reinit = {row["level"]: _accuracy(row) for row in reinit_rows}
    for row in ticket_rows:
        other = reinit.get(row["level"])
        lines.append(f"| {row['level']} | {100 * row['density']:.2f} | {_accuracy(row):.4f} | "
                     f"{row['early_stop_step']} | {'' if other is None else f'{other:.4f}'} |")
    lines += ["", f"dense accuracy: {summary['dense_accuracy']:.4f}"]
    for target, info in summary["accuracy_at"].items():
        lines.append(f"at ~{100 * float(target):.1f}% (level density {100 * info['density']:.2f}%): "
                     f"{info['accuracy']:.4f}")
    lines.append(f"tickets beat dense down to 13.5%: {summary['tickets_beat_dense_down_to_13_5pct']} "
                 f"(by >= 0.3 points: {summary['tickets_beat_dense_by_0_3_points']})")
    lines.append(f"random reinit worse at every branch level: {summary['reinit_worse']}")
    return "\n".join(lines) + "\n"


def reproduce_lth(overrides: list[str]) -> dict:
    from lottery.branches import run_branch
    from lottery.ticket import run_ticket

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
    from lottery.baselines import run_baselines
    from lottery.dense import run_dense
    from lottery.experiment import run_directory

    config = load_config("snip_lenet300", overrides)
    dense = run_dense(config, "lottery reproduce snip")
    rows = run_baselines(config, ["snip"], [0.05, 0.02], "init", "lottery reproduce snip")
    lines = ["| network | sparsity | test error (ours, final) | test error (ours, best val) | paper |",
             "|---|---|---|---|---|"]
    entries = [("dense", dense, SNIP_PAPER_ERRORS["dense"])]
    entries += [(f"SNIP {100 * (1 - row['density']):.0f}%", row, SNIP_PAPER_ERRORS[round(row["density"], 2)])
                for row in rows]
    summary = {}
    for label, row, paper in entries:
        final_error = 100 * (1 - row["final_test_acc"])
        best_val_error = 100 * (1 - _accuracy(row))
        summary[label] = {"final_error": final_error, "early_stop_error": best_val_error, "paper_error": paper,
                          "density": row["density"]}
        lines.append(f"| LeNet-300-100 | {label} | {final_error:.2f}% | {best_val_error:.2f}% | {paper:.1f}% |")
    out_dir = run_directory(config) / "reproduce"
    write_json(out_dir / "snip.json", summary)
    text = "\n".join(lines) + "\n"
    atomic_write_text(out_dir / "snip.md", text)
    print(text)
    print(f"tables: {out_dir}")
    return summary


@register("reproduce")
def reproduce_command(args, argv) -> int:
    if args.paper == "lth":
        reproduce_lth(args.overrides)
    else:
        reproduce_snip(args.overrides)
    return 0

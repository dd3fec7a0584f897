"""`lottery reproduce lth|snip|dst`: the papers' LeNet-300-100 results on MNIST, over 3 seeds, through the orchestrator.

lth:  Frankle & Carbin 2019, Figures 3/4: IMP at 20% per layer (output 10%), 18 levels, plus the random-reinit
      control at levels 3, 7, 12 and 15; test accuracy at the early-stopping step, mean ± std over the seeds.
snip: Lee et al. 2019, Table 1: SNIP at 95% and 98% sparsity against the dense network, with the candidate causes
      of the gap to the paper each as its own run (training length, initialisation, the pruning batch).
dst:  IMP against RigL, SET, SNIP, random and the small-dense control at 3.6% and 1.8% of the weights, on a
      shortened schedule, with the prune potential on clean and Gaussian-noise test images.
Every number is computed from the run directories; the outputs go to <experiment dir>/reproduce/.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

from lottery.config import Config, load_config
from lottery.orchestrate.experiment import run_experiment
from lottery.orchestrate.graph import seeds_of
from lottery.report.aggregate import Summary, collect
from lottery.report.figures import density_axis, new_figure
from lottery.report.tables import format_table
from lottery.run.files import atomic_write_text, write_json
from lottery.run.layout import StageRef

logger = logging.getLogger(__name__)

LTH_CHECKPOINTS = (0.51, 0.21, 0.07, 0.036, 0.019)  # fractions of weights the README reports
SNIP_PAPER_ERRORS = {"dense": 1.7, 0.05: 1.6, 0.02: 2.4}  # test error in %, SNIP Table 1
SNIP_VARIANTS = {  # each a candidate cause of the gap to the paper, as overrides of experiments/snip_lenet300.yaml
    "as shipped (100K it, Glorot normal, 10 per class)": [],
    "40K iterations": ["train.steps=40000it", "train.milestones=[25000it]"],
    "variance-scaling init": ["model.init=variance_scaling"],
    "one random batch of 100": ["baseline.batch=random"],
    "trained from a fresh draw": ["baseline.fresh_weights=true"],  # snip-public trains weights_ap, not those scored
}
DST_METHODS = ("rigl", "set", "snip", "random", "small_dense")
DST_TARGETS = (0.036, 0.018)


def _accuracy(row: dict) -> float:
    value = row.get("early_stop_test_acc")
    return row["final_test_acc"] if value is None else value


def _nearest(rows: list[dict], density: float) -> dict:
    return min(rows, key=lambda row: abs(row["density"] - density))


def series_means(rows_by_seed: dict[int, list[dict]], series: str) -> list[dict]:
    """One row per level (or density) of `series`: accuracy at the early-stopping step as mean, std and n over the
    seeds, the final accuracy and the early-stopping step as means."""
    grouped: dict[tuple, list[dict]] = {}
    for rows in rows_by_seed.values():
        for row in rows:
            ref = StageRef.from_key(row.get("stage", ""))
            if ref is not None and ref.series == series:
                grouped.setdefault((row.get("level") if isinstance(row.get("level"), int) else -1,
                                    round(row["density"], 6)), []).append(row)
    means = []
    for (level, _), rows in sorted(grouped.items(), key=lambda item: (item[0][0], -item[0][1])):
        accuracy = Summary.of([_accuracy(row) for row in rows])
        steps = [row["early_stop_step"] for row in rows if row.get("early_stop_step") is not None]
        means.append({"level": level if level >= 0 else None, "density": rows[0]["density"],
                      "early_stop_test_acc": accuracy.mean, "std": accuracy.std, "n": accuracy.n,
                      "final_test_acc": statistics.fmean(row["final_test_acc"] for row in rows),
                      "early_stop_step": statistics.fmean(steps) if steps else None})
    return means


def lth_summary(ticket_rows: list[dict], reinit_rows: list[dict]) -> dict:
    """The paper's claims, read off the (mean) rows."""
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
    """File name -> Figure: accuracy at the early-stopping step (mean, shaded ± std), and the early-stopping
    iteration, against the fraction of weights remaining."""
    figures = {}
    for name, key, ylabel in (("lth_accuracy.png", None, "test accuracy at early-stop step"),
                              ("lth_early_stop.png", "early_stop_step", "early-stopping iteration")):
        figure, axes = new_figure(6, 4)
        for label, rows, style in (("ticket (rewind to θ0)", ticket_rows, "o-"), ("random reinit", reinit_rows, "s--")):
            xs = [row["density"] for row in rows]
            ys = [_accuracy(row) if key is None else row[key] for row in rows]
            line, = axes.plot(xs, ys, style, label=label)
            if key is None and all("std" in row for row in rows):
                axes.fill_between(xs, [y - row["std"] for y, row in zip(ys, rows)],
                                  [y + row["std"] for y, row in zip(ys, rows)], color=line.get_color(), alpha=0.2)
        density_axis(axes, [row["density"] for row in [*ticket_rows, *reinit_rows]],
                     "fraction of weights remaining (log scale)")
        # two lines: on one, the label is taller than the axes and is cut off at both ends
        axes.set_ylabel(ylabel + ("\n(mean ± std over seeds)" if key is None else "\n(mean over seeds)"))
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


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    return f"{_accuracy(row):.4f}" + (f" ± {row['std']:.4f} ({row['n']})" if "std" in row else "")


def lth_markdown(summary: dict, ticket_rows: list[dict], reinit_rows: list[dict]) -> str:
    reinit = {row["level"]: row for row in reinit_rows}
    cells = [[str(row["level"]), f"{100 * row['density']:.2f}", _cell(row),
              "" if row["early_stop_step"] is None else f"{row['early_stop_step']:.0f}", _cell(reinit.get(row["level"]))]
             for row in ticket_rows]
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


def _run(config: Config, command: str):
    started = time.perf_counter()
    outcome = run_experiment(config, command)
    return outcome, time.perf_counter() - started


def reproduce_lth(overrides: list[str]) -> dict:
    config = load_config("lenet300", ["experiment.baselines.methods=[]", "run.workers=2", *overrides])
    outcome, seconds = _run(config, "lottery reproduce lth")
    rows_by_seed = collect(outcome.directory)
    ticket, reinit = series_means(rows_by_seed, "ticket"), series_means(rows_by_seed, "branch reinit")
    summary = {**lth_summary(ticket, reinit), "seeds": sorted(rows_by_seed), "wall_seconds": seconds,
               "workers": config.run.workers, "pack": config.run.pack, "ticket": ticket, "reinit_rows": reinit}
    out_dir = outcome.directory / "reproduce"
    out_dir.mkdir(parents=True, exist_ok=True)
    lth_figures(ticket, reinit, out_dir)
    write_json(out_dir / "lth.json", summary)
    text = lth_markdown(summary, ticket, reinit) + f"\n{len(rows_by_seed)} seeds, {seconds / 60:.1f} minutes\n"
    atomic_write_text(out_dir / "lth.md", text)
    print(text)
    print(f"figures and tables: {out_dir}")
    return summary


def _errors(rows: list[dict]) -> dict:
    """Test error in %, as mean ± std over the seeds' rows: final, at the early-stopping step (minimum validation
    loss), and the minimum over the evaluations. The last selects on the test set; it is the SNIP code's
    convention (snip/test.py prints 1 - max test accuracy over its checkpoints), shown only to compare with it."""
    final = Summary.of([100 * (1 - row["final_test_acc"]) for row in rows])
    early = Summary.of([100 * (1 - _accuracy(row)) for row in rows])
    best = Summary.of([100 * (1 - row["best_test_acc"]) for row in rows])
    return {"final": vars(final), "early_stop": vars(early), "min_over_evaluations": vars(best),
            "density": rows[0]["density"]}


def reproduce_snip(overrides: list[str]) -> dict:
    summary, cells = {}, []
    for variant, changes in SNIP_VARIANTS.items():
        config = load_config("snip_lenet300", ["ticket.levels=0", "experiment.seeds=[0, 1, 2]",
                                                "experiment.baselines.methods=[snip]",
                                                "experiment.baselines.densities=[0.05, 0.02]", "run.workers=2",
                                                *changes, *overrides])
        outcome, seconds = _run(config, f"lottery reproduce snip ({variant})")
        rows = [row for seed_rows in collect(outcome.directory).values() for row in seed_rows]
        entries = {"dense": [row for row in rows if row.get("kind") == "level"]}
        # variants that change only baseline.* share the run directory (and its dense network): the folder tells
        # this variant's SNIP from the others'
        snip = [row for row in rows if row.get("kind") == "baseline" and _series(row) == _snip_folder(config)]
        for density in (0.05, 0.02):
            entries[density] = [row for row in snip if abs(row["density"] - density) < 1e-3]
        summary[variant] = {"minutes": seconds / 60, "directory": str(outcome.directory)}
        for label, group in entries.items():
            errors = _errors(group)
            summary[variant][str(label)] = errors
            name = "dense" if label == "dense" else f"SNIP {100 * (1 - label):.0f}%"
            cells.append([variant, name, _error_text(errors["final"]), _error_text(errors["early_stop"]),
                          _error_text(errors["min_over_evaluations"]),
                          f"{SNIP_PAPER_ERRORS[label]:.1f}%"])
    text = format_table(["run", "network", "test error, final", "test error, early stop",
                         "min over evaluations (test-selected, as the SNIP code reports)", "paper"], cells,
                        markdown=True) + "\n"
    modes = snip_bn_modes_agree(load_config("snip_lenet300", list(overrides)))
    summary["bn_modes_agree"] = modes
    text += ("\nBatchNorm mode while scoring: LeNet-300-100 has no BatchNorm (or dropout), and SNIP's masks of "
             f"seed 0 scored in train and in eval mode are {'identical' if all(modes.values()) else 'DIFFERENT'} "
             f"at {', '.join(f'density {density}' for density in modes)}, so the mode cannot explain the gap.\n")
    out_dir = Path(summary[next(iter(SNIP_VARIANTS))]["directory"]) / "reproduce"
    write_json(out_dir / "snip.json", summary)
    atomic_write_text(out_dir / "snip.md", text)
    print(text)
    print(f"tables: {out_dir}")
    return summary


def _series(row: dict) -> str | None:
    ref = StageRef.from_key(row.get("stage", ""))
    return ref.series if ref is not None else None


def _snip_folder(config: Config) -> str:
    from lottery.workflows.baselines import method_folder

    return method_folder(config, "snip")


def snip_bn_modes_agree(config: Config, densities: tuple = (0.05, 0.02)) -> dict[str, bool]:
    """Whether SNIP's mask of θ0 is the same scored in train and in eval mode, per density (one seed)."""
    from lottery.run.context import load_data, make_model
    from lottery.workflows.baselines import prune_model

    dataset = load_data(config)
    agree = {}
    for density in densities:
        masks = []
        for mode in ("train", "eval"):
            config.baseline.bn_mode = mode
            masks.append(prune_model(config, dataset, make_model(config, dataset), "snip", density=density).mask)
        agree[str(density)] = masks[0].equals(masks[1])
    config.baseline.bn_mode = "auto"
    return agree


def _error_text(summary: dict) -> str:
    return f"{summary['mean']:.2f}% ± {summary['std']:.2f} ({summary['n']})"


def reproduce_dst(overrides: list[str]) -> dict:
    """IMP and the other baselines at the ticket's levels nearest 3.6% and 1.8%, 3 seeds, a shortened schedule."""
    from lottery.report.aggregate import aggregate
    from lottery.run.context import load_data, make_model
    from lottery.workflows.baselines import method_folder, ticket_densities

    base = load_config("lenet300", ["train.steps=20000it", "train.eval_every=2000it", *overrides])
    densities = ticket_densities(base, make_model(base, load_data(base)))
    targets = [min(densities, key=lambda density: abs(density - target)) for target in DST_TARGETS]
    config = load_config("lenet300", ["train.steps=20000it", "train.eval_every=2000it", "experiment.branches={}",
                                      f"experiment.baselines.methods=[{', '.join(DST_METHODS)}]",
                                      "baseline.scope=global",  # SNIP's and random's convention, not IMP's layerwise
                                      f"experiment.baselines.densities=[{', '.join(map(repr, targets))}]",
                                      "experiment.evaluate.corruptions=[noise]", "run.workers=2", *overrides])
    outcome, seconds = _run(config, "lottery reproduce dst")
    result = aggregate(collect(outcome.directory))
    accuracies = result.summaries["final_test_acc"]
    series = ["ticket", *(method_folder(config, method) for method in DST_METHODS)]
    series += sorted(name for name in accuracies if name not in series and name != "dense")  # other settings' runs
    labels = {name: _dst_label(name, config) for name in series}
    cells = [[labels[name]] + [_at_density(accuracies.get(name, {}), density) for density in targets]
             for name in series]
    text = format_table(["method", *[f"final test accuracy, {100 * d:.2f}% of weights" for d in targets]], cells,
                        markdown=True)
    potentials = prune_potentials(outcome.directory)
    text += "\n\nprune potential (share of weights removed within " \
            f"{config.experiment.evaluate.margin:.1f} points of the dense network), mean ± std over seeds:\n\n"
    potential_cells = [[labels[name], *[potentials[name][condition].text(3) if condition in potentials[name]
                                        else "-" for condition in ("clean", "noise")]]
                       for name in series if name in potentials]
    text += format_table(["series", "clean", "Gaussian noise (mean over severities)"], potential_cells,
                         markdown=True)
    text += f"\n\n{len(seeds_of(config))} seeds, {config.train.steps} per training, {seconds / 60:.1f} minutes\n"
    out_dir = outcome.directory / "reproduce"
    write_json(out_dir / "dst.json", {"targets": targets, "minutes": seconds / 60, "table": cells,
                                      "prune_potential": {name: {condition: vars(summary) for condition, summary
                                                                 in by_condition.items()}
                                                          for name, by_condition in potentials.items()}})
    atomic_write_text(out_dir / "dst.md", text)
    print(text)
    print(f"tables: {out_dir}")
    return {"targets": targets, "table": cells, "prune_potential": potentials}


def _dst_label(series: str, config: Config) -> str:
    """A series' name in the dst tables: a scored baseline's folder hash says which selection it used."""
    from lottery.workflows.baselines import method_folder

    method = series.split("-")[0]
    if method not in DST_METHODS or series == "ticket":
        return series
    if series == method_folder(config, method) and series != method:
        return f"{method} (baseline.scope={config.baseline.scope})"
    if series == method and method_folder(config, method) != method:
        return f"{method} (baseline.scope=prune, i.e. {config.prune.scope})"
    return series


def _at_density(by_density: dict, density: float) -> str:
    """The summary at `density`, or at the density nearest it within 2 % (the small-dense control's parameter
    count matches a level's to within 2 %, not exactly); '-' if none."""
    nearest = min(by_density, key=lambda key: abs(float(key) - density), default=None)
    if nearest is None or abs(float(nearest) - density) > 0.02 * density:
        return "-"
    return by_density[nearest].text()


def prune_potentials(experiment_dir: Path) -> dict[str, dict[str, Summary]]:
    """Per series and condition, the prune potential of each seed's robustness summary, over the seeds."""
    from lottery.run.files import read_json
    from lottery.workflows.evaluate import summary_files

    values: dict[str, dict[str, list[float]]] = {}
    for seed_dir in sorted(experiment_dir.glob("seed_*")):
        path = summary_files(seed_dir)["json"]
        if not path.exists():
            continue
        for name, by_condition in read_json(path)["prune_potential"].items():
            for condition, entry in by_condition.items():
                values.setdefault(name, {}).setdefault(condition, []).append(entry["prune_potential"])
    return {name: {condition: Summary.of(found) for condition, found in by_condition.items()}
            for name, by_condition in values.items()}

"""The argument parser: one subcommand per command, help text from the schema and the registries."""
from __future__ import annotations

import argparse
import textwrap

from lottery.cli.help import WIDTH, config_reference, experiments_line

DESCRIPTION = "Lottery tickets and pruning at initialisation, tracked in MLflow, searched with Optuna."


def _with_config(parser: argparse.ArgumentParser, exp_required: bool = True) -> argparse.ArgumentParser:
    parser.add_argument("--exp", required=exp_required, metavar="EXP",
                        help="an experiment: experiments/EXP.yaml, or a path to a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.lr=0.05")
    return parser


def _command(commands, name: str, summary: str, runs: str, config: bool = True, exp_required: bool = True):
    """A subcommand whose help says what it runs, lists the shipped experiments and every config key."""
    epilog = f"{experiments_line()}\n\n{config_reference()}" if config else None
    description = textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {runs}", WIDTH)
    parser = commands.add_parser(name, help=summary, description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    return _with_config(parser, exp_required) if config else parser


def build_parser() -> argparse.ArgumentParser:
    from lottery.pruning.methods import METHODS, method_names
    from lottery.search.space import known_spaces
    from lottery.workflows.branches import BRANCHES

    parser = argparse.ArgumentParser(prog="lottery", description=DESCRIPTION,
                                     epilog="`lottery COMMAND --help` shows what a command runs and every config key.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(commands, "train", "train the dense model", "Trains θ0 to train.steps once, into RUN_DIR/dense.")
    ticket = _command(commands, "ticket", "IMP with rewinding, its baselines and controls, over seeds", "For each seed (experiment.seeds): saves θ0, trains to ticket.rewind_step (θk), "
                      "then trains, prunes prune.fraction of the remaining weights and rewinds to θk for each of "
                      "ticket.levels levels; alongside, every baseline (experiment.baselines) and control branch "
                      "(experiment.branches); on run.workers local workers, one per GPU, or Ray "
                      "(run.executor=ray). Ends with the seeds aggregated: IMP and its baselines side by side.")
    ticket.add_argument("--seeds", default=None, help="seeds to run, e.g. 0-4 or 0,3,7 (experiment.seeds)")
    ticket.add_argument("--dry-run", action="store_true", help="print the stages and what each waits for; run nothing")
    plan = _command(commands, "plan", "list the experiment's stages and what each waits for",
                    "The graph `lottery ticket` would run, after every check.")
    plan.add_argument("--seeds", default=None, help="seeds, e.g. 0-4 or 0,3,7 (experiment.seeds)")

    branch = _command(commands, "branch", "a control branch on the masks of an existing ticket run",
                      "Trains each given level's branch from θk (reinit: from new random weights).")
    branch.add_argument("--name", required=True, choices=tuple(BRANCHES),
                        help="; ".join(f"{name}: {entry.description}" for name, entry in BRANCHES.items()).replace("%", "%%"))
    branch.add_argument("--levels", required=True, help="ticket levels to branch from, e.g. 1-5 or 3,7,12")

    baselines = _command(commands, "baselines", "baselines at the ticket's densities",
                         "Prunes θ0 (or θk) with each method at each density and trains it like a ticket level; "
                         "rigl and set train sparse from a random mask and change it every baseline.update_every "
                         "steps; coreset and small_dense train a smaller dense network.")
    baselines.add_argument("--methods", default=None,
                           help=f"comma-separated methods (default: {','.join(method_names(structured=False))}); "
                                f"valid: {', '.join(METHODS)}")
    baselines.add_argument("--densities", default=None,
                           help="comma-separated densities in (0, 1] (default: the ticket's level densities, exact)")
    baselines.add_argument("--at", choices=("init", "rewind"), default="init",
                           help="prune and start from θ0 (init, default) or from θk (rewind)")

    prune = _command(commands, "prune", "prune θ0 with a method and report the mask, without training",
                     "Prints per-layer densities and collapsed layers, or with --critical the largest compression "
                     "without layer collapse.")
    prune.add_argument("--method", required=True, choices=tuple(METHODS),
                       help="; ".join(f"{name}: {m.description}" for name, m in METHODS.items()).replace("%", "%%"))
    target = prune.add_mutually_exclusive_group()
    target.add_argument("--density", type=float, help="fraction of the prunable weights to keep, in (0, 1]")
    target.add_argument("--compression", type=float, help="log10 compression: density = 10^-c")
    target.add_argument("--critical", action="store_true", help="find the critical compression by bisection")
    prune.add_argument("--json", action="store_true", help="print exactly one JSON object")
    prune.add_argument("--out", help="save the mask here")

    search = _command(commands, "search", "Optuna search over a space of config keys",
                      "Each trial is a whole ticket (or baselines) run; see configs/search/ for the spaces.")
    search.add_argument("--space", required=True,
                        help=f"a search space: NAME of configs/search/NAME.yaml ({', '.join(known_spaces())}), "
                             "or a path")
    search.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    search.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///optuna.db)")
    search.add_argument("--study", default=None, help="study name (default <exp>-<space>)")

    report = _command(commands, "report", "tables and figures of a run, or of an experiment's seeds", "Reads every finished stage's metrics.json (of one seed, or of every seed "
                      "with mean ± std and 95% intervals) and writes the tables and accuracy-vs-density "
                      "figures; trains nothing.", config=False)
    report.add_argument("run_dir", help="runs/<exp>/<hash>/seed_<s> (one seed) or runs/<exp>/<hash> (every seed)")
    report.add_argument("--out", default=None, help="figure folder (default: RUN_DIR/report)")

    evaluate = _command(commands, "evaluate", "accuracy of every stage on corrupted test sets",
                        "Evaluates each stage's trained weights on Gaussian noise, blur, contrast, brightness and "
                        "JPEG at each severity and writes robustness.json and a figure; trains nothing.",
                        config=False)
    evaluate.add_argument("run_dir", help="runs/<exp>/<hash>/seed_<s>")
    evaluate.add_argument("--corruptions", default=None,
                          help="comma-separated, default all: noise,blur,contrast,brightness,jpeg "
                               "(CIFAR-10-C parameters, Hendrycks & Dietterich 2019)")
    evaluate.add_argument("--severities", default=None, help="e.g. 1-5 (default) or 1,3,5")
    evaluate.add_argument("--margin", type=float, default=0.5,
                          help="prune potential: accuracy points below the unpruned network still counted (0.5)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the corrupted images (default 0)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value",
                          help="keys outside the run hash only, e.g. data.root=/data train.device=cuda")

    sync = _command(commands, "sync", "upload a finished run directory to MLflow",
                    "Re-attaches to the runs in RUN_DIR/tracking.json and logs only what MLflow lacks, so running "
                    "it twice creates no duplicates; says 'nothing to sync' when the directory is unchanged since "
                    "its last sync to the same store.", config=False)
    sync.add_argument("run_dir", help="runs/<exp>/<hash>/seed_<s>")
    sync.add_argument("overrides", nargs="*", metavar="key=value",
                      help="track.* keys choose the target, e.g. track.uri=http://host:5000 track.experiment=NAME")
    sync.add_argument("--force", action="store_true", help="upload even when nothing changed since the last sync")

    bench = _command(commands, "bench", "benchmarks: masking cost, data pipeline, scoring time, ...",
                     "Each benchmark times its candidate against a baseline, interleaved, in one process, and writes "
                     "a JSON report.", config=False)
    bench.add_argument("--out", default="bench.json", help="the JSON report (default bench.json)")
    bench.add_argument("--only", default=None, help="comma-separated benchmark names")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (for smoke tests)")

    reproduce = _command(commands, "reproduce", "reproduce a paper's result (lth, snip, dst)",
                         "lth: IMP on LeNet-300-100 with the random-reinit branch (Frankle & Carbin 2019); snip: SNIP at "
                         "95% and 98% sparsity (Lee et al. 2019); on MNIST, compared with the papers' numbers. "
                         "Overrides (key=value) apply to the paper's experiment.", config=False)
    reproduce.add_argument("paper", choices=("lth", "snip", "dst"),
                           help="lth: LTH paper's LeNet-300-100 tickets and reinit control; snip: SNIP Table 1 and the "
                                "candidate causes of the gap; dst: IMP against RigL, SET, SNIP, random and small-dense")
    reproduce.add_argument("overrides", nargs="*", metavar="key=value")

    export = _command(commands, "export", "export a level as a standalone state dict",
                      "Writes one level's trained, masked weights as a plain state dict, or its pruned layers as "
                      "CSR; trains nothing.", config=False)
    export.add_argument("run_dir", help="runs/<exp>/<hash>/seed_<s>")
    export.add_argument("--level", type=int, required=True, help="the ticket level to export")
    export.add_argument("--format", choices=("dense", "sparse"), default="dense",
                        help="dense: a plain state dict; sparse: pruned weights as CSR")
    export.add_argument("--out", required=True, help="the file to write")

    instability = _command(commands, "instability", "linear mode connectivity across rewind steps",
                           "Trains two copies from each θk with different data orders and measures the error "
                           "barrier between them.")
    instability.add_argument("--rewind-steps", required=True, help="comma-separated steps, e.g. 0,100it,500it,2ep")
    instability.add_argument("--level", type=int, default=None, help="use this ticket level's mask (default: dense)")
    return parser

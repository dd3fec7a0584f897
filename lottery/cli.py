"""`lottery <command>`: the command line. Each command's work lives in its own module."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys

from lottery.config import ConfigError, load_config

logger = logging.getLogger("lottery")

EXIT_CONFIG = 2
EXIT_NOT_IMPLEMENTED = 3


class NotImplementedYet(Exception):
    """A command whose feature is not built yet."""


def _add_config_arguments(parser: argparse.ArgumentParser, exp_required: bool = True) -> None:
    parser.add_argument("--exp", required=exp_required, help="experiments/NAME.yaml, or a path to a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.lr=0.05")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lottery", description="Lottery tickets and pruning at initialisation, tracked in MLflow, searched with Optuna.",
        epilog="Every command with --exp takes dotted key=value config overrides; see README.md.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    _add_config_arguments(commands.add_parser("train", help="train the dense model"))
    _add_config_arguments(commands.add_parser("ticket", help="iterative magnitude pruning with rewinding"))

    branch = commands.add_parser("branch", help="an ablation on the masks of an existing ticket run")
    branch.add_argument("--name", required=True, choices=("reinit", "shuffle", "random", "invert"))
    branch.add_argument("--levels", required=True, help="e.g. 1-5 or 3,7,12")
    _add_config_arguments(branch)

    baselines = commands.add_parser("baselines", help="pruning at initialisation at the ticket densities")
    baselines.add_argument("--methods", default="synflow,snip,grasp,magnitude,random")
    baselines.add_argument("--densities", default=None, help="comma-separated; default: the ticket levels'")
    baselines.add_argument("--at", choices=("init", "rewind"), default="init")
    _add_config_arguments(baselines)

    prune = commands.add_parser("prune", help="prune the model at init and report the mask")
    prune.add_argument("--method", required=True, choices=("magnitude", "random", "snip", "grasp", "synflow"))
    target = prune.add_mutually_exclusive_group()
    target.add_argument("--density", type=float)
    target.add_argument("--compression", type=float, help="log10 compression: density = 10^-c")
    target.add_argument("--critical", action="store_true", help="find the critical compression")
    prune.add_argument("--json", action="store_true", help="print exactly one JSON object")
    prune.add_argument("--out", help="save the mask here")
    _add_config_arguments(prune)

    search = commands.add_parser("search", help="Optuna search over a space of config keys")
    search.add_argument("--space", required=True)
    search.add_argument("--trials", type=int, required=True)
    search.add_argument("--storage", default=None)
    search.add_argument("--study", default=None)
    _add_config_arguments(search)

    report = commands.add_parser("report", help="tables and figures from a run directory")
    report.add_argument("run_dir")
    report.add_argument("--out", default=None, help="figure folder (default: RUN_DIR/report)")

    sync = commands.add_parser("sync", help="upload a finished run directory to MLflow")
    sync.add_argument("run_dir")
    sync.add_argument("overrides", nargs="*", metavar="key=value")

    bench = commands.add_parser("bench", help="benchmarks: masking cost, data pipeline, scoring time, ...")
    bench.add_argument("--out", default="bench.json")
    bench.add_argument("--only", default=None, help="comma-separated benchmark names")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (for smoke tests)")

    reproduce = commands.add_parser("reproduce", help="reproduce a paper's result (lth, snip)")
    reproduce.add_argument("paper", choices=("lth", "snip"))
    reproduce.add_argument("overrides", nargs="*", metavar="key=value")

    export = commands.add_parser("export", help="export a level as a standalone state dict")
    export.add_argument("run_dir")
    export.add_argument("--level", type=int, required=True)
    export.add_argument("--format", choices=("dense", "sparse"), default="dense")
    export.add_argument("--out", required=True)

    instability = commands.add_parser("instability", help="linear mode connectivity across rewind steps")
    instability.add_argument("--rewind-steps", required=True)
    instability.add_argument("--level", type=int, default=None)
    _add_config_arguments(instability)
    return parser


def _config(args):
    return load_config(args.exp, args.overrides)


def _command_line(argv) -> str:
    return "lottery " + " ".join(shlex.quote(a) for a in argv)


def dispatch(args, argv) -> int:
    command = args.command
    if command == "train":
        from lottery.dense import run_dense

        run_dense(_config(args), _command_line(argv))
    elif command == "ticket":
        from lottery.ticket import run_ticket

        run_ticket(_config(args), _command_line(argv))
    elif command == "prune":
        from lottery.prune_command import run_prune_command

        return run_prune_command(args, _config(args))
    else:
        handler = _LATER_COMMANDS.get(command)
        if handler is None:
            raise NotImplementedYet(f"'lottery {command}' is not implemented yet")
        return handler(args, argv)
    return 0


_LATER_COMMANDS: dict = {}


def register(name: str):
    """Commands added by later modules register here (a plain registry)."""
    def decorate(function):
        _LATER_COMMANDS[name] = function
        return function
    return decorate


def _load_command_modules() -> None:
    import importlib

    for module in ("lottery.branches", "lottery.baselines", "lottery.report_command", "lottery.search_command",
                   "lottery.bench", "lottery.reproduce", "lottery.export", "lottery.instability", "lottery.sync"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "optuna", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    _load_command_modules()
    from lottery import distributed
    from lottery.data import DataError
    from lottery.io import RunLockedError

    finished = False
    try:
        distributed.init_from_environment()
        code = dispatch(args, argv) or 0
        finished = True
        return code
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (DataError, RunLockedError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except NotImplementedYet as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    finally:
        distributed.shutdown(synchronize=finished)

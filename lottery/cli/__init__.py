"""`lottery <command>`: the command line, a leaf that no library module imports.

main() handles every LotteryError in one place: one `error:` line on stderr and the error's exit code
(2 for config errors, 1 for missing files, unusable data, corrupted artefacts). It is also where the
process-wide OpenMP setting is made, before torch is first imported; importing the library changes
no environment variable.
"""
from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("lottery")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "optuna", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_arguments(parser, argv: list[str]):
    """parse_args, except that key=value overrides may also come after a command's options (argparse gives
    the positional list only the ones before them)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads spin by default; on a busy CPU that makes small steps 20-100x slower. This must be
    # set before torch is first imported; an explicit user setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from lottery.cli.commands import COMMANDS
    from lottery.cli.parser import build_parser
    from lottery.errors import LotteryError
    from lottery.run import distributed

    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(build_parser(), argv)
    setup_logging(args.verbose)
    finished = False
    try:
        distributed.init_from_environment()
        code = COMMANDS[args.command](args, argv) or 0
        finished = True
        return code
    except LotteryError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        distributed.shutdown(synchronize=finished)

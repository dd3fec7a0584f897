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


def parse(parser, argv: list[str]):
    """Parse, letting key=value overrides come after the options too (`--seeds 0-4 run.workers=2`)."""
    args, extra = parser.parse_known_args(argv)
    overrides = [token for token in extra if "=" in token and not token.startswith("-")]
    rest = [token for token in extra if token not in overrides]
    if rest or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(rest or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
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
    args = parse(build_parser(), argv)
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

"""`lottery search --exp EXP --space configs/search/NAME.yaml --trials N [--storage URL] [--study NAME]`."""
from __future__ import annotations

import logging
import sys

from lottery.cli import register
from lottery.config import load_config
from lottery.search_request import DEFAULT_STORAGE, SearchRequest
from lottery.search_space import load_space, search_config

logger = logging.getLogger(__name__)

EXIT_SEARCH_FAILED = 1
EXIT_INTERRUPTED = 130


def build_request(args, command: str) -> SearchRequest:
    """Everything checked before Optuna is touched: bad spaces and configs fail here (exit 2)."""
    space = load_space(args.space)
    config = search_config(load_config(args.exp, args.overrides), space, args.overrides)
    return SearchRequest(config, space, args.trials, args.storage or DEFAULT_STORAGE, args.study, command)


def summary(outcome) -> str:
    counts = ", ".join(f"{count} {state.lower()}" for state, count in outcome.counts.items() if count)
    lines = [f"study {outcome.study_name}: {counts}", f"results: {outcome.directory}"]
    if outcome.best is not None:
        lines.append(f"best trial {outcome.best['number']}: {outcome.best['values']} {outcome.best['params']}")
    for trial in outcome.pareto:
        lines.append(f"pareto trial {trial['number']}: {trial['values']} {trial['params']}")
    return "\n".join(lines)


@register("search")
def search_command(args, argv) -> int:
    from lottery.cli import _command_line
    from lottery.search import SearchError, run_search

    request = build_request(args, _command_line(argv))
    try:
        outcome = run_search(request)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SEARCH_FAILED
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to resume study {request.name}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary(outcome))
    return 0

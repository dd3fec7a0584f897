"""`lottery sync RUN_DIR [key=value ...]`: upload a finished run directory to MLflow.

The run directory is the record; MLflow mirrors it. Sync re-attaches to the runs named in
<run_dir>/tracking.json (creating the missing ones), logs only metric points MLflow does not
have yet, and overwrites artefacts in place, so running it twice creates no duplicates.
Overrides such as track.uri=http://host:5000 or track.experiment=NAME choose the target.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lottery.cli import register

logger = logging.getLogger(__name__)

STAGE_PARAMS = ("level", "method", "at", "branch", "density", "compression")
SUMMARY_METRICS = ("final_test_acc", "best_test_acc", "density", "compression", "early_stop_step")


@dataclass
class SyncOutcome:
    uri: str
    experiment: str
    parent_run_id: Optional[str]
    stages: int
    error: Optional[BaseException]


def stage_run_name(stage) -> str:
    """The run names the orchestrators give (ticket.py, baselines.py, branches.py)."""
    row = stage.row
    if stage.key.startswith("baseline/"):
        return f"{row.get('method')} d={row.get('density', 0):.4f}"
    if stage.key.startswith("branch/"):
        return f"{stage.key.split('/')[1]} level {row.get('level')}"
    return stage.directory.name


def sync_run(run_dir: Path, overrides: list[str] | tuple = (), command: str = "lottery sync") -> SyncOutcome:
    from lottery.config import flatten, parse_override, set_dotted
    from lottery.experiment import read_config
    from lottery.io import RunLock
    from lottery.report import find_stages, publish
    from lottery.tracker import run_tags
    from lottery.tracking_client import MlflowTracker

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value, "command line")
    config.track.enabled = True
    stages = find_stages(run_dir)
    with RunLock(run_dir):
        tracker = MlflowTracker(config, run_dir, command=command)
        parent = tracker.parent(config.exp, {**run_tags(config, command), "synced": "true"}, flatten(config))
        for stage in stages:
            params = {k: stage.row[k] for k in STAGE_PARAMS if stage.row.get(k) is not None}
            handle = tracker.child(stage.key, stage_run_name(stage), params)
            for record in stage.history:  # buffered by the handle: one batch per stage
                handle.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            handle.log_metrics({k: stage.row[k] for k in SUMMARY_METRICS if stage.row.get(k) is not None})
            handle.finish("FINISHED")
        publish(run_dir, tracker, parent)
        tracker.close("FINISHED")
    return SyncOutcome(tracker.uri, tracker.experiment, parent.run_id, len(stages), tracker.error)


@register("sync")
def sync_command(args, argv) -> int:
    from lottery.cli import _command_line

    try:
        outcome = sync_run(Path(args.run_dir), args.overrides, _command_line(argv))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if outcome.error is not None:
        print(f"error: sync to {outcome.uri} failed: {outcome.error}", file=sys.stderr)
        return 1
    print(f"synced {outcome.stages} stages of {args.run_dir} to {outcome.uri}, experiment "
          f"'{outcome.experiment}', parent run {outcome.parent_run_id}")
    return 0

"""`lottery sync RUN_DIR [key=value ...]`: upload a finished run directory to MLflow.

The run directory is the record; MLflow mirrors it. Sync re-attaches to the runs named in
<run_dir>/tracking.json (creating the missing ones), logs only metric points MLflow does not
have yet, and overwrites artefacts in place, so running it twice creates no duplicates.
Overrides such as track.uri=http://host:5000 or track.experiment=NAME choose the target.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

STAGE_PARAMS = ("level", "method", "at", "branch", "density", "compression")


@dataclass
class SyncOutcome:
    uri: str
    experiment: str
    parent_run_id: Optional[str]
    stages: int
    error: Optional[BaseException]


def sync_run(run_dir: Path, overrides: list[str] | tuple = (), command: str = "lottery sync") -> SyncOutcome:
    from lottery.config import COMMAND_LINE, flatten, parse_override, set_dotted
    from lottery.report.run_report import find_stages, publish
    from lottery.run.context import read_config
    from lottery.run.layout import RunLayout
    from lottery.run.locks import FileLock
    from lottery.tracking.base import run_tags, summary_metrics
    from lottery.tracking.client import MlflowTracker

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value, COMMAND_LINE)
    config.track.enabled = True
    stages = find_stages(run_dir)
    layout = RunLayout.at(run_dir)
    with FileLock(layout.lock_file("sync"), wait=False, what=f"lottery sync of {run_dir}"):
        tracker = MlflowTracker(config, run_dir, command=command)
        parent = tracker.parent(config.exp, {**run_tags(config, command), "synced": "true"}, flatten(config))
        for stage in stages:
            params = {k: stage.row[k] for k in STAGE_PARAMS if stage.row.get(k) is not None}
            handle = tracker.child(stage.key, stage.ref.run_name, params)
            for record in stage.history:  # buffered by the handle: one batch per stage
                handle.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            handle.log_metrics(summary_metrics(stage.row))
            handle.finish("FINISHED")
        publish(layout, tracker, parent)
        tracker.close("FINISHED")
    return SyncOutcome(tracker.uri, tracker.experiment, parent.run_id, len(stages), tracker.error)

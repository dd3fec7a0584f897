"""`lottery sync RUN_DIR [key=value ...]`: upload a finished run directory to MLflow.

The run directory is the record; MLflow mirrors it. Sync re-attaches to the runs named in
<run_dir>/tracking.json (creating the missing ones), logs only metric points MLflow does not
have yet, and overwrites artefacts in place, so running it twice creates no duplicates.
Overrides such as track.uri=http://host:5000 or track.experiment=NAME choose the target.

After a sync without errors, <run_dir>/sync.json records a fingerprint of what was uploaded (config.yaml and
every finished stage's record and mask) per URI and experiment; a later sync of an unchanged directory to the
same place uploads nothing and says so (`force` uploads anyway).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

@dataclass
class SyncOutcome:
    uri: str
    experiment: str
    parent_run_id: Optional[str]
    stages: int
    error: Optional[BaseException]
    unchanged: bool = False  # nothing was uploaded: the directory is as it was at its last sync to this place


def fingerprint(layout, stages) -> str:
    """A digest of everything a sync uploads that the run directory holds as a record."""
    digest = hashlib.sha256()
    paths = [layout.config_file] + [stage.directory / name for stage in stages for name in ("metrics.json", "mask.pt")]
    for path in paths:
        if path.is_file():
            digest.update(str(path.relative_to(layout.run_dir)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _synced(layout) -> dict:
    from lottery.errors import LotteryError
    from lottery.run.files import read_json

    try:
        return read_json(layout.sync_file, "sync record") if layout.sync_file.exists() else {}
    except LotteryError:  # damaged: sync again, which rewrites it
        return {}


def sync_run(run_dir: Path, overrides: list[str] | tuple = (), command: str = "lottery sync",
             force: bool = False) -> SyncOutcome:
    from lottery.config import COMMAND_LINE, flatten, parse_override, set_dotted, validate
    from lottery.report.run_report import find_stages, publish
    from lottery.run.context import read_config
    from lottery.run.files import write_json
    from lottery.run.layout import RunLayout
    from lottery.run.locks import FileLock
    from lottery.tracking.base import log_history, run_tags, summary_metrics
    from lottery.tracking.client import MlflowTracker
    from lottery.tracking.protocol import resolve_uri
    from lottery.tracking.schema import matched_level, seed_run_name, stage_run

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value, COMMAND_LINE)
    validate(config)
    config.track.enabled = True
    stages = find_stages(run_dir)
    layout = RunLayout.at(run_dir)
    uri, experiment = resolve_uri(config), config.track.experiment or config.exp
    with FileLock(layout.lock_file("sync"), wait=False, what=f"lottery sync of {run_dir}"):
        synced, current = _synced(layout), fingerprint(layout, stages)
        if not force and synced.get(uri, {}).get(experiment) == current:
            return SyncOutcome(uri, experiment, None, len(stages), None, unchanged=True)
        tracker = MlflowTracker(config, run_dir, command=command, warn_on_failure=False)
        parent = tracker.parent(seed_run_name(config.seed), {**run_tags(config, command), "synced": "true"},
                                flatten(config))
        levels = sorted((s.row["level"], s.row["density"]) for s in stages if s.ref.kind == "level")
        level_densities = [density for level, density in levels if level >= 1]
        for stage in stages:  # every point, whatever MLflow already has: the store dedups, so gaps get filled
            density = stage.row["density"]
            level = matched_level(density, level_densities) if stage.ref.kind == "baseline" else None
            name, params, tags = stage_run(stage.ref, density, config.seed, config.exp, command, level)
            handle = tracker.child(stage.key, name, params, tags, stage.times.get("start_ms"))
            log_history(handle, stage.history, stage.times.get("start_ms"), stage.times.get("end_ms"))
            handle.log_metrics(summary_metrics(stage.row))
            handle.finish("FINISHED", stage.times.get("end_ms"))
        publish(layout, tracker, parent, config.experiment.evaluate.margin)
        tracker.close("FINISHED")
        if tracker.error is None:
            synced.setdefault(uri, {})[experiment] = current
            write_json(layout.sync_file, synced)
    return SyncOutcome(tracker.uri, tracker.experiment, parent.run_id, len(stages), tracker.error)

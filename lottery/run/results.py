"""results.json: one row per finished stage of a run directory, keyed by stage, accumulated across commands.

A second `lottery baselines` call with other methods adds its rows beside the first call's; a stage that
runs again replaces its own row. Rows are kept in the layout's table order.
"""
from __future__ import annotations

import logging
from typing import Optional

from lottery.errors import CorruptFileError
from lottery.run.files import read_json, write_json
from lottery.run.layout import RunLayout, StageRef
from lottery.run.locks import FileLock

logger = logging.getLogger(__name__)


def read_rows(layout: RunLayout) -> list[dict]:
    """The stored rows. results.json only gathers the rows of the stages' own records (metrics.json), so a
    damaged one is rebuilt from those, with a warning (repair_results writes the rebuilt file)."""
    if not layout.results_file.exists():
        return []
    try:
        rows = read_json(layout.results_file, "results file").get("rows")
    except CorruptFileError as error:
        logger.warning("%s; rebuilt from the records of the finished stages", error)
        return sorted(_stage_rows(layout), key=_order)
    return rows if isinstance(rows, list) else []


def repair_results(layout: RunLayout) -> None:
    """Write results.json again from the stages' records if it is damaged, or lacks the row of a finished stage
    (a kill between a stage's DONE and its row); a run calls this as it opens."""
    with FileLock(layout.lock_file("results")):
        finished = layout.stage_dirs()
        if not layout.results_file.exists() and not finished:
            return
        try:
            rows = read_json(layout.results_file, "results file").get("rows", []) \
                if layout.results_file.exists() else []
        except CorruptFileError:
            write_json(layout.results_file, {"rows": read_rows(layout)}, durable=False)
            return
        present = {row.get("stage") for row in rows if isinstance(row, dict)}
        missing = [directory for ref, directory in finished if ref.key not in present]
        if missing:
            logger.info("results.json: adding the rows of %d finished stage(s) a kill left out", len(missing))
            rows = [*rows, *(read_json(d / "metrics.json", "stage record")["row"] for d in missing)]
            write_json(layout.results_file, {"rows": sorted(rows, key=_order)}, durable=False)


def _stage_rows(layout: RunLayout) -> list[dict]:
    return [read_json(directory / "metrics.json", "stage record")["row"] for _, directory in layout.stage_dirs()]


def _order(row: dict) -> tuple:
    ref = StageRef.from_key(row.get("stage", ""))
    return ref.order() if ref is not None else (len(row),)


def record_row(layout: RunLayout, row: dict) -> None:
    """Add or replace the row of row["stage"], under the run directory's results lock."""
    with FileLock(layout.lock_file("results")):
        rows = [other for other in read_rows(layout) if other.get("stage") != row["stage"]] + [row]
        write_json(layout.results_file, {"rows": sorted(rows, key=_order)}, durable=False)


def rows_of(layout: RunLayout, kind: Optional[str] = None) -> list[dict]:
    """The stored rows, optionally of one stage kind (level, dense, branch, baseline)."""
    return [row for row in read_rows(layout) if kind is None or row.get("kind") == kind]

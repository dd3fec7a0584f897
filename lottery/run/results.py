"""results.json: one row per finished stage of a run directory, keyed by stage, accumulated across commands.

A second `lottery baselines` call with other methods adds its rows beside the first call's; a stage that
runs again replaces its own row. Rows are kept in the layout's table order.
"""
from __future__ import annotations

from typing import Optional

from lottery.run.files import read_json, write_json
from lottery.run.layout import RunLayout, StageRef
from lottery.run.locks import FileLock


def read_rows(layout: RunLayout) -> list[dict]:
    if not layout.results_file.exists():
        return []
    rows = read_json(layout.results_file, "results file").get("rows")
    return rows if isinstance(rows, list) else []


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

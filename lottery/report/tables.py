"""The one table formatter, and the tables lottery prints: results rows, reports, benchmarks.

`format_table` lays out string cells as aligned plain text (the console) or as Markdown (reports).
Numbers are formatted by the callers' column specs, so every table shows a number the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

OPTIMISTIC_NOTE = ("max acc = the highest test accuracy over all evaluations: optimistic, a number to look at, "
                   "never to select on")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False,
                 left: Sequence[int] = (0,)) -> str:
    """Aligned columns; columns in `left` are left-aligned, the rest right-aligned."""
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]

    def cell(i: int, value: str) -> str:
        return value.ljust(widths[i]) if i in left else value.rjust(widths[i])

    if not markdown:
        lines = ["  ".join(cell(i, value) for i, value in enumerate(line)).rstrip() for line in [list(headers), *rows]]
        return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
    rule = "|" + "|".join(("-" * (w + 2)) if i in left else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    lines = ["| " + " | ".join(cell(i, value) for i, value in enumerate(line)) + " |" for line in [list(headers), *rows]]
    return "\n".join([lines[0], rule, *lines[1:]])


def number(digits: int) -> Callable[[Any], str]:
    def show(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}"
    return show


def text(value) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    show: Callable[[Any], str] = text


RESULT_COLUMNS = (
    Column("density", "density", number(4)),
    Column("compress", "compression", number(3)),
    Column("final acc", "final_test_acc", number(4)),
    Column("early-stop acc", "early_stop_test_acc", number(4)),
    Column("es step", "early_stop_step"),
    Column("max acc", "best_test_acc", number(4)),
)


def rows_table(rows: Sequence[dict], columns: Sequence[Column], markdown: bool = False) -> str:
    return format_table([c.header for c in columns], [[c.show(row.get(c.key)) for c in columns] for row in rows],
                        markdown)


def level_table(rows: Sequence[dict], label: str = "level", markdown: bool = False) -> str:
    """Results rows, one per stage: the headline columns are the final accuracy and the accuracy at the
    early-stopping step (lowest validation loss); max acc is labelled as optimistic below the table."""
    first = Column(label, label, lambda value: text(value))
    table = rows_table([{**row, label: row.get(label, row.get("level"))} for row in rows],
                       (first, *RESULT_COLUMNS), markdown)
    return f"{table}\n{OPTIMISTIC_NOTE}"


def series_table(rows: Sequence[dict], markdown: bool = True) -> str:
    """The report's table: a `series` column, then a row's level and results."""
    columns = (Column("series", "series"), Column("level", "level"), *RESULT_COLUMNS)
    return f"{rows_table(rows, columns, markdown)}\n\n{OPTIMISTIC_NOTE}"


def layer_table(layers: dict[str, dict]) -> str:
    """Per-layer kept / total / density of a mask report."""
    rows = [[name, str(info["kept"]), str(info["total"]), f"{info['density']:.4f}"] for name, info in layers.items()]
    return format_table(["layer", "kept", "total", "density"], rows)


def optional(value: Optional[float], digits: int = 4) -> str:
    return number(digits)(value)

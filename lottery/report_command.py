"""`lottery report RUN_DIR [--out DIR]`: the results table and figures of a run directory."""
from __future__ import annotations

import sys
from pathlib import Path

from lottery.cli import register


@register("report")
def report_command(args, argv) -> int:
    from lottery.report import build_report

    try:
        report = build_report(Path(args.run_dir), Path(args.out) if args.out else None)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.table)
    print(f"\nreport written to {report.directory}: {', '.join(path.name for path in report.files)}")
    return 0

"""The package's own rules: which module may import mlflow and optuna, and how long a source file may be."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lottery"
LINE_LIMIT = 420  # "no source file over about 400 lines"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_tracking_imports_mlflow_and_only_search_imports_optuna():
    importers = {root: sorted(str(path.relative_to(PACKAGE)) for path in sources() if root in imported_roots(path))
                 for root in ("mlflow", "optuna")}
    assert importers == {"mlflow": ["tracking.py"], "optuna": ["search.py"]}


def test_the_import_scan_sees_nested_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from mlflow.entities import Metric\n    import optuna.pruners\n")
    assert {"mlflow", "optuna"} <= imported_roots(probe)


def test_no_source_file_is_much_over_400_lines():
    long = {str(path.relative_to(PACKAGE)): n for path in sources()
            if (n := len(path.read_text().splitlines())) > LINE_LIMIT}
    assert long == {}

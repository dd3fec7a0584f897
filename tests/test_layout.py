"""The package's own rules, read off the source with `ast`: no import cycles, the CLI is a leaf, mlflow only in the
tracking helper process, optuna only in the search package, no source file much over 400 lines, every package
says what lives in it, and importing lottery changes no environment variable."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lottery"
LINE_LIMIT = 420  # "no source file over about 400 lines"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported_names(path: Path, module: str | None = None) -> set[str]:
    """Every dotted name imported anywhere in the file (module and function level), outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
               and "TYPE_CHECKING" in ast.unparse(branch.test) for node in ast.walk(branch)}
    names = set()
    module = module or module_name(path)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in sources()}

    def resolve(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {module: {target for name in imported_names(path) if name.split(".")[0] == "lottery"
                     and (target := resolve(name)) and target != module} for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_there_are_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_imports_the_cli():
    offenders = [module for module, targets in import_graph().items()
                 if not module.startswith("lottery.cli") and module != "lottery.__main__"
                 and any(target.startswith("lottery.cli") for target in targets)]
    assert offenders == []


def test_only_the_tracking_helper_imports_mlflow_and_only_the_search_package_imports_optuna():
    roots = {str(path.relative_to(PACKAGE)): {name.split(".")[0] for name in imported_names(path)} for path in sources()}
    assert sorted(path for path, names in roots.items() if "mlflow" in names) == ["tracking/server.py"]
    assert all(path.startswith("search/") for path, names in roots.items() if "optuna" in names)
    assert any("optuna" in names for names in roots.values())


def test_the_import_scan_sees_nested_and_relative_imports(tmp_path):
    probe = PACKAGE / "pruning" / "scores.py"
    assert "lottery.pruning.methods" in imported_names(probe)
    nested = tmp_path / "probe.py"
    nested.write_text("def f():\n    from mlflow.entities import Metric\n    import optuna.pruners\n"
                      "    from .masks import Mask\n")
    assert {"mlflow.entities", "optuna.pruners", "lottery.pruning.masks"} <= imported_names(nested,
                                                                                           "lottery.pruning.probe")


def test_no_source_file_is_much_over_400_lines():
    long = {str(path.relative_to(PACKAGE)): n for path in sources()
            if (n := len(path.read_text().splitlines())) > LINE_LIMIT}
    assert long == {}


def test_every_package_says_what_lives_there():
    for init in PACKAGE.rglob("__init__.py"):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring.split()) >= 12, f"{init} needs a docstring saying what lives there"


def test_importing_lottery_changes_no_environment_variable():
    probe = ("import os; before = dict(os.environ); import lottery, lottery.workflows.ticket, lottery.pruning; "
             "print(before == dict(os.environ))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent, env={"PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "True"


def test_the_command_line_sets_the_openmp_wait_policy_before_torch():
    probe = ("import os, sys; from lottery import cli; sys.argv = ['lottery', 'bench', '--only', 'nope']; "
             "code = cli.main(); print(os.environ.get('OMP_WAIT_POLICY'), code)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=PACKAGE.parent,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.stdout.split() == ["PASSIVE", "2"], result.stderr

"""The shape of the code a newcomer reads: no function over 100 lines but the option table, and
imports without circles where the options and the checkpoint policy are concerned."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

LONG_ALLOWED = {("utils/options.py", "build_parser")}  # the option table: one add_argument per key


def project_files() -> dict[str, Path]:
    files = {}
    for path in REPO_ROOT.rglob("*.py"):
        relative = path.relative_to(REPO_ROOT)
        if relative.parts[0] in ("tests", "benchmarks", ".venv") or ".venv" in relative.parts:
            continue
        name = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        files[name] = path
    return files


def imported(path: Path, names: set[str], module_level: bool) -> set[str]:
    """The project modules ``path`` imports: at module level, or anywhere (functions too); never
    counting ``if TYPE_CHECKING:`` blocks, which do not run."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            node.body = []
    found = set()
    for node in tree.body if module_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & names


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_function_is_longer_than_100_lines_but_the_option_table() -> None:
    long = []
    for path in project_files().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                where = (str(path.relative_to(REPO_ROOT)), node.name)
                if lines > 100 and where not in LONG_ALLOWED:
                    long.append(f"{where[0]}:{node.lineno} {node.name}: {lines} lines")
    assert not long, long


def test_module_level_imports_have_no_circle_and_the_options_none_at_all() -> None:
    files = project_files()
    names = set(files)
    top = {name: imported(path, names, True) - {name} for name, path in files.items()}
    assert cycles(top) == []
    # with the imports inside functions too: the options, their checks and the checkpoint policy
    # are in no circle (options imported checkpoints, which imported options back)
    every = {name: imported(path, names, False) - {name} for name, path in files.items()}
    policy = {"utils.options", "utils.option_checks", "utils.legacy_options", "checkpoints", "modes"}
    assert not [group for group in cycles(every) if policy & set(group)]

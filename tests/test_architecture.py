"""The package's shape: no import cycle (at module level or inside functions), one kind-to-runner table, and
modules that must not start TensorFlow do not import it."""

import ast
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from conftest import ROOT

PACKAGE = ROOT / "paradl_tf"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The paradl_tf modules `path` imports anywhere in it (functions included), as module names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `from pkg import mod` names a module; `from mod import f` not
                name = name.rpartition(".")[0]
            if name and name.startswith("paradl_tf"):
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        targets = imports_of(path, modules) - {name}
        # Importing a submodule runs its package's __init__ first; a package's own __init__ importing its
        # submodules is the facade, not a cycle.
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_kind_to_runner_table_covers_every_strategy_kind():
    from paradl_tf.api import RUNNERS
    from paradl_tf.config.loading import union_members
    from paradl_tf.config.schema import StrategyConfig

    kinds = {get_args(m.model_fields["kind"].annotation)[0] for m in union_members(StrategyConfig)}
    assert set(RUNNERS) == kinds
    assert "strategy.kind ==" not in (PACKAGE / "cli.py").read_text()  # the CLI does not dispatch on kinds


@pytest.mark.timeout(60)
def test_launching_and_validating_import_no_tensorflow():
    """The CLI validates before TensorFlow starts, and a launcher or a MultiWorkerMirrored driver waits for its
    processes without loading TensorFlow."""
    code = ("import sys, paradl_tf.cli, paradl_tf.api, paradl_tf.config, paradl_tf.cluster, "
            "paradl_tf.cluster.deploy, paradl_tf.runs.multi_worker_driver; print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_no_source_folder_is_named_like_build_output(pytestconfig):
    """pytest's norecursedirs (and linters, coverage, .gitignore patterns) skip folders named like build output
    (`build`, `dist`, ...): a source folder of that name is a folder the tools do not see."""
    from fnmatch import fnmatch

    skipped = pytestconfig.getini("norecursedirs")  # setup.cfg sets none: pytest's defaults
    folders = [p for top in (PACKAGE, ROOT / "tests") for p in [top, *top.rglob("*")]
               if p.is_dir() and p.name != "__pycache__"]
    named_like_output = [str(p.relative_to(ROOT)) for p in folders
                         if any(fnmatch(p.name, pattern) for pattern in skipped) or p.name in {"out", "dist"}]
    assert named_like_output == []

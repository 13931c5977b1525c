"""The layering of the package, read from the source with `ast` (every import, module- or function-level).

Plugins talk only through the core: a check family imports the engine, io and integrations, never
another family or a fixer; a fixer imports at most its own family's check module; io/ is the bottom
layer (io/ and resumedoctor.errors only); the engine imports no check, fixer, CLI or report; nothing
imports in a circle. Each rule is a function over the import graph, tried on the real graph and on a
small graph that breaks it (so that a rule that can never fail is noticed).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKS, FIXERS, IO = "resumedoctor.checks", "resumedoctor.fixers", "resumedoctor.io"

Graph = dict[str, dict[str, int]]  # module -> {imported resumedoctor module: line of the import}


# Package name -> its folder, as pyproject.toml's [tool.setuptools.package-dir] maps them.
PACKAGE_ROOTS = {"resumedoctor": REPO / "resumedoctor", CHECKS: REPO / "checks", FIXERS: REPO / "fixers"}


def module_files() -> dict[str, Path]:
    modules = {}
    for package, root in PACKAGE_ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = [part for part in path.relative_to(root).with_suffix("").parts if part != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imported_names(node: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, str | None]]:
    """(module, name imported from it or None) for one import statement; relative imports made absolute."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, None
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(filter(None, [*package, base]))
        for alias in node.names:
            yield base, alias.name


def import_graph() -> Graph:
    """Every resumedoctor module and the resumedoctor modules it imports, wherever the import stands."""
    files = module_files()
    graph: Graph = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for base, imported in imported_names(node, name, path.name == "__init__.py"):
                target = f"{base}.{imported}" if imported and f"{base}.{imported}" in files else base
                while target and target not in files:  # `import resumedoctor.io.x.y` names a module's attribute
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("resumedoctor"):
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


# ---- the rules: each returns one line per offending import ------------------------------------


def cycles(graph: Graph) -> list[str]:
    """Tarjan's strongly connected components of more than one module (or a module importing itself)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 1000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.get(module, {}):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    lines = []
    for component in sorted(found):
        members = set(component)
        edges = [f"{a} imports {b} (line {graph[a][b]})" for a in component for b in graph[a] if b in members]
        lines.append(f"cycle {' <-> '.join(component)}: {'; '.join(sorted(edges))}")
    return lines


def _family(module: str, package: str) -> str | None:
    """`config_drift` for resumedoctor.checks.config_drift; None outside the package (or for the package itself)."""
    return module[len(package) + 1:].split(".")[0] if module.startswith(package + ".") else None


def family_imports(graph: Graph) -> list[str]:
    """A check family imports no other family and no fixer."""
    lines = []
    for module, edges in sorted(graph.items()):
        family = _family(module, CHECKS)
        if family is None:
            continue
        for imported, line in edges.items():
            other = _family(imported, CHECKS)
            if (other is not None and other != family) or _family(imported, FIXERS) is not None:
                lines.append(f"check family {module} imports {imported} (line {line}): families talk only "
                             "through the run context")
    return lines


def fixer_imports(graph: Graph) -> list[str]:
    """A fixer imports its own family's check module at most, and no other fixer."""
    lines = []
    for module, edges in sorted(graph.items()):
        family = _family(module, FIXERS)
        if family is None:
            continue
        for imported, line in edges.items():
            check, fixer = _family(imported, CHECKS), _family(imported, FIXERS)
            if (check is not None and check != family) or (fixer is not None and fixer != family):
                lines.append(f"fixer {module} imports {imported} (line {line}): a fixer may import only "
                             f"{CHECKS}.{family}")
    return lines


def io_imports(graph: Graph) -> list[str]:
    """io/ is the bottom layer: it imports io/ and resumedoctor.errors, nothing else of resumedoctor."""
    return [f"{module} imports {imported} (line {line}): io/ imports only io/ and resumedoctor.errors"
            for module, edges in sorted(graph.items()) if module == IO or module.startswith(IO + ".")
            for imported, line in edges.items()
            if not (imported == IO or imported.startswith(IO + ".") or imported == "resumedoctor.errors")]


def core_imports(graph: Graph) -> list[str]:
    """The core (every module but the families and fixers) imports no family or fixer: it loads them as plugins."""
    return [f"{module} imports {imported} (line {line}): the core reaches families through the registry and the "
            "run context's services" for module, edges in sorted(graph.items())
            if _family(module, CHECKS) is None and _family(module, FIXERS) is None
            for imported, line in edges.items()
            if _family(imported, CHECKS) is not None or _family(imported, FIXERS) is not None]


ABOVE_ENGINE = (CHECKS, FIXERS, "resumedoctor.cli", "resumedoctor.report")


def engine_imports(graph: Graph) -> list[str]:
    """The engine imports no check family, fixer, CLI command or renderer (they are built on it)."""
    return [f"{module} imports {imported} (line {line}): engine/ never imports {', '.join(ABOVE_ENGINE)}"
            for module, edges in sorted(graph.items()) if module.startswith("resumedoctor.engine")
            for imported, line in edges.items()
            if any(imported == above or imported.startswith(above + ".") for above in ABOVE_ENGINE)]


# ---- the real package ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_the_graph_is_the_package(graph):
    """The scan sees every module and the imports that are known to be there (a blind scan passes everything)."""
    assert {f"{CHECKS}.checkpoint_integrity", f"{FIXERS}.checkpoint_integrity", "resumedoctor.engine.context",
            "resumedoctor.io.bounded_read", "resumedoctor.cli.app"} <= set(graph)
    assert f"{CHECKS}.checkpoint_integrity" in graph[f"{FIXERS}.checkpoint_integrity"]  # a module-level import
    # a function-level import (each command imports the API only when it runs)
    assert "resumedoctor.api" in graph["resumedoctor.cli.app"]
    assert "from resumedoctor import api" not in (REPO / "resumedoctor/cli/app.py").read_text().split("\ndef ")[0]
    assert len(graph) > 50


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(found)


@pytest.mark.parametrize("rule", [family_imports, fixer_imports, core_imports, io_imports, engine_imports],
                         ids=["no-family-imports-another-family-or-a-fixer", "a-fixer-imports-only-its-own-family",
                              "the-core-imports-no-family-or-fixer", "io-imports-nothing-above-it",
                              "engine-imports-no-family-fixer-cli-or-report"])
def test_layering_rule(graph, rule):
    found = rule(graph)
    assert not found, "\n".join(found)


# ---- each rule fails on a graph that breaks it -----------------------------------------------


def test_each_rule_names_the_offending_import():
    broken: Graph = {
        f"{CHECKS}.a": {f"{CHECKS}.b": 3, "resumedoctor.engine.context": 1},
        f"{CHECKS}.b": {f"{FIXERS}.c": 7},
        f"{FIXERS}.a": {f"{CHECKS}.a": 2, f"{CHECKS}.b": 5, f"{FIXERS}.b": 6},
        f"{FIXERS}.b": {f"{CHECKS}.b": 1},
        "resumedoctor.io.x": {"resumedoctor.errors": 1, "resumedoctor.engine.context": 4},
        "resumedoctor.engine.context": {"resumedoctor.io.x": 1},
        "resumedoctor.engine.runner": {"resumedoctor.report.text_format": 9, "resumedoctor.engine.context": 2},
        "resumedoctor.report.text_format": {"resumedoctor.engine.runner": 11},
        "resumedoctor.report.config_format": {f"{CHECKS}.a": 8},
    }
    assert family_imports(broken) == [
        f"check family {CHECKS}.a imports {CHECKS}.b (line 3): families talk only through the run context",
        f"check family {CHECKS}.b imports {FIXERS}.c (line 7): families talk only through the run context"]
    assert fixer_imports(broken) == [
        f"fixer {FIXERS}.a imports {CHECKS}.b (line 5): a fixer may import only {CHECKS}.a",
        f"fixer {FIXERS}.a imports {FIXERS}.b (line 6): a fixer may import only {CHECKS}.a"]
    assert core_imports(broken) == [f"resumedoctor.report.config_format imports {CHECKS}.a (line 8): the core "
                                    "reaches families through the registry and the run context's services"]
    assert io_imports(broken) == ["resumedoctor.io.x imports resumedoctor.engine.context (line 4): io/ imports "
                                  "only io/ and resumedoctor.errors"]
    assert [line.split(":")[0] for line in engine_imports(broken)] == [
        "resumedoctor.engine.runner imports resumedoctor.report.text_format (line 9)"]
    assert cycles(broken) == [
        "cycle resumedoctor.engine.context <-> resumedoctor.io.x: resumedoctor.engine.context imports "
        "resumedoctor.io.x (line 1); resumedoctor.io.x imports resumedoctor.engine.context (line 4)",
        "cycle resumedoctor.engine.runner <-> resumedoctor.report.text_format: resumedoctor.engine.runner imports "
        "resumedoctor.report.text_format (line 9); resumedoctor.report.text_format imports "
        "resumedoctor.engine.runner (line 11)"]


def test_function_level_and_relative_imports_are_read():
    source = ("import os\n\ndef f():\n    from resumedoctor.checks import config_drift\n"
              "    from . import sibling\n    import resumedoctor.io.bounded_read\n")
    found = [pair for node in ast.walk(ast.parse(source))
             for pair in imported_names(node, f"{FIXERS}.a", is_package=False)]
    assert (CHECKS, "config_drift") in found and (FIXERS, "sibling") in found
    assert ("resumedoctor.io.bounded_read", None) in found


# ---- one reader of global_step -----------------------------------------------------------------


def _reads_trainer_state(function: ast.AST) -> bool:
    """The function reads trainer_state.json: ctx.trainer_state(...), or a path naming the file."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "trainer_state":
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value == "trainer_state.json":
            return True
    return False


TRAINER_STATE_NAMES = ("state", "trainer_state")  # what the families call a parsed trainer_state.json


def _subject(node: ast.AST) -> str | None:
    """`state` for `state[...]`, `self.state.get(...)`: the name of what a key is read from."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _global_step_reads(function: ast.AST, whatever_subject: bool) -> list[int]:
    """Lines of `x["global_step"]` and `x.get("global_step")` in a function, x a trainer state by its name
    (or anything, for a function that reads trainer_state.json)."""
    lines = []
    for node in ast.walk(function):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                and isinstance(node.slice, ast.Constant) and node.slice.value == "global_step":
            subject = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "global_step":
            subject = node.func.value
        else:
            continue
        if whatever_subject or _subject(subject) in TRAINER_STATE_NAMES:
            lines.append(node.lineno)
    return lines


def duplicate_global_step_readers(files: dict[str, Path]) -> list[str]:
    """Check families take a checkpoint's global_step from the run context (ctx.global_step), the one reader:
    no function of checks/ reads it from a trainer state (one it read itself, or one named `state`)."""
    lines = []
    for module, path in sorted(files.items()):
        if _family(module, CHECKS) is None:
            continue
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines += [f"{shown}:{line} {function.name} reads global_step from trainer state itself: use "
                          "ctx.global_step(checkpoint)" for line in _global_step_reads(function, _reads_trainer_state(function))]
    return sorted(set(lines))


def test_one_reader_of_global_step():
    assert duplicate_global_step_readers(module_files()) == []


def test_a_second_global_step_reader_is_found(tmp_path):
    family = tmp_path / "family.py"
    family.write_text("def run(ctx, checkpoint):\n    state = ctx.trainer_state(checkpoint)\n"
                      "    return state['global_step']\n\n"
                      "def settings(state):\n    return state.get('global_step')\n\n"
                      "def live(path):\n    live = read(path / 'curriculum_state.json')\n"
                      "    return live['global_step']  # another file's global_step: not trainer state\n")
    found = duplicate_global_step_readers({f"{CHECKS}.family": family})
    assert [line.split(" ", 1)[0].rsplit(":", 1)[1] for line in found] == ["3", "6"]
    assert "run reads global_step from trainer state itself" in found[0]

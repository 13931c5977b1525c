"""Find what a recipe names by import path (`reward_funcs`, launcher callbacks) without importing it.

`trl grpo` and the launcher import `pkg.module.name` with the working folder first on sys.path. Importing
a user's module here could import torch (or run anything), so the module is located as the import
system would locate it, without executing it or its parent packages, and its source is read with
`ast` to see whether it defines the name at top level. What cannot be told without running the code
(a compiled module, `from x import *`, a module `__getattr__`) counts as found: no false alarm.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import read_bytes_bounded

# The reward functions `trl grpo` (trl/scripts/grpo.py) and the launcher know by name.
TRL_REWARD_NAMES = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward",
                    "get_soft_overlong_punishment")
MAX_SOURCE_BYTES = 8 << 20  # a module's source beyond this is not read: counted as found


def reward_problem(entry: object) -> str | None:
    """Why `trl grpo` cannot load this `reward_funcs` entry, or None when it can (as far as can be told)."""
    if not isinstance(entry, str) or not entry:
        return "not a reward function name"
    if entry in TRL_REWARD_NAMES:
        return None
    if "." not in entry:
        return f"neither one of TRL's reward functions ({', '.join(TRL_REWARD_NAMES)}) nor a dotted import path"
    return import_problem(entry)


def import_problem(dotted: str) -> str | None:
    """Why `getattr(importlib.import_module(module), name)` would fail for `module.name`, or None."""
    module_name, _, name = dotted.rpartition(".")
    if not module_name or not name or any(not part.isidentifier() for part in dotted.split(".")):
        return f"{dotted!r} is not a dotted import path (package.module.name)"
    spec, problem = find_module(module_name)
    if spec is None:
        return problem
    defined = defines(spec, name)
    if isinstance(defined, str):
        return defined
    return None if defined is not False else f"module {module_name} ({spec.origin}) defines no {name!r}"


def find_module(dotted: str) -> tuple[ModuleSpec | None, str | None]:
    """The spec of a module, found with the working folder first on sys.path (as TRL imports it)."""
    parts = dotted.split(".")
    spec = _find_top_level(parts[0])
    if spec is None:
        return None, f"no module named {parts[0]!r} (searched the working folder {os.getcwd()} and sys.path)"
    for index in range(1, len(parts)):
        parent, name = ".".join(parts[:index]), ".".join(parts[: index + 1])
        if name in sys.modules and getattr(sys.modules[name], "__spec__", None) is not None:
            spec = sys.modules[name].__spec__
            continue
        locations = getattr(sys.modules.get(parent), "__path__", None) or spec.submodule_search_locations
        if locations is None:
            return None, f"{parent} is a module, not a package: no module named {name!r}"
        # PathFinder with the parent's locations: finds the submodule without running the parent's __init__.
        spec = importlib.machinery.PathFinder.find_spec(name, list(locations))
        if spec is None:
            return None, f"no module named {name!r}"
    return spec, None


def _find_top_level(name: str) -> ModuleSpec | None:
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__spec__", None) is not None:
        return module.__spec__
    saved = list(sys.path)
    sys.path.insert(0, os.getcwd())
    try:
        importlib.invalidate_caches()
        return importlib.util.find_spec(name)  # a top-level name: the finders run, no module does
    except (ImportError, ValueError):
        return None
    finally:
        sys.path[:] = saved


def defines(spec: ModuleSpec, name: str) -> bool | str | None:
    """Whether the module defines `name` at top level: True, False, None (cannot tell), or why it cannot load."""
    module = sys.modules.get(spec.name)
    if module is not None:
        return hasattr(module, name)
    if spec.submodule_search_locations is not None and \
            importlib.machinery.PathFinder.find_spec(f"{spec.name}.{name}", list(spec.submodule_search_locations)):
        return None  # a submodule of that name: importable as an attribute only once imported
    origin = spec.origin
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return None  # compiled, frozen or a namespace package: only running it would tell
    try:
        if os.path.getsize(origin) > MAX_SOURCE_BYTES:
            return None
        tree = ast.parse(read_bytes_bounded(Path(origin), MAX_SOURCE_BYTES), filename=origin)
    except SyntaxError as exc:
        return f"module {spec.name} cannot be imported: SyntaxError at line {exc.lineno} of {origin}: {exc.msg}"
    except (OSError, ValueError, ReasonError):
        return None
    names, open_ended = top_level_names(tree)
    if name in names:
        return True
    return None if open_ended else False


def top_level_names(tree: ast.Module) -> tuple[set[str], bool]:
    """Names a module binds at top level, and whether it may bind others (`import *`, `__getattr__`, globals())."""
    names: set[str] = set()
    open_ended = False
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    open_ended = True
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names |= _bound(target)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and (not isinstance(node, ast.AnnAssign) or node.value):
            names |= _bound(node.target)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            names |= _bound(node.target)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            names |= {n for item in node.items if item.optional_vars for n in _bound(item.optional_vars)}
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                pending.extend(getattr(node, field, None) or [])
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            names.update(node.names)
        elif isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Name) and node.id in ("globals", "exec"):
            open_ended = True
    return names, open_ended or "__getattr__" in names


def _bound(target: ast.AST) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return {name for element in target.elts for name in _bound(element)}
    if isinstance(target, ast.Starred):
        return _bound(target.value)
    return set()

"""Plugin registry: check families and fixers, all loaded through entry points.

Built-in families register in our own pyproject.toml under the same groups a third-party package
uses (`resumedoctor.checks`, `resumedoctor.fixers`), so there is one loading path and the tests
exercise it on every run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from resumedoctor.engine.findings import (
    NO_FIX,
    Finding,
    FixAvailability,
    FixSafety,
    Rule,
    RuleFix,
)
from resumedoctor.engine.operations import Operation, changes_nothing

if TYPE_CHECKING:
    from resumedoctor.engine.context import RunContext

CHECKS_GROUP = "resumedoctor.checks"
FIXERS_GROUP = "resumedoctor.fixers"


class PluginError(Exception):
    """A plugin could not be loaded or contradicts another; the doctor refuses to run half-blind."""


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class CheckFamily:
    """One family of checks: a code prefix, its rules, and the function that runs them."""

    name: str
    prefix: str
    title: str
    rules: tuple[Rule, ...]
    run: Callable[[RunContext], Iterable[Finding]]
    # Importable modules the family needs; when one is missing the family is skipped with a reason.
    requires: tuple[str, ...] = ()
    # Why the family has nothing to check for this target (no recipe, no W&B run...), or None.
    not_applicable: Callable[[RunContext], str | None] | None = None
    # Verdicts other families need, offered through the run context
    # (`ctx.services`, keyed by constants such as engine.context.CHECKPOINT_FINDINGS): families
    # never import each other.
    services: dict[str, Callable[..., Any]] = field(default_factory=dict)
    # The kinds of target (engine.target.TRAINING, LEDGER) the family judges; others never list it.
    applies_to: tuple[str, ...] = ("training",)

    def missing_requirements(self) -> list[str]:
        return [name for name in self.requires if not _importable(name)]


@dataclass(frozen=True)
class Fixer:
    """One fix: the rules it repairs, whether it is safe, and how it plans its changes.

    `rules` are the Rule objects themselves (imported from the family's check module), never code
    strings: the registry fills each rule's `fix` from the fixers that name it.
    """

    name: str
    family: str
    rules: tuple[Rule, ...]
    safety: FixSafety
    description: str
    # Called by the fix engine with the run context and one finding; returns the planned changes.
    plan: Callable[..., Any] | None = None
    # ALWAYS only when every finding of these rules gets a change from `plan`.
    availability: FixAvailability = FixAvailability.SOMETIMES
    # Whether `plan` would change something for the finding, answered without planning: for fixers whose
    # plan reads or builds a whole large file (a ledger's rewrite), so that `diagnose`, which only shows
    # the fix a finding has, does not pay for it. None: `diagnose` plans to find out.
    offers: Callable[..., bool] | None = None

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(rule.code for rule in self.rules)

    def changes(self, ctx: RunContext, finding: Finding) -> tuple[Operation, ...]:
        """What this fixer would change for the finding: its planned operations less the no-op writes."""
        if self.plan is None:
            return ()
        return tuple(op for op in self.plan(ctx, finding) or () if not changes_nothing(op))


def rule_fix(fixers: Iterable[Fixer]) -> RuleFix:
    """A rule's fix declaration from the fixers that name it (several may: `fix` asks them in order)."""
    fixers = tuple(fixers)
    if not fixers:
        return NO_FIX
    always = any(fixer.availability is FixAvailability.ALWAYS for fixer in fixers)
    return RuleFix(FixAvailability.ALWAYS if always else FixAvailability.SOMETIMES, fixers)


@dataclass
class Registry:
    families: list[CheckFamily] = field(default_factory=list)
    _fixers: list[Fixer] = field(default_factory=list)
    _by_code: dict[str, list[Fixer]] = field(default_factory=dict)
    # Fixer modules load on first use: a diagnosis without findings never needs them.
    _fixer_loader: Callable[[Registry], None] | None = None

    @property
    def fixers(self) -> list[Fixer]:
        """Every fixer, loaded on first use."""
        self.load_fixers()
        return self._fixers

    def load_fixers(self) -> None:
        """Load the fixer plugins now (once); registering them fills each rule's `fix` (see add_fixers)."""
        if self._fixer_loader is not None:
            loader, self._fixer_loader = self._fixer_loader, None
            loader(self)

    def rules(self) -> list[tuple[CheckFamily, Rule]]:
        return [(family, rule) for family in self.families for rule in family.rules]

    def rule(self, code: str) -> tuple[CheckFamily, Rule] | None:
        code = code.upper()
        for family, rule in self.rules():
            if rule.code == code:
                return family, rule
        return None

    def fixers_for(self, code: str) -> list[Fixer]:
        self.load_fixers()
        return list(self._by_code.get(code, ()))

    def add_family(self, family: CheckFamily, source: str) -> None:
        if not isinstance(family, CheckFamily):
            raise PluginError(f"{source}: entry point is not a CheckFamily")
        known = {rule.code for _, rule in self.rules()}
        for rule in family.rules:
            if not rule.code.startswith(family.prefix):
                raise PluginError(f"{source}: rule {rule.code} does not start with {family.prefix}")
            if rule.code in known:
                raise PluginError(f"{source}: rule code {rule.code} is already registered")
        if any(existing.name == family.name for existing in self.families):
            raise PluginError(f"{source}: check family {family.name!r} is already registered")
        self.families.append(family)

    def add_fixers(self, fixers: Iterable[Fixer], source: str) -> None:
        """Register fixers for rules the families registered, and fill those rules' `fix` declarations."""
        for fixer in fixers:
            self._check_fixer(fixer, source)
            self._fixers.append(fixer)
            for code in dict.fromkeys(fixer.codes):
                self._by_code.setdefault(code, []).append(fixer)
        self.families = [
            replace(family, rules=tuple(
                replace(rule, fix=rule_fix(self._by_code.get(rule.code, ()))) for rule in family.rules))
            for family in self.families
        ]

    def _check_fixer(self, fixer: Any, source: str) -> None:
        """A fixer must name registered Rule objects: else one clear error, never a traceback later."""
        if not isinstance(fixer, Fixer):
            raise PluginError(f"{source}: {fixer!r} is not a Fixer")
        if fixer.availability not in (FixAvailability.SOMETIMES, FixAvailability.ALWAYS):
            raise PluginError(f"{source}: fixer {fixer.name!r} declares availability {fixer.availability!r}; "
                              "a fixer is available sometimes or always")
        registered = {rule.code: rule for _, rule in self.rules()}
        for rule in fixer.rules:
            if not isinstance(rule, Rule):
                raise PluginError(f"{source}: fixer {fixer.name!r} names {rule!r}, not a Rule: a fixer declares "
                                  "the Rule objects it fixes (import them from the family's check module)")
            if rule.code not in registered:
                raise PluginError(f"{source}: fixer {fixer.name!r} fixes {rule.code}, which no check family "
                                  "registered (is the family's entry point installed?)")
            if rule != registered[rule.code]:
                raise PluginError(f"{source}: fixer {fixer.name!r} names a rule {rule.code} that is not the "
                                  f"registered {rule.code}: import the family's Rule object")


@dataclass(frozen=True)
class PluginEntry:
    """An entry point as importlib.metadata describes it: `name = module:attribute`."""

    name: str
    value: str

    def load(self) -> Any:
        import importlib

        module, _, attribute = self.value.partition(":")
        loaded = importlib.import_module(module.strip())
        for part in attribute.strip().split(".") if attribute else []:
            loaded = getattr(loaded, part)
        return loaded


def _scan_entry_points() -> dict[str, list[tuple[str, str]]]:
    from importlib.metadata import entry_points

    everything = entry_points()
    return {group: sorted({(ep.name, ep.value) for ep in everything.select(group=group)})
            for group in (CHECKS_GROUP, FIXERS_GROUP)}


def _entry_point_table() -> dict[str, list[tuple[str, str]]]:
    """Our two groups, from a cache keyed by every sys.path entry and its modification time.

    Scanning every installed distribution is most of a diagnosis's start-up. Installing or removing a
    package adds or removes a *.dist-info folder, which changes its folder's mtime: a new key.
    """
    import json
    import os
    import sys
    import zlib

    from resumedoctor.io.cache import cache_dir, write_entry

    stamps = []
    for entry in sys.path:
        try:
            stamps.append([entry, os.stat(entry or ".").st_mtime_ns])
        except OSError:
            stamps.append([entry, None])
    # The file name is a checksum; the stamps inside are compared exactly.
    path = cache_dir() / f"entry-points-{zlib.crc32(json.dumps(stamps).encode()):08x}.json"
    try:
        cached = json.loads(path.read_text())
        if cached["stamps"] == stamps:
            return {group: [tuple(pair) for pair in pairs] for group, pairs in cached["groups"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    table = _scan_entry_points()
    write_entry(path, json.dumps({"stamps": stamps, "groups": table}))
    return table


def _entry_points(group: str) -> list[PluginEntry]:
    if not _ENTRY_POINTS:
        _ENTRY_POINTS.append(_entry_point_table())
    # Installed twice (e.g. an editable and a regular copy) shows the same entry point once.
    return [PluginEntry(name, value) for name, value in sorted(set(_ENTRY_POINTS[0].get(group, [])))]


_ENTRY_POINTS: list[Any] = []


def _load(entry_point: Any) -> Any:
    try:
        return entry_point.load()
    except Exception as exc:  # a broken plugin is a clear error, never a traceback
        raise PluginError(
            f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc}"
        ) from exc


def _load_fixers(registry: Registry) -> None:
    for entry_point in _entry_points(FIXERS_GROUP):
        loaded = _load(entry_point)
        fixers = [loaded] if isinstance(loaded, Fixer) else list(loaded)
        registry.add_fixers(fixers, f"plugin {entry_point.name!r}")


def load_registry(*, fixers_now: bool = False) -> Registry:
    """Every check family installed, built-ins included; fixers load on first use (or now)."""
    _ENTRY_POINTS.clear()  # a fresh scan per registry: tests install plugins between calls
    registry = Registry()
    for entry_point in _entry_points(CHECKS_GROUP):
        registry.add_family(_load(entry_point), f"plugin {entry_point.name!r}")
    registry.families.sort(key=lambda family: family.prefix)
    registry._fixer_loader = _load_fixers
    if fixers_now:
        registry.load_fixers()  # so a broken fixer plugin fails here
    return registry

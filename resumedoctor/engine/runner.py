"""Run every check family over a target and collect one report."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.engine.context import LEDGER_SUMMARY, Options, Progress, RunContext
from resumedoctor.engine.findings import (
    Finding,
    FixInfo,
    FixSafety,
    Severity,
    summarize,
)
from resumedoctor.engine.registry import CheckFamily, Registry, load_registry
from resumedoctor.engine.settings import Settings, user_settings
from resumedoctor.engine.target import Target, resolve_target


class CheckCrashed(Exception):
    """A check family raised: a bug, reported as an internal error (exit 2), never a pass."""


class OutOfMemory(MemoryError):
    """A check family ran out of memory: the input is beyond what this machine can judge (exit 2, one line)."""

    judged_path = True  # its message names the folder and the family (cli.exits tells it from a bare MemoryError)


@dataclass(frozen=True)
class RuleInfo:
    """What a renderer may know about a rule: plain data, no check logic."""

    code: str
    name: str
    check: str
    severity: Severity
    summary: str
    explanation: str


@dataclass(frozen=True)
class FamilyResult:
    name: str
    prefix: str
    title: str
    status: str  # "ran" or "skipped"
    reason: str | None = None
    seconds: float = 0.0
    findings: tuple[Finding, ...] = ()
    # Codes of the family that --select left out: the family ran, but only in part.
    not_selected: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    """What `diagnose` found: the findings (most severe first), the checkpoint the resume loads
    (`resume_from`, None when there is none), every family's outcome, and `exit_code` (1: an error)."""

    target: str
    resume_from: str | None
    families: tuple[FamilyResult, ...]
    findings: tuple[Finding, ...]
    rules: tuple[RuleInfo, ...] = field(default=())
    # Where the resume checkpoint stands in its run (None: no checkpoint, or its state is unreadable).
    progress: Progress | None = None
    deep: bool = False  # judged with --deep: a fix must be asked to judge the same way
    # A result ledger's work left (the LEDGER_SUMMARY service's dict), None for a training run.
    ledger: dict | None = None

    @property
    def summary(self) -> dict[str, int]:
        return summarize(list(self.findings))

    @property
    def exit_code(self) -> int:
        return 1 if any(f.severity is Severity.ERROR for f in self.findings) else 0

    def to_dict(self) -> dict:
        return {
            "version": 1,
            "target": self.target,
            "resume_from": self.resume_from,
            "run": None if self.progress is None else {
                "global_step": self.progress.global_step, "max_steps": self.progress.max_steps,
                "finished": self.progress.finished},
            "findings": [finding.to_dict() for finding in self.findings],
            "summary": self.summary,
            **({"ledger": self.ledger} if self.ledger is not None else {}),
        }


CAUSED = "fixed by the safe fixes of its cause"


def fix_info_of(registry: Registry, finding: Finding, ctx: RunContext) -> FixInfo | None:
    """What `fix` will really do about this finding, asked of the fixers in the order `fix` asks them.

    A finding caused by others (`extra["caused_by"]`, e.g. an unusable resume target and the damage that
    makes it unusable) disappears once its causes are repaired: when every cause has a safe fix, `fix
    --auto` resolves it without the finding's own (unsafe) fixer ever running. Otherwise the first safe
    fixer that has something to change wins, then the first unsafe one; a fixer that cannot act on
    this finding is not offered.
    """
    causes = finding.extra.get("caused_by") or []
    cause_fixes = [fix_info_of(registry, cause, ctx) for cause in causes]
    if causes and all(info is not None and info.safety is FixSafety.SAFE for info in cause_fixes):
        repaired = ", ".join(sorted({cause.code for cause in causes}))
        return FixInfo(FixSafety.SAFE, f"{CAUSED} ({repaired}): "
                       + "; ".join(sorted({info.description.split("): ", 1)[-1] if info.description.startswith(CAUSED)
                                           else info.description for info in cause_fixes})))
    fixers = registry.fixers_for(finding.code)
    for fixer in sorted(fixers, key=lambda f: f.safety is not FixSafety.SAFE):
        if fixer.plan is not None and _plans_a_change(fixer, ctx, finding):
            return FixInfo(fixer.safety, fixer.description)
    return None


def _plans_a_change(fixer, ctx: RunContext, finding: Finding) -> bool:
    if fixer.offers is not None:  # the fixer answers without planning (its plan rewrites a large file)
        return bool(fixer.offers(ctx, finding))
    return bool(fixer.changes(ctx, finding))


def _run_family(family: CheckFamily, ctx: RunContext, registry: Registry) -> FamilyResult:
    started = time.perf_counter()
    try:
        raw = list(family.run(ctx))
    except MemoryError:
        raw = None  # raised below, out of this block: the MemoryError's frames hold what filled memory
    except Exception as exc:
        raise CheckCrashed(f"check family {family.name!r} crashed: {type(exc).__name__}: {exc}") from exc
    if raw is None:
        ctx.drop_loaded()
        raise OutOfMemory(f"ran out of memory judging {ctx.target.path} (check family {family.name!r}): "
                          "what it holds is larger than this machine can read; nothing was judged")
    findings = []
    for finding in raw:
        if not ctx.settings.is_enabled(finding.code):
            continue
        findings.append(
            dataclasses.replace(
                finding,
                check=family.name,
                severity=ctx.severity_of(finding),
                fix=finding.fix or fix_info_of(registry, finding, ctx),
            )
        )
    # Ignored codes are the user's decision about what matters; a narrow --select is a narrow check.
    left_out = tuple(rule.code for rule in family.rules
                     if not ctx.settings.is_enabled(rule.code) and not ctx.settings.is_ignored(rule.code))
    return FamilyResult(family.name, family.prefix, family.title, "ran", not_selected=left_out,
                        seconds=time.perf_counter() - started, findings=tuple(findings))


def run_checks(ctx: RunContext, registry: Registry) -> Report:
    """Every enabled family over the context's target."""
    for family in registry.families:
        ctx.services.update(family.services)
    results = []
    for family in registry.families:
        if ctx.target.kind not in family.applies_to:
            continue  # a ledger is not a training run, and the other way round: nothing to say
        if not any(ctx.settings.is_enabled(rule.code) for rule in family.rules):
            reason = "ignored" if all(ctx.settings.is_ignored(rule.code) for rule in family.rules) else "not selected"
            results.append(FamilyResult(family.name, family.prefix, family.title, "skipped", reason))
            continue
        missing = family.missing_requirements()
        if missing:
            reason = f"{', '.join(missing)} not installed (pip install 'resumedoctor[train]')"
            results.append(FamilyResult(family.name, family.prefix, family.title, "skipped", reason))
            continue
        reason = family.not_applicable(ctx) if family.not_applicable else None
        if reason:
            results.append(FamilyResult(family.name, family.prefix, family.title, "skipped", reason))
            continue
        results.append(_run_family(family, ctx, registry))
    findings = [f for result in results for f in result.findings]
    findings.sort(key=lambda f: (-f.severity.rank, f.code, f.path or ""))
    rules = tuple(
        RuleInfo(rule.code, rule.name, family.name, ctx.settings.severity_for(rule.code, rule.severity),
                 rule.summary, rule.explanation)
        for family, rule in registry.rules()
        if ctx.settings.is_enabled(rule.code) and ctx.target.kind in family.applies_to
    )
    if ctx.target.is_ledger:
        return _ledger_report(ctx, results, findings, rules)
    checkpoint = ctx.resume_point() if ctx.explicit_resume_path() is not None else ctx.target.checkpoint
    return Report(
        target=str(ctx.target.path),
        resume_from=str(checkpoint) if checkpoint is not None else None,
        families=tuple(results),
        findings=tuple(findings),
        rules=rules,
        progress=ctx.progress(checkpoint),
        deep=ctx.options.deep,
    )


def _ledger_report(ctx: RunContext, results: list[FamilyResult], findings: list[Finding],
                   rules: tuple[RuleInfo, ...]) -> Report:
    """A ledger resumes from itself; its report carries the work left when a family offers it."""
    summary = ctx.services.get(LEDGER_SUMMARY)
    ran = any(result.status == "ran" for result in results)
    return Report(target=str(ctx.target.path), resume_from=str(ctx.target.path), families=tuple(results),
                  findings=tuple(findings), rules=rules, deep=ctx.options.deep,
                  ledger=summary(ctx) if summary is not None and ran else None)


def new_context(target: Target, settings: Settings | None = None, options: Options | None = None,
                environ: Mapping[str, str] | None = None, registry: Registry | None = None) -> RunContext:
    """A run context whose shared verdicts are offered by the installed families."""
    ctx = RunContext(target, settings, options, environ)
    for family in (registry or load_registry()).families:
        ctx.services.update(family.services)
    return ctx


def diagnose(
    path: str | os.PathLike,
    *,
    settings: Settings | None = None,
    options: Options | None = None,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> Report:
    """Diagnose PATH (a checkpoint folder or an output_dir): the one entry point of `diagnose`."""
    return diagnose_with_context(path, settings=settings, options=options, registry=registry, environ=environ)[1]


def diagnose_with_context(
    path: str | os.PathLike,
    *,
    settings: Settings | None = None,
    options: Options | None = None,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[RunContext, Report]:
    """`diagnose`, with the run context its verdicts were computed in (the resume point, say)."""
    options = options or Options()
    target = resolve_target(path, ledger=options.ledger_asked)
    if settings is None:
        settings = user_settings(Path(path))
    registry = registry or load_registry()
    ctx = new_context(target, settings, options, environ, registry)
    return ctx, run_checks(ctx, registry)

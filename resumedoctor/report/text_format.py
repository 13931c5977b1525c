"""`--format text`: a doctor's summary a person reads at a glance.

One line per check family with a mark, then the findings (worst first), then a one-line verdict
(report/verdict.py decides what it may claim).
"""

from __future__ import annotations

import io
import shlex
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from resumedoctor.io.printable import printable
from resumedoctor.report.verdict import (
    DO_NOT_RESUME,
    LEDGER_NOT_READ,
    NOTHING_CHECKED,
    NOTHING_TO_RESUME,
    READ_WARNINGS,
    TARGET_NOT_CHECKED,
    judge,
    not_checked_note,
    skip_reasons,
)

if TYPE_CHECKING:
    from resumedoctor.engine.runner import FamilyResult, Report

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
MARK = {"error": ("✖", "bold red"), "warning": ("!", "yellow"), "info": ("✔", "green"), "ok": ("✔", "green"), "skipped": ("○", "dim")}


def _shown(text: str) -> str:
    """A message quotes names and values from the output_dir: shown escaped, never as terminal control.

    Messages are one line (the table wraps them), so a newline in one came from a crafted name.
    """
    return printable(text)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _counts(findings) -> str:
    errors = sum(1 for f in findings if f.severity.value == "error")
    warnings = sum(1 for f in findings if f.severity.value == "warning")
    infos = sum(1 for f in findings if f.severity.value == "info")
    parts = [_plural(errors, "error")] if errors else []
    if warnings:
        parts.append(_plural(warnings, "warning"))
    if infos:
        parts.append(f"{infos} info")
    return ", ".join(parts)


def _family_line(family: FamilyResult) -> tuple[Text, Text, Text]:
    if family.status == "skipped":
        mark, style = MARK["skipped"]
        detail = Text(f"skipped: {_shown(family.reason)}", style="dim")
    else:
        worst = max((f.severity.rank for f in family.findings), default=-1)
        key = {2: "error", 1: "warning", 0: "info", -1: "ok"}[worst]
        mark, style = MARK[key]
        detail = Text(_counts(family.findings) or "no problems", style=style if worst >= 1 else "")
    return Text(f" {mark} ", style=style), Text(f"{family.prefix:<6}{family.name}"), detail


def _verdict_line(report: Report, resume: str) -> Text:
    verdict = judge(report)
    counts = _counts(report.findings)
    note = not_checked_note(verdict)
    if verdict.kind == DO_NOT_RESUME:
        fixable = [f for f in report.findings if f.fix and f.severity.value == "error"]
        flags = "--auto --unsafe" if any(f.fix.safety.value == "unsafe" for f in fixable) else "--auto"
        flags += " --deep" if report.deep else ""
        flags += "".join(f" {shlex.quote(str(arg))}" for arg in (report.ledger or {}).get("options", ()))
        tail = f" ({len(fixable)} fixable: resumedoctor fix {printable(shlex.quote(str(report.target)))} {flags})" if fixable else ""
        return Text(f"✖ Do not resume: {counts}{tail}.", style="bold red")
    if verdict.kind == NOTHING_CHECKED and report.ledger is not None:
        return Text(f"○ Nothing was judged: {LEDGER_NOT_READ}. This is no verdict on the resume.", style="bold yellow")
    if verdict.kind == NOTHING_CHECKED:
        return Text(f"○ Nothing was checked: every check was skipped ({skip_reasons(verdict.skipped)}). "
                    "This is no verdict on the resume.", style="bold yellow")
    if verdict.kind == READ_WARNINGS and note:
        return Text(f"! Read the warnings: {counts}; {note}, so this is no verdict on the resume.", style="yellow")
    if verdict.kind == READ_WARNINGS:
        return Text(f"! Resume is possible, but read the warnings: {counts}.", style="yellow")
    if verdict.kind == NOTHING_TO_RESUME:
        return Text("✔ Nothing to resume: training starts at step 0.", style="bold green")
    if verdict.kind == TARGET_NOT_CHECKED:
        return Text(f"○ No problems found by {verdict.ran_prefixes}, but {note}: "
                    f"this is no verdict on resuming from {resume}.", style="yellow")
    progress = report.progress
    if progress is not None and progress.finished:
        return Text(f"✔ Safe to resume from {resume}: the run finished there (global step {progress.global_step} "
                    f"of max_steps {progress.max_steps}); raise max_steps to train longer (with the same max_steps a resume "
                    "still runs one more step).", style="bold green")
    return Text(f"✔ Safe to resume from {resume}.", style="bold green")


LEDGER_ROWS = 20  # rows of the per-task table; the JSON report lists more


def _print_ledger(console: Console, ledger: dict) -> None:
    """The per-task table (units below quota first) and the total work left: plain data, no checks."""
    rows = ledger.get("tasks") or []
    if rows and ledger.get("work_left"):  # nothing left: the finished units need no table
        console.print()
        table = Table(box=None, padding=(0, 2), show_edge=False, header_style="bold")
        table.add_column(printable(str(ledger.get("unit") or "unit")), overflow="fold")
        for column in ("done", "quota", "remaining"):
            table.add_column(column, justify="right", no_wrap=True)
        for row in rows[:LEDGER_ROWS]:
            style = "" if row.get("remaining") else "dim"
            table.add_row(printable(str(row.get("task")), limit=60), str(row.get("done")), str(row.get("quota")),
                          str(row.get("remaining")), style=style)
        console.print(table)
        more = len(rows) - LEDGER_ROWS + (ledger.get("tasks_not_listed") or 0)
        if more > 0:
            console.print(Text(f"  ... {more} more (--format json lists up to {len(rows)})", style="dim"))
    console.print(_work_left_line(ledger))


def _work_left_line(ledger: dict) -> Text:
    needed, left, units = ledger.get("work_left"), ledger.get("units_left"), ledger.get("units")
    if needed is None or not units:
        return Text("Work left: not judged (no readable results and no work list).", style="yellow")
    unit = f"{ledger.get('unit')} values"
    if not ledger.get("all_units_known"):
        unit += " seen in the results"
    rest = "" if ledger.get("all_units_known") else "; give --inputs to count those never started"
    if not needed:
        return Text(f"Work left: none: all {units} {unit} reached the quota of {ledger.get('quota')}{rest}.",
                    style="green")
    return Text(f"Work left: {needed} successes for {left} of {units} {unit} (quota {ledger.get('quota')}){rest}.",
                style="bold")


def render(report: Report, *, color: bool = False, width: int | None = None) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, width=width or 100,
                      highlight=False, emoji=False, soft_wrap=False)
    resume = printable(report.resume_from or "no checkpoint")
    if report.ledger is not None or report.resume_from == report.target:  # a result ledger resumes from itself
        console.print(Text.assemble(("resumedoctor", "bold"), f" · {printable(str(report.target))} (result ledger)"))
    else:
        console.print(Text.assemble(("resumedoctor", "bold"), f" · {printable(str(report.target))} → resumes from ",
                                    (resume, "bold")))
    console.print()
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, min_width=32)
    table.add_column()
    for family in report.families:
        table.add_row(*_family_line(family))
    console.print(table)

    if report.findings:
        console.print()
        findings = Table.grid(padding=(0, 1))
        findings.add_column(no_wrap=True, width=8)
        findings.add_column(ratio=1)
        for finding in report.findings:
            severity = finding.severity.value
            body = Text.assemble((f"{finding.code} ", "bold"), (printable(finding.path or ""), "dim"), "\n",
                                 _shown(finding.message))
            if finding.hint:
                body.append(f"\nhint: {_shown(finding.hint)}", style="dim")
            if finding.fix:
                body.append(f"\nfix ({finding.fix.safety.value}): {_shown(finding.fix.description)}", style="green")
            else:
                body.append("\nfix: none available", style="dim")
            findings.add_row(Text(f" {severity}", style=STYLE[severity]), body)
        console.print(findings)

    if report.ledger is not None:
        _print_ledger(console, report.ledger)
    console.print()
    console.print(_verdict_line(report, resume))
    return "\n".join(line.rstrip() for line in buffer.getvalue().split("\n"))

"""`--format github`: GitHub Actions workflow commands, one annotation per finding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resumedoctor.io.printable import printable
from resumedoctor.report.paths import relative_to_cwd
from resumedoctor.report.verdict import NOTHING_CHECKED, caveat, judge

if TYPE_CHECKING:
    from resumedoctor.engine.runner import Report

LEVELS = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render(report: Report) -> str:
    lines = []
    for finding in report.findings:
        properties = [f"title={escape_property(f'{finding.code} ({finding.check})')}"]
        if finding.path:
            properties.insert(0, f"file={escape_property(relative_to_cwd(finding.path) or finding.path)}")
        message = finding.message
        if finding.hint:
            message += f"\nhint: {finding.hint}"
        if finding.fix:
            message += f"\nfix ({finding.fix.safety.value}): {finding.fix.description}"
        lines.append(f"::{LEVELS[finding.severity.value]} {','.join(properties)}::{escape_data(message)}")
    verdict = judge(report)
    title = f"title={escape_property('resumedoctor')}"
    if caveat(verdict):  # a green job must not read as a checked run
        level = "warning" if verdict.kind == NOTHING_CHECKED else "notice"
        lines.append(f"::{level} {title}::{escape_data(f'{report.target}: {caveat(verdict)}')}")
    summary = report.summary
    lines.append(
        f"resumedoctor: {summary['error']} errors, {summary['warning']} warnings, {summary['info']} info in {printable(str(report.target))}"
    )
    return "\n".join(lines) + "\n"

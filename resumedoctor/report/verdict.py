"""What a report may claim: the one place every format asks before it says a resume is safe.

A report with no error is a pass only as far as checks ran. When nothing ran (every family not
selected, not applicable, or missing a requirement) it is no verdict at all; when the families that
judge the checkpoint itself did not run, the other families' silence says nothing about the resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resumedoctor.engine.runner import FamilyResult, Report

# Families whose checks judge whether the checkpoint the resume loads is usable.
TARGET_PREFIXES = frozenset({"CKPT"})

DO_NOT_RESUME = "do_not_resume"
NOTHING_CHECKED = "nothing_checked"
READ_WARNINGS = "read_warnings"
NOTHING_TO_RESUME = "nothing_to_resume"
TARGET_NOT_CHECKED = "target_not_checked"
SAFE_TO_RESUME = "safe_to_resume"


@dataclass(frozen=True)
class Verdict:
    kind: str
    ran: tuple[FamilyResult, ...]
    skipped: tuple[FamilyResult, ...]
    # Target-judging families that did not run: a warning verdict must not call the resume possible.
    target_skipped: tuple[FamilyResult, ...]

    @property
    def ran_prefixes(self) -> str:
        return ", ".join(family.prefix for family in self.ran)


def judge(report: Report) -> Verdict:
    ran = tuple(family for family in report.families if family.status != "skipped")
    skipped = tuple(family for family in report.families if family.status == "skipped")
    target_skipped = tuple(family for family in report.families if family.prefix in TARGET_PREFIXES
                           and (family.status == "skipped" or family.not_selected))
    summary = report.summary
    if summary["error"]:
        kind = DO_NOT_RESUME
    elif not ran or ledger_not_read(report):
        kind = NOTHING_CHECKED
    elif summary["warning"]:
        kind = READ_WARNINGS
    elif report.resume_from is None:
        kind = NOTHING_TO_RESUME  # decided by the folder names, whichever families ran
    elif target_skipped:
        kind = TARGET_NOT_CHECKED
    else:
        kind = SAFE_TO_RESUME
    return Verdict(kind, ran, skipped, target_skipped)


def ledger_not_read(report: Report) -> bool:
    """A result ledger none of whose results could be read: its silence judges nothing."""
    return report.ledger is not None and report.ledger.get("work_left") is None


LEDGER_NOT_READ = "the ledger's results could not be read or judged (GEN016 / GEN021 say why)"


def skip_reasons(families: tuple[FamilyResult, ...]) -> str:
    """`CKPT, ENV: not selected; LEN: no recipe (--config RECIPE)`: families grouped by their reason."""
    by_reason: dict[str, list[str]] = {}
    for family in families:
        if family.status != "skipped":  # ran in part
            by_reason.setdefault(f"{len(family.not_selected)} of its rules not selected", []).append(family.prefix)
            continue
        by_reason.setdefault(family.reason or "skipped", []).append(family.prefix)
    return "; ".join(f"{', '.join(prefixes)}: {reason}" for reason, prefixes in by_reason.items())


def not_checked_note(verdict: Verdict) -> str:
    """One sentence on what did not judge the checkpoint, or '' when everything that judges it ran."""
    if not verdict.target_skipped:
        return ""
    return f"the checkpoint itself was not checked ({skip_reasons(verdict.target_skipped)})"


def caveat(verdict: Verdict) -> str:
    """What a machine format must say beside a clean result: nothing checked, or not the checkpoint; else ''."""
    if verdict.kind == NOTHING_CHECKED:
        return f"nothing was checked: {skip_reasons(verdict.skipped) if verdict.skipped else LEDGER_NOT_READ}"
    return not_checked_note(verdict)

"""The vocabulary every check, fixer and renderer shares: severities, rules and findings."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

CODE_PATTERN = re.compile(r"^[A-Z]+[0-9]{3}$")


class Severity(str, enum.Enum):
    ERROR = "error"  # resume will fail or silently train wrong
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 2, "warning": 1, "info": 0}[self.value]


class FixSafety(str, enum.Enum):
    SAFE = "safe"  # restores consistency, training computes the same thing
    UNSAFE = "unsafe"  # changes what training computes


@dataclass(frozen=True)
class FixInfo:
    """What a fix for a finding would do; `null` in JSON when no fixer applies."""

    safety: FixSafety
    description: str

    def to_dict(self) -> dict:
        return {"safety": self.safety.value, "description": self.description}


class FixAvailability(str, enum.Enum):
    """Whether a rule's findings come with a fix, as ruff's FixAvailability."""

    NONE = "none"  # no fixer names the rule: its hint says what to do by hand
    SOMETIMES = "sometimes"  # the fixer may find nothing it can change for a given finding
    ALWAYS = "always"  # every finding of the rule gets a fix


@dataclass(frozen=True)
class RuleFix:
    """What the fixers declare for one rule; the registry fills it in when the fixers load."""

    availability: FixAvailability = FixAvailability.NONE
    # The registry's Fixer objects that name the rule, in the order `fix` asks them.
    fixers: tuple[Any, ...] = ()

    @property
    def safeties(self) -> tuple[FixSafety, ...]:
        """The safeties on offer, safe first."""
        return tuple(safety for safety in FixSafety if any(fixer.safety is safety for fixer in self.fixers))


NO_FIX = RuleFix()


@dataclass(frozen=True)
class Rule:
    """One stable finding code, self-describing like a ruff rule.

    `fix` is not written by the rule's author: the fixers that name the rule declare it, and the
    registry fills it in when it loads them (`load_registry(fixers_now=True)`, or the first use of
    `registry.fixers`); a rule no fixer names keeps NO_FIX.
    """

    code: str
    name: str
    severity: Severity
    summary: str
    explanation: str
    fix: RuleFix = field(default=NO_FIX, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not CODE_PATTERN.match(self.code):
            raise ValueError(f"rule code {self.code!r} is not PREFIX + three digits")

    def finding(self, message: str, *, path: str | None = None, hint: str | None = None) -> Finding:
        """A finding of this rule; the engine stamps the family and effective severity."""
        return Finding(
            code=self.code, severity=self.severity, check="", message=message, path=path, hint=hint
        )


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    check: str
    message: str
    path: str | None = None
    hint: str | None = None
    fix: FixInfo | None = None
    # Not part of the JSON contract: which checkpoint the finding concerns, for the fix engine.
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "check": self.check,
            "message": self.message,
            "path": self.path,
            "hint": self.hint,
            "fix": self.fix.to_dict() if self.fix else None,
        }


def summarize(findings: list[Finding]) -> dict[str, int]:
    """The `summary` object of the JSON report."""
    counts = {"error": 0, "warning": 0, "info": 0, "fixable": 0}
    for finding in findings:
        counts[finding.severity.value] += 1
        if finding.fix is not None:
            counts["fixable"] += 1
    return counts

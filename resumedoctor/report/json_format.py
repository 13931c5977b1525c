"""`--format json`: the object DESIGN.md fixes (plus `resume_from`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resumedoctor.diagnose import Report


def render(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"

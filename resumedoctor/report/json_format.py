"""`--format json`: the object docs/architecture.md fixes (plus `resume_from`, `verdict` and `checks`).

`verdict` is the text report's verdict as a word (report/verdict.py); `checks` says which families ran
and why the others were skipped, so a script can tell "no findings" from "nothing checked".
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from resumedoctor.report.verdict import judge

if TYPE_CHECKING:
    from resumedoctor.engine.runner import Report


def render(report: Report) -> str:
    document = report.to_dict()
    document["verdict"] = judge(report).kind
    document["checks"] = [
        {"check": family.name, "prefix": family.prefix, "status": family.status, "reason": family.reason}
        for family in report.families
    ]
    return json.dumps(document, indent=2) + "\n"

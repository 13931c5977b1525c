"""`--format junit`: one testsuite, one testcase per check family.

A family that did not run is a skipped testcase, never a passing one; the verdict is a suite property,
and a report that checked nothing or not the checkpoint says so in the suite's system-out.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from resumedoctor.report.verdict import caveat, judge

if TYPE_CHECKING:
    from resumedoctor.engine.runner import Report


def _describe(finding) -> str:
    text = f"{finding.severity.value} {finding.code} {finding.path or ''}: {finding.message}"
    if finding.hint:
        text += f"\n  hint: {finding.hint}"
    return text


def render(report: Report) -> str:
    failures = sum(1 for family in report.families if any(f.severity.value == "error" for f in family.findings))
    skipped = sum(1 for family in report.families if family.status == "skipped")
    total_time = sum(family.seconds for family in report.families)
    counts = {"tests": str(len(report.families)), "failures": str(failures), "errors": "0",
              "skipped": str(skipped), "time": f"{total_time:.3f}"}
    root = ET.Element("testsuites", name="resumedoctor", **counts)
    suite = ET.SubElement(root, "testsuite", name="resumedoctor", hostname=socket.gethostname(),
                          timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), **counts)
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="target", value=report.target)
    ET.SubElement(properties, "property", name="resume_from", value=report.resume_from or "")
    verdict = judge(report)
    ET.SubElement(properties, "property", name="verdict", value=verdict.kind)
    for family in report.families:
        case = ET.SubElement(suite, "testcase", classname=f"resumedoctor.{family.prefix}", name=family.name,
                             time=f"{family.seconds:.3f}")
        if family.status == "skipped":
            ET.SubElement(case, "skipped", message=family.reason or "skipped")
            continue
        errors = [f for f in family.findings if f.severity.value == "error"]
        others = [f for f in family.findings if f.severity.value != "error"]
        if errors:
            failure = ET.SubElement(case, "failure", type=errors[0].code,
                                    message=f"{len(errors)} error(s): {errors[0].code} {errors[0].message}")
            failure.text = "\n".join(_describe(f) for f in errors)
        if others:
            ET.SubElement(case, "system-out").text = "\n".join(_describe(f) for f in others)
    if caveat(verdict):
        ET.SubElement(suite, "system-out").text = caveat(verdict)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

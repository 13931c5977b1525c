"""`--format sarif`: SARIF 2.1.0 in the subset GitHub code scanning accepts for upload."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from resumedoctor import __version__
from resumedoctor.io.hashing import sha256_bytes
from resumedoctor.report.paths import relative_to_cwd
from resumedoctor.report.verdict import NOTHING_CHECKED, caveat, judge

if TYPE_CHECKING:
    from resumedoctor.engine.runner import Report

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}
INFORMATION_URI = "https://pypi.org/project/resumedoctor/"


def _location(path: str | None, target: str) -> dict:
    path = path or target
    relative = relative_to_cwd(path)
    if relative is not None:
        artifact = {"uri": quote(relative), "uriBaseId": "%SRCROOT%"}
    else:
        artifact = {"uri": Path(os.path.abspath(path)).as_uri()}
    # GitHub needs a region with startLine even for files that have no lines to point at.
    return {"physicalLocation": {"artifactLocation": artifact, "region": {"startLine": 1}}}


def _fingerprint(finding) -> str:
    key = f"{finding.code}\0{relative_to_cwd(finding.path or '') or finding.path}\0{finding.message}"
    return sha256_bytes(key.encode("utf-8"))


def _invocation(report: Report) -> dict:
    """The run's invocation; what did not run is a tool notification, so zero results is not read as clean."""
    verdict = judge(report)
    invocation = {"executionSuccessful": True, "properties": {"verdict": verdict.kind}}
    if caveat(verdict):
        kind = "nothing-checked" if verdict.kind == NOTHING_CHECKED else "checkpoint-not-checked"
        invocation["toolExecutionNotifications"] = [
            {"level": "warning", "descriptor": {"id": f"resumedoctor/{kind}"}, "message": {"text": caveat(verdict)}}]
    return invocation


def render(report: Report) -> str:
    rules = list(report.rules)
    index = {rule.code: position for position, rule in enumerate(rules)}
    descriptors = [
        {
            "id": rule.code,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "fullDescription": {"text": rule.explanation},
            "help": {"text": f"{rule.summary}\n\n{rule.explanation}\n\nresumedoctor explain {rule.code}"},
            "defaultConfiguration": {"level": LEVELS[rule.severity.value]},
            "properties": {"tags": ["resumedoctor", rule.check]},
        }
        for rule in rules
    ]
    results = []
    for finding in report.findings:
        text = finding.message + (f" Hint: {finding.hint}." if finding.hint else "")
        result = {
            "ruleId": finding.code,
            "level": LEVELS[finding.severity.value],
            "message": {"text": text},
            "locations": [_location(finding.path, report.target)],
            "partialFingerprints": {"resumedoctorFinding/v1": _fingerprint(finding)},
        }
        if finding.code in index:
            result["ruleIndex"] = index[finding.code]
        if finding.fix:
            result["properties"] = {"fix": finding.fix.to_dict()}
        results.append(result)
    document = {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "resumedoctor", "version": __version__, "semanticVersion": __version__,
                                    "informationUri": INFORMATION_URI, "rules": descriptors}},
                "originalUriBaseIds": {"%SRCROOT%": {"uri": Path(os.getcwd()).as_uri() + "/"}},
                "invocations": [_invocation(report)],
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2) + "\n"

"""Every report format on a real damaged run: the JSON contract, SARIF, JUnit, GitHub, text."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from resumedoctor.engine.findings import Finding, Severity
from resumedoctor.engine.runner import FamilyResult, Report, diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.report import render

# The part of SARIF 2.1.0 that GitHub code scanning requires of an upload (its documented
# required properties), written out here because the OASIS schema cannot be fetched offline.
GITHUB_SARIF_SUBSET = {
    "type": "object",
    "required": ["version", "runs", "$schema"],
    "properties": {
        "version": {"const": "2.1.0"},
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["tool", "results"],
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name", "rules"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                    "rules": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["id", "shortDescription", "fullDescription", "defaultConfiguration"],
                                            "properties": {
                                                "id": {"type": "string"},
                                                "shortDescription": {"type": "object", "required": ["text"]},
                                                "fullDescription": {"type": "object", "required": ["text"]},
                                                "defaultConfiguration": {
                                                    "type": "object",
                                                    "properties": {"level": {"enum": ["none", "note", "warning", "error"]}},
                                                },
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["ruleId", "message", "locations", "level"],
                            "properties": {
                                "ruleId": {"type": "string"},
                                "ruleIndex": {"type": "integer", "minimum": 0},
                                "level": {"enum": ["none", "note", "warning", "error"]},
                                "message": {"type": "object", "required": ["text"]},
                                "partialFingerprints": {"type": "object", "additionalProperties": {"type": "string"}},
                                "locations": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["physicalLocation"],
                                        "properties": {
                                            "physicalLocation": {
                                                "type": "object",
                                                "required": ["artifactLocation", "region"],
                                                "properties": {
                                                    "artifactLocation": {"type": "object", "required": ["uri"]},
                                                    "region": {
                                                        "type": "object",
                                                        "required": ["startLine"],
                                                        "properties": {"startLine": {"type": "integer", "minimum": 1}},
                                                    },
                                                },
                                            }
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture
def damaged_report(full_run, monkeypatch):
    monkeypatch.chdir(full_run.parent)
    (full_run / "checkpoint-6" / "trainer_state.json").unlink()
    (full_run / "tmp-checkpoint-8").mkdir()
    return diagnose(full_run.name, settings=Settings())


def test_json_matches_the_design_contract(damaged_report):
    document = json.loads(render(damaged_report, "json"))
    assert document["version"] == 1
    assert document["target"] == "full"
    # docs/architecture.md's "JSON report", extended (never changed) by resume_from, run, verdict and checks.
    assert set(document) == {"version", "target", "findings", "summary", "resume_from", "run", "verdict", "checks"}
    assert document["verdict"] == "do_not_resume"
    assert [(c["prefix"], c["status"]) for c in document["checks"]] == [
        (family.prefix, family.status) for family in damaged_report.families]
    for finding in document["findings"]:
        assert set(finding) == {"code", "severity", "check", "message", "path", "hint", "fix"}
        assert finding["severity"] in {"error", "warning", "info"}
        assert finding["check"] == "checkpoint-integrity"
        assert finding["fix"] is None or set(finding["fix"]) == {"safety", "description"}
    assert set(document["summary"]) == {"error", "warning", "info", "fixable"}
    assert document["summary"]["error"] == 2 and document["summary"]["warning"] == 1
    assert {f["code"] for f in document["findings"]} == {"CKPT001", "CKPT018", "CKPT021"}


def test_sarif_is_valid_for_github_upload(damaged_report):
    document = json.loads(render(damaged_report, "sarif"))
    jsonschema.validate(document, GITHUB_SARIF_SUBSET)
    run = document["runs"][0]
    rule_ids = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    for result in run["results"]:
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert uri.startswith("full/") or uri == "full", uri  # relative to the checkout, as GitHub wants
    levels = {result["ruleId"]: result["level"] for result in run["results"]}
    assert levels == {"CKPT001": "error", "CKPT018": "error", "CKPT021": "warning"}
    fingerprints = [tuple(r["partialFingerprints"].values()) for r in run["results"]]
    assert len(set(fingerprints)) == len(fingerprints)


def test_junit_has_one_testcase_per_family(damaged_report):
    root = ET.fromstring(render(damaged_report, "junit"))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == [family.name for family in damaged_report.families]
    checkpoint_case = next(case for case in cases if case.get("name") == "checkpoint-integrity")
    failure = checkpoint_case.find("failure")
    assert failure is not None and "CKPT001" in failure.text and "CKPT018" in failure.text
    assert "CKPT021" in checkpoint_case.find("system-out").text
    skipped = [case.get("name") for case in cases if case.find("skipped") is not None]
    assert "length-budgets" in skipped  # no recipe given: skipped, with the reason
    assert suite.get("failures") == "1" and suite.get("tests") == str(len(cases))


def test_junit_marks_skipped_and_passing_families():
    report = Report(
        target="t", resume_from=None, findings=(),
        families=(FamilyResult("a", "AAA", "A", "ran"), FamilyResult("b", "BBB", "B", "skipped", "wandb not installed")),
    )
    suite = ET.fromstring(render(report, "junit")).find("testsuite")
    first, second = suite.findall("testcase")
    assert list(first) == []
    assert second.find("skipped").get("message") == "wandb not installed"
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"


def test_github_annotations(damaged_report):
    lines = render(damaged_report, "github").splitlines()
    errors = [line for line in lines if line.startswith("::error ")]
    warnings = [line for line in lines if line.startswith("::warning ")]
    assert len(errors) == 2 and len(warnings) == 1
    assert errors[0].startswith("::error file=full/checkpoint-6")
    assert "title=CKPT001 (checkpoint-integrity)" in errors[0]
    assert all("\n" not in line for line in lines)


def test_github_escapes_newlines_and_property_separators():
    finding = Finding("CKPT003", Severity.WARNING, "c", "50% done\nnext line", path="a,b:c", hint=None)
    report = Report("t", None, (FamilyResult("c", "CKPT", "t", "ran", findings=(finding,)),), (finding,))
    line = render(report, "github").splitlines()[0]
    assert line == "::warning file=a%2Cb%3Ac,title=CKPT003 (c)::50%25 done%0Anext line"


def test_text_verdicts(built_runs, damaged_report):
    clean = render(diagnose(built_runs["full"], settings=Settings()), "text")
    assert "✔ Safe to resume from" in clean and "no problems" in clean
    damaged = render(damaged_report, "text")
    assert " ✖  CKPT  checkpoint-integrity       2 errors, 1 warning" in damaged
    assert damaged.strip().splitlines()[-1].startswith("✖ Do not resume: 2 errors, 1 warning")
    warned = render(diagnose(built_runs["model_only"], settings=Settings()), "text")
    assert warned.strip().splitlines()[-1].startswith("! Resume is possible, but read the warnings")


def test_unknown_format_is_refused(damaged_report):
    with pytest.raises(ValueError):
        render(damaged_report, "yaml")


def _skipped(prefix: str, reason: str) -> FamilyResult:
    return FamilyResult(prefix.lower(), prefix, prefix, "skipped", reason)


NOTHING_RAN = Report(target="out", resume_from="out/checkpoint-6", findings=(), families=(
    _skipped("CKPT", "not selected"), _skipped("ENV", "not selected"), _skipped("LEN", "no recipe (--config RECIPE)")))
NO_CHECKPOINT_CHECK = Report(target="out", resume_from="out/checkpoint-6", findings=(), families=(
    _skipped("CKPT", "not selected"), FamilyResult("environment", "ENV", "Environment", "ran")))


def test_nothing_ran_claims_no_pass_in_any_format():
    text = " ".join(render(NOTHING_RAN, "text").split())
    assert "Safe to resume" not in text and "✔" not in text
    assert text.endswith("○ Nothing was checked: every check was skipped (CKPT, ENV: not selected; "
                         "LEN: no recipe (--config RECIPE)). This is no verdict on the resume.")
    assert json.loads(render(NOTHING_RAN, "json"))["verdict"] == "nothing_checked"
    suite = ET.fromstring(render(NOTHING_RAN, "junit")).find("testsuite")
    assert all(case.find("skipped") is not None for case in suite.findall("testcase"))  # no passing testcase
    assert suite.get("skipped") == suite.get("tests") == "3"
    assert suite.find("properties/property[@name='verdict']").get("value") == "nothing_checked"
    assert suite.find("system-out").text.startswith("nothing was checked: ")
    sarif = json.loads(render(NOTHING_RAN, "sarif"))
    jsonschema.validate(sarif, GITHUB_SARIF_SUBSET)
    invocation = sarif["runs"][0]["invocations"][0]
    assert invocation["toolExecutionNotifications"][0]["level"] == "warning"
    assert invocation["properties"]["verdict"] == "nothing_checked"
    github = render(NOTHING_RAN, "github").splitlines()
    assert github[0].startswith("::warning title=resumedoctor::out: nothing was checked: CKPT, ENV: not selected")


def test_without_the_checkpoint_family_no_format_says_safe():
    text = " ".join(render(NO_CHECKPOINT_CHECK, "text").split())
    assert "Safe to resume" not in text
    assert text.endswith("○ No problems found by ENV, but the checkpoint itself was not checked "
                         "(CKPT: not selected): this is no verdict on resuming from out/checkpoint-6.")
    assert json.loads(render(NO_CHECKPOINT_CHECK, "json"))["verdict"] == "target_not_checked"
    suite = ET.fromstring(render(NO_CHECKPOINT_CHECK, "junit")).find("testsuite")
    assert suite.find("system-out").text == "the checkpoint itself was not checked (CKPT: not selected)"
    assert render(NO_CHECKPOINT_CHECK, "github").startswith(
        "::notice title=resumedoctor::out: the checkpoint itself was not checked (CKPT: not selected)\n")
    warning = Finding("ENV003", Severity.WARNING, "environment", "versions differ")
    warned = Report("out", "out/checkpoint-6", (_skipped("CKPT", "not selected"),
                                                FamilyResult("environment", "ENV", "E", "ran", findings=(warning,))),
                    (warning,))
    line = " ".join(render(warned, "text").split())
    assert "Resume is possible" not in line and "the checkpoint itself was not checked" in line


def test_a_full_clean_report_is_still_safe(built_runs):
    report = diagnose(built_runs["full"], settings=Settings())
    assert json.loads(render(report, "json"))["verdict"] == "safe_to_resume"
    sarif = json.loads(render(report, "sarif"))["runs"][0]["invocations"][0]
    assert "toolExecutionNotifications" not in sarif
    assert render(report, "github").startswith("resumedoctor: 0 errors")

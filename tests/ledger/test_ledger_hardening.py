"""GEN hardening: deep nesting, success expressions that fail on the records, over-long expressions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from resumedoctor import api
from resumedoctor.integrations.ledger.success import (
    SuccessExpressionError,
    compile_success,
)
from resumedoctor.io import records


def _codes(report) -> dict[str, list]:
    found: dict[str, list] = {}
    for finding in report.findings:
        found.setdefault(finding.code, []).append(finding)
    return found


def _deep_ledger(tmp_path):
    path = tmp_path / "results.jsonl"
    depth = 200_000
    path.write_text('{"id":0,"ok":1}\n' + '{"id":1,"x":' + "[" * depth + "]" * depth + "}\n")
    return path


@pytest.mark.parametrize("loader", ["default", "json"])
def test_deeply_nested_line_is_unparseable_not_a_crash(tmp_path, monkeypatch, loader):
    if loader == "json":  # the fallback path where orjson is installed: json's own parser
        monkeypatch.setattr(records, "_json_loads", lambda: json.loads)
    path = _deep_ledger(tmp_path)
    entries = list(records.iter_entries(path))
    assert entries[1].problem == f"{records.UNPARSEABLE}: nested too deeply"
    found = _codes(api.diagnose(path))
    assert "nested too deeply" in found["GEN002"][0].message


EXPRESSIONS = ["abs(text)", "length(id) > `0`", "sort_by(@, &id)"]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_expression_failing_on_every_record_judges_nothing_and_drops_nothing(tmp_path, expression):
    path = tmp_path / "results.jsonl"
    body = "".join(json.dumps({"id": i, "text": f"answer {i}"}) + "\n" for i in range(20))
    path.write_text(body)
    report = api.diagnose(path, ledger={"success": expression})
    found = _codes(report)
    assert "GEN018" not in found and "GEN006" not in found
    assert found["GEN021"][0].severity.value == "warning" and "20 of 20" in found["GEN021"][0].message
    assert report.ledger["work_left"] is None and report.ledger["failures"] == 0
    api.fix(path, ledger={"success": expression}, unsafe=True)
    assert path.read_text() == body


def test_expression_failing_on_some_records_only_drops_judged_failures(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [{"id": 0, "prediction": "fine"}, {"id": 1, "prediction": "[ERROR] oom"}, {"id": 2, "error": "x"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expression = "!starts_with(prediction, '[ERROR]')"
    found = _codes(api.diagnose(path, ledger={"success": expression}))
    assert found["GEN018"][0].extra["count"] == 1
    assert any("not judged for 1 of 3" in f.message for f in found["GEN016"])
    api.fix(path, ledger={"success": expression}, unsafe=True)
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [0, 2]


@pytest.mark.parametrize("expression", ["||".join(["id"] * 20000), "!" * 3000 + "id", "(" * 2000 + "id" + ")" * 2000])
def test_long_or_deep_expression_is_one_line_exit_2(tmp_path, expression):
    with pytest.raises(SuccessExpressionError):
        compile_success(expression)
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": 1}\n')
    result = subprocess.run([sys.executable, "-m", "resumedoctor", "diagnose", str(path), "--success", expression],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "not JMESPath" in result.stderr and "Traceback" not in result.stderr

"""A result ledger is a third kind of PATH: what `diagnose` takes as one, and how it is configured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resumedoctor.engine.target import LEDGER, TRAINING, TargetError, resolve_target


def run_cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resumedoctor", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prediction": f"answer {i}"}) + "\n" for i in range(5)))
    return path


def test_a_results_file_is_a_ledger_and_its_folder_holds_the_fixes(results):
    target = resolve_target(results)
    assert target.kind == LEDGER and target.is_ledger
    assert target.output_dir == results.parent and target.checkpoint is None and target.checkpoints == ()


def test_a_folder_is_a_ledger_by_its_worker_files_or_when_asked(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert resolve_target(plain).kind == TRAINING  # an output_dir before its first save
    assert resolve_target(plain, ledger=True).kind == LEDGER
    workers = tmp_path / "workers"
    workers.mkdir()
    (workers / "worker_args_0.json").write_text("{}")
    assert resolve_target(workers).kind == LEDGER
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "gen_data_0_to_250_w0.csv").write_text("id\n")
    assert resolve_target(shards).kind == LEDGER


def test_an_output_dir_with_checkpoints_stays_a_training_run_even_when_asked(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "worker_args_0.json").write_text("{}")
    assert resolve_target(tmp_path, ledger=True).kind == TRAINING


def test_files_that_are_not_ledgers_are_refused_in_one_line(tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(TargetError, match="a file of the checkpoint"):
        resolve_target(checkpoint / "trainer_state.json")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(TargetError, match="not a directory"):
        resolve_target(notes)


def test_training_only_commands_refuse_a_ledger(results):
    for command in ("env", "seal"):
        result = run_cli(command, results)
        assert result.returncode == 2, result
        assert "is a result ledger, not a training run" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_the_json_report_of_a_ledger_lists_only_the_ledger_family(results):
    result = run_cli("diagnose", results, "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert report["resume_from"] == str(results)
    assert {check["prefix"] for check in report["checks"]} == {"GEN"}
    assert "ledger" in report


def test_ledger_settings_and_flags_are_checked(results, tmp_path):
    bad = run_cli("diagnose", results, "--success", "!!((")
    assert bad.returncode == 2 and "not JMESPath" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("diagnose", results, "--quota", "0")
    assert bad.returncode == 2 and "at least 1" in bad.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.resumedoctor.ledger]\nid_feld = "id"\n')
    bad = run_cli("diagnose", results, cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'id_field'" in bad.stderr, bad.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.resumedoctor.ledger]\nid_field = "id"\nquota = 2\n')
    good = run_cli("diagnose", results, "--format", "json", cwd=tmp_path)
    assert good.returncode in (0, 1), good.stderr


def test_a_ledger_whose_results_cannot_be_read_gets_no_verdict(tmp_path):
    garbage = tmp_path / "results.jsonl"
    garbage.write_bytes(bytes(range(256)) * 16)
    result = run_cli("diagnose", garbage, "--format", "json")
    report = json.loads(result.stdout)
    assert report["verdict"] == "nothing_checked" and report["ledger"]["work_left"] is None
    text = run_cli("diagnose", garbage).stdout
    assert "Nothing was judged" in text and "Safe to resume" not in text


def test_a_missing_inputs_file_is_a_usage_error(results):
    result = run_cli("diagnose", results, "--inputs", results.parent / "nope.jsonl")
    assert result.returncode == 2 and "--inputs: inputs" in result.stderr and "no such file" in result.stderr


def test_the_suggested_fix_repeats_the_ledger_options(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_bytes(b'{"id": 1, "prediction": "a"}\n{"id": 2, "pre')
    text = run_cli("diagnose", results, "--quota", "2", "--success", "!starts_with(prediction, '[ERROR]')").stdout
    text = " ".join(text.split())  # rich wraps long lines
    assert "(result ledger)" in text
    assert "--auto --quota 2 --success '!starts_with(prediction, '\"'\"'[ERROR]'\"'\"')'" in " ".join(text.split())


def test_a_json_value_that_holds_no_records_is_not_judged_and_offers_no_fix(tmp_path):
    for text in ("42", '"text"'):
        value = tmp_path / "results.json"
        value.write_text(text)
        report = json.loads(run_cli("diagnose", value, "--format", "json").stdout)
        assert report["verdict"] == "nothing_checked"
        assert {finding["code"] for finding in report["findings"]} == {"GEN016"}


def test_a_clean_ledger_at_every_stage_gets_no_error(tmp_path):
    """Fresh (empty), finished (every task at its quota), extended (a higher quota): never above info."""
    inputs = tmp_path / "tasks.jsonl"
    inputs.write_text("".join(json.dumps({"task": f"t{t}", "prompt": "p"}) + "\n" for t in range(3)))
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text("")
    done = tmp_path / "done.jsonl"
    done.write_text("".join(json.dumps({"id": f"t{t}-{s}", "task": f"t{t}"}) + "\n" for t in range(3) for s in range(2)))
    for path, quota, left in ((fresh, 2, 6), (done, 2, 0), (done, 4, 6)):
        report = json.loads(run_cli("diagnose", path, "--inputs", inputs, "--task-field", "task", "--quota", quota,
                                    "--format", "json").stdout)
        assert {f["severity"] for f in report["findings"]} <= {"info"}, report["findings"]
        assert report["ledger"]["work_left"] == left  # oracle: 3 tasks x quota, minus 2 successes each when done

"""The GEN fixers on real ledgers: a writer killed mid-record, an inference loop's processed_ids bug, a
generation job below quota, worker shards; each fix journaled, previewed by --dry-run and undoable."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import pytest
from ledger_fixer_inputs import (
    FAILS,
    INFERENCE_SUCCESS,
    QUOTA,
    SHARD_FIELDS,
    TASKS,
    csv_shards,
    generation_job,
    inference_inputs,
    inference_loop,
    killed_writer,
    run_writer,
)

from resumedoctor import api
from resumedoctor.engine.target import STATE_DIR

TESTS = Path(__file__).resolve().parent


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and STATE_DIR not in p.parts}


def codes(report) -> set[str]:
    return {finding.code for finding in report.findings}


def cli(*args) -> object:
    """The CLI in a subprocess."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "resumedoctor", *map(str, args)],
                          capture_output=True, text=True, env=env)


def lines(path: Path) -> list[dict]:
    """The oracle of a JSONL file: every line parses with json.loads (a ValueError otherwise)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


# -- a JSONL writer killed mid-record ------------------------------------------------------------------
def test_a_killed_writers_torn_record_is_cut_appends_then_parse_and_undo_restores_it(tmp_path):
    results = tmp_path / "results.jsonl"
    torn = killed_writer(results, records=30)
    assert "GEN001" in codes(api.diagnose(results))
    fixed = cli("fix", results, "--auto")
    assert fixed.returncode in (0, 1), fixed.stderr
    assert "GEN001" not in codes(api.diagnose(results))
    assert [record["id"] for record in lines(results)] == list(range(30))
    assert torn.startswith(results.read_bytes()) and len(torn) > results.stat().st_size
    undone = cli("undo", results)
    assert undone.returncode == 0, undone.stderr
    assert results.read_bytes() == torn  # the torn bytes, exactly
    assert not (tmp_path / STATE_DIR / "transactions").exists() or not os.listdir(tmp_path / STATE_DIR / "transactions")
    api.fix(results)
    run_writer(results, 30, 5)  # the resume appends: every line is a record of its own
    assert [record["id"] for record in lines(results)] == list(range(35))


def test_a_whole_last_record_without_its_newline_keeps_it_and_gets_the_newline(tmp_path):
    results = tmp_path / "results.jsonl"
    run_writer(results, 0, 3)
    body = results.read_bytes()
    results.write_bytes(body[:-1])  # killed between the record and its newline
    api.fix(results)
    assert results.read_bytes() == body
    assert [record["id"] for record in lines(results)] == [0, 1, 2]


def test_dry_run_changes_nothing_and_a_second_fix_plans_nothing(tmp_path):
    results = tmp_path / "results.jsonl"
    killed_writer(results, records=5)
    before = tree(tmp_path)
    preview = api.fix(results, dry_run=True)
    # the torn tail, and the inputs whose record is a failure (id 0) as the work left
    assert sorted(op.fixer for op in preview.operations) == ["cut-torn-record", "write-remaining-work"]
    assert tree(tmp_path) == before and not (tmp_path / STATE_DIR / "transactions").exists()
    assert api.fix(results).operations
    again = api.fix(results)
    assert again.operations == [] and again.transactions == []


def test_a_torn_csv_row_is_cut(tmp_path):
    results = tmp_path / "results.csv"
    results.write_text("id,output\n1,a\n2,b\n3,partial out")
    api.fix(results)
    assert results.read_text() == "id,output\n1,a\n2,b\n"


# -- an inference checkpoint.json with the processed_ids bug -------------------------------------------
def test_rebuilt_processed_ids_make_a_real_resume_redo_exactly_the_failures(tmp_path):
    checkpoint, inputs = tmp_path / "checkpoint.json", inference_inputs(40)
    inference_loop(checkpoint, inputs, attempt=0, bug=True)
    failed = [item["id"] for item in inputs if item["id"] % FAILS == 0]  # the oracle: which inputs failed
    assert inference_loop(checkpoint, inputs, attempt=1, bug=False) == []  # the bug: the resume redoes nothing
    before = json.loads(checkpoint.read_text())
    ledger = {"success": INFERENCE_SUCCESS}
    assert "GEN004" in codes(api.diagnose(checkpoint, ledger=ledger))
    result = api.fix(checkpoint, ledger=ledger)
    assert "GEN004" not in codes(result.final)
    after = json.loads(checkpoint.read_text())
    assert after["processed_ids"] == [i for i in range(40) if i not in failed]
    assert {k: v for k, v in after.items() if k != "processed_ids"} == {k: v for k, v in before.items() if k != "processed_ids"}
    assert checkpoint.read_text() == json.dumps(after, indent=2)  # the loop's own style, kept
    assert inference_loop(checkpoint, inputs, attempt=1, bug=False) == failed
    assert api.fix(checkpoint, ledger=ledger).operations == []


def test_processed_ids_keep_their_spelling_for_a_results_mapping(tmp_path):
    from resumedoctor.fixers.generation_ledgers import dump_like

    checkpoint = tmp_path / "checkpoint.json"
    data = {"results": {"1": "a", "2": "[ERROR] OOM", "3": "c"}, "processed_ids": [1, 2]}
    checkpoint.write_text(json.dumps(data))
    api.fix(checkpoint, ledger={"success": INFERENCE_SUCCESS})
    assert checkpoint.read_text() == json.dumps({**data, "processed_ids": [1, 3]})  # ints, compact: as written
    assert dump_like({"a": [1]}, b'{\n\t"a": 1\n}\n') == b'{\n\t"a": [\n\t\t1\n\t]\n}\n'


# -- the remaining work --------------------------------------------------------------------------------
def successes_by_task(results: Path) -> dict[str, int]:
    """The oracle, counted here: records without `error` are successes."""
    counts: dict[str, int] = {}
    for record in lines(results):
        counts[record["task_id"]] = counts.get(record["task_id"], 0) + (0 if record.get("error") else 1)
    return counts


def test_remaining_work_lists_exactly_the_tasks_still_short_in_the_inputs_format(tmp_path):
    inputs, results = generation_job(tmp_path)
    ledger = {"task_field": "task_id", "inputs": str(inputs), "quota": QUOTA}
    inputs_before = inputs.read_bytes()
    api.fix(results, ledger=ledger)
    done = successes_by_task(results)
    expected = [{**task, "remaining": QUOTA - done.get(task["task_id"], 0)} for task in lines(inputs)
                if done.get(task["task_id"], 0) < QUOTA]
    assert lines(tmp_path / "results.remaining.jsonl") == expected
    assert len(expected) == TASKS and sum(row["remaining"] for row in expected) < TASKS * QUOTA
    assert inputs.read_bytes() == inputs_before
    assert api.fix(results, ledger=ledger).operations == []


def test_remaining_work_of_csv_inputs_keeps_each_rows_bytes(tmp_path):
    inputs, results = generation_job(tmp_path, inputs_format="csv")
    api.fix(results, ledger={"task_field": "task_id", "inputs": str(inputs), "quota": 2})
    done = successes_by_task(results)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.remaining.csv").read_text())))
    expected = [task["task_id"] for task in csv.DictReader(io.StringIO(inputs.read_text()))
                if done.get(task["task_id"], 0) < 2]
    assert [row["task_id"] for row in rows] == expected
    assert all(int(row["remaining"]) == 2 - done.get(row["task_id"], 0) for row in rows)
    original = inputs.read_text().splitlines()
    assert all(line.rsplit(",", 1)[0] in original for line in (tmp_path / "results.remaining.csv").read_text().splitlines())


def test_remaining_work_of_parquet_inputs_is_parquet_with_the_inputs_schema(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    jsonl_inputs, results = generation_job(tmp_path)
    inputs = tmp_path / "tasks.parquet"
    pq.write_table(pa.Table.from_pylist(lines(jsonl_inputs)), inputs)
    api.fix(results, ledger={"task_field": "task_id", "inputs": str(inputs), "quota": QUOTA})
    table = pq.read_table(tmp_path / "results.remaining.parquet")
    done = successes_by_task(results)
    assert table.to_pylist() == [{**task, "remaining": QUOTA - done.get(task["task_id"], 0)}
                                 for task in lines(jsonl_inputs) if done.get(task["task_id"], 0) < QUOTA]
    assert table.schema.field("difficulty").type == pq.read_table(inputs).schema.field("difficulty").type


def test_without_inputs_only_the_units_seen_below_quota_are_listed(tmp_path):
    _, results = generation_job(tmp_path)
    result = api.fix(results, ledger={"task_field": "task_id", "quota": QUOTA})
    done = successes_by_task(results)
    assert {row["task_id"]: row["remaining"] for row in lines(tmp_path / "results.remaining.jsonl")} == \
        {task: QUOTA - count for task, count in done.items() if count < QUOTA}
    assert any("never attempted are not listed" in op.reason for op in result.operations)


# -- worker shards ---------------------------------------------------------------------------------------
def test_csv_shards_merge_without_duplicates_a_success_winning_over_an_error(tmp_path):
    shards = csv_shards(tmp_path)
    before = tree(tmp_path)
    api.fix(tmp_path, dry_run=True)
    assert tree(tmp_path) == before
    api.fix(tmp_path)
    merged = list(csv.DictReader(io.StringIO((tmp_path / "gen_merged.csv").read_text())))
    first, second = shards.values()
    expected = [row for row in first if row["id"] != "3"] + [row for row in second if row["id"] != "4"]
    assert merged == expected
    assert sorted(int(row["id"]) for row in merged) == list(range(8)) and all(not row["error"] for row in merged)
    assert list(merged[0]) == SHARD_FIELDS
    api.undo(tmp_path)
    assert tree(tmp_path) == before


# -- dropping failures (unsafe) -------------------------------------------------------------------------
def test_drop_failure_records_is_unsafe_keeps_the_successes_bytes_and_undoes(tmp_path):
    results = tmp_path / "results.jsonl"
    run_writer(results, 0, 20)
    original = results.read_bytes()
    api.fix(results)  # safe only: the failures stay (the failed ids are listed as work left)
    assert results.read_bytes() == original
    assert [row["id"] for row in lines(tmp_path / "results.remaining.jsonl")] == [0, 5, 10, 15]
    result = api.fix(results, unsafe=True)
    assert [op.fixer for op in result.operations] == ["drop-failure-records"]
    kept = [line for line in original.splitlines(keepends=True) if json.loads(line)["success"]]
    assert results.read_bytes() == b"".join(kept) and len(kept) == 16
    api.undo(results)
    assert results.read_bytes() == original


# -- damaged and crafted input: no plan, never a crash ----------------------------------------------------
CRAFTED = {
    "garbage.jsonl": os.urandom(3000),
    "garbage.csv": b"\x00\xff" * 500,
    "empty.jsonl": b"",
    "checkpoint.json": b'{"results": "not a list", "processed_ids": {"a": 1}}',
    "wrong.json": b'{"results": [1, [2], null, {"id": {"nested": []}, "prediction": 5}], "processed_ids": [[1], null]}',
    "array.json": b"[1, 2, ",
    "deep.jsonl": b"[" * 100000,
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_files_give_every_fixer_no_plan_or_a_sane_one_never_an_exception(tmp_path, name):
    from resumedoctor.fixers.generation_ledgers import FIXERS

    from resumedoctor.engine.context import Options
    from resumedoctor.engine.findings import Finding, Severity
    from resumedoctor.engine.runner import new_context
    from resumedoctor.engine.target import resolve_target
    from resumedoctor.integrations.ledger.config import ledger_config

    path = tmp_path / name
    path.write_bytes(CRAFTED[name])
    options = Options(ledger=ledger_config({"inputs": str(path), "quota": 2}))
    ctx = new_context(resolve_target(path), options=options)
    for fixer in FIXERS:
        for rule in fixer.rules:
            finding = Finding(rule.code, Severity.ERROR, "generation-ledgers", "crafted", path=str(path))
            for operation in fixer.changes(ctx, finding):
                assert operation.path.parent == tmp_path  # inside the ledger's folder
                assert fixer.name != "write-remaining-work" or operation.path != path  # never the inputs


def test_processed_ids_are_not_rebuilt_while_errors_count_as_successes(tmp_path):
    """Under the default expression `[ERROR]` answers are successes (GEN019): a rebuild would mark them done."""
    checkpoint = tmp_path / "checkpoint.json"
    results = {"q0": "answer 0", "q1": "[ERROR] OOM", "q2": "answer 2"}
    checkpoint.write_text(json.dumps({"results": results, "processed_ids": ["q0"]}))
    before = checkpoint.read_bytes()
    result = api.fix(checkpoint)
    assert "GEN019" in codes(result.final) and checkpoint.read_bytes() == before
    result = api.fix(checkpoint, ledger={"success": "!starts_with(prediction, '[ERROR]')"})
    assert json.loads(checkpoint.read_text())["processed_ids"] == ["q0", "q2"]

"""GEN records part: real writers killed for real, the per-task table against an independent count,
an inference loop's checkpoint.json, bad input that must be a finding and never a crash."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from resumedoctor import api
from resumedoctor.integrations.ledger.success import compile_success

PYTHON = sys.executable
SUCCESS = "!starts_with(prediction, '[ERROR]')"


def codes(report) -> dict[str, list]:
    found: dict[str, list] = {}
    for finding in report.findings:
        found.setdefault(finding.code, []).append(finding)
    return found


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "resumedoctor", "diagnose", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def run_until_ready(script: str, *args: str, ready: int = 1) -> None:
    """Run a writer until it printed `ready` lines, then SIGKILL it (where it sleeps: mid-record)."""
    process = subprocess.Popen([PYTHON, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(ready):
            assert process.stdout.readline().strip() == "ready", "the writer did not get to its kill point"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL


GENERATOR = """
import json, random, sys, time
path, tasks, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
with open(path, "a") as out:
    for task in range(tasks):
        for sample in range(samples):
            failed = rng.random() < 0.15
            prediction = "[ERROR] 500 Internal Server Error" if failed else f"answer {task}.{sample}"
            out.write(json.dumps({"id": f"t{task}-s{sample}", "task_id": f"t{task}", "prediction": prediction}) + "\\n")
            out.flush()
    line = json.dumps({"id": "t-last", "task_id": f"t{tasks - 1}", "prediction": "a long answer " * 20})
    out.write(line[: len(line) // 2])  # half a record, flushed: the kill lands mid-line
    out.flush()
    print("ready", flush=True)
    time.sleep(60)
"""


def independent_counts(path: Path) -> Counter:
    """Successes per task with plain json, skipping lines that do not parse (the oracle)."""
    done: Counter = Counter()
    for line in path.read_bytes().split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not record["prediction"].startswith("[ERROR]"):
            done[record["task_id"]] += 1
    return done


def test_generation_killed_mid_record_is_torn_at_its_offset_and_the_table_counts_successes(tmp_path):
    results = tmp_path / "results.jsonl"
    run_until_ready(GENERATOR, str(results), "6", "5")
    data = results.read_bytes()
    torn_at = data.rindex(b"\n") + 1
    assert 0 < torn_at < len(data)  # really cut mid-record
    report = api.diagnose(results, ledger={"task_field": "task_id", "quota": 6, "success": SUCCESS})
    found = codes(report)
    (torn,) = found["GEN001"]
    assert f"byte offset {torn_at}, {len(data) - torn_at} bytes" in torn.message
    lines = data.count(b"\n") + 1
    assert f"line {lines} " in torn.message
    assert torn.extra["offset"] == torn_at and torn.extra["size"] == len(data) - torn_at
    assert report.exit_code == 1
    expected = independent_counts(results)
    table = {row["task"]: row for row in report.ledger["tasks"]}
    assert {task: row["done"] for task, row in table.items()} == {f"t{t}": expected[f"t{t}"] for t in range(6)}
    assert all(row["remaining"] == 6 - row["done"] for row in table.values())
    assert report.ledger["work_left"] == sum(6 - expected[f"t{t}"] for t in range(6))
    failures = sum(1 for line in data.split(b"\n") if b"[ERROR]" in line)
    assert f"{failures} of {failures + sum(expected.values())} results are failures" in found["GEN018"][0].message
    # Cut where the torn record starts (what the fix does): a clean ledger mid-run, nothing above info.
    with results.open("r+b") as out:
        out.truncate(torn_at)
    clean = api.diagnose(results, ledger={"task_field": "task_id", "quota": 6, "success": SUCCESS})
    assert {f.severity.value for f in clean.findings} == {"info"} and clean.exit_code == 0
    assert clean.ledger["work_left"] == report.ledger["work_left"]


def write_issue_example(folder: Path) -> dict[str, int]:
    """29 tasks, quota 32: 9 partly done with 24-30 successes (plus some errors), 20 not started."""
    rng = random.Random(3)
    done = {f"task-{t:02d}": rng.randint(24, 30) for t in range(9)}
    with (folder / "tasks.jsonl").open("w") as out:
        for t in range(29):
            out.write(json.dumps({"task_id": f"task-{t:02d}", "prompt": f"solve problem {t}"}) + "\n")
    with (folder / "generations.jsonl").open("w") as out:
        for task, count in done.items():
            for sample in range(count + 2):
                prediction = f"[ERROR] OOM on sample {sample}" if sample >= count else f"answer {sample}"
                out.write(json.dumps({"id": f"{task}/{sample}", "task_id": task, "prediction": prediction}) + "\n")
    return done


def test_cli_issue_example_prints_remaining_per_task_and_the_total(tmp_path):
    done = write_issue_example(tmp_path)
    args = [tmp_path / "generations.jsonl", "--task-field", "task_id", "--inputs", tmp_path / "tasks.jsonl",
            "--quota", "32", "--success", SUCCESS]
    result = cli(*args, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {f["severity"] for f in report["findings"]} <= {"info"}
    ledger = report["ledger"]
    remaining = {row["task"]: row["remaining"] for row in ledger["tasks"]}
    assert remaining == {f"task-{t:02d}": 32 - done.get(f"task-{t:02d}", 0) for t in range(29)}
    total = sum(32 - count for count in done.values()) + 20 * 32
    assert ledger["work_left"] == total and ledger["units_left"] == 29 and ledger["failures"] == 18
    assert [row["task"] for row in ledger["tasks"][:9]] == list(done)  # the work list's order
    work = next(f for f in report["findings"] if f["code"] == "GEN006")
    assert f"{total} successes still needed (9 partly done or failed, 20 not started)" in work["message"]
    assert "20 of the 29 inputs have no record at all" in next(f for f in report["findings"] if f["code"] == "GEN007")["message"]
    text = cli(*args)
    assert text.returncode == 0 and "Traceback" not in text.stderr
    assert f"Work left: {total} successes for 29 of 29 task_id values (quota 32)." in text.stdout
    assert "... 9 more" in text.stdout and "task-00" in text.stdout


INFERENCE = """
import json, os, sys, time
path, bug, stop = sys.argv[1], set(sys.argv[2].split(",")), int(sys.argv[3])
errors = {"q3", "q7", "q11", "q12", "q18"}
state = {"results": {}, "processed_ids": []}
for i in range(24):
    qid = f"q{i}"
    answer = f"[ERROR] OOM: CUDA out of memory (input {i})" if qid in errors else f"answer {i}"
    state["results"][qid] = answer
    if qid not in errors or qid in bug:  # the bug: an error's id marked processed
        state["processed_ids"].append(qid)
    if i % 4 == 3:
        with open(path + ".tmp", "w") as out:
            json.dump(state, out)
        os.replace(path + ".tmp", path)
        print("ready", flush=True)
        if (i + 1) // 4 == stop:
            time.sleep(60)  # killed here, after its `stop`-th save, however slow the machine
time.sleep(60)
"""


def test_inference_checkpoint_names_exactly_the_failed_ids_marked_processed(tmp_path):
    checkpoint = tmp_path / "checkpoint.json"
    run_until_ready(INFERENCE, str(checkpoint), "q7,q12", "4", ready=4)  # killed after its 4th save (16 inputs)
    state = json.loads(checkpoint.read_text())
    bugged = [qid for qid in state["processed_ids"] if state["results"][qid].startswith("[ERROR]")]
    assert bugged == ["q7", "q12"]
    report = api.diagnose(checkpoint, ledger={"success": SUCCESS})
    found = codes(report)
    (gen004,) = found["GEN004"]
    assert gen004.extra["ids"] == bugged and gen004.severity.value == "error"
    assert "2 of the 14 ids in processed_ids have no successful result (2 failed, 0 without any result)" in gen004.message
    assert "GEN005" not in found and report.exit_code == 1
    # The default expression knows no `[ERROR]` prefix: those results would be taken as answers.
    default = codes(api.diagnose(checkpoint))
    assert default["GEN019"][0].extra["count"] == 4 and "GEN004" not in default


def test_clean_complete_ledger_has_nothing_above_info(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps({"id": f"i{n}", "prediction": f"a{n}"}) + "\n" for n in range(50)))
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"id": f"i{n}", "prompt": "p"}) + "\n" for n in range(50)))
    report = api.diagnose(results, ledger={"inputs": str(inputs), "success": SUCCESS})
    assert report.findings == () and report.exit_code == 0
    assert report.ledger["work_left"] == 0 and report.ledger["records"] == 50


def test_duplicates_mixed_schemas_and_ids_missing_are_named(tmp_path):
    rows = [{"id": "a", "task_id": "t1", "prediction": "x"}, {"id": "a", "task_id": "t1", "prediction": "y"},
            {"id": "a", "task_id": "t2", "prediction": "z"},  # per-task ids: no duplicate of t1's
            {"sample": "b", "task": "t1", "prediction": "x"}, {"task_id": "t2", "prediction": "x"}]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    found = codes(api.diagnose(results, ledger={"task_field": "task_id", "quota": 2}))
    assert found["GEN003"][0].extra["ids"] == ["t1/a"] and "1 extra in all" in found["GEN003"][0].message
    assert "1 of 5 records have no `task_id` field (lines 4)" in found["GEN015"][0].message
    none = codes(api.diagnose(results, ledger={"task_field": "task"}))
    assert "none of its 5 records has the field `task`" not in none["GEN015"][0].message  # one row has it
    assert "4 of 5 records" in none["GEN015"][0].message


def test_bad_input_is_a_finding_never_a_crash(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "binary.jsonl").write_bytes(random.Random(1).randbytes(5000))
    (cases / "log.jsonl").write_text("INFO starting\nWARNING slow\nINFO done\n")
    deep = tmp_path / "deep.jsonl"
    deep.write_bytes(b'{"id": "a"}\n' + b"[" * 200_000 + b"\n" + b'{"id": "b"}\n')
    os.mkfifo(cases / "results.jsonl")
    result = cli(cases, "--ledger")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    shown = " ".join(result.stdout.split())
    assert "binary.jsonl holds binary data" in shown and "results.jsonl is a FIFO" in shown
    assert "log.jsonl: none of its 3 lines is a record" in shown
    found = codes(api.diagnose(deep))
    assert "deep.jsonl: 1 lines are not records (lines 2; the first: unparseable: nested too deeply)" in found["GEN002"][0].message
    direct = cli(cases / "results.jsonl")  # a FIFO as PATH: refused in one line, not read, no hang
    assert direct.returncode == 2 and "not a regular file" in direct.stderr and "internal error" not in direct.stderr


def test_a_2gb_line_is_passed_over_in_bounded_memory(tmp_path):
    """A sparse file: 2 GB of line cost no disk; the diagnose process must not hold it (peak RSS)."""
    results = tmp_path / "results.jsonl"
    head = "".join(json.dumps({"id": f"i{n}", "prediction": "x" * 100}) + "\n" for n in range(60))
    with results.open("wb") as out:
        out.write(head.encode() + b'{"id": "huge", "prediction": "')
        out.seek(2 * 1024**3, os.SEEK_CUR)
        out.write(b'"}\n' + json.dumps({"id": "after", "prediction": "y"}).encode() + b"\n")
    assert results.stat().st_size > 2 * 1024**3
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stdout)")
    out = subprocess.run([PYTHON, "-c", wrapper, PYTHON, "-m", "resumedoctor", "diagnose", str(results)],
                         capture_output=True, text=True, timeout=120)
    status, rss_kb = map(int, out.stdout.split("\n")[0].split())
    assert status == 1, out.stdout + out.stderr
    assert rss_kb < 400 * 1024  # 64 MiB of line at most, never 2 GB
    last = json.dumps({"id": "after", "prediction": "y"}).encode() + b"\n"
    line = results.stat().st_size - len(head) - len(last)  # the record's start, the hole, its end and newline
    assert (f"1 lines are not records (lines 61; the first: too long: {line} bytes); 1 of them longer "
            "than 64 MiB") in " ".join(out.stdout.split())
    assert "all 61 id values seen in the results reached the quota" in " ".join(out.stdout.split())  # and the one after


def test_csv_json_array_and_parquet_are_read(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"id": f"i{n}", "prediction": "[ERROR] x" if n % 5 == 0 else "ok"} for n in range(20)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    with (tmp_path / "c.csv").open("w") as out:
        out.write("id,prediction\n" + "".join(f"{r['id']},{r['prediction']}\n" for r in rows) + "i99,ha")
    for name in ("a.json", "b.parquet"):
        report = api.diagnose(tmp_path / name, ledger={"success": SUCCESS})
        assert (report.ledger["successes"], report.ledger["failures"]) == (16, 4), name
        assert report.exit_code == 0
    csv_report = api.diagnose(tmp_path / "c.csv", ledger={"success": SUCCESS})
    assert codes(csv_report)["GEN001"][0].extra["line"] == 22 and csv_report.ledger["successes"] == 16


PARQUET_WRITER = """
import sys, time
import pyarrow as pa, pyarrow.parquet as pq
writer = pq.ParquetWriter(sys.argv[1], pa.schema([("id", pa.string()), ("prediction", pa.string())]))
writer.write_table(pa.table({"id": ["a", "b"], "prediction": ["x", "[ERROR] y"]}))
print("ready", flush=True)
time.sleep(60)
"""


def test_a_killed_parquet_writer_leaves_no_footer(tmp_path):
    pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "results.parquet"
    run_until_ready(PARQUET_WRITER, str(path))
    found = codes(api.diagnose(path))
    assert found["GEN020"][0].severity.value == "error" and "without its footer" in found["GEN020"][0].message


def test_token_budget_counts_with_a_local_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, **{f"w{n}": n + 1 for n in range(50)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    prompts = {f"q{n}": " ".join(f"w{k % 50}" for k in range(n * 7)) for n in range(12)}
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"id": k, "prompt": p}) + "\n" for k, p in prompts.items()))
    (tmp_path / "results.jsonl").write_text(json.dumps({"id": "q0", "prediction": "a"}) + "\n")
    over = [k for k, p in prompts.items() if len(tokenizer.encode(p).ids) > 40]
    report = api.diagnose(tmp_path / "results.jsonl", ledger={
        "inputs": str(tmp_path / "inputs.jsonl"), "tokenizer": str(tmp_path / "tok"), "token_budget": 40})
    (gen014,) = codes(report)["GEN014"]
    assert gen014.extra["count"] == len(over) and f"longest {len(tokenizer.encode(prompts['q11']).ids)}" in gen014.message
    assert gen014.message.split(": ", 1)[1].startswith(f"{over[0]} (")
    no_tokenizer = codes(api.diagnose(tmp_path / "results.jsonl", ledger={"token_budget": 40}))
    assert any("input lengths not judged" in f.message for f in no_tokenizer["GEN016"])


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_compiled_success_expressions_agree_with_jmespath():
    """The oracle is jmespath itself, on random records, for every compiled form and a fallback one."""
    import jmespath
    from jmespath.exceptions import JMESPathError

    expressions = ["success != `false` && !error", SUCCESS, "ends_with(prediction, '!') || error",
                   "status == 'ok' && score > `0`", "a.b || c", "success", "score >= `0.5`", "contains(tags, 'x')",
                   "length(prediction) > `3`", "!(a == b)", "score < 'x'", "@.success", "tags[0] == 'x'", "!!error"]
    values = [None, True, False, 0, 1, 0.0, 2, "", "ok", "[ERROR] x", "x!", [], ["x"], {}, {"b": 1}, -1.5]
    rng = random.Random(1)
    for expression in expressions:
        ours, theirs = compile_success(expression), jmespath.compile(expression)
        for _ in range(400):
            record = {k: rng.choice(values) for k in ("success", "error", "prediction", "status", "score", "a", "b",
                                                      "c", "tags") if rng.random() < 0.7}
            try:
                value = theirs.search(record)
                # JMESPath's truth: false, null, "", [] and {} are false; 0 is true
                expected = not (value is None or value is False or value in ("", [], {}) and not _number(value))
            except (JMESPathError, TypeError):
                expected = False
            assert ours(record) == expected, (expression, record)

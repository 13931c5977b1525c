"""GEN008-013, GEN017, GEN030-032: a folder of worker state files and result shards.

A real worker pool (ledger_worker_pool.py: forked worker processes writing CSV shards row by row) is
killed with SIGKILL while some workers run, diagnosed, resumed and diagnosed again; the oracle for what
the shards hold is the csv module reading them here. Crafted layouts cover each finding and damaged or
hostile state files (never a crash, never a read outside the folder).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resumedoctor import api
from resumedoctor.integrations.ledger.config import LedgerConfig
from resumedoctor.integrations.ledger.tally import tally_files
from resumedoctor.integrations.ledger.workers import DONE, FAILED, RUNNING, read_layout

POOL = Path(__file__).with_name("ledger_worker_pool.py")
WORKER_CODES = {"GEN008", "GEN009", "GEN010", "GEN011", "GEN012", "GEN013", "GEN017", "GEN030", "GEN031", "GEN032"}
ROWS, WORKERS, SIZE = 200, 4, 50


def write_inputs(folder: Path, rows: int = ROWS) -> Path:
    path = folder / "tasks.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"task {i}"}) + "\n" for i in range(rows)))
    return path


def csv_rows(path: Path) -> list[dict]:
    """Oracle: the complete rows of a CSV shard, read by the csv module (a row cut mid-line excluded)."""
    text = path.read_text()
    complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
    return list(csv.DictReader(complete.splitlines()))


def diagnose(folder: Path, **ledger):
    report = api.diagnose(folder, ledger=ledger or None)
    return report, {f.code: f for f in report.findings}


def mine(report) -> list:
    return [f for f in report.findings if f.code in WORKER_CODES]


def start_pool(folder: Path, inputs: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(POOL), str(folder), str(inputs), "--workers", str(WORKERS), *extra],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the worker pool did not reach the state the test waits for"
        time.sleep(0.02)


def status(folder: Path, worker: int) -> str | None:
    try:
        return json.loads((folder / f"worker_args_{worker}.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


# --- the real pool ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def killed_pool(tmp_path_factory):
    """Workers 0 and 1 finish, worker 3 fails at its 5th row, worker 2 (slow) is killed mid-range."""
    folder = tmp_path_factory.mktemp("pool")
    inputs = write_inputs(folder)
    shard2 = folder / "results_data_100_to_150_w2.csv"
    pool = start_pool(folder, inputs, "--delay", "2=0.1", "--fail", "3=155")
    try:
        wait_for(lambda: status(folder, 0) == status(folder, 1) == "done" and status(folder, 3) == "failed"
                 and shard2.exists() and len(csv_rows(shard2)) >= 8)
    finally:
        os.killpg(pool.pid, signal.SIGKILL)
        pool.wait()
    return folder, inputs


def test_killed_pool_reports_unfinished_workers_and_the_work_left(killed_pool):
    folder, inputs = killed_pool
    report, found = diagnose(folder, inputs=str(inputs))
    assert not [f for f in mine(report) if f.severity.value == "error"], [f.message for f in mine(report)]
    assert {f.code for f in mine(report)} == {"GEN017"}  # no gap, overlap, missing or stale shard: a clean kill
    held = {k: len(csv_rows(next(folder.glob(f"results_data_*_w{k}.csv")))) for k in range(WORKERS)}
    assert held[0] == held[1] == SIZE and held[3] == 5 and 8 <= held[2] < SIZE
    unfinished = found["GEN017"]
    assert unfinished.extra["remaining"] == {"2": SIZE - held[2], "3": SIZE - held[3]}
    assert "worker 2 [100, 150) running" in unfinished.message and "worker 3 [150, 200) failed" in unfinished.message
    assert f"{SIZE - held[2] + SIZE - held[3]} inputs of their ranges" in unfinished.message
    # The work left over all shards (what the per-task table counts) matches the csv oracle.
    layout = read_layout(folder, {p.name: p.is_dir() for p in folder.iterdir()})
    assert [w.status for w in layout.workers] == [DONE, DONE, RUNNING, FAILED]
    tally = tally_files(layout.result_files(), LedgerConfig())
    assert ROWS - sum(1 for s, _ in tally.units.values() if s) == ROWS - sum(held.values())


def test_resumed_pool_skips_done_workers_and_finishes(killed_pool, tmp_path):
    folder = tmp_path / "pool"
    subprocess.run(["cp", "-a", str(killed_pool[0]), str(folder)], check=True)
    inputs = folder / "tasks.jsonl"
    done_before = {k: (folder / f"results_data_{k * SIZE}_to_{(k + 1) * SIZE}_w{k}.csv").stat().st_mtime_ns
                   for k in (0, 1)}
    subprocess.run([sys.executable, str(POOL), str(folder), str(inputs), "--workers", str(WORKERS), "--resume"],
                   check=True, timeout=60)
    assert all((folder / f"results_data_{k * SIZE}_to_{(k + 1) * SIZE}_w{k}.csv").stat().st_mtime_ns == mtime
               for k, mtime in done_before.items())  # the done workers were skipped
    report, found = diagnose(folder, inputs=str(inputs))
    assert report.exit_code == 0, [f.message for f in report.findings]
    assert {f.code for f in mine(report)} == {"GEN012"}  # all done, not merged yet
    assert "all 4 workers are done" in found["GEN012"].message and "results_merged.csv" in found["GEN012"].message
    shards = sorted(folder.glob("results_data_*.csv"))
    merged = folder / "results_merged.csv"
    rows = [row for shard in shards for row in csv_rows(shard)]
    assert sorted(int(row["id"]) for row in rows) == list(range(ROWS))
    with merged.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report, _ = diagnose(folder, inputs=str(inputs))
    assert mine(report) == [] and report.exit_code == 0


# --- crafted layouts -------------------------------------------------------------------------------------

def make_worker(folder: Path, k: int, start: int, end: int, status: str = "done", rows: range | None = None,
                shard: str | None = None, **fields) -> Path:
    shard = shard or f"out_data_{start}_to_{end}_w{k}.csv"
    state = {"worker": k, "start": start, "end": end, "status": status, "shard": shard, **fields}
    (folder / f"worker_args_{k}.json").write_text(json.dumps(state))
    path = folder / shard
    if rows is not None:
        write_csv(path, rows)
    return path


def write_csv(path: Path, ids, error: str = "") -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "output", "error"])
        writer.writerows([i, f"answer {i}", error] for i in ids)


def test_gaps_against_the_work_list_and_between_ranges(tmp_path):
    inputs = write_inputs(tmp_path, 100)
    make_worker(tmp_path, 0, 0, 30, rows=range(0, 30))
    make_worker(tmp_path, 1, 40, 70, rows=range(40, 70))
    report, found = diagnose(tmp_path, inputs=str(inputs))
    assert found["GEN008"].severity.value == "error"
    assert "rows [30, 40), [70, 100) of the 100 inputs" in found["GEN008"].message
    assert "40 inputs no worker will ever process" in found["GEN008"].message
    # Without the work list only the rows before and between ranges can be known.
    (tmp_path / "out_data_0_to_30_w0.csv").unlink()
    make_worker(tmp_path, 0, 10, 30, rows=range(10, 30))
    report, found = diagnose(tmp_path)
    assert "rows [0, 10), [30, 40) are in no worker range" in found["GEN008"].message


def test_no_gap_without_a_work_list_says_the_end_is_not_judged(tmp_path):
    make_worker(tmp_path, 0, 0, 30, rows=range(0, 30))
    make_worker(tmp_path, 1, 30, 60, rows=range(30, 60))
    write_csv(tmp_path / "out_merged.csv", range(60))
    report, found = diagnose(tmp_path)
    assert report.exit_code == 0 and mine(report) == []
    assert "cover rows [0, 60) without gaps" in found["GEN016"].message


def test_overlapping_ranges_name_the_rows_and_workers(tmp_path):
    inputs = write_inputs(tmp_path, 60)
    make_worker(tmp_path, 0, 0, 35, rows=range(0, 35))
    make_worker(tmp_path, 1, 30, 60, rows=range(30, 60))
    report, found = diagnose(tmp_path, inputs=str(inputs))
    assert found["GEN009"].severity.value == "warning" and "GEN008" not in found
    assert "5 rows processed twice (rows [30, 35): worker 0 and worker 1)" in found["GEN009"].message


def test_done_worker_with_missing_or_short_shard(tmp_path):
    inputs = write_inputs(tmp_path, 90)
    make_worker(tmp_path, 0, 0, 30, rows=range(0, 30))
    make_worker(tmp_path, 1, 30, 60)  # says done, its shard was never written
    short = make_worker(tmp_path, 2, 60, 90, rows=range(60, 90))
    lines = short.read_text().splitlines(keepends=True)
    short.write_text("".join(lines[:-7]))  # the last flush never reached the disk
    report, found = diagnose(tmp_path, inputs=str(inputs))
    assert found["GEN010"].path.endswith("worker_args_1.json") and "30 inputs of its range are lost" in found["GEN010"].message
    held = len(csv_rows(short))
    assert held == 23 and found["GEN011"].severity.value == "error"
    assert f"holds {held} distinct `id` values for the 30 inputs of its range [60, 90): {30 - held} inputs" \
        in found["GEN011"].message
    assert "GEN012" not in found  # a worker without its shard: not every worker is really done


def test_done_worker_with_failed_inputs_and_ids_in_another_field(tmp_path):
    make_worker(tmp_path, 0, 0, 10, rows=range(0, 10))
    failed = make_worker(tmp_path, 1, 10, 20, rows=range(10, 20))
    write_csv(failed, range(10, 20), error="[ERROR] OOM")
    report, found = diagnose(tmp_path)
    assert found["GEN032"].severity.value == "warning" and "10 `id` values" in found["GEN032"].message
    assert "GEN011" not in found  # failures are records: the shard is complete
    # Records without the id field are counted as rows: 10 rows for 10 inputs is not short.
    report, found = diagnose(tmp_path, id_field="task")
    assert "GEN011" not in found and "GEN010" not in found


def test_merged_file_older_than_a_shard_or_lacking_its_results(tmp_path):
    make_worker(tmp_path, 0, 0, 10, rows=range(0, 10))
    shard = make_worker(tmp_path, 1, 10, 20, rows=range(10, 20))
    merged = tmp_path / "out_merged.csv"
    write_csv(merged, range(0, 20))
    report, _ = diagnose(tmp_path)
    assert mine(report) == []
    os.utime(merged, ns=(shard.stat().st_mtime_ns - 10**9,) * 2)  # the shard rewritten after the merge, same rows
    report, _ = diagnose(tmp_path)
    assert mine(report) == []  # the records are compared: nothing is missing
    write_csv(merged, range(0, 17))
    os.utime(merged, ns=(shard.stat().st_mtime_ns - 10**9,) * 2)
    report, found = diagnose(tmp_path)
    assert found["GEN013"].severity.value == "error"
    assert "lacks a successful result for 3 `id` values" in found["GEN013"].message
    assert "and is older than" in found["GEN013"].message and "out_data_10_to_20_w1.csv" in found["GEN013"].message


def test_state_variants_are_read(tmp_path):
    """start_idx/end_idx, done: true, output_file, a status in worker_state_<k>.json, a range only in a name."""
    inputs = write_inputs(tmp_path, 40)
    (tmp_path / "worker_args_0.json").write_text(json.dumps({"start_idx": 0, "end_idx": 10, "done": True,
                                                             "output_file": "gen_data_0_to_10.csv"}))
    write_csv(tmp_path / "gen_data_0_to_10.csv", range(0, 10))
    (tmp_path / "worker_args_1.json").write_text(json.dumps({"start": "10", "end": "20"}))
    (tmp_path / "worker_state_1.json").write_text(json.dumps({"state": "Completed"}))
    write_csv(tmp_path / "gen_data_10_to_20_worker1.csv", range(10, 20))
    (tmp_path / "worker_args_2.json").write_text(json.dumps({"status": "done"}))
    write_csv(tmp_path / "gen_data_20_to_40_w2.csv", range(20, 40))
    layout = read_layout(tmp_path, {p.name: False for p in tmp_path.iterdir()})
    assert [(w.start, w.end, w.status, w.shards) for w in layout.workers] == [
        (0, 10, DONE, ("gen_data_0_to_10.csv",)), (10, 20, DONE, ("gen_data_10_to_20_worker1.csv",)),
        (20, 40, DONE, ("gen_data_20_to_40_w2.csv",))]
    report, found = diagnose(tmp_path, inputs=str(inputs))
    assert {f.code for f in mine(report)} == {"GEN012"} and report.exit_code == 0
    assert "gen_merged.csv" in found["GEN012"].message


def test_shard_without_a_state_file(tmp_path):
    make_worker(tmp_path, 0, 0, 10, rows=range(0, 10))
    write_csv(tmp_path / "out_data_10_to_20_w1.csv", range(10, 20))
    report, found = diagnose(tmp_path, inputs=str(write_inputs(tmp_path, 20)))
    assert found["GEN031"].severity.value == "info" and "GEN008" not in found
    assert "out_data_10_to_20_w1.csv (rows [10, 20)) has no worker state file" in found["GEN031"].message


DAMAGED = {
    "torn": b'{"worker": 1, "start": 10, "end": 2',
    "binary": bytes(range(256)),
    "a list": b"[10, 20]",
    "wrong types": b'{"start": "ten", "end": [20], "status": "done"}',
    "end before start": b'{"start": 20, "end": 10, "status": "done"}',
    "huge": b'{"start": 10, "end": 1' + b"0" * 40 + b', "status": "done"}',
    "digits beyond int parsing": b'{"start": 10, "end": ' + b"9" * 5000 + b"}",
    "shard not a name": b'{"start": 10, "end": 20, "status": "done", "shard": {"x": 1}}',
}


@pytest.mark.parametrize("content", list(DAMAGED.values()), ids=list(DAMAGED))
def test_damaged_state_file_is_a_finding(tmp_path, content):
    make_worker(tmp_path, 0, 0, 10, rows=range(0, 10))
    (tmp_path / "worker_args_1.json").write_bytes(content)
    report, found = diagnose(tmp_path, inputs=str(write_inputs(tmp_path, 20)))
    assert found["GEN030"].severity.value == "warning" and found["GEN030"].path.endswith("worker_args_1.json")
    # Nothing is claimed about a worker it cannot read: no missing shard, no gap where its range may lie.
    assert not {"GEN008", "GEN010", "GEN011", "GEN012"} & set(found)
    if "shard" not in content.decode("latin-1"):  # its range is unknown: so are the gaps
        assert any("[10, 20) are in no known range" in f.message for f in report.findings if f.code == "GEN016")


def test_damaged_state_with_a_named_shard_takes_its_range(tmp_path):
    make_worker(tmp_path, 0, 0, 10, rows=range(0, 10))
    (tmp_path / "worker_args_1.json").write_text('{"worker": 1, "sta')
    write_csv(tmp_path / "out_data_10_to_20_w1.csv", range(10, 20))
    report, found = diagnose(tmp_path, inputs=str(write_inputs(tmp_path, 20)))
    assert {f.code for f in mine(report)} == {"GEN030"}


@pytest.mark.parametrize("where", ["../secret_data_10_to_20.csv", "/etc/passwd", "link"])
def test_shard_outside_the_folder_is_never_read(tmp_path, where, monkeypatch):
    import resumedoctor.checks.generation_ledgers as gen

    folder = tmp_path / "job"
    folder.mkdir()
    write_csv(tmp_path / "secret_data_10_to_20.csv", range(10, 20))
    make_worker(folder, 0, 0, 10, rows=range(0, 10))
    if where == "link":
        (folder / "out_data_10_to_20_w1.csv").symlink_to(tmp_path / "secret_data_10_to_20.csv")
        make_worker(folder, 1, 10, 20)
    else:
        make_worker(folder, 1, 10, 20, shard=where)
    read = []
    real = gen.tally_files
    monkeypatch.setattr(gen, "tally_files", lambda paths, config: read.extend(paths) or real(paths, config))
    report, found = diagnose(folder)
    assert read and all(path.parent == folder and path.resolve().parent == folder.resolve() for path in read)
    assert "outside" in found["GEN016"].message
    assert not [f for f in mine(report) if f.severity.value == "error"]


def test_fifo_state_and_shard_do_not_hang(tmp_path):
    make_worker(tmp_path, 0, 0, 10, shard="out_data_0_to_10_w0.csv")
    os.mkfifo(tmp_path / "out_data_0_to_10_w0.csv")
    os.mkfifo(tmp_path / "worker_args_1.json")
    report, found = diagnose(tmp_path)
    assert found["GEN030"].path.endswith("worker_args_1.json")
    assert any("not judged" in f.message and f.code == "GEN016" for f in report.findings)


def test_work_list_named_by_the_states_inside_the_folder(tmp_path):
    """The states' `inputs` counts the rows when it lies in the folder; one outside is never read."""
    write_inputs(tmp_path, 30)
    make_worker(tmp_path, 0, 0, 20, rows=range(0, 20), inputs="tasks.jsonl")
    report, found = diagnose(tmp_path)
    assert "rows [20, 30) of the 30 inputs" in found["GEN008"].message
    outside = tmp_path / "job"
    outside.mkdir()
    make_worker(outside, 0, 0, 20, rows=range(0, 20), inputs="../tasks.jsonl")
    report, found = diagnose(outside)
    assert "GEN008" not in found and "without gaps" in found["GEN016"].message


def test_shard_named_another_way_is_no_missing_shard(tmp_path):
    """A shard named with an inclusive end: claimed by the worker's name in it, or not judged; never GEN010."""
    (tmp_path / "worker_args_0.json").write_text(json.dumps({"start": 0, "end": 10, "status": "done"}))
    write_csv(tmp_path / "out_data_0_to_9_w0.csv", range(0, 10))
    (tmp_path / "worker_args_1.json").write_text(json.dumps({"start": 10, "end": 20, "status": "done"}))
    write_csv(tmp_path / "out_data_11_to_20.csv", range(10, 20))
    report, found = diagnose(tmp_path)
    assert "GEN010" not in found and "GEN011" not in found
    assert any("which of out_data_11_to_20.csv is its own is not judged" in f.message for f in report.findings)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_finished_and_merged_job_is_clean(tmp_path, suffix):
    """Every worker done, every shard complete, the merge newer and whole: nothing to say, exit 0."""
    inputs = write_inputs(tmp_path, 30)
    for k in range(3):
        shard = f"gen_data_{k * 10}_to_{k * 10 + 10}_worker{k}.{suffix}"
        make_worker(tmp_path, k, k * 10, k * 10 + 10, shard=shard)
        write_results(tmp_path / shard, range(k * 10, k * 10 + 10))
    write_results(tmp_path / f"gen_merged.{suffix}", range(30))
    report, _ = diagnose(tmp_path, inputs=str(inputs))
    assert mine(report) == [] and report.exit_code == 0


def write_results(path: Path, ids) -> None:
    if path.suffix == ".csv":
        write_csv(path, ids)
    else:
        path.write_text("".join(json.dumps({"id": i, "output": f"answer {i}"}) + "\n" for i in ids))


def test_merged_file_lacking_a_sample_of_a_task_it_has_other_samples_of(tmp_path):
    """With a task field, the merged file is compared per id: a task with one success there may lack samples."""
    def write(path, rows):
        path.write_text("".join(json.dumps({"id": f"t{task}/{n}", "task_id": f"t{task}", "output": "x"}) + "\n"
                                for task, n in rows))
    (tmp_path / "worker_args_0.json").write_text(json.dumps(
        {"worker": 0, "start": 0, "end": 2, "status": "done", "shard": "out_data_0_to_2_w0.jsonl"}))
    rows = [(task, n) for task in range(2) for n in range(3)]
    write(tmp_path / "out_data_0_to_2_w0.jsonl", rows)
    write(tmp_path / "out_merged.jsonl", rows)
    report, _ = diagnose(tmp_path, task_field="task_id", quota=3)
    assert mine(report) == []
    write(tmp_path / "out_data_0_to_2_w0.jsonl", rows + [(1, 3)])  # topped up after the merge
    report, found = diagnose(tmp_path, task_field="task_id", quota=3)
    assert "GEN013" in found and "t1/3" in found["GEN013"].message

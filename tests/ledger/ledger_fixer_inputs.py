"""Real (tiny) result ledgers for the GEN fixer tests: a JSONL writer killed with SIGKILL mid-record, an
inference loop with the processed_ids bug, a generation job below its quota, worker shards in CSV."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

# A generation job's writer: appends one JSON line per sample and flushes. With `torn`, its last record is
# written half, flushed, and the writer waits to be killed: SIGKILL lands mid-record, as in real life.
WRITER = r"""
import json, sys, time
path, start, count, torn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "torn"
with open(path, "a", encoding="utf-8") as out:
    for i in range(start, start + count):
        line = json.dumps({"id": i, "task_id": f"t{i % 7}", "text": "sample %d " % i * 5,
                           "success": i % 5 != 0}) + "\n"
        if torn and i == start + count - 1:
            out.write(line[: len(line) // 2])
            out.flush()
            print("half", flush=True)
            time.sleep(60)
        out.write(line)
        out.flush()
print("done", flush=True)
"""


def run_writer(path: Path, start: int, count: int) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(path), str(start), str(count), "whole"], check=True,
                   capture_output=True)


def killed_writer(path: Path, records: int) -> bytes:
    """Write RECORDS whole records and half of one more, then SIGKILL the writer; returns the file's bytes."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "0", str(records + 1), "torn"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "half"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    return path.read_bytes()


# -- an inference job's checkpoint.json ---------------------------------------------------------------
FAILS = 7  # every 7th input fails with an OOM the first time


def answer(item: dict, attempt: int) -> str:
    if item["id"] % FAILS == 0 and attempt == 0:
        return "[ERROR] OOM: CUDA out of memory"
    return f"answer to {item['question']}"


def inference_loop(checkpoint: Path, inputs: list[dict], *, attempt: int, bug: bool) -> list[int]:
    """The loop users write: skip processed_ids, answer the rest, save after each. With `bug`, an id is
    marked processed before its answer is known. Returns the ids it computed."""
    state = json.loads(checkpoint.read_text()) if checkpoint.exists() else {
        "model": "tiny", "config": {"max_new_tokens": 32}, "results": [], "processed_ids": []}
    done, computed = set(state["processed_ids"]), []
    for item in inputs:
        if item["id"] in done:
            continue
        if bug:
            state["processed_ids"].append(item["id"])
        prediction = answer(item, attempt)
        computed.append(item["id"])
        state["results"].append({"id": item["id"], "prediction": prediction})
        if not bug and not prediction.startswith("[ERROR]"):
            state["processed_ids"].append(item["id"])
        checkpoint.write_text(json.dumps(state, indent=2))
    return computed


def inference_inputs(count: int = 40) -> list[dict]:
    return [{"id": i, "question": f"q{i}"} for i in range(count)]


INFERENCE_SUCCESS = "!starts_with(prediction, '[ERROR]')"


# -- a generation job below its quota -------------------------------------------------------------------
TASKS, QUOTA = 12, 4


def generation_job(folder: Path, *, inputs_format: str = "jsonl") -> tuple[Path, Path]:
    """tasks.<fmt> (TASKS tasks) and results.jsonl: tasks 0-4 partly done (some failures), 5+ never started."""
    tasks = [{"task_id": f"t{k}", "prompt": f"write a poem about {k}", "difficulty": k % 3} for k in range(TASKS)]
    inputs = folder / f"tasks.{inputs_format}"
    if inputs_format == "csv":
        with open(inputs, "w", newline="") as handle:
            writer = csv.DictWriter(handle, list(tasks[0]))
            writer.writeheader()
            writer.writerows(tasks)
    else:
        inputs.write_text("".join(json.dumps(task) + "\n" for task in tasks))
    results = folder / "results.jsonl"
    lines, sample = [], 0
    for k in range(5):
        for attempt in range(k + 1):  # task k gets k+1 attempts; every 3rd sample fails
            sample += 1
            lines.append({"id": sample, "task_id": f"t{k}", "text": "..."} | ({"error": "500"} if sample % 3 == 0 else {}))
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return inputs, results


# -- worker shards in CSV --------------------------------------------------------------------------------
SHARD_FIELDS = ["id", "output", "error"]


def csv_shards(folder: Path) -> dict[str, list[dict]]:
    """Two finished workers whose ranges overlap on ids 3-4; id 3 failed in the first and succeeded in
    the second. Returns the rows each shard holds, by file name."""
    shards = {
        "gen_data_0_to_5_w0.csv": [{"id": str(i), "output": f"out{i}", "error": "500" if i == 3 else ""} for i in range(5)],
        "gen_data_3_to_8_w1.csv": [{"id": str(i), "output": f"out{i}b", "error": ""} for i in range(3, 8)],
    }
    for k, (name, rows) in enumerate(shards.items()):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, SHARD_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        start, end = name.split("_data_")[1].split("_w")[0].split("_to_")
        (folder / f"worker_args_{k}.json").write_text(json.dumps(
            {"worker": k, "start": int(start), "end": int(end), "status": "done", "shard": name}))
    return shards


def ledger_options(**flags):
    """The Options the CLI's ledger flags give."""
    from resumedoctor.engine.context import Options
    from resumedoctor.integrations.ledger.config import ledger_config

    return Options(ledger=ledger_config({key: value for key, value in flags.items()}), ledger_asked=bool(flags))

"""A generation job in several worker processes that dies and resumes to completion, on resumedoctor.ledger.

    python examples/ledger_workers.py gen/ --kill-after 25     # SIGKILLs itself and its workers mid-run
    python examples/ledger_workers.py gen/ --resume            # skips finished workers, tops up the rest
    resumedoctor diagnose gen/shards --inputs gen/tasks.jsonl --task-field task_id --quota 4

The work list `gen/tasks.jsonl` has `--tasks` tasks; each needs `--quota` successful samples. The input
rows are split into one range per worker; worker k writes `gen/shards/results_data_<a>_to_<b>_w<k>.jsonl`
and its state `gen/shards/worker_args_<k>.json` through `Ledger.for_worker`. The fake generator is
deterministic and fails about `--fail-rate` of its calls with an HTTP 500 (a retry succeeds), so only
successes count toward a quota. When every worker is done the shards are merged into
`gen/shards/results_merged.jsonl`: one record per sample, every task with exactly its quota.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

from resumedoctor.ledger import Ledger, read_worker_state

TASK_FIELD = "task_id"
MAX_ROUNDS = 20  # a worker that still misses successes after this many passes over its range fails


def generate(task: dict, sample: int, attempt: int, fail_rate: float) -> tuple[bool, str]:
    """A fake LLM call: (success, completion or error), the same for the same (task, sample, attempt)."""
    digest = hashlib.sha256(f"{task[TASK_FIELD]}/{sample}/{attempt}".encode()).digest()
    if int.from_bytes(digest[:4], "big") < fail_rate * 2**32:
        return False, "HTTP 500: the server is overloaded"
    return True, f"answer {digest[4:8].hex()} to {task['prompt']!r}"


def worker(options: argparse.Namespace, k: int, start: int, end: int) -> None:
    """Top every task of rows [start, end) up to its quota; the state file says done only when it is."""
    with Ledger.for_worker(options.out / "shards", worker=k, start=start, end=end,
                           inputs=options.out / "tasks.jsonl", task_field=TASK_FIELD, fsync_every=8) as ledger:
        tasks = list(ledger.inputs())
        for attempt in range(MAX_ROUNDS):
            todo = ledger.remaining(tasks, quota=options.quota)
            if not todo:
                return
            for task, needed in todo:
                missing = [s for s in range(options.quota) if not ledger.succeeded(f"{task[TASK_FIELD]}/{s}")]
                for sample in missing[:needed]:
                    ok, text = generate(task, sample, attempt, options.fail_rate)
                    fields = {"completion": text} if ok else {"error": text}
                    ledger.record(id=f"{task[TASK_FIELD]}/{sample}", task=task[TASK_FIELD], success=ok,
                                  attempt=attempt, **fields)
                    time.sleep(options.delay)
        raise RuntimeError(f"worker {k}: tasks still below quota after {MAX_ROUNDS} rounds")


def worker_main(options: argparse.Namespace, k: int, start: int, end: int) -> None:
    try:
        worker(options, k, start, end)
    except Exception as exc:  # the state file already says failed
        print(f"worker {k}: {exc}", file=sys.stderr)
        sys.exit(1)


def ranges(rows: int, workers: int) -> list[tuple[int, int]]:
    """[0, a) [a, b) ... : `workers` contiguous ranges covering every input row once."""
    bounds = [rows * k // workers for k in range(workers + 1)]
    return list(zip(bounds, bounds[1:]))


def write_tasks(path: Path, count: int) -> list[dict]:
    tasks = [{TASK_FIELD: f"task-{n:03d}", "prompt": f"Write test case {n} for the parser."} for n in range(count)]
    if not path.exists():
        path.write_text("".join(json.dumps(task) + "\n" for task in tasks), encoding="utf-8")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def finished(options: argparse.Namespace, tasks: list[dict], k: int, span: tuple[int, int]) -> bool:
    """Is worker K's state done and its shard holding every success its range needs?"""
    state = read_worker_state(options.out / "shards", k)
    if not state or state.get("status") != "done" or (state.get("start"), state.get("end")) != span:
        return False
    shard = options.out / "shards" / str(state.get("shard", ""))
    if not shard.is_file():
        return False
    with Ledger(shard, task_field=TASK_FIELD) as ledger:
        return not ledger.remaining(tasks[span[0]:span[1]], quota=options.quota)


def records_written(shards: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in shards.glob("*_data_*.jsonl"))


def run_pool(options: argparse.Namespace, jobs: list[tuple[int, int, int]]) -> list[int]:
    """Run the workers, `--jobs` at a time; their exit codes. `--kill-after`: SIGKILL everything mid-run."""
    waiting, running, codes = list(jobs), [], []
    while waiting or running:
        while waiting and len(running) < options.jobs:
            process = multiprocessing.Process(target=worker_main, args=(options, *waiting.pop(0)))
            process.start()
            running.append(process)
        time.sleep(0.005)
        if options.kill_after and records_written(options.out / "shards") >= options.kill_after:
            print(f"killing the job after {options.kill_after} records (SIGKILL)", flush=True)
            for process in running:
                os.kill(process.pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        for process in [p for p in running if not p.is_alive()]:
            process.join()
            codes.append(process.exitcode)
            running.remove(process)
    return codes


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    shards = options.out / "shards"
    if not options.resume and any(shards.glob("worker_args_*.json")):
        print(f"{shards} holds a previous run: add --resume to continue it", file=sys.stderr)
        return 2
    shards.mkdir(parents=True, exist_ok=True)
    tasks = write_tasks(options.out / "tasks.jsonl", options.tasks)
    jobs = []
    for k, span in enumerate(ranges(len(tasks), options.workers)):
        if options.resume and finished(options, tasks, k, span):
            print(f"worker {k} [{span[0]}, {span[1]}): done, skipped")
        else:
            jobs.append((k, *span))
    codes = run_pool(options, jobs)
    if any(codes):
        print(f"{sum(1 for c in codes if c)} worker(s) failed: run again with --resume", file=sys.stderr)
        return 1
    merged = Ledger.merge(shards, task_field=TASK_FIELD)
    print(f"{len(tasks)} tasks x {options.quota} successes: merged into {merged}")
    print(f"check it: resumedoctor diagnose {shards} --inputs {options.out / 'tasks.jsonl'} "
          f"--task-field {TASK_FIELD} --quota {options.quota}")
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the job's folder (tasks.jsonl and shards/)")
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--quota", type=int, default=4, help="successful samples each task needs")
    parser.add_argument("--workers", type=int, default=3, help="input ranges, one worker process each")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes at a time (default: all)")
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument("--delay", type=float, default=0.005, help="seconds per generated sample")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUT")
    parser.add_argument("--kill-after", type=int, default=0, metavar="N",
                        help="SIGKILL the job and its workers once N records are written")
    options = parser.parse_args(argv)
    options.jobs = options.jobs or options.workers
    return options


if __name__ == "__main__":
    sys.exit(main())

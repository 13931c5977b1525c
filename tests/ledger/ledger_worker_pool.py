"""A real worker pool of a batch-generation job, as schedulers write them (used by test_ledger_workers.py).

    python ledger_worker_pool.py FOLDER INPUTS --workers 4 [--delay K=SECONDS ...] [--fail K=ROW] [--resume]

The parent splits the work list (INPUTS, JSONL) into equal ranges and forks one process per worker.
Each worker writes `worker_args_<k>.json` ({"worker", "start", "end", "status", "shard"}, replaced
atomically) and a CSV shard `results_data_<a>_to_<b>_w<k>.csv`, one row per input, flushed row by row;
it marks itself done at the end, or failed when its `--fail` row raises. `--resume` skips the workers
whose state says done and reruns the others from the start of their range (rewriting their shards).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import sys
import time


def write_state(folder: str, worker: int, start: int, end: int, status: str, shard: str) -> None:
    path = os.path.join(folder, f"worker_args_{worker}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump({"worker": worker, "start": start, "end": end, "status": status, "shard": shard}, handle)
    os.replace(path + ".tmp", path)


def run_worker(folder: str, rows: list[dict], worker: int, start: int, end: int, delay: float, fail_at: int) -> None:
    shard = f"results_data_{start}_to_{end}_w{worker}.csv"
    write_state(folder, worker, start, end, "running", shard)
    try:
        with open(os.path.join(folder, shard), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "prompt", "output", "error"])
            handle.flush()
            for position in range(start, end):
                if position == fail_at:
                    raise RuntimeError(f"server returned 500 at row {position}")
                row = rows[position]
                time.sleep(delay)  # the model call
                writer.writerow([row["id"], row["prompt"], row["prompt"].upper(), ""])
                handle.flush()
    except RuntimeError:
        write_state(folder, worker, start, end, "failed", shard)
        sys.exit(1)
    write_state(folder, worker, start, end, "done", shard)


def finished(folder: str, worker: int) -> bool:
    try:
        with open(os.path.join(folder, f"worker_args_{worker}.json")) as handle:
            return json.load(handle).get("status") == "done"
    except (OSError, ValueError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("inputs")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--delay", action="append", default=[], help="K=SECONDS per row of worker K")
    parser.add_argument("--fail", action="append", default=[], help="K=ROW: worker K fails at that row")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    with open(args.inputs) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    delays = {int(k): float(v) for k, v in (item.split("=") for item in args.delay)}
    fails = {int(k): int(v) for k, v in (item.split("=") for item in args.fail)}
    size = -(-len(rows) // args.workers)
    context = multiprocessing.get_context("fork")
    processes = []
    for worker in range(args.workers):
        start, end = worker * size, min((worker + 1) * size, len(rows))
        if args.resume and finished(args.folder, worker):
            continue
        process = context.Process(target=run_worker, args=(args.folder, rows, worker, start, end,
                                                            delays.get(worker, 0.0), fails.get(worker, -1)))
        process.start()
        processes.append(process)
    for process in processes:
        process.join()


if __name__ == "__main__":
    main()

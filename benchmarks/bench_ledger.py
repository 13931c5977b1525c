#!/usr/bin/env python
"""Diagnosing a 1M-record (~300 MB) JSON Lines ledger against `pandas.read_json(lines=True)`, same run.

Target: `resumedoctor diagnose LEDGER --task-field task_id --quota 32 --success ...` in at most 3 s and
300 MB peak memory (max RSS of the process), streamed; pandas' time and memory for reading the same
file, and the ratios. Each command runs in its own process, measured with getrusage(RUSAGE_CHILDREN)
taken around it (a fresh child per run, so its ru_maxrss is its own).

    python benchmarks/bench_ledger.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

TASKS_OF = 32  # samples per task
ERROR_RATE = 0.02


def write_ledger(path: Path, records: int) -> None:
    """ids, task ids, a ~250-character completion, 2% `[ERROR] ...` rows."""
    rng = random.Random(0)
    words = ["the", "answer", "is", "because", "we", "compute", "step", "by", "value", "therefore"]
    with path.open("w") as out:
        for index in range(records):
            task = index // TASKS_OF
            if rng.random() < ERROR_RATE:
                completion = "[ERROR] 500 Internal Server Error: upstream timed out after 600 s"
            else:
                completion = " ".join(rng.choice(words) for _ in range(45))[:250]
            out.write(json.dumps({"id": f"task-{task:06d}-s{index % TASKS_OF:02d}", "task_id": f"task-{task:06d}",
                                  "completion": completion, "model": "demo-7b", "latency_s": 1.25}) + "\n")


def measure(command: list[str], repeat: int) -> dict:
    """Wall time (best, median) and CPU time (user + system, median) over `repeat` fresh processes."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if done.returncode not in (0, 1):
            raise SystemExit(f"{command[:4]} failed ({done.returncode}): {done.stderr[-400:]}")
    return {"best_s": min(walls), "median_s": statistics.median(walls), "cpu_median_s": statistics.median(cpus),
            "runs": repeat}


def child_rss(command: list[str]) -> float:
    """Peak RSS in MB of one run of `command`: ru_maxrss of RUSAGE_CHILDREN in a fresh wrapper process,
    whose only child it is (the benchmark's own children would otherwise count)."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
               "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rd-ledger-"))
    try:
        ledger = workdir / "results.jsonl"
        write_ledger(ledger, args.records)
        size_mb = ledger.stat().st_size / 2**20
        python = sys.executable
        diagnose = [python, "-m", "resumedoctor", "diagnose", str(ledger), "--task-field", "task_id", "--quota",
                    str(TASKS_OF), "--success", "!starts_with(completion, '[ERROR]')", "--format", "json"]
        pandas = [python, "-c", "import sys, pandas; pandas.read_json(sys.argv[1], lines=True)", str(ledger)]
        subprocess.run(diagnose, stdout=subprocess.DEVNULL, check=False)  # warm the page cache and .pyc files
        report = json.loads(subprocess.run(diagnose, capture_output=True, text=True).stdout)
        timings = {"diagnose": measure(diagnose, args.repeat), "pandas_read_json": measure(pandas, 1)}
        for name, command in (("diagnose", diagnose), ("pandas_read_json", pandas)):
            timings[name]["max_rss_mb"] = child_rss(command)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ours, theirs = timings["diagnose"], timings["pandas_read_json"]
    ratios = {"time_pandas_over_diagnose": theirs["median_s"] / ours["median_s"],
              "memory_pandas_over_diagnose": theirs["max_rss_mb"] / ours["max_rss_mb"]}
    ledger_summary = {key: report["ledger"][key] for key in ("records", "successes", "failures", "units", "units_left",
                                                             "work_left")}
    data = {"records": args.records, "file_mb": round(size_mb, 1), "timings": timings, "ratios": ratios,
            "report": {"codes": sorted({f["code"] for f in report["findings"]}), "ledger": ledger_summary},
            "target": "diagnose <= 3 s and <= 300 MB peak RSS",
            "met": ours["median_s"] <= 3 and ours["max_rss_mb"] <= 300, "load_average": os.getloadavg(),
            "orjson": _has_orjson()}
    print(json.dumps(data, indent=2))
    print(f"recorded {record('ledger', data)}")
    return 0


def _has_orjson() -> bool:
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

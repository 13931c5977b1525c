#!/usr/bin/env python
"""Reading and matching a W&B run with many history records, against wandb's own reader.

wandb writes offline runs of 10,000 / 50,000 / 100,000 history records (train/loss and
train/global_step, as WandbCallback logs them) whose config names a real demo checkpoint's
output_dir. Measured in the same run:
  - `diagnose --select WANDB` in-process: find the run, read its log, match it, decide the fork step;
  - the same through the command line (a new process: Python, wandb's protobuf classes);
  - `wandb leet inspect --json` (wandb 0.31's reader) over the same log, output discarded.
Target: 100,000 records read and matched in under 5 s.

    python benchmarks/bench_wandb_read.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record, time_call, time_command  # noqa: E402

WRITE_RUN = """
import sys, wandb
output_dir, count = sys.argv[1], int(sys.argv[2])
run = wandb.init(project="bench", config={"output_dir": output_dir})
run.define_metric("train/global_step")
run.define_metric("*", step_metric="train/global_step", step_sync=True)
for i in range(count):
    run.log({"train/loss": 1.0 / (i + 1), "train/learning_rate": 1e-4, "train/global_step": i // 4})
run.finish()
"""


def main() -> int:
    from demo_run import train_demo_run

    from resumedoctor.engine.context import Options
    from resumedoctor.engine.runner import diagnose
    from resumedoctor.engine.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="rd-wandb-"))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    rows = []
    try:
        for count in (10_000, 50_000, 100_000):
            root = workdir / f"n{count}"
            output_dir = train_demo_run(root / "run", max_steps=2, save_steps=2)
            subprocess.run([sys.executable, "-c", WRITE_RUN, str(output_dir), str(count)],
                           env={**env, "WANDB_DIR": str(root)}, check=True, capture_output=True)
            wandb_dir = root / "wandb"
            log = next(wandb_dir.glob("offline-run-*/run-*.wandb"))

            def ours():
                report = diagnose(output_dir, settings=Settings(select=("WANDB",)),
                                  options=Options(wandb_dir=wandb_dir), environ={})
                assert any(f.code == "WANDB001" for f in report.findings), [f.code for f in report.findings]

            def theirs():
                subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(log), "--json"],
                               check=True, stdout=subprocess.DEVNULL)

            mine, reference = time_call(ours, repeat=3), time_call(theirs, repeat=3)
            cli = time_command([sys.executable, "-m", "resumedoctor", "diagnose", str(output_dir), "--select", "WANDB",
                                "--wandb-dir", str(wandb_dir)], repeat=3)
            rows.append({"history_records": count, "log_mib": round(log.stat().st_size / 2**20, 1),
                         "diagnose_wandb_s": mine["median_s"], "cli_diagnose_wandb_s": cli["median_s"],
                         "wandb_leet_inspect_json_s": reference["median_s"],
                         "ratio": reference["median_s"] / mine["median_s"]})
            print(json.dumps(rows[-1]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path = record("wandb_read", {"rows": rows, "target": "100,000 history records read and matched in < 5 s"})
    print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

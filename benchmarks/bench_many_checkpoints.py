#!/usr/bin/env python
"""What diagnose costs per checkpoint as an output_dir grows to 10,000 checkpoints.

Each output_dir holds N real checkpoints of the demo's tiny GRPO model (written once by TRL, then
hard-linked N times, with a trainer_state.json per step), half of them sealed at save time and the
rest saved after sealing stopped: every unsealed checkpoint asks for the newest seal before it, the
lookup that was once a scan per checkpoint. N = 100, 1,000, 10,000.

Measured in the same run: `diagnose` in process (every family), and the obvious alternative,
transformers' `get_last_checkpoint` (os.listdir, a stat per entry, max by step), which finds the
checkpoint a plain resume would load but checks nothing.
Target: the time per checkpoint at 10,000 is close to that at 100 (growth ratio ~1).

    python benchmarks/bench_many_checkpoints.py        # ~2 min, ~60 MiB of scratch space (hard links)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record, time_call  # noqa: E402

SIZES = (100, 1_000, 10_000)


def build(template: Path, output_dir: Path, count: int) -> None:
    """`count` checkpoints hard-linked from one real checkpoint; the first half sealed at save time."""
    from demo_run import hard_linked_checkpoints

    hard_linked_checkpoints(template, output_dir, count, sealed_until=count // 2)


def measure(output_dir: Path, count: int) -> dict:
    import resource

    from transformers.trainer_utils import get_last_checkpoint

    from resumedoctor.engine.runner import diagnose
    from resumedoctor.engine.settings import Settings

    report = None

    def run() -> None:
        nonlocal report
        report = diagnose(output_dir, settings=Settings(), environ={})

    repeat = 3 if count < 10_000 else 1
    ours = time_call(run, repeat)
    theirs = time_call(lambda: get_last_checkpoint(str(output_dir)), 5)
    assert report.exit_code == 0, [f.message for f in report.findings if f.severity.value == "error"]
    return {
        "checkpoints": count,
        "diagnose_s": ours["median_s"],
        "diagnose_ms_per_checkpoint": 1000 * ours["median_s"] / count,
        "get_last_checkpoint_s": theirs["median_s"],
        "get_last_checkpoint_ms_per_checkpoint": 1000 * theirs["median_s"] / count,
        "max_rss_mib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "findings": sorted({f.code for f in report.findings}),
    }


def main() -> int:
    from demo_run import train_demo_run

    workdir = Path(tempfile.mkdtemp(prefix="rd-many-"))
    try:
        template = train_demo_run(workdir / "demo") / "checkpoint-6"
        rows = []
        for count in SIZES:
            output_dir = workdir / f"run-{count}"
            started = time.perf_counter()
            build(template, output_dir, count)
            built = time.perf_counter() - started
            row = measure(output_dir, count)
            row["build_s"] = built
            rows.append(row)
            print(f"{count:>6} checkpoints: diagnose {row['diagnose_s']:.2f} s "
                  f"({row['diagnose_ms_per_checkpoint']:.2f} ms each), get_last_checkpoint "
                  f"{row['get_last_checkpoint_s'] * 1000:.1f} ms", flush=True)
            shutil.rmtree(output_dir)
        growth = rows[-1]["diagnose_ms_per_checkpoint"] / rows[0]["diagnose_ms_per_checkpoint"]
        print(f"growth of the time per checkpoint, 10,000 against 100: {growth:.2f}")
        path = record("many_checkpoints", {"rows": rows, "growth_per_checkpoint_10000_vs_100": growth})
        print(f"recorded in {path}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

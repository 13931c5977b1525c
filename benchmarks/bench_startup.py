#!/usr/bin/env python
"""CLI start-up against `python -c "import transformers"`, measured in the same run.

Target: `resumedoctor --version` and `resumedoctor diagnose` on a small checkpoint start in at
most a quarter of the time `import transformers` takes.

    python benchmarks/bench_startup.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record, time_command  # noqa: E402


def main() -> int:
    from demo_run import train_demo_run

    workdir = Path(tempfile.mkdtemp(prefix="rd-startup-"))
    try:
        run = train_demo_run(workdir / "run", max_steps=2, save_steps=2)
        python = sys.executable
        timings = {
            "python_bare": time_command([python, "-c", "pass"]),
            "import_transformers": time_command([python, "-c", "import transformers"]),
            "resumedoctor_version": time_command([python, "-m", "resumedoctor", "--version"]),
            "resumedoctor_diagnose_small": time_command([python, "-m", "resumedoctor", "diagnose", str(run)]),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = timings["import_transformers"]["median_s"]
    ratios = {
        "version_over_import_transformers": timings["resumedoctor_version"]["median_s"] / base,
        "diagnose_over_import_transformers": timings["resumedoctor_diagnose_small"]["median_s"] / base,
    }
    print(json.dumps({"timings": timings, "ratios": ratios}, indent=2))
    path = record("startup", {"timings": timings, "ratios": ratios, "target": "both ratios <= 0.25"})
    print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

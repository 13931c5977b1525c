"""Run the work that needs torch-importing libraries (trl, transformers) in a helper process.

The diagnosing process stays free of torch: `launch` can refuse a broken run before torch is ever
imported, and `diagnose` stays fast. A helper is `python -m <module> <json>` printing one JSON
document on stdout, or {"error": "..."} for a failure to report as a finding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from resumedoctor.errors import ReasonError


class HelperError(ReasonError):
    """The helper process failed; `reason` is its last line of output."""


def run_json(module: str, payload: Any, *, timeout: float | None = None) -> Any:
    """The helper's JSON answer; HelperError when it fails, prints no JSON or runs past `timeout` seconds."""
    try:
        completed = subprocess.run([sys.executable, "-m", module, json.dumps(payload)], capture_output=True,
                                   text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HelperError(f"{module} did not answer within {timeout:g} s") from None
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout).strip().splitlines()
        raise HelperError(lines[-1] if lines else f"{module} exited with {completed.returncode}")
    try:
        return json.loads(completed.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HelperError(f"{module} printed no JSON") from None

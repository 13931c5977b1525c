"""Run the work that needs torch-importing libraries (trl, transformers) in a helper process.

The diagnosing process stays free of torch: `launch` can refuse a broken run before torch is ever
imported, and `diagnose` stays fast. A helper is `python -m <module> <json>` printing one JSON
object on stdout, or {"error": "..."} for a failure to report as a finding. Every way a helper can
fail (it cannot start, exits non-zero, runs past its time limit, prints no JSON object) is a
HelperError with a one-line reason, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from resumedoctor.errors import ReasonError

TIMEOUT_VARIABLE = "RESUMEDOCTOR_HELPER_TIMEOUT"
DEFAULT_TIMEOUT = 900.0  # seconds: tokenizing a large dataset on a slow disk takes minutes, not hours


class HelperError(ReasonError):
    """The helper process failed; `reason` says how, in one line."""


def helper_timeout() -> float:
    """Seconds a helper may run: $RESUMEDOCTOR_HELPER_TIMEOUT, else DEFAULT_TIMEOUT."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        raise HelperError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds") from None
    if not seconds > 0:
        raise HelperError(f"{TIMEOUT_VARIABLE}={text!r} must be more than 0 seconds")
    return seconds


def run_json(module: str, payload: Any, *, timeout: float | None = None) -> dict:
    """`python -m module <payload as JSON>` and the JSON object on its last line of output."""
    limit = helper_timeout() if timeout is None else timeout
    try:
        completed = subprocess.run([sys.executable, "-m", module, json.dumps(payload)], capture_output=True,
                                   encoding="utf-8", errors="replace", timeout=limit)
    except subprocess.TimeoutExpired:
        raise HelperError(f"helper {module} did not finish within {limit:g} s "
                          f"(set {TIMEOUT_VARIABLE} to allow longer)") from None
    except OSError as exc:
        raise HelperError(f"helper {module} could not start: {exc.strerror or exc}") from None
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout or "").strip().splitlines()
        why = lines[-1].strip() if lines else "no output"
        raise HelperError(f"helper {module} failed (exit {completed.returncode}): {why}")
    lines = (completed.stdout or "").strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (ValueError, IndexError):
        answer = None
    if not isinstance(answer, dict):
        raise HelperError(f"helper {module} printed no JSON object")
    return answer

"""The curriculum state contract and its promotion rule, without transformers.

The contract is docs/architecture.md, "Curriculum state contract":
`{"global_step": int, "stage": int, "history": [{"step": int, "stage": int, "metric": float}], ...}`
in `<output_dir>/curriculum_state.json` (live) and `checkpoint-N/curriculum_state.json` (snapshot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resumedoctor.io.bounded_read import JSON_STATE_LIMIT, JsonFileError, read_json_file

STATE_FILE = "curriculum_state.json"


def promotion_due(history: list[dict], stage: int, thresholds: list[float], window: int, mode: str) -> bool:
    """Does the rule promote out of `stage`, given the history so far?"""
    if stage >= len(thresholds):
        return False
    values = [entry["metric"] for entry in history if entry["stage"] == stage][-window:]
    if len(values) < window:
        return False
    mean = sum(values) / len(values)
    return mean >= thresholds[stage] if mode == "max" else mean <= thresholds[stage]


def replay(log_history: list[dict], metric: str, thresholds: list[float], window: int, mode: str,
           up_to_step: int) -> dict:
    """The curriculum state a run would have at `up_to_step`, from trainer_state.json's log_history."""
    stage, history = 0, []
    for entry in log_history:
        if not isinstance(entry, dict):
            continue
        step = entry.get("step")
        if not isinstance(step, int) or step > up_to_step or metric not in entry:
            continue
        history.append({"step": step, "stage": stage, "metric": float(entry[metric])})
        if promotion_due(history, stage, thresholds, window, mode):
            stage += 1
    return {"global_step": up_to_step, "stage": stage, "history": history}


def read_state(path: Path) -> dict:
    """A curriculum state file, validated against the contract; ValueError says what is wrong."""
    try:
        data = read_json_file(path, JSON_STATE_LIMIT)
    except JsonFileError as exc:
        raise ValueError(exc.reason) from None
    validate_state(data)
    return data


def validate_state(data: Any) -> None:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if not isinstance(data.get("global_step"), int) or not isinstance(data.get("stage"), int):
        raise ValueError("global_step and stage must be integers")
    history = data.get("history")
    if not isinstance(history, list) or not all(
        isinstance(e, dict) and isinstance(e.get("step"), int) and isinstance(e.get("stage"), int)
        and isinstance(e.get("metric"), (int, float)) for e in history
    ):
        raise ValueError("history must be a list of {step, stage, metric}")

"""Learning rates of transformers' own schedulers, computed in a helper process and cached.

`get_scheduler` is the function the Trainer builds its schedule with; it imports torch, so on a cache
miss it runs in `python -m resumedoctor.integrations.trl.lr_schedule` under a time limit, unless torch is already
imported here. The answers are cached per transformers version and question.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

from resumedoctor.errors import ReasonError
from resumedoctor.io.cache import cache_dir, write_entry
from resumedoctor.io.hashing import cache_key

HELPER_TIMEOUT_S = 60.0


class ScheduleError(ReasonError):
    """The learning rates could not be computed; `reason` says why in one line."""


@dataclass(frozen=True)
class Schedule:
    """What the Trainer passes to get_scheduler (TrainingArguments' names)."""

    lr_scheduler_type: str
    learning_rate: float
    num_training_steps: int
    warmup_steps: float = 0  # >= 1: steps; below 1: a share of num_training_steps (transformers 5)
    warmup_ratio: float = 0  # transformers 4's own field, used when warmup_steps is 0
    lr_scheduler_kwargs: dict = field(default_factory=dict)


def learning_rates(schedules: list[Schedule], steps: list[int], *, timeout: float = HELPER_TIMEOUT_S,
                   use_cache: bool = True, in_process: bool | None = None) -> list[list[float]]:
    """For each schedule, the learning rate after `n` scheduler steps for every n in `steps`.

    That is the rate the optimizer uses for training step n + 1, and the `learning_rate` the
    Trainer logs at step n + 1. ScheduleError when it cannot be computed.
    """
    from resumedoctor.integrations.trl.recipe import installed_version

    request = {"schedules": [asdict(s) for s in schedules], "steps": [int(n) for n in steps]}
    key_source = json.dumps([installed_version("transformers"), request], sort_keys=True, default=str)
    cached = cache_dir() / "lr-schedule" / f"{cache_key(key_source)}.json"
    if use_cache:
        try:
            return json.loads(cached.read_text(encoding="utf-8"))["rates"]
        except (OSError, ValueError, KeyError):
            pass
    if in_process is None:
        in_process = "torch" in sys.modules
    answer = _answer(request) if in_process else _ask_helper(request, timeout)
    if "error" in answer:
        raise ScheduleError(answer["error"])
    if use_cache:
        write_entry(cached, json.dumps({"rates": answer["rates"]}))
    return answer["rates"]


def _ask_helper(request: dict, timeout: float) -> dict:
    from resumedoctor.io.helper_process import HelperError, run_json

    try:
        answer = run_json("resumedoctor.integrations.trl.lr_schedule", request, timeout=timeout)
    except HelperError as exc:
        raise ScheduleError(exc.reason) from None
    if not isinstance(answer, dict) or not ("rates" in answer or "error" in answer):
        raise ScheduleError("the helper answered something else than learning rates")
    return answer


def warmup_steps_of(schedule: Schedule) -> int:
    """TrainingArguments.get_warmup_steps, plus transformers 4's warmup_ratio for older checkpoints."""
    import math
    from types import SimpleNamespace

    from transformers import TrainingArguments

    if not schedule.warmup_steps and schedule.warmup_ratio:
        return math.ceil(schedule.num_training_steps * schedule.warmup_ratio)
    return TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=schedule.warmup_steps),
                                              schedule.num_training_steps)


def compute(schedules: list[Schedule], steps: list[int]) -> list[list[float]]:
    """The rates with transformers' get_scheduler on a one-parameter optimizer (imports torch)."""
    import torch
    from transformers import get_scheduler

    rates = []
    for schedule in schedules:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=schedule.learning_rate)
        scheduler = get_scheduler(schedule.lr_scheduler_type, optimizer=optimizer,
                                  num_warmup_steps=warmup_steps_of(schedule),
                                  num_training_steps=schedule.num_training_steps,
                                  scheduler_specific_kwargs=dict(schedule.lr_scheduler_kwargs) or None)
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if not lambdas:
            raise ScheduleError(f"{schedule.lr_scheduler_type} is not a per-step schedule "
                                f"({type(scheduler).__name__} moves the rate by metrics, not by step)")
        rates.append([schedule.learning_rate * float(lambdas[0](n)) for n in steps])
    return rates


def _answer(request: dict) -> dict:
    try:
        schedules = [Schedule(**s) for s in request["schedules"]]
        return {"rates": compute(schedules, request["steps"])}
    except ScheduleError as exc:
        return {"error": exc.reason}
    except Exception as exc:  # noqa: BLE001 - get_scheduler raises ValueError, TypeError, ...: one line
        return {"error": f"get_scheduler failed: {type(exc).__name__}: {exc}"}


if __name__ == "__main__":  # the helper process of learning_rates()
    print(json.dumps(_answer(json.loads(sys.argv[1]))))

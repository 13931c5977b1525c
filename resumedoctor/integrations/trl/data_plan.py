"""How a run walks its seeded data order: TRL's RepeatSampler for GRPO, one sample per item otherwise.

One home for the batch arithmetic the CFG family (where a changed batch moves the data skip) and the
DATA family (what a resume skips, repeats or streams past) both judge by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Values = Callable[[str], Any]  # a key -> its value (saved arguments' .get, a recipe's .get)


@dataclass(frozen=True)
class DataPlan:
    """The batch plan of a run: per-device batch, accumulation, processes, and GRPO's generation shape."""

    per_device: int
    accumulation: int
    world: int
    generations: int = 0  # 0: not GRPO
    iterations: int = 1
    steps_per_generation: int = 1
    generation_batch: int = 0

    @property
    def per_step(self) -> int:
        """Samples (GRPO: completions) per optimizer step over all processes."""
        return self.per_device * self.accumulation * self.world

    @property
    def unit(self) -> str:
        return "prompts" if self.generations else "samples"

    def skipped(self, step: int) -> int:
        """Positions of the seeded order a resume at `step` passes before it trains again."""
        if not self.generations:
            return step * self.per_step
        per_generation = self.generation_batch // self.generations
        return step * self.accumulation // (self.iterations * self.steps_per_generation) * per_generation

    def shape(self) -> str:
        if not self.generations:
            return f"{count(self.per_step, 'sample')} per optimizer step"
        reuse = f", each generation used {self.iterations}x" if self.iterations > 1 else ""
        return (f"{count(self.generation_batch // self.generations, 'prompt')} x {self.generations} completions "
                f"per generation, {count(self.per_step, 'completion')} per optimizer step{reuse}")


def count(number: int, noun: str) -> str:
    """`1 prompt`, `3 prompts`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def positive_ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def saved_plan(get: Values, world: int, grpo: bool) -> DataPlan | None:
    """The plan saved arguments record (GRPOConfig stores generation_batch_size and steps_per_generation)."""
    per_device, accumulation = get("per_device_train_batch_size"), get("gradient_accumulation_steps")
    if not grpo:
        return DataPlan(per_device, accumulation, world) if positive_ints(per_device, accumulation, world) else None
    values = (get("num_generations"), get("num_iterations") or 1, get("steps_per_generation"), get("generation_batch_size"))
    if not positive_ints(per_device, accumulation, world, *values):
        return None
    return DataPlan(per_device, accumulation, world, *values)


def recipe_plan(get: Values, world: int, grpo: bool) -> DataPlan | None:
    """A recipe's plan, with generation_batch_size / steps_per_generation derived as GRPOConfig does."""
    per_device, accumulation = get("per_device_train_batch_size"), get("gradient_accumulation_steps")
    if not positive_ints(per_device, accumulation, world):
        return None
    if not grpo:
        return DataPlan(per_device, accumulation, world)
    batch, steps = get("generation_batch_size"), get("steps_per_generation")
    if batch is None:
        steps = steps or accumulation
        batch = per_device * world * steps
    elif steps is None:
        steps = batch // (per_device * world)
    generations, iterations = get("num_generations"), get("num_iterations") or 1
    if not positive_ints(generations, iterations, steps, batch):
        return None
    if batch % generations or batch % (per_device * world):
        return None  # GRPOConfig refuses it (no whole prompt groups per generation): no plan to count with
    return DataPlan(per_device, accumulation, world, generations, iterations, steps, batch)


@dataclass(frozen=True)
class EpochPosition:
    """Where a global_step stands in the epochs, as Trainer._init_training_state counts them."""

    per_epoch: int  # optimizer steps per epoch
    epochs_done: int
    in_epoch: int  # optimizer steps already trained in the current epoch

    @property
    def at_boundary(self) -> bool:
        return self.in_epoch == 0


def epoch_position(step: int, epoch: Any) -> EpochPosition | None:
    """From trainer_state.json's global_step and fractional epoch; None when they cannot tell."""
    if not positive_ints(step) or isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not epoch > 0:
        return None
    ratio = step / epoch
    if not ratio < 2**62:
        return None
    per_epoch = max(round(ratio), 1) if abs(ratio - round(ratio)) < 1e-6 * ratio else int(ratio) + 1
    return EpochPosition(per_epoch, step // per_epoch, step % per_epoch)

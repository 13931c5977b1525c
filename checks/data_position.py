"""DATA: where in the data the resume starts, and what it restores besides the weights.

transformers resumes the data by arithmetic (Trainer._init_training_state): epochs_trained =
global_step // steps per epoch, then skip_first_batches past (global_step % steps per epoch) x
gradient_accumulation_steps batches of the seeded order, unless ignore_data_skip. The batch plan
(integrations/trl/data_plan, shared with CFG) turns those steps into prompts or samples. The recipe is
read through ctx.recipe() where one is given; otherwise the checkpoint's saved arguments say what a
resume with the same arguments does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.engine.checkpoint_facts import saved_world_size
from resumedoctor.engine.context import RunContext, launch_world_size
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.trl.data_plan import (
    DataPlan,
    EpochPosition,
    count,
    epoch_position,
    recipe_plan,
    saved_plan,
)
from resumedoctor.io.safe_pickle import PickleReadError, UnsafePickleError

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

IGNORE_DATA_SKIP = Rule(
    "DATA001", "ignore-data-skip", WARNING,
    "ignore_data_skip is set: the resume starts the current epoch's data from its beginning.",
    "With ignore_data_skip the Trainer does not skip the batches already trained in the current epoch "
    "(transformers 5.24, Trainer._init_training_state): the resumed steps train the epoch's first samples "
    "(GRPO: prompts) a second time, and the epoch's later ones are reached that much later or never. A fast "
    "restart on a huge dataset may want that; the message says how many samples come again. `fix --unsafe` "
    "sets ignore_data_skip: false in the recipe.",
)
EPOCH_BOUNDARY = Rule(
    "DATA002", "resume-at-epoch-boundary", INFO,
    "The checkpoint ends an epoch exactly: the resume starts the next epoch, nothing is skipped.",
    "global_step is a whole number of epochs: transformers skips no batch, restores the random state and "
    "begins epoch E+1 with the sampler's order for that epoch (seeded by seed and the epoch), as the "
    "uninterrupted run would have.",
)
STREAMING_SKIP = Rule(
    "DATA003", "streaming-resume-skip", INFO,
    "The data is streamed (an IterableDataset): the resume reaches its position by reading and discarding batches.",
    "An IterableDataset cannot be indexed: accelerate's skip_first_batches iterates the dataloader and throws "
    "away global_step x gradient_accumulation_steps batches on every process before the first resumed step. "
    "The data position is right when the stream is deterministic; the cost is reading (downloading, "
    "tokenizing) that many batches. The message gives the count.",
)
MODEL_ONLY_RESUME = Rule(
    "DATA004", "model-only-resume", ERROR,
    "A resume is asked from a checkpoint saved with save_only_model: it restarts the optimizer, the schedule and the RNG.",
    "transformers documents that a save_only_model checkpoint cannot be resumed, yet it does not refuse it: it "
    "loads the weights and trainer_state.json (global_step goes on), finds no optimizer.pt, scheduler.pt or "
    "rng_state.pth and says nothing: AdamW starts with empty moments, the learning-rate schedule starts again "
    "at its first step (warmup included) while global_step continues, and the random state is fresh (seen with "
    "transformers 5.24: a resume at step 2 of a 4-step linear schedule logs the step-0 learning rate). To go "
    "on from these weights deliberately, start a new run with model_name_or_path: checkpoint-N; or resume "
    "from a checkpoint with its training state. `diagnose` without a recipe reports it as CKPT012 (warning).",
)

RULES = (IGNORE_DATA_SKIP, EPOCH_BOUNDARY, STREAMING_SKIP, MODEL_ONLY_RESUME)

TRAINING_STATE = ("optimizer", "scheduler.pt", "rng_state", "global_step")  # name prefixes of the state a resume restores
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
           "adapter_model.safetensors", "adapter_model.bin")


@dataclass
class Position:
    """The resume's checkpoint, its step, and where the values that decide the data position come from."""

    checkpoint: Path
    step: int
    epoch: EpochPosition | None
    get: Callable[[str], Any]  # the recipe's values, else the saved arguments'
    source: str  # "the recipe" or "training_args.bin"
    plan: DataPlan | None


def run(ctx: RunContext) -> Iterator[Finding]:
    checkpoint = ctx.resume_point()
    if checkpoint is None:
        return
    yield from check_model_only(ctx, checkpoint)
    position = position_of(ctx, checkpoint)
    if position is None:
        return
    yield from check_data_skip(position)
    yield from check_streaming(position)


def _recipe(ctx: RunContext):
    """The recipe when one is given and can be judged for this run; None otherwise."""
    if ctx.options.recipe is None or ctx.recipe_not_judged() is not None:
        return None
    try:
        return ctx.recipe()
    except ReasonError:  # an unreadable recipe is reported by the recipe families
        return None


def _saved(ctx: RunContext, checkpoint: Path) -> dict | None:
    try:
        return ctx.training_args(checkpoint / "training_args.bin")
    except (UnsafePickleError, PickleReadError, OSError):  # CKPT010 / CKPT028 report it
        return None


def position_of(ctx: RunContext, checkpoint: Path) -> Position | None:
    step, state = ctx.global_step(checkpoint), ctx.trainer_state(checkpoint)
    if not step or state is None:
        return None
    saved, recipe = _saved(ctx, checkpoint), _recipe(ctx)
    if recipe is None and saved is None:
        return None
    world_saved = saved_world_size(ctx, checkpoint)
    grpo = "num_generations" in saved if saved is not None else True  # recipes read here are GRPO recipes
    if recipe is not None:
        world = launch_world_size(ctx.environ) or world_saved
        plan = recipe_plan(recipe.get, world, grpo)
        return Position(checkpoint, step, epoch_position(step, state.get("epoch")), recipe.get, "the recipe", plan)
    plan = saved_plan(saved.get, world_saved, grpo)
    return Position(checkpoint, step, epoch_position(step, state.get("epoch")), saved.get, "training_args.bin", plan)


def check_data_skip(position: Position) -> Iterator[Finding]:
    epoch, name = position.epoch, position.checkpoint.name
    if epoch is None:
        return
    if epoch.at_boundary:
        yield EPOCH_BOUNDARY.finding(
            f"{name} is at step {position.step}, the end of epoch {epoch.epochs_done} ({epoch.per_epoch} steps per "
            f"epoch): the resume skips nothing and begins epoch {epoch.epochs_done + 1}", path=str(position.checkpoint))
        return
    if position.get("ignore_data_skip") is not True:
        return
    plan = position.plan
    again = (f"the first {plan.skipped(epoch.in_epoch)} {plan.unit} of epoch {epoch.epochs_done + 1} "
             f"({plan.shape()}) are trained again" if plan is not None
             else "the samples of those steps are trained again (how many was not judged: the batch values could "
             "not be read, or GRPOConfig refuses them)")
    finding = IGNORE_DATA_SKIP.finding(
        f"ignore_data_skip is true ({position.source}): {name} has trained {count(epoch.in_epoch, 'step')} of epoch "
        f"{epoch.epochs_done + 1} ({epoch.per_epoch} steps per epoch), and the resume starts that epoch's data order "
        f"from its beginning: {again}", path=str(position.checkpoint),
        hint="set ignore_data_skip: false to resume where the run stopped (fix --unsafe edits the recipe)"
        if position.source == "the recipe" else "set ignore_data_skip: false in the resume's arguments")
    finding.extra["in_recipe"] = position.source == "the recipe"
    yield finding


def check_streaming(position: Position) -> Iterator[Finding]:
    if position.source != "the recipe" or position.get("dataset_streaming") is not True:
        return
    if position.get("ignore_data_skip") is True or position.epoch is None or position.epoch.at_boundary:
        return  # nothing is skipped
    accumulation = position.get("gradient_accumulation_steps")
    if not isinstance(accumulation, int) or accumulation < 1:
        return
    # An IterableDataset has no length: the Trainer counts max_steps as one epoch, so every trained step is skipped.
    batches = position.step * accumulation
    prompts = f" ({position.plan.skipped(position.step)} {position.plan.unit})" if position.plan else ""
    yield STREAMING_SKIP.finding(
        f"dataset_streaming is true: before step {position.step + 1} the resume reads and discards "
        f"{batches} {'batch' if batches == 1 else 'batches'} per process{prompts}, {position.step} steps x gradient_accumulation_steps "
        f"{accumulation}", path=str(position.checkpoint))


def check_model_only(ctx: RunContext, checkpoint: Path) -> Iterator[Finding]:
    """DATA004 when a resume is asked (a recipe, `launch`); CKPT012 alone warns when only diagnosed."""
    if ctx.options.recipe is None:
        return
    names = ctx.listing(checkpoint)
    if not any(name in names for name in WEIGHTS) or any(name.startswith(TRAINING_STATE) for name in names):
        return
    step = ctx.global_step(checkpoint)
    at = f" at step {step}" if step is not None else ""
    saved = (_saved(ctx, checkpoint) or {}).get("save_only_model")
    what = ("was saved with save_only_model (weights, no optimizer.pt, scheduler.pt or rng_state.pth)"
            if saved is True else "holds no optimizer/scheduler/RNG state (weights, no optimizer.pt, scheduler.pt "
            "or rng_state.pth" + (", though training_args.bin says save_only_model=False)" if saved is False else ")"))
    yield MODEL_ONLY_RESUME.finding(
        f"{checkpoint.name} {what}: the resume{at} loads the weights and restarts the optimizer, the learning-rate schedule "
        "and the random state without a word", path=str(checkpoint),
        hint=f"resume from a checkpoint with its training state, or start a new run with model_name_or_path: "
             f"{checkpoint} (no resume_from_checkpoint)")


FAMILY = CheckFamily(
    name="data-position",
    prefix="DATA",
    title="Data position: where in the data the resume starts, and what it restores besides the weights",
    rules=RULES,
    run=run,
)

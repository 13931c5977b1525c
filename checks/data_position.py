"""DATA: where in the data the resume starts, and what it restores besides the weights.

transformers resumes the data by arithmetic (Trainer._init_training_state): epochs_trained =
global_step // steps per epoch, then skip_first_batches past (global_step % steps per epoch) x
gradient_accumulation_steps batches of the seeded order, unless ignore_data_skip. The batch plan
(integrations/trl/data_plan, shared with CFG) turns those steps into prompts or samples. The recipe is
read through ctx.recipe() where one is given; otherwise the checkpoint's saved arguments say what a
resume with the same arguments does.

With a recipe and a sealed checkpoint, the rows the run started with (the seal's row manifest) are
compared with the recipe's local dataset as it is now: rows added, removed, changed or reordered,
and what that does to the resumed epoch, from the real permutations TRL's RepeatSampler draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.engine.checkpoint_facts import readable_seal, saved_world_size
from resumedoctor.engine.context import RunContext, launch_world_size
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.trl.data_plan import (
    DataPlan,
    EpochPosition,
    count,
    epoch_position,
    positive_ints,
    recipe_plan,
    saved_plan,
)
from resumedoctor.integrations.trl.dataset_rows import (
    RowsError,
    compare,
    current_rows,
    permutation,
    pin_rows,
    sealed_rows,
)
from resumedoctor.integrations.trl.prompt_lengths import DatasetError, looks_local
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

ROWS_CHANGED = Rule(
    "DATA005", "dataset-rows-changed-mid-epoch", ERROR,
    "The dataset lost, changed or reordered rows since the run started, and the resume lands inside an epoch.",
    "The Trainer resumes the data by arithmetic: it skips the first (steps trained in the epoch) batches of the "
    "order the new sampler draws. GRPO's RepeatSampler draws torch.randperm(len(dataset)) from a generator seeded "
    "with `seed`, so another row set (or the same rows in another order) is another order: the resumed epoch "
    "trains prompts the run already trained this epoch a second time and passes over others it never trained, "
    "and no error or log says so. The message gives the row counts (from the seal's row manifest) and the "
    "numbers from the real permutation. When only the order changed, `fix` pins the dataset to the rows the "
    "run started with; rows that were removed or edited cannot be brought back from their digests: restore the "
    "original file, or start the epoch again on purpose.",
)
ROWS_ADDED = Rule(
    "DATA006", "dataset-grew-mid-epoch", WARNING,
    "Rows were appended to the dataset since the run started, and the resume lands inside an epoch.",
    "New rows change len(dataset), so the resumed sampler draws another permutation and the skip passes over "
    "another set of prompts: some the run already trained this epoch come again, some it never trained are "
    "skipped (the message counts both, and how many new rows the skip passes over). An incremental pipeline "
    "may want the new rows at once; to continue exactly, `fix` pins the dataset to the rows the run started with "
    "(a copy inside the output_dir, the recipe pointed at it) and the new rows join at the next epoch or run.",
)
ROWS_CHANGED_AT_BOUNDARY = Rule(
    "DATA007", "dataset-changed-between-epochs", WARNING,
    "The dataset lost, changed or reordered rows since the run started; the resume begins a new epoch.",
    "Nothing of the current epoch is skipped or repeated, but the run goes on training on other rows than it "
    "started with: removed rows are not trained again, edited rows are trained as edited. The message says how "
    "many rows of each.",
)
ROWS_ADDED_AT_BOUNDARY = Rule(
    "DATA008", "dataset-grew-between-epochs", INFO,
    "Rows were appended to the dataset; the resume begins a new epoch, where they join the shuffled order.",
    "The resume starts a new epoch over the grown dataset: nothing trained is repeated, nothing skipped, and the "
    "new rows are part of the next permutation, as an incremental pipeline intends.",
)
ROWS_NOT_JUDGED = Rule(
    "DATA009", "dataset-change-not-judged", INFO,
    "Whether the dataset changed since the run started was not judged.",
    "The comparison needs the seal's row manifest (SealCallback writes it in the output_dir; older seals have "
    "none), a local dataset (json, jsonl, csv, parquet or a save_to_disk folder: nothing is downloaded), and "
    "rows that can be loaded here. The message says which one was missing.",
)

RULES = (IGNORE_DATA_SKIP, EPOCH_BOUNDARY, STREAMING_SKIP, MODEL_ONLY_RESUME, ROWS_CHANGED, ROWS_ADDED,
         ROWS_CHANGED_AT_BOUNDARY, ROWS_ADDED_AT_BOUNDARY, ROWS_NOT_JUDGED)

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
    yield from check_dataset_rows(ctx, position)


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


@dataclass
class Reshuffle:
    """What the resumed epoch does to the prompts of the current epoch, from the real permutations."""

    trained_epoch: int  # the run's current epoch, 1-based
    epoch: int  # the epoch the resume begins in, 1-based (another one when the steps per epoch changed)
    trained: int  # prompts the run trained in its current epoch before the checkpoint
    skip: int  # prompts of the new order the resume's data skip passes
    again: int  # of them, trained a second time by the resume in the rest of the epoch
    passed: int  # prompts not trained this epoch that the resume's skip passes over
    passed_new: int  # of them, rows the run did not have


def check_dataset_rows(ctx: RunContext, position: Position) -> Iterator[Finding]:
    """The seal's rows against the recipe's dataset as it is now (DATA005-DATA009)."""
    if position.source != "the recipe":
        return
    seal = readable_seal(ctx, position.checkpoint)
    if seal is None:
        return  # unsealed: nothing recorded to compare with (the seal checks speak of sealing)
    recipe, where = ctx.recipe(), str(position.checkpoint)
    compared = _compared_rows(ctx, recipe, seal, position.checkpoint)
    if isinstance(compared, str):
        yield ROWS_NOT_JUDGED.finding(f"whether {position.checkpoint.name}'s dataset changed was not judged: {compared}",
                                      path=where)
        return
    if compared is None:
        return
    before, now, change, label = compared
    max_steps = position.get("max_steps")
    if change.same or (positive_ints(max_steps) and position.step >= max_steps):
        return  # the same rows, or a finished run (CFG011 speaks of the one step a resume at the horizon adds)
    yield _row_finding(ctx, position, before, now, change, label)


def _compared_rows(ctx: RunContext, recipe, seal: dict, checkpoint: Path):
    """(sealed rows, rows now, change, dataset label); a reason when not judged; None when there is nothing to say."""
    record, name = seal.get("dataset_rows"), recipe.get("dataset_name")
    if record is None:
        return ("the seal has no row manifest (sealed by an older resumedoctor)"
                if seal.get("dataset_fingerprint") else None)
    if not isinstance(name, str) or not name or (looks_local(name) and not Path(name).expanduser().exists()):
        return None  # no dataset, or a missing one: the LEN family reports it
    if not looks_local(name):
        return f"dataset_name {name!r} is not a local dataset (nothing is downloaded)"
    location, split = Path(name).expanduser(), recipe.get("dataset_train_split") or "train"
    try:
        before = sealed_rows(checkpoint.parent, record)
        now = ctx.memo(("dataset-rows", location, split, before.row_hash),
                       lambda: current_rows(location, split, before.row_hash), "dataset_rows")
    except (RowsError, DatasetError) as exc:
        return exc.reason
    if now.columns != before.columns:
        return (f"{location.name} has the columns {', '.join(now.columns)}, the run's dataset had "
                f"{', '.join(before.columns)} (the training script may transform the rows)")
    change = compare(before, now)
    if len(before) and change.removed + change.changed == len(before) and len(now):
        return (f"none of the {len(before)} rows the run started with is in {location.name} (another dataset, "
                "or the training script transforms the rows)")
    return before, now, change, location.name


def _row_finding(ctx: RunContext, position: Position, before, now, change, label: str) -> Finding:
    counts = _change_text(change)
    what = f"{label} has {len(now)} rows, the run started with {len(before)} ({counts})"
    shuffle = _reshuffle(position, before, now)
    boundary = position.epoch is not None and position.epoch.at_boundary and (
        isinstance(shuffle, str) or not (shuffle.again or shuffle.passed))
    if boundary:
        if change.only_added:
            return ROWS_ADDED_AT_BOUNDARY.finding(f"{what}: the resume at step {position.step} begins a new epoch, "
                                                  "where the new rows join the order", path=str(position.checkpoint))
        return ROWS_CHANGED_AT_BOUNDARY.finding(
            f"{what}: the resume at step {position.step} begins a new epoch on the rows as they are now",
            path=str(position.checkpoint),
            hint=f"if the change was not meant, restore the rows {label} had when the run started before resuming")
    effect = (f"the order of the rest of the epoch was not judged ({shuffle})" if isinstance(shuffle, str)
              else _effect_text(shuffle))
    walk = (f"begins epoch {shuffle.epoch} in a new order over {len(now)} rows" if not isinstance(shuffle, str)
            and not shuffle.skip else f"draws a new order over {len(now)} rows and skips into it")
    pin = pin_rows(before, now)
    rule = ROWS_ADDED if change.only_added else ROWS_CHANGED
    finding = rule.finding(f"{what}: the resume at step {position.step} {walk}: {effect}", path=str(position.checkpoint),
                           hint=_row_hint(pin, len(before), change.added, label, position.epoch))
    if pin is not None:
        finding.extra["pin"] = {"rows": pin, "sealed": len(before)}
    finding.extra["change"], finding.extra["reshuffle"] = change, shuffle
    return finding


def _change_text(change) -> str:
    parts = [f"{number} {name}" for number, name in ((change.added, "added"), (change.removed, "removed"),
                                                      (change.changed, "changed")) if number]
    if change.reordered:
        parts.append("the rows kept are in another order")
    return ", ".join(parts)


def _effect_text(shuffle: Reshuffle) -> str:
    new = f" (of them {count(shuffle.passed_new, 'new row')})" if shuffle.passed_new else ""
    moved = (f" (the steps per epoch changed with the row count: the resume counts it as epoch {shuffle.epoch})"
             if shuffle.epoch != shuffle.trained_epoch else "")
    return (f"of the {count(shuffle.trained, 'prompt')} the run trained in epoch {shuffle.trained_epoch}, "
            f"{shuffle.again} {'is' if shuffle.again == 1 else 'are'} trained again before the resumed epoch ends, "
            f"and {count(shuffle.passed, 'prompt')} not trained in it {'is' if shuffle.passed == 1 else 'are'} "
            f"skipped{new}{moved}")


def _row_hint(pin: list[int] | None, sealed: int, added: int, label: str, epoch: EpochPosition | None) -> str:
    if pin is None:
        return (f"rows the run started with are gone or edited and cannot be rebuilt from their digests: restore the "
                f"original {label} to continue exactly, or resume on purpose knowing the numbers above")
    joins = (f"; the {count(added, 'new row')} join when dataset_name points at {label} again, at an epoch "
             "boundary or in a new run" if added else "")
    # TRL 1.16 seeds RepeatSampler's generator once, when it is built: a resumed sampler walks the first
    # epoch's permutation whatever epoch it resumes in (seen on a real resume in epoch 2).
    later = (" (past the first epoch, as far as TRL allows: a resumed RepeatSampler walks its first permutation "
             "again, not the one of the epoch the run was in)" if epoch is not None and epoch.epochs_done else "")
    return (f"fix pins the dataset to the {sealed} rows the run started with, in their order (a copy inside the "
            f"output_dir, dataset_name pointed at it): the resume continues as the run would have{later}{joins}")


def _reshuffle(position: Position, before, now) -> Reshuffle | str:
    """The resumed epoch over the rows of now against what the run trained; a reason when not judged."""
    plan, epoch, get = position.plan, position.epoch, position.get
    if plan is None or not plan.generations or epoch is None:
        return "the recipe's batch plan or the checkpoint's epoch cannot be read"
    if epoch_steps(plan, len(before)) != epoch.per_epoch:
        return "the recipe's batch plan does not give the steps per epoch the run had"
    unique, per_now = plan.generation_batch // plan.generations, epoch_steps(plan, len(now))
    skip = 0 if get("ignore_data_skip") is True else plan.skipped(position.step % per_now)
    try:
        # The run walked its current epoch in its sampler's epoch-th permutation; a resumed sampler draws its first.
        walked = _order(get, len(before), epoch.epochs_done)
        resumed = _order(get, len(now), 0)
    except ReasonError as exc:
        return exc.reason
    old, new = before.keys(), now.keys()
    trained = {old[i] for i in walked[:plan.skipped(epoch.in_epoch)]}
    again = {new[i] for i in resumed[skip:len(now) // unique * unique]} & trained
    passed = {new[i] for i in resumed[:skip]} - trained
    return Reshuffle(epoch.epochs_done + 1, position.step // per_now + 1, len(trained), skip, len(again),
                     len(passed), len(passed - set(old)))


def _order(get, size: int, draw: int):
    if get("shuffle_dataset") is False:
        return range(size)
    seed = get("seed")
    return permutation(seed if isinstance(seed, int) else 42, size, draw)


def epoch_steps(plan: DataPlan, rows: int) -> int:
    """Optimizer steps per epoch of a GRPO run over `rows` prompts (RepeatSampler drops the last partial
    generation; transformers counts max(ceil(batches / accumulation), 1))."""
    unique = plan.generation_batch // plan.generations
    batches = rows // unique * plan.iterations * plan.steps_per_generation
    return max(batches // plan.accumulation + int(batches % plan.accumulation > 0), 1)


FAMILY = CheckFamily(
    name="data-position",
    prefix="DATA",
    title="Data position: where in the data the resume starts, and what it restores besides the weights",
    rules=RULES,
    run=run,
)

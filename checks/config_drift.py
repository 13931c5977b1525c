"""CFG: does the recipe resume the run the checkpoint belongs to, with the arguments it was trained with?

The checkpoint's saved arguments (training_args.bin, through the restricted unpickler) and
trainer_state.json are compared with the recipe as TrlParser resolves it, with DeepDiff, and every
difference is judged by what it does to this resume: where the data skip lands (TRL's RepeatSampler
arithmetic), which learning rate each resumed step gets (transformers' own get_scheduler, in a helper
process), what optimizer.pt and scheduler.pt overwrite. One fact, one finding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.engine.checkpoint_facts import saved_world_size
from resumedoctor.engine.context import RunContext, launch_world_size
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.engine.target import checkpoint_step, list_checkpoints
from resumedoctor.integrations.trl import data_plan
from resumedoctor.integrations.trl.data_plan import DataPlan, positive_ints
from resumedoctor.integrations.trl.data_plan import count as _count
from resumedoctor.integrations.trl.recipe import RecipeError
from resumedoctor.integrations.trl.saved_arguments import (
    COSMETIC_KEYS,
    DATA_KEYS,
    OPTIMIZER_KEYS,
    ORDER_KEYS,
    SCHEDULE_KEYS,
    TRAINING_KEYS,
    Change,
    changes,
)
from resumedoctor.io.bounded_read import JsonFileError
from resumedoctor.io.safe_pickle import PickleReadError, UnsafePickleError

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

DATA_SKIP = Rule(
    "CFG001", "data-skip-broken", ERROR,
    "The resume's data skip lands elsewhere than where the run stopped, or the data is reshuffled.",
    "On resume the Trainer skips global_step x gradient_accumulation_steps batches of the seeded data "
    "order. TRL's GRPO RepeatSampler cuts that order into generations of generation_batch_size / "
    "num_generations prompts, each used num_iterations x steps_per_generation micro-steps; so "
    "per_device_train_batch_size, gradient_accumulation_steps, num_generations, num_iterations, the "
    "generation batch and the world size decide how many prompts the skip passes, and seed decides the "
    "order (data_seed too, for trainers with a plain random sampler). When the skip passes another number "
    "of prompts than the run trained, some are trained twice or never; the message says which positions. "
    "A change that keeps the skip where it was is CFG005 (training change) or CFG004 (harmless).",
)
NOTHING_TO_TRAIN = Rule(
    "CFG002", "nothing-to-train", ERROR,
    "max_steps (or num_train_epochs in steps) was changed to a horizon at or below the checkpoint's global_step.",
    "The Trainer stops when global_step reaches max_steps (or num_train_epochs x the steps per epoch): a "
    "resume whose horizon is not beyond the checkpoint's global_step loads everything and ends at once, "
    "training nothing. `fix --unsafe` sets the checkpoint's own horizon back when that is beyond "
    "global_step; when the run has reached it, raise max_steps by hand. A finished run resumed with its "
    "own horizon is CFG011 (info).",
)
MODEL_MISMATCH = Rule(
    "CFG003", "model-mismatch", ERROR,
    "The recipe's model is not the checkpoint's architecture.",
    "model_name_or_path builds the model the checkpoint's weights are loaded into; a different "
    "architecture or size fails to load or, with strict=False, trains a half-random model.",
)
HARMLESS = Rule(
    "CFG004", "harmless-change", INFO,
    "A setting differs from the checkpoint's but changes nothing the resume trains.",
    "logging_steps, save_steps, report_to and the like change what is recorded, not what is trained; "
    "num_train_epochs is ignored while max_steps is set; data_seed does not seed GRPO's sampler; a "
    "schedule setting can give the same learning rate at every resumed step; a batch can be split "
    "differently over devices and accumulation steps and still train the same prompts per optimizer "
    "step. The message says why the change is harmless.",
)
OTHER_CHANGE = Rule(
    "CFG005", "training-change", WARNING,
    "A training value differs from the checkpoint's and takes effect from the first resumed step.",
    "The resumed run computes something else than the paused one (beta, temperature, "
    "max_completion_length, the shape of the generation batch, ...). Fine when intended; the message "
    "gives the checkpoint's value and the new one. `fix --unsafe` writes the checkpoint's values back.",
)
NO_RESUME = Rule(
    "CFG006", "recipe-does-not-resume", ERROR,
    "The recipe has no resume_from_checkpoint while its output_dir already holds checkpoints.",
    "`trl grpo --config RECIPE` then trains from step 0 and overwrites checkpoint-2, checkpoint-4, ... "
    "in place (seen with TRL 1.16). `fix --auto` sets resume_from_checkpoint to the newest usable "
    "checkpoint's path.",
)
RESUME_TARGET_WRONG = Rule(
    "CFG007", "resume-target-wrong", ERROR,
    "resume_from_checkpoint names a folder that does not exist or is not the newest usable checkpoint.",
    "A path that does not exist fails the job after the GPUs are allocated (the string \"true\", from "
    "the command line or a quoted YAML value, is such a path: only the YAML boolean true means "
    "'newest'). An older checkpoint than the newest usable one throws away finished steps.",
)
RESUME_TARGET_OLDER = Rule(
    "CFG013", "resume-target-older", WARNING,
    "resume_from_checkpoint names an older checkpoint than the newest usable one.",
    "A rollback (after a divergence, say) is a choice only the user can make: the steps after the named "
    "checkpoint are trained again, and the run overwrites the later checkpoint-N folders as it saves. "
    "No fix: set resume_from_checkpoint to the newest checkpoint if the rollback is not intended.",
)
OUTPUT_DIR_DIFFERS = Rule(
    "CFG008", "output-dir-differs", WARNING,
    "The recipe's output_dir is not the folder being diagnosed.",
    "The checks looked at one folder and training would resume (and save) in another.",
)
SCHEDULE_CHANGED = Rule(
    "CFG009", "schedule-changed", WARNING,
    "The learning-rate schedule the resume follows differs from the checkpoint's (horizon, type or warmup).",
    "optimizer.pt and scheduler.pt restore the step counter, the base learning rate and the current "
    "rate, but the Trainer builds the curve from the recipe's lr_scheduler_type, warmup and max_steps: "
    "the first resumed step still runs at the checkpoint's rate, every later one on the new curve. A "
    "raised max_steps on a decaying schedule (linear, cosine, ...) stretches the decay, so the rates are "
    "higher than the run would have used; a lowered one shortens the run. The message gives the rates "
    "under both schedules, computed with transformers' get_scheduler (or says they could not be). "
    "Nothing to fix when intended: the recipe asks for it.",
)
TRAINING_EXTENDED = Rule(
    "CFG010", "training-extended", INFO,
    "max_steps or num_train_epochs was raised on a schedule whose rates do not depend on it.",
    "On a constant schedule (or constant_with_warmup past its warmup) a longer horizon changes no rate: "
    "the resume trains the steps the run had planned exactly as planned, then more at the same rate.",
)
RUN_FINISHED = Rule(
    "CFG011", "run-finished", WARNING,
    "The checkpoint has reached the horizon the recipe keeps: a resume still trains one step past it.",
    "global_step equals the run's max_steps and the recipe does not raise it. A resume is no no-op: "
    "transformers (5.24, seen on real runs) trains one more step, saves checkpoint-N+1 beyond max_steps "
    "and logs it. Do not relaunch a finished run; raise max_steps (or num_train_epochs) to train on, and "
    "CFG009 or CFG010 then says what the longer schedule does.",
)
OPTIMIZER_KEPT = Rule(
    "CFG012", "optimizer-value-ignored", ERROR,
    "learning_rate, weight_decay or an Adam setting differs from the checkpoint's, but a resume keeps the checkpoint's.",
    "On resume the Trainer loads optimizer.pt, whose parameter groups carry lr, weight_decay, betas and "
    "eps, and scheduler.pt, whose base_lrs carry the learning rate; both overwrite what the recipe asks "
    "(seen with transformers 5.24 and torch 2.13: a resume with learning_rate doubled logs the "
    "checkpoint's rates). The run trains on with the old values while the recipe says otherwise. `fix "
    "--auto` writes the checkpoint's values into the recipe so that it states what the resume really "
    "uses; training does not change. To train with new values, start a new run from the checkpoint's "
    "weights (model_name_or_path) instead of resuming.",
)

ADAPTER_WITHOUT_PEFT = Rule(
    "CFG014", "adapter-without-peft", ERROR,
    "The checkpoint holds a PEFT adapter, but the recipe builds the full model (use_peft is not true).",
    "A PEFT run saves only adapter_config.json and adapter_model.safetensors. Without use_peft the Trainer "
    "looks for full weights to load into the plain model and fails once the model is built (transformers "
    "5.24: \"Can't find a checkpoint index ... in checkpoint-N\"). `fix --auto` sets use_peft and the "
    "lora_* values to the adapter's (adapter_config.json), so that the recipe builds what the checkpoint holds.",
)
PEFT_WITHOUT_ADAPTER = Rule(
    "CFG015", "peft-without-adapter", ERROR,
    "The recipe sets use_peft, but the checkpoint holds full model weights, not an adapter.",
    "The Trainer loads the full weights into the PEFT-wrapped model: no key matches (every one is missing "
    "or unexpected), so the trained weights are dropped, and optimizer.pt, which holds every parameter of "
    "the full model, does not fit the adapter's few (seen with transformers 5.24: \"loaded state dict "
    "contains a parameter group that doesn't match the size of optimizer's group\"). Without optimizer.pt "
    "the run silently trains a fresh adapter on the base model. Remove use_peft to resume the full-weight "
    "run; to put an adapter on the trained weights, start a new run with model_name_or_path: checkpoint-N.",
)
LORA_MISMATCH = Rule(
    "CFG016", "lora-mismatch", ERROR,
    "The recipe's LoRA settings build another adapter than the one the checkpoint holds (adapter_config.json).",
    "On resume PEFT keeps the adapter the recipe built and loads the checkpoint's weights into it (peft 0.21, "
    "transformers 5.24, seen on real resumes): another lora_r fails with a size mismatch; other "
    "lora_target_modules or lora_modules_to_save fail (the optimizer's parameter groups or the saved keys do "
    "not match) or, without optimizer.pt, train fresh adapters where the checkpoint has none; another "
    "lora_alpha or use_rslora trains on without a word with another scaling (alpha / r) of every update the "
    "adapter learned. `fix --auto` writes the adapter's values into the recipe.",
)
LORA_NOT_JUDGED = Rule(
    "CFG017", "lora-not-judged", INFO,
    "The recipe's LoRA target modules could not be compared with the adapter's.",
    "A recipe without lora_target_modules lets PEFT pick its default targets for the model type; when that "
    "table cannot be read (PEFT missing) or has no entry, or the targets are a pattern such as all-linear, "
    "the comparison is not made. The other LoRA values are still compared.",
)

RULES = (DATA_SKIP, NOTHING_TO_TRAIN, MODEL_MISMATCH, HARMLESS, OTHER_CHANGE, NO_RESUME, RESUME_TARGET_WRONG,
         OUTPUT_DIR_DIFFERS, SCHEDULE_CHANGED, TRAINING_EXTENDED, RUN_FINISHED, OPTIMIZER_KEPT, RESUME_TARGET_OLDER,
         ADAPTER_WITHOUT_PEFT, PEFT_WITHOUT_ADAPTER, LORA_MISMATCH, LORA_NOT_JUDGED)

ARCHITECTURE_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "vocab_size")


def optimizer_state_restored(checkpoint: Path) -> bool:
    """Whether a resume loads optimizer and scheduler state (the Trainer loads both or neither)."""
    if not (checkpoint / "scheduler.pt").is_file():
        return False
    try:
        return any(p.name.startswith("optimizer") or (p.is_dir() and p.name.startswith("global_step"))
                   for p in checkpoint.iterdir())
    except OSError:
        return False


@dataclass
class Resume:
    """Everything a judgement needs about the resume of one checkpoint with one recipe."""

    checkpoint: Path
    saved: dict
    state: dict
    recipe: Any
    changes: dict[str, Change]  # key -> (saved value, recipe value, source)
    recipe_path: str
    world_saved: int
    world_new: int
    global_step: int | None  # None when trainer_state.json cannot be read (CKPT013)

    @property
    def grpo(self) -> bool:
        return "num_generations" in self.saved

    def describe(self, keys) -> str:
        """`key: checkpoint-4 was trained with 4, the recipe says 8 (file)` for each key, `; `-joined."""
        parts = []
        for key in keys:
            before, after, source = self.changes[key]
            parts.append(f"{key}: {self.checkpoint.name} was trained with {before!r}, the recipe says {after!r} ({source})")
        return "; ".join(parts)


def run(ctx: RunContext) -> Iterator[Finding]:
    if ctx.options.recipe is None:
        return
    try:
        recipe = ctx.recipe()
    except RecipeError:
        return  # LEN001 reports it
    recipe_path = str(ctx.options.recipe)
    yield from check_resume_setting(ctx, recipe, recipe_path)
    checkpoint = ctx.resume_point()
    if checkpoint is None:
        return
    yield from check_model(ctx, recipe, checkpoint, recipe_path)
    yield from check_adapter(ctx, recipe, checkpoint, recipe_path)
    try:
        saved = ctx.training_args(checkpoint / "training_args.bin")
    except (UnsafePickleError, PickleReadError, OSError):
        return  # CKPT010 / CKPT028 report it
    state = ctx.trainer_state(checkpoint) or {}  # a broken one is CKPT013
    world_new = launch_world_size(ctx.environ)
    world_saved = saved_world_size(ctx, checkpoint)
    resume = Resume(checkpoint, saved, state, recipe, changes(saved, recipe), recipe_path, world_saved,
                    world_saved if world_new is None else world_new, ctx.global_step(checkpoint))
    yield from data_findings(resume)
    yield from order_findings(resume)
    yield from schedule_findings(ctx, resume)
    yield from optimizer_findings(resume)
    yield from value_findings(resume)


# ---- the data skip ------------------------------------------------------------------------------


def saved_plan(resume: Resume) -> DataPlan | None:
    return data_plan.saved_plan(resume.saved.get, resume.world_saved, resume.grpo)


def recipe_plan(resume: Resume) -> DataPlan | None:
    return data_plan.recipe_plan(resume.recipe.get, resume.world_new, resume.grpo)


def data_findings(resume: Resume) -> Iterator[Finding]:
    keys = [k for k in DATA_KEYS if k in resume.changes]
    world_changed = resume.world_new != resume.world_saved
    if not keys and not world_changed:
        return
    what = "; ".join(filter(None, [resume.describe(keys), world_changed and (
        f"world size: {resume.checkpoint.name} was trained on {resume.world_saved} process(es), "
        f"WORLD_SIZE is {resume.world_new}")]))
    hint = (f"relaunch on {resume.world_saved} process(es)" if world_changed else None)
    old, new, step = saved_plan(resume), recipe_plan(resume), resume.global_step
    if old is None or new is None or step is None:
        yield _finding(resume, OTHER_CHANGE, keys, what, "could not work out where the data skip lands "
                       "(a batch value or global_step is missing or not a positive integer)", hint)
        return
    finding = _data_finding(resume, keys, what, hint, old, new, step)
    finding.extra["positions"] = (old.skipped(step), new.skipped(step))
    yield finding


def _data_finding(resume: Resume, keys, what: str, hint: str | None, old: DataPlan, new: DataPlan,
                  step: int) -> Finding:
    """Error when the skip moves, warning when only what a step trains changes, info when neither does."""
    before, after = old.skipped(step), new.skipped(step)
    unit = "prompts" if resume.grpo else "samples"
    fix_hint = "; ".join(filter(None, ["fix --unsafe writes the checkpoint's values back" if keys else None, hint]))
    if before != after:
        low, high = sorted((before, after))
        fate = "are never trained" if after > before else "are trained twice"
        return _finding(resume, DATA_SKIP, keys, what, f"the resume skips {after} {unit} of the seeded order, the "
                        f"checkpoint's values skip {before}: the {high - low} {unit} at positions {low}-{high - 1} "
                        f"{fate} ({new.shape()} instead of {old.shape()})", fix_hint)
    if old.shape() != new.shape():
        return _finding(resume, OTHER_CHANGE, keys, what, f"the skip still lands on position {after}, but from step "
                        f"{step + 1} on: {new.shape()} instead of {old.shape()}", fix_hint)
    return _finding(resume, HARMLESS, keys, what, f"the same {new.shape()}, split differently over devices and "
                    f"accumulation steps; the skip still lands on position {after}", None, restore=False)


def _finding(resume: Resume, rule: Rule, keys, what: str, consequence: str, hint: str | None,
             *, restore: bool = True) -> Finding:
    """A finding whose subject may include the world size, which has no recipe key to restore."""
    finding = rule.finding(f"{what}: {consequence}", path=resume.recipe_path, hint=hint)
    if restore and keys:
        finding.extra["restore"] = {key: resume.changes[key][0] for key in keys}
    finding.extra["keys"] = list(keys)
    return finding


def order_seed(values, grpo: bool):
    """The seed of the data order: RepeatSampler takes seed; transformers' random sampler data_seed, else seed."""
    if grpo:
        return values("seed")
    data_seed = values("data_seed")
    return data_seed if data_seed is not None else values("seed")


def order_findings(resume: Resume) -> Iterator[Finding]:
    keys = [k for k in ORDER_KEYS if k in resume.changes]
    if not keys:
        return
    before, after = order_seed(resume.saved.get, resume.grpo), order_seed(resume.recipe.get, resume.grpo)
    what = resume.describe(keys)
    if before != after:
        plan, step = saved_plan(resume), resume.global_step
        passed = f" {plan.skipped(step)} positions" if plan is not None and step is not None else ""
        yield _finding(resume, DATA_SKIP, keys, what, f"the data order is shuffled with seed {after!r} instead of "
                       f"{before!r}: the resume skips{passed} of another permutation, so prompts the run already "
                       f"trained come again and others are never reached", "fix --unsafe writes the checkpoint's values back")
        return
    why = ("TRL's RepeatSampler shuffles with seed alone" if resume.grpo
           else f"data_seed={after!r} shuffles the data")
    yield _finding(resume, HARMLESS, keys, what, f"the data order does not change ({why}); the random state comes "
                   f"from {resume.checkpoint.name}'s rng_state", None, restore=False)


# ---- the learning-rate schedule -----------------------------------------------------------------

HORIZON_KEYS = ("max_steps", "num_train_epochs")
MAX_COMPARED_STEPS = 600  # a longer run is compared on a sample of its steps


def old_horizon(resume: Resume) -> int | None:
    """The run's horizon in steps: trainer_state's max_steps (the Trainer's own count), else the argument."""
    for value in (resume.state.get("max_steps"), resume.saved.get("max_steps")):
        if positive_ints(value):
            return value
    return None


def steps_per_epoch(resume: Resume) -> int | None:
    """Optimizer steps per epoch, from an epoch-based run's horizon or from the state's fractional epoch."""
    epochs, horizon = resume.saved.get("num_train_epochs"), resume.state.get("max_steps")
    saved_max_steps = resume.saved.get("max_steps")
    if (isinstance(saved_max_steps, int) and saved_max_steps <= 0 and positive_ints(horizon)
            and isinstance(epochs, (int, float)) and float(epochs).is_integer() and epochs > 0 and horizon % int(epochs) == 0):
        return horizon // int(epochs)
    epoch, step = resume.state.get("epoch"), resume.global_step
    if isinstance(epoch, (int, float)) and epoch > 0 and step:
        return math.ceil(round(step / epoch, 6))
    return None


def new_horizon(resume: Resume, old: int) -> tuple[int | None, str]:
    """The recipe's horizon in steps and how it comes about, or (None, why it cannot be known)."""
    if not any(key in resume.changes for key in HORIZON_KEYS):
        return old, f"max_steps {old}"
    max_steps = resume.recipe.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        return max_steps, f"max_steps={max_steps}"
    epochs = resume.recipe.get("num_train_epochs")
    old_plan, new_plan = saved_plan(resume), recipe_plan(resume)
    if old_plan is None or new_plan is None or old_plan.shape() != new_plan.shape():
        return None, "the steps per epoch change with the batch"
    per_epoch = steps_per_epoch(resume)
    if per_epoch is None or not isinstance(epochs, (int, float)) or epochs <= 0:
        return None, "the steps per epoch are not known from the checkpoint"
    return math.ceil(epochs * per_epoch), f"num_train_epochs={epochs:g} x {per_epoch} steps per epoch"


def schedule_findings(ctx: RunContext, resume: Resume) -> Iterator[Finding]:
    step, keys = resume.global_step, [k for k in SCHEDULE_KEYS if k in resume.changes]
    old = old_horizon(resume)
    if step is None or old is None:
        if keys:
            yield _finding(resume, SCHEDULE_CHANGED, keys, resume.describe(keys), "could not judge: global_step or "
                           "max_steps is missing from trainer_state.json", None, restore=False)
        return
    new, how = new_horizon(resume, old)
    if new is None:
        yield _finding(resume, SCHEDULE_CHANGED, keys, resume.describe(keys),
                       f"could not work out the new horizon in steps ({how})", None, restore=False)
    elif new <= step:
        yield horizon_reached(resume, keys, step, old, new, how)
    elif keys and set(keys) <= set(HORIZON_KEYS) and new == old:
        yield _finding(resume, HARMLESS, keys, resume.describe(keys), f"the horizon stays {new} steps ({how} decides "
                       "it): no step trains differently", None, restore=False)
    elif keys:
        yield judge_schedule(ctx, resume, keys, step, old, new)


def horizon_reached(resume: Resume, keys, step: int, old: int, new: int, how: str) -> Finding:
    """The resume has no horizon left: a warning for a finished run kept as it is, an error for a changed horizon."""
    name = resume.checkpoint.name
    if new == old:
        finding = RUN_FINISHED.finding(f"{name} is at step {step} of the run's {old}: resuming it with {how} still "
                                       f"trains step {step + 1} and saves checkpoint-{step + 1} past the horizon",
                                       path=resume.recipe_path, hint=f"raise max_steps above {step} to train on, or do "
                                       "not relaunch the finished run")
        return finding
    horizon_keys = [k for k in keys if k in HORIZON_KEYS]
    restorable = old > step
    hint = (f"fix --unsafe sets the checkpoint's horizon back ({old} steps), or raise max_steps above {step}" if restorable
            else f"the run has finished its {old} steps: raise max_steps above {step} to train on")
    return _finding(resume, NOTHING_TO_TRAIN, horizon_keys, resume.describe(horizon_keys),
                    f"{how} is not beyond global_step {step}: the resume loads {name} and trains no more than a stray "
                    "step past the horizon",
                    hint, restore=restorable)


def schedule_of(values, horizon: int, learning_rate: float):
    """transformers' schedule from TrainingArguments-named values (the base rate is the checkpoint's)."""
    import json

    from resumedoctor.integrations.trl.lr_schedule import Schedule

    kwargs = values("lr_scheduler_kwargs")
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs) if kwargs.strip() else {}
    return Schedule(str(values("lr_scheduler_type")), float(learning_rate), horizon,
                    float(values("warmup_steps") or 0), float(values("warmup_ratio") or 0), dict(kwargs or {}))


def compared_steps(step: int, old: int, new: int) -> list[int]:
    """Scheduler step counts to compare: the resume's own, then every one (or a sample) up to both horizons."""
    last = max(old, new)
    span = range(step + 1, last + 1)
    if len(span) > MAX_COMPARED_STEPS:
        stride = len(span) / MAX_COMPARED_STEPS
        span = [step + 1 + int(i * stride) for i in range(MAX_COMPARED_STEPS)]
    return sorted({step, *span, max(old - 1, 0), old, new - 1})


def _rate(value: float) -> str:
    return f"{value:.4g}"


@dataclass(frozen=True)
class ScheduleRates:
    """The learning rate at each compared scheduler step under the checkpoint's schedule and the recipe's."""

    step: int  # the checkpoint's global_step
    old: int  # the checkpoint's horizon
    new: int  # the recipe's horizon
    old_rates: dict[int, float]
    new_rates: dict[int, float]

    def planned(self, count: int) -> float:
        """The checkpoint's schedule, held at its end rate past its horizon."""
        return self.old_rates[min(count, self.old)]

    def first_difference(self) -> int | None:
        """The first resumed step count whose rate differs from the checkpoint's plan, or None."""
        return next((n for n in sorted(self.new_rates) if self.step < n < self.new
                     and not math.isclose(self.new_rates[n], self.planned(n), rel_tol=1e-9, abs_tol=1e-15)), None)


def judge_schedule(ctx: RunContext, resume: Resume, keys, step: int, old: int, new: int) -> Finding:
    """Warning or info by the learning rates the resume really uses, under the checkpoint's schedule and the recipe's."""
    what, name = resume.describe(keys), resume.checkpoint.name
    length = (f"the resume trains {_count(new - step, 'step')} (to {new}) instead of {max(old - step, 0)}; "
              if new != old else "")
    if not optimizer_state_restored(resume.checkpoint):
        return _finding(resume, SCHEDULE_CHANGED, keys, what, f"{length}the rates are not judged: {name} has no "
                        "optimizer.pt / scheduler.pt, so the resume starts a fresh schedule", None, restore=False)
    rates = schedule_rates(ctx, resume, step, old, new)
    if isinstance(rates, str):
        return _finding(resume, SCHEDULE_CHANGED, keys, what, f"{length}the learning rates could not be computed "
                        f"({rates})", None, restore=False)
    return rates_finding(resume, keys, rates, length)


def schedule_rates(ctx: RunContext, resume: Resume, step: int, old: int, new: int) -> ScheduleRates | str:
    """The rates under both schedules (computed once per run), or why they could not be computed."""
    from resumedoctor.integrations.trl.lr_schedule import ScheduleError, learning_rates

    base = resume.saved.get("learning_rate")  # scheduler.pt restores base_lrs: the recipe's learning_rate is not used
    steps = compared_steps(step, old, new)
    try:
        schedules = [schedule_of(resume.saved.get, old, base), schedule_of(resume.recipe.get, new, base)]
        rates = ctx.memo(("lr-schedule", repr(schedules), tuple(steps)), lambda: learning_rates(schedules, steps),
                         "lr_schedule")
    except ScheduleError as exc:
        return exc.reason
    except (TypeError, ValueError) as exc:  # a learning_rate or lr_scheduler_kwargs that is not what it should be
        return f"{type(exc).__name__}: {exc}"
    return ScheduleRates(step, old, new, dict(zip(steps, rates[0])), dict(zip(steps, rates[1])))


def rates_finding(resume: Resume, keys, rates: ScheduleRates, length: str) -> Finding:
    """CFG010 / CFG004 when no resumed step changes its rate (longer, or the same length), else CFG009 with the rates."""
    what, name = resume.describe(keys), resume.checkpoint.name
    step, old, new, new_rates = rates.step, rates.old, rates.new, rates.new_rates
    kept, differs = rates.planned(step), rates.first_difference()
    if differs is None and new > old:
        return _finding(resume, TRAINING_EXTENDED, keys, what, f"{length}every step runs at the rate the checkpoint's "
                        f"schedule gives it: {_rate(kept)} at step {step + 1}, {_rate(new_rates[new - 1])} at step {new}",
                        None, restore=False)
    if differs is None and new == old:
        return _finding(resume, HARMLESS, keys, what, f"the same learning rate at each of the {new - step} resumed "
                        f"steps ({_rate(kept)} at step {step + 1})", None, restore=False)
    parts = [f"{length}step {step + 1} keeps {_rate(kept)} (restored from {name}'s optimizer.pt)"]
    if differs is not None:
        ended = f" (the checkpoint's {old}-step schedule ended at step {old})" if differs >= old else ""
        parts.append(f"step {differs + 1} runs at {_rate(new_rates[differs])} instead of {_rate(rates.planned(differs))}{ended}")
    else:
        parts.append(f"no step changes its rate; the run ends {_count(old - new, 'step')} earlier")
    if new > step + 1:
        parts.append(f"the last step, {new}, runs at {_rate(new_rates[new - 1])} (the checkpoint's schedule ended at "
                     f"{_rate(rates.old_rates[old - 1])} at step {old})")
    finding = _finding(resume, SCHEDULE_CHANGED, keys, what, "; ".join(parts),
                       "nothing to fix if intended; the checkpoint's values are in the message", restore=False)
    finding.extra.update(lr_kept=kept, lr_step=None if differs is None else differs + 1,
                         lr_old=None if differs is None else rates.planned(differs),
                         lr_new=None if differs is None else new_rates[differs])
    return finding


# ---- the optimizer and every other value --------------------------------------------------------


def optimizer_findings(resume: Resume) -> Iterator[Finding]:
    keys = [k for k in OPTIMIZER_KEYS if k in resume.changes]
    if not keys:
        return
    what, name = resume.describe(keys), resume.checkpoint.name
    if optimizer_state_restored(resume.checkpoint):
        kept = ", ".join(f"{key}={resume.changes[key][0]!r}" for key in keys)
        scheduler = " and scheduler.pt the base learning rate" if "learning_rate" in keys else ""
        yield _finding(resume, OPTIMIZER_KEPT, keys, what, f"the resume keeps {kept}: {name}'s optimizer.pt restores "
                       f"the optimizer's parameter groups{scheduler}, so the recipe's value has no effect",
                       "fix --auto writes the checkpoint's values into the recipe (training does not change); to "
                       "train with new values, start a new run from the checkpoint's weights")
        return
    step = resume.global_step
    yield _finding(resume, OTHER_CHANGE, keys, what, f"{name} has no optimizer state, so the resume builds a fresh "
                   f"optimizer with the recipe's values{f' from step {step + 1}' if step is not None else ''}", None)


def value_findings(resume: Resume) -> Iterator[Finding]:
    """One finding per remaining key: harmless (logging, saving) or a training value that takes effect."""
    step = resume.global_step
    from_step = f"from step {step + 1} on" if step is not None else "from the first resumed step"
    for key in sorted(resume.changes):
        if key in COSMETIC_KEYS:
            yield _finding(resume, HARMLESS, [key], resume.describe([key]), "changes what is logged or saved, not "
                           "what is trained", None, restore=False)
        elif key == "dataloader_drop_last" and resume.grpo:
            yield _finding(resume, HARMLESS, [key], resume.describe([key]), "TRL's RepeatSampler yields whole "
                           "generation batches only: there is no partial batch to drop", None, restore=False)
        elif key == "optim":
            before, after, _ = resume.changes[key]
            yield _finding(resume, OTHER_CHANGE, [key], resume.describe([key]), f"{resume.checkpoint.name}'s "
                           f"optimizer.pt holds {before}'s state and is loaded into {after} {from_step}; whether "
                           "that loads and what it computes is not judged here", "fix --unsafe writes the checkpoint's value back")
        elif key in TRAINING_KEYS:
            yield _finding(resume, OTHER_CHANGE, [key], resume.describe([key]), f"the resumed run trains with this "
                           f"{TRAINING_KEYS[key]} {from_step}", "fix --unsafe writes the checkpoint's value back")


def check_resume_setting(ctx: RunContext, recipe, recipe_path: str) -> Iterator[Finding]:
    recipe_output = recipe.get("output_dir")
    target_dir = ctx.target.output_dir
    if isinstance(recipe_output, str) and recipe_output and Path(recipe_output).resolve() != target_dir.resolve():
        yield OUTPUT_DIR_DIFFERS.finding(f"the recipe's output_dir is {recipe_output}, the diagnosed folder is {target_dir}",
                                         path=recipe_path)
    resolved = recipe.resolve("resume_from_checkpoint")
    value = resolved.value
    if not list_checkpoints(target_dir):
        if value is True:
            yield RESUME_TARGET_WRONG.finding(
                f"resume_from_checkpoint is true ({resolved.source}), but {target_dir} holds no checkpoint: the Trainer "
                "raises 'No valid checkpoint found in output directory' once the model is loaded", path=recipe_path,
                hint="remove resume_from_checkpoint for a fresh start, or point it at the checkpoint to resume")
        return
    usable = ctx.newest_usable_checkpoint()
    # The safe fix sets the newest checkpoint only: moving the resume to an older one (the newest is broken)
    # changes what is trained, and stays `fix --unsafe`'s decision (it quarantines the broken one first).
    newest_is_usable = usable is not None and usable == ctx.target.checkpoint
    fix_extra = dict(newest=str(usable.resolve()) if newest_is_usable else None)
    if value is None or value is False:
        finding = NO_RESUME.finding(
            f"{target_dir} holds {', '.join(p.name for p in list_checkpoints(target_dir))}, but the recipe does not "
            f"resume: training restarts at step 0 and overwrites them", path=recipe_path,
            hint=f"resume_from_checkpoint: {usable.resolve()}" if usable else None)
        finding.extra.update(fix_extra)
        yield finding
        return
    if value is True:
        return  # Trainer.train resumes from the newest checkpoint: the CKPT family judges that one
    named = Path(str(value)).expanduser()
    if not named.is_absolute():
        named = Path.cwd() / named
    if not named.is_dir():
        hint = " (the string 'true' is a path here; use the YAML boolean true or a path)" if str(value).lower() == "true" else ""
        finding = RESUME_TARGET_WRONG.finding(f"resume_from_checkpoint={value!r} ({resolved.source}) does not exist{hint}",
                                              path=recipe_path)
        finding.extra.update(fix_extra)
        yield finding
    elif usable is not None and named.resolve() != usable.resolve() and (checkpoint_step(named) or 0) < (checkpoint_step(usable) or 0):
        steps = (checkpoint_step(usable) or 0) - (checkpoint_step(named) or 0)
        yield RESUME_TARGET_OLDER.finding(
            f"resume_from_checkpoint names {named.name}, but {usable.name} is newer and usable: the {steps} steps "
            f"after {named.name} are trained again (and its later checkpoints are overwritten as the run saves)",
            path=recipe_path, hint=f"intended for a rollback? Otherwise resume_from_checkpoint: {usable.resolve()}")


def check_model(ctx: RunContext, recipe, checkpoint: Path, recipe_path: str) -> Iterator[Finding]:
    model = recipe.get("model_name_or_path")
    if not isinstance(model, str) or not (Path(model).expanduser() / "config.json").is_file():
        return  # a hub name: nothing local to compare without downloading
    if Path(model).expanduser().resolve() == checkpoint.resolve():
        return
    try:
        theirs = ctx.read_json(Path(model).expanduser() / "config.json")
        ours = ctx.read_json(checkpoint / "config.json")
    except JsonFileError:
        return
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return
    different = architecture_differences(ours, theirs)
    if different:
        details = ", ".join(f"{key} {ours.get(key)!r} vs {theirs.get(key)!r}" for key in different[:4])
        yield MODEL_MISMATCH.finding(f"{checkpoint.name}'s config.json and {model}'s differ: {details}", path=recipe_path)


def architecture_differences(ours: dict, theirs: dict) -> list[str]:
    """The architecture keys of the checkpoint's config.json whose value the model's config.json does not share.

    DeepDiff compares the values (nested ones too, int against float ignored); the keys come from its
    report's root keys."""
    from deepdiff import DeepDiff

    keys = [key for key in ARCHITECTURE_KEYS if key in ours]
    difference = DeepDiff({key: ours[key] for key in keys}, {key: theirs.get(key) for key in keys},
                          ignore_numeric_type_changes=True)
    changed = set(difference.affected_root_keys)
    return [key for key in keys if key in changed]


# ---- the model the recipe builds: full weights or a PEFT adapter --------------------------------

FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# recipe key (TRL's ModelConfig) -> (adapter_config.json key, what a difference does on resume)
LORA_VALUES = {
    "lora_r": ("r", "fails: every lora_A / lora_B weight has another shape (size mismatch)"),
    "lora_alpha": ("lora_alpha", "silently trains with another scaling of the adapter's update"),
    "use_rslora": ("use_rslora", "silently trains with another scaling of the adapter's update"),
    "use_dora": ("use_dora", "fails or drops DoRA's magnitude vectors: the adapter has another structure"),
    "lora_modules_to_save": ("modules_to_save", "fails or trains other full modules: the saved keys do not match"),
}


def model_kind(ctx: RunContext, checkpoint: Path) -> str | None:
    """"adapter" (a PEFT save), "full" (model weights), or None (both, neither, FSDP / DeepSpeed folders)."""
    names = ctx.listing(checkpoint)
    adapter = "adapter_config.json" in names and any(name in names for name in ADAPTER_WEIGHTS)
    full = any(name in names for name in FULL_WEIGHTS)
    return "adapter" if adapter and not full else "full" if full and not adapter else None


def adapter_config(ctx: RunContext, checkpoint: Path) -> dict | None:
    try:
        config = ctx.read_json(checkpoint / "adapter_config.json")
    except JsonFileError:
        return None  # unreadable: not judged here
    return config if isinstance(config, dict) else None


def check_adapter(ctx: RunContext, recipe, checkpoint: Path, recipe_path: str) -> Iterator[Finding]:
    """Full weights vs adapter, then the LoRA values, as the real resume loads them."""
    kind = model_kind(ctx, checkpoint)
    use_peft = recipe.resolve("use_peft")
    name = checkpoint.name
    if kind == "full" and use_peft.value is True:
        consequence = ("the resume fails loading optimizer.pt, which holds every parameter of the full model"
                       if optimizer_state_restored(checkpoint) else "the trained weights match no key of the "
                       "PEFT model and are dropped: a fresh adapter trains on the base model")
        yield PEFT_WITHOUT_ADAPTER.finding(f"use_peft is true ({use_peft.source}), but {name} holds full model "
                                           f"weights and no adapter: {consequence}", path=recipe_path,
                                           hint=f"remove use_peft to resume this run; to train an adapter on "
                                           f"these weights, start a new run with model_name_or_path: {checkpoint}")
        return
    config = adapter_config(ctx, checkpoint) if kind == "adapter" else None
    if config is None:
        return
    if use_peft.value is not True:
        finding = ADAPTER_WITHOUT_PEFT.finding(
            f"{name} holds a {config.get('peft_type', 'PEFT')} adapter ({describe_adapter(config)}) and no full "
            f"weights, but use_peft is {use_peft.value!r} ({use_peft.source}): the Trainer finds no weights for "
            "the full model and fails once the model is built (\"Can't find a checkpoint index\")",
            path=recipe_path, hint="fix --auto sets use_peft: true and the lora_* values to the adapter's")
        finding.extra["restore"] = {"use_peft": True, **adapter_values(config)}
        yield finding
        return
    yield from lora_findings(ctx, recipe, config, checkpoint, recipe_path)


def describe_adapter(config: dict) -> str:
    shown = {key: printable_value(config.get(key)) for key in ("r", "lora_alpha")}
    return (f"r={shown['r']}, lora_alpha={shown['lora_alpha']}, "
            f"target_modules={_modules(config.get('target_modules'))}")


def printable_value(value) -> str:
    """A short repr: huge numbers and long lists of an untrusted file are cut, never printed whole."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _LARGEST_VALUE:
        return "a number too large to be a LoRA value"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _modules(value) -> str:
    return ", ".join(sorted(map(str, value))) if isinstance(value, list) else printable_value(value)


_LARGEST_VALUE = 1_000_000  # beyond any real LoRA rank or alpha; larger numbers are not compared


def _is_number(value) -> bool:
    """A finite int/float of a plausible size (not a bool): a value the comparison can judge."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and abs(value) <= _LARGEST_VALUE if isinstance(value, float) \
        else abs(value) <= _LARGEST_VALUE


def _is_names(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def judgeable(saved: str, value) -> bool:
    """Whether an adapter_config.json (or recipe) value has the type PEFT writes for that key."""
    if saved in ("r", "lora_alpha", "lora_dropout"):
        return _is_number(value)
    if saved in ("use_rslora", "use_dora"):
        return isinstance(value, bool)
    if saved == "modules_to_save":
        return value is None or _is_names(value)
    if saved == "target_modules":
        return isinstance(value, str) or _is_names(value)
    return True


def adapter_values(config: dict) -> dict:
    """The recipe values that build the adapter adapter_config.json describes (those TRL can express)."""
    values = {key: config[saved] for key, (saved, _) in LORA_VALUES.items()
              if saved in config and judgeable(saved, config[saved])}
    targets = config.get("target_modules")
    if _is_names(targets) and len(targets) > 1:  # TRL turns a one-item list into a regex: not written
        values["lora_target_modules"] = sorted(targets)
    if judgeable("lora_dropout", config.get("lora_dropout")):
        values["lora_dropout"] = config["lora_dropout"]
    return values


def _same_modules(ours, theirs) -> bool:
    normal = [set(v) if isinstance(v, list) else set() if v is None else v for v in (ours, theirs)]
    return normal[0] == normal[1]


def _unjudged_values(recipe, config: dict) -> list[str]:
    """The LoRA keys whose adapter or recipe value has a type PEFT never writes: not compared."""
    unjudged = []
    for key, (saved, _) in LORA_VALUES.items():
        ours = recipe.resolve(key).value
        if saved in config and (not judgeable(saved, config[saved]) or ours is not None and not judgeable(saved, ours)):
            unjudged.append(key)
    return unjudged


def lora_findings(ctx: RunContext, recipe, config: dict, checkpoint: Path, recipe_path: str) -> Iterator[Finding]:
    """CFG016 for the values that change which adapter is built, CFG005 for dropout, CFG017 when not judged."""
    name, peft_type = checkpoint.name, config.get("peft_type")
    if peft_type not in (None, "LORA"):
        yield LORA_MISMATCH.finding(f"{name} holds a {peft_type} adapter; use_peft builds a LoRA adapter, which "
                                    "cannot take its weights", path=recipe_path,
                                    hint="resume with the training code that built this adapter")
        return
    differences, restore = [], {}
    unjudged = _unjudged_values(recipe, config)
    if unjudged:
        yield LORA_NOT_JUDGED.finding(f"{name}'s {', '.join(unjudged)} not compared: adapter_config.json or the "
                                      "recipe holds a value of a type or size PEFT never writes", path=recipe_path)
    for key, (saved, effect) in LORA_VALUES.items():
        ours, theirs = recipe.resolve(key), config.get(saved)
        if key in unjudged:
            continue
        if saved in config and not (_same_modules(ours.value, theirs) if key == "lora_modules_to_save"
                                    else _same_value(ours.value, theirs)):
            differences.append(f"{key}: {name}'s adapter has {theirs!r}, the recipe builds {ours.value!r} "
                               f"({ours.source}): the resume {effect}")
            restore[key] = theirs
    targets, not_judged = target_difference(ctx, recipe, config, checkpoint)
    if targets:
        differences.append(targets)
        if "lora_target_modules" in adapter_values(config):
            restore["lora_target_modules"] = adapter_values(config)["lora_target_modules"]
    if differences:
        finding = LORA_MISMATCH.finding("; ".join(differences), path=recipe_path,
                                        hint="fix --auto writes the adapter's values (adapter_config.json) into the recipe")
        finding.extra["restore"] = restore
        yield finding
    if not_judged:
        yield LORA_NOT_JUDGED.finding(f"{name}'s target modules were not compared: {not_judged}", path=recipe_path)
    yield from dropout_finding(recipe, config, name, recipe_path)


def _same_value(ours, theirs) -> bool:
    if isinstance(ours, bool) != isinstance(theirs, bool):
        return False
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        return math.isclose(ours, theirs)
    return ours == theirs


def target_difference(ctx: RunContext, recipe, config: dict, checkpoint: Path) -> tuple[str | None, str | None]:
    """(what differs in the target modules and what the resume does, why they were not compared)."""
    theirs, resolved = config.get("target_modules"), recipe.resolve("lora_target_modules")
    ours, how = resolved.value, resolved.source
    if ours is None:
        from resumedoctor.integrations.trl.peft_defaults import (
            PeftUnavailable,
            default_target_modules,
        )

        model_type = _model_type(ctx, recipe, checkpoint)
        if model_type is None:
            return None, "the recipe leaves lora_target_modules to PEFT's default, and the model type is not known here"
        try:
            ours = default_target_modules(model_type)
        except PeftUnavailable as exc:
            return None, f"PEFT's default target modules could not be read ({exc.reason})"
        if ours is None:
            return None, f"PEFT has no default target modules for model_type {model_type!r}"
        how = f"PEFT's default for {model_type}"
    if not _is_names(ours) or not _is_names(theirs):
        return None, (None if ours == theirs else f"{printable_value(ours)} and {printable_value(theirs)} are not "
                      "both lists of module names")
    if set(map(str, ours)) == set(map(str, theirs)):
        return None, None
    effect = ("fails loading optimizer.pt, whose parameter groups hold the adapter's parameters"
              if optimizer_state_restored(checkpoint) else "loads the adapter only where both target a module: "
              "the others are dropped or start fresh, without a word")
    return (f"lora_target_modules: {checkpoint.name}'s adapter targets {_modules(theirs)}, the recipe builds "
            f"{_modules(ours)} ({how}): the resume {effect}"), None


def _model_type(ctx: RunContext, recipe, checkpoint: Path) -> str | None:
    """The model type the recipe builds: from its local model_name_or_path, else from the checkpoint."""
    model = recipe.get("model_name_or_path")
    folders = [Path(model).expanduser()] if isinstance(model, str) and model else []
    for folder in [*folders, checkpoint]:
        try:
            config = ctx.read_json(folder / "config.json")
        except (JsonFileError, OSError):
            continue
        if isinstance(config, dict) and isinstance(config.get("model_type"), str):
            return config["model_type"]
    return None


def dropout_finding(recipe, config: dict, name: str, recipe_path: str) -> Iterator[Finding]:
    """Dropout builds the same adapter: a training change (CFG005), never an error."""
    ours, theirs = recipe.resolve("lora_dropout"), config.get("lora_dropout")
    if not _is_number(theirs) or not _is_number(ours.value) or _same_value(ours.value, theirs):
        return
    finding = OTHER_CHANGE.finding(f"lora_dropout: {name}'s adapter was trained with {theirs!r}, the recipe says "
                                   f"{ours.value!r} ({ours.source}): the resumed run trains the adapter with this "
                                   "dropout from the first resumed step", path=recipe_path,
                                   hint="fix --unsafe writes the adapter's value back")
    finding.extra.update(restore={"lora_dropout": theirs}, keys=["lora_dropout"])
    yield finding


FAMILY = CheckFamily(
    name="config-drift",
    prefix="CFG",
    title="Config drift: the recipe resumes this checkpoint with the arguments it was trained with",
    rules=RULES,
    run=run,
    requires=("trl",),
    not_applicable=lambda ctx: ctx.recipe_not_judged(),
)

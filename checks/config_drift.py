"""CFG: does the recipe resume the run the checkpoint belongs to, with the arguments it was trained with?

The checkpoint's saved arguments (training_args.bin, through the restricted unpickler) and
trainer_state.json are compared with the recipe as TrlParser resolves it, with DeepDiff, and every
difference is classified by what it breaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from resumedoctor.checks.checkpoint_integrity import newest_usable_checkpoint

from resumedoctor.context import JsonFileError, RunContext
from resumedoctor.findings import Finding, Rule, Severity
from resumedoctor.recipe import RecipeError
from resumedoctor.registry import CheckFamily
from resumedoctor.safe_pickle import PickleReadError, UnsafePickleError
from resumedoctor.target import checkpoint_step, list_checkpoints

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

DATA_SKIP = Rule(
    "CFG001", "data-skip-broken", ERROR,
    "A value that decides which samples each step sees differs from the checkpoint's.",
    "On resume the Trainer skips global_step x (batch size x accumulation x world size) samples of the "
    "seeded data order. Changing per_device_train_batch_size, gradient_accumulation_steps, "
    "num_generations, generation_batch_size / steps_per_generation, the world size or the seed makes "
    "that skip land on the wrong samples: some are trained twice, others never.",
)
SCHEDULE = Rule(
    "CFG002", "schedule-broken", ERROR,
    "The learning-rate schedule differs from the checkpoint's, or max_steps is below its global_step.",
    "scheduler.pt restores the scheduler's step counter, not its type or length: a different "
    "lr_scheduler_type, warmup or max_steps continues on a curve the run was never on, and a max_steps "
    "at or below global_step ends training at once.",
)
MODEL_MISMATCH = Rule(
    "CFG003", "model-mismatch", ERROR,
    "The recipe's model is not the checkpoint's architecture.",
    "model_name_or_path builds the model the checkpoint's weights are loaded into; a different "
    "architecture or size fails to load or, with strict=False, trains a half-random model.",
)
COSMETIC = Rule(
    "CFG004", "cosmetic-change", INFO,
    "A logging or saving setting differs from the checkpoint's (harmless).",
    "logging_steps, save_steps, report_to and the like change what is recorded, not what is trained.",
)
OTHER_CHANGE = Rule(
    "CFG005", "training-change", WARNING,
    "A training hyperparameter differs from the checkpoint's.",
    "The resumed run computes something else than the paused one (learning rate, beta, temperature, "
    "...). Fine when intended; the report says which values moved.",
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
OUTPUT_DIR_DIFFERS = Rule(
    "CFG008", "output-dir-differs", WARNING,
    "The recipe's output_dir is not the folder being diagnosed.",
    "The checks looked at one folder and training would resume (and save) in another.",
)

RULES = (DATA_SKIP, SCHEDULE, MODEL_MISMATCH, COSMETIC, OTHER_CHANGE, NO_RESUME, RESUME_TARGET_WRONG,
         OUTPUT_DIR_DIFFERS)

DATA_SKIP_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                  "generation_batch_size", "steps_per_generation", "seed", "data_seed", "dataloader_drop_last")
SCHEDULE_KEYS = ("lr_scheduler_type", "warmup_steps", "warmup_ratio", "max_steps", "num_train_epochs")
COSMETIC_KEYS = ("logging_steps", "logging_strategy", "logging_first_step", "save_steps", "save_strategy",
                 "save_total_limit", "report_to", "run_name", "eval_steps", "push_to_hub", "disable_tqdm",
                 "logging_dir", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "hub_model_id")
TRAINING_KEYS = ("learning_rate", "beta", "temperature", "top_p", "top_k", "epsilon", "epsilon_high",
                 "loss_type", "scale_rewards", "max_completion_length", "weight_decay", "max_grad_norm",
                 "optim", "adam_beta1", "adam_beta2", "reward_weights", "num_iterations", "bf16", "fp16")
ARCHITECTURE_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "vocab_size")
# GRPOConfig derives these when the recipe leaves them unset; the saved value is the derived one.
DERIVED_WHEN_UNSET = ("generation_batch_size", "steps_per_generation")


def normalize(key: str, value):
    if key == "report_to":
        if value in (None, "none"):
            return []
        return sorted([value] if isinstance(value, str) else list(value))
    if isinstance(value, float) and value.is_integer() and key not in ("learning_rate",):
        return int(value)
    return value


def drift(ctx: RunContext, saved: dict, recipe) -> dict[str, tuple]:
    """key -> (saved value, resolved value, source) for every compared key that differs (DeepDiff)."""
    from deepdiff import DeepDiff

    keys = [k for k in (*DATA_SKIP_KEYS, *SCHEDULE_KEYS, *COSMETIC_KEYS, *TRAINING_KEYS) if k in saved]
    resolved = {key: recipe.resolve(key) for key in keys}
    keys = [k for k in keys if not (k in DERIVED_WHEN_UNSET and resolved[k].source == "default")]
    # A default of None (bf16, fp16, ...) is decided by GRPOConfig at start-up: not a drift by itself.
    keys = [k for k in keys if not (resolved[k].source == "default" and resolved[k].value is None)]
    keys = [k for k in keys if k != "output_dir" and k != "resume_from_checkpoint"]
    before = {key: normalize(key, saved[key]) for key in keys}
    after = {key: normalize(key, resolved[key].value) for key in keys}
    difference = DeepDiff(before, after, ignore_order=True, ignore_numeric_type_changes=True)
    changed = set()
    for section in ("values_changed", "type_changes", "iterable_item_added", "iterable_item_removed"):
        for path in difference.get(section, {}):
            changed.add(path.split("'")[1])
    return {key: (saved[key], resolved[key].value, resolved[key].source) for key in keys if key in changed}


def checkpoint_world_size(checkpoint: Path) -> int:
    """The seal's world size when sealed, else one rng_state_<rank>.pth per process."""
    from resumedoctor.seal import SEAL_FILE, read_seal

    if (checkpoint / SEAL_FILE).is_file():
        try:
            sealed = read_seal(checkpoint).get("world_size")
            if isinstance(sealed, int):
                return sealed
        except ValueError:
            pass
    ranks = list(checkpoint.glob("rng_state_*.pth"))
    return len(ranks) if ranks else 1


def run(ctx: RunContext) -> Iterator[Finding]:
    if ctx.options.recipe is None:
        return
    try:
        recipe = ctx.recipe()
    except RecipeError:
        return  # LEN001 reports it
    recipe_path = str(ctx.options.recipe)
    yield from check_resume_setting(ctx, recipe, recipe_path)
    checkpoint = ctx.target.checkpoint
    if checkpoint is None:
        return
    yield from check_model(ctx, recipe, checkpoint, recipe_path)
    try:
        saved = ctx.training_args(checkpoint / "training_args.bin")
    except (UnsafePickleError, PickleReadError, OSError):
        return  # CKPT010 / CKPT028 report it
    try:
        state = ctx.read_json(checkpoint / "trainer_state.json")
    except JsonFileError:
        state = {}
    for key, (before, after, source) in sorted(drift(ctx, saved, recipe).items()):
        rule = (DATA_SKIP if key in DATA_SKIP_KEYS else SCHEDULE if key in SCHEDULE_KEYS
                else COSMETIC if key in COSMETIC_KEYS else OTHER_CHANGE)
        finding = rule.finding(f"{key}: {checkpoint.name} was trained with {before!r}, the recipe says {after!r} ({source})",
                               path=recipe_path, hint=None if rule is COSMETIC else "fix --unsafe writes the checkpoint's value into the recipe")
        finding.extra.update(key=key, saved=before)
        yield finding
    global_step = state.get("global_step") if isinstance(state, dict) else None
    max_steps = recipe.get("max_steps")
    if isinstance(global_step, int) and isinstance(max_steps, int) and 0 < max_steps <= global_step:
        yield SCHEDULE.finding(f"max_steps={max_steps} is not beyond global_step {global_step}: training ends at once",
                               path=recipe_path)
    world = ctx.environ.get("WORLD_SIZE")
    saved_world = checkpoint_world_size(checkpoint)
    if world and world.isdigit() and int(world) != saved_world:
        yield DATA_SKIP.finding(f"world size: {checkpoint.name} was trained on {saved_world} process(es), "
                                f"WORLD_SIZE is {world}", path=recipe_path)


def check_resume_setting(ctx: RunContext, recipe, recipe_path: str) -> Iterator[Finding]:
    recipe_output = recipe.get("output_dir")
    target_dir = ctx.target.output_dir
    if isinstance(recipe_output, str) and recipe_output and Path(recipe_output).resolve() != target_dir.resolve():
        yield OUTPUT_DIR_DIFFERS.finding(f"the recipe's output_dir is {recipe_output}, the diagnosed folder is {target_dir}",
                                         path=recipe_path)
    if not list_checkpoints(target_dir):
        return
    usable = newest_usable_checkpoint(ctx)
    resolved = recipe.resolve("resume_from_checkpoint")
    value = resolved.value
    fix_extra = dict(newest=str(usable.resolve()) if usable else None)
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
        finding = RESUME_TARGET_WRONG.finding(
            f"resume_from_checkpoint names {named.name}, but the newest usable checkpoint is {usable.name}",
            path=recipe_path)
        finding.extra.update(fix_extra)
        yield finding


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
    different = [key for key in ARCHITECTURE_KEYS if key in ours and theirs.get(key) != ours.get(key)]
    if different:
        details = ", ".join(f"{key} {ours.get(key)!r} vs {theirs.get(key)!r}" for key in different[:4])
        yield MODEL_MISMATCH.finding(f"{checkpoint.name}'s config.json and {model}'s differ: {details}", path=recipe_path)


FAMILY = CheckFamily(
    name="config-drift",
    prefix="CFG",
    title="Config drift: the recipe resumes this checkpoint with the arguments it was trained with",
    rules=RULES,
    run=run,
    requires=("trl",),
    not_applicable=lambda ctx: None if ctx.options.recipe else "no recipe (--config RECIPE)",
)

"""`resumedoctor launch`: every check, then GRPO training through TRL, as `trl grpo --config RECIPE` would.

Order: (1) `--fix` applies fixes; (2) the checkpoint to resume is resolved: the one transformers would
pick, and it must be usable; (3) every check family runs (among them: every reward function and
callback the recipe names can be found). Any error stops here with exit 1, and torch has not been
imported yet: the checks that need TRL or transformers run in helper processes. (4) The W&B decision
is exported (continue the run, or fork it at the right `_step`). (5) The trainer is built like TRL's
own `trl grpo` script builds it, with our callbacks added, and trains.

Steps 1-4 write nothing with `--dry-run`. An output_dir that does not exist yet is not created before
training (the Trainer creates it), except by an applied `--fix`, whose journal lives in it.

The recipe is TRL's own YAML. An optional `resumedoctor:` section, which the launcher removes before
TrlParser reads the recipe, configures what TRL has no key for:

    resumedoctor:
      curriculum: {thresholds: [0.2, 0.5], metric: reward, window: 3, mode: max}
      callbacks: [my_package.callbacks.MyCallback]   # TrainerCallback classes, built without arguments
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.engine.context import Options, launch_world_size
from resumedoctor.engine.runner import Report, new_context, run_checks
from resumedoctor.engine.settings import Settings, user_settings
from resumedoctor.engine.target import Target, TargetError, resolve_target
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.trl.recipe import (
    dump_yaml,
    load_recipe,
    reports_to_wandb,
)

LAUNCHER_SECTION = "resumedoctor"


class LaunchError(ReasonError):
    """The launch cannot start (a usage problem, not a finding)."""


@dataclass
class LaunchPlan:
    recipe: Path
    recipe_args: tuple[str, ...]
    output_dir: Path
    checkpoint: Path | None
    env_lines: list = field(default_factory=list)
    wandb: str = "not reporting to W&B"
    curriculum: dict | None = None
    callbacks: list[str] = field(default_factory=list)
    changed_arguments: dict[str, tuple] = field(default_factory=dict)  # key -> (recipe value, launch value)
    fixes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"recipe:      {self.recipe}", f"output_dir:  {self.output_dir}",
                 f"resume from: {self.checkpoint or 'nothing: training starts at step 0'}"]
        lines.append("fixes:       " + ("; ".join(self.fixes) if self.fixes else "none"))
        lines.append(f"W&B:         {self.wandb}")
        lines += [f"             {line.render()}" for line in self.env_lines]
        extras = ["SealCallback"] + ([f"CurriculumCallback({self.curriculum})"] if self.curriculum else []) + self.callbacks
        lines.append("callbacks:   " + (", ".join(extras) if extras else "none added"))
        if self.changed_arguments:
            lines.append("arguments that differ from the recipe:")
            lines += [f"  {key}: {before!r} -> {after!r}" for key, (before, after) in sorted(self.changed_arguments.items())]
        else:
            lines.append("arguments that differ from the recipe: none")
        return "\n".join(lines) + "\n"


def _launcher_section(recipe) -> dict:
    section = recipe.values.get(LAUNCHER_SECTION) or {}
    if not isinstance(section, dict):
        raise LaunchError(f"the recipe's `{LAUNCHER_SECTION}:` section must be a mapping")
    unknown = set(section) - {"curriculum", "callbacks"}
    if unknown:
        raise LaunchError(f"unknown key(s) in `{LAUNCHER_SECTION}:`: {', '.join(sorted(map(str, unknown)))}")
    callbacks = section.get("callbacks") or []
    if not isinstance(callbacks, list) or not all(isinstance(entry, str) for entry in callbacks):
        raise LaunchError(f"`{LAUNCHER_SECTION}: callbacks:` must be a list of import paths (package.module.Class)")
    return section


def _output_target(output_dir: Path) -> Target:
    """The output_dir as the checks see it; one that does not exist yet holds no checkpoint."""
    if not output_dir.exists():
        return Target(path=output_dir, output_dir=output_dir, checkpoint=None, checkpoints=(), is_output_dir=True)
    try:
        return resolve_target(output_dir)
    except TargetError as exc:
        raise LaunchError(f"output_dir: {exc}") from None


def _create(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot create output_dir {output_dir}: {exc.strerror or exc}") from None


def prepare(recipe_path: Path, recipe_args: tuple[str, ...] = (), *, fix: bool = False, unsafe: bool = False,
            dry_run: bool = False, wandb_dir: Path | None = None, environ: Mapping[str, str] | None = None,
            settings_for: Callable[[Path], Settings] | None = None, deep: bool = False) -> tuple[LaunchPlan, Report]:
    """Steps 1-4: fixes, the checkpoint to resume, every check, the W&B decision. Imports no torch.

    `settings_for(output_dir)` gives the settings (the CLI adds --select/--ignore); default: the nearest file.
    """
    environ = dict(os.environ if environ is None else environ)
    recipe = _read_recipe(recipe_path, recipe_args, environ)
    section = _launcher_section(recipe)
    output_dir = _recipe_output_dir(recipe)
    _output_target(output_dir)  # a file, or an unreadable folder: one line, exit 2
    settings = settings_for(output_dir) if settings_for else user_settings(output_dir)
    options = Options(recipe=recipe_path, recipe_args=recipe_args, wandb_dir=wandb_dir, deep=deep, launching=True)
    plan = LaunchPlan(recipe_path, recipe_args, output_dir, None, curriculum=section.get("curriculum"),
                      callbacks=list(section.get("callbacks") or []))
    if fix:
        recipe = _fix_first(plan, recipe, settings, options, environ, unsafe=unsafe, dry_run=dry_run)
    for key in recipe.overrides:
        plan.changed_arguments[key] = (recipe.values.get(key), recipe.resolve(key).value)
    target = _output_target(output_dir)
    registry = _registry()
    _choose_checkpoint(plan, recipe, target)
    options = Options(recipe=recipe_path, recipe_args=plan.recipe_args, wandb_dir=wandb_dir, deep=deep, launching=True)
    if reports_to_wandb(recipe.resolve("report_to").value):
        _decide_wandb(plan, environ, wandb_dir)
    # The checks judge the start as it will happen: with the W&B decision already exported (one plan).
    launched = dict(environ)
    for line in plan.env_lines:
        line.apply(launched)
    report = run_checks(new_context(target, settings, options, launched, registry), registry)
    return plan, report


def _read_recipe(recipe_path: Path, recipe_args: tuple[str, ...], environ: dict[str, str]):
    try:
        return load_recipe(recipe_path, list(recipe_args), environ)
    except ReasonError as exc:
        raise LaunchError(exc.reason) from None


def _recipe_output_dir(recipe) -> Path:
    output = recipe.get("output_dir")
    if not output:
        raise LaunchError("the recipe has no output_dir")
    return Path(str(output)).expanduser()


def _fix_first(plan: LaunchPlan, recipe, settings: Settings, options: Options, environ: dict[str, str], *,
               unsafe: bool, dry_run: bool):
    """Step 1 (`--fix`): apply (or plan) the fixes; returns the recipe as it reads after them."""
    from resumedoctor.fixing.planner import FixError
    from resumedoctor.fixing.planner import fix as run_fix

    if (launch_world_size(environ) or 1) > 1:
        raise LaunchError("--fix under a multi-process launch: run `resumedoctor fix` once before `accelerate launch`")
    output_dir = plan.output_dir
    if not dry_run:
        _create(output_dir)  # the fix journal lives in the output_dir
    if not output_dir.exists():  # --dry-run before the first start: plan on the output_dir as it will be, empty
        plan.fixes = _planned_on_fresh(_output_target(output_dir), settings, options, environ, unsafe)
        return recipe
    try:
        result = run_fix(output_dir, unsafe=unsafe, dry_run=dry_run, settings=settings, options=options,
                         environ=environ)
    except FixError as exc:  # a lock held by another writer, a journal not to be trusted
        raise LaunchError(f"--fix: {exc}") from None
    plan.fixes = result.descriptions or [f"(planned) {line}" for line in _planned(result)]
    plan.fixes += [result.live_save] if result.live_save else []
    if result.transactions:  # a fix may have edited the recipe: launch what it says now
        return _read_recipe(plan.recipe, plan.recipe_args, environ)
    return recipe


def _choose_checkpoint(plan: LaunchPlan, recipe, target: Target) -> None:
    """Step 2: the checkpoint to resume, named explicitly on the TRL command line.

    What resume_from_checkpoint=True picks: a broken newest checkpoint is refused by the checks (CKPT018),
    never silently replaced by an older one (that is `--fix --unsafe`'s decision to make).
    """
    checkpoint = target.checkpoint
    recipe_args = plan.recipe_args
    explicit = recipe.resolve("resume_from_checkpoint").value
    if checkpoint is not None and (explicit is None or explicit is False or explicit is True):
        recipe_args = (*recipe_args, "--resume_from_checkpoint", str(checkpoint.resolve()))
        plan.changed_arguments["resume_from_checkpoint"] = (explicit, str(checkpoint.resolve()))
    elif isinstance(explicit, str):
        checkpoint = Path(explicit)
    plan.recipe_args, plan.checkpoint = recipe_args, checkpoint


def _decide_wandb(plan: LaunchPlan, environ: dict[str, str], wandb_dir: Path | None) -> None:
    """Step 4: the W&B run the start logs to, as the structured lines `resumedoctor env` prints."""
    from resumedoctor.integrations.wandb.shell_env import shell_environment

    if plan.output_dir.exists():
        environment = shell_environment(plan.output_dir, wandb_dir=wandb_dir, environ=environ, recipe=plan.recipe)
        plan.env_lines, comments = environment.lines, environment.comments
    else:
        plan.env_lines, comments = _fresh_wandb_environment(environ)
    plan.wandb = "; ".join(comment.removeprefix("W&B: ") for comment in comments) or "a new run"


def _registry():
    from resumedoctor.engine.registry import load_registry

    return load_registry()


def _fresh_wandb_environment(environ: dict[str, str]) -> tuple[list, list[str]]:
    """`resumedoctor env` for an output_dir that does not exist yet: a new run, stale variables dropped."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        return [], ["wandb is not installed: no W&B run to match"]
    from resumedoctor.integrations.wandb.shell_env import env_lines

    return env_lines(None, environ), []


def _planned(result) -> list[str]:
    from resumedoctor.fixing.planner import describe_operation

    return [describe_operation(op, result.output_dir) for op in result.operations]


def _planned_on_fresh(target: Target, settings, options: Options, environ: dict[str, str], unsafe: bool) -> list[str]:
    """What `fix --dry-run` would plan for an output_dir not created yet (only the recipe can need a fix)."""
    from resumedoctor.fixing.planner import describe_operation, plan_fixes

    registry = _registry()
    ctx = new_context(target, settings, options, environ, registry)
    planned = plan_fixes(ctx, run_checks(ctx, registry), registry, unsafe=unsafe)
    return [f"(planned) {describe_operation(op, target.output_dir)}" for op in planned.operations]


def apply_environment(plan: LaunchPlan) -> None:
    """Export the W&B decision into this process, as `eval "$(resumedoctor env OUT)"` would."""
    for line in plan.env_lines:
        line.apply(os.environ)


@dataclass
class TrainingSummary:
    first_step: int
    last_step: int
    seconds: float
    tokens: float | None
    wandb_run: str | None

    def line(self, plan: LaunchPlan) -> str:
        steps = max(0, self.last_step - self.first_step)
        rate = f"{self.seconds / steps:.2f} s/step" if steps else "no step trained"
        tokens = f", {self.tokens / self.seconds:.0f} tokens/s" if self.tokens and self.seconds else ""
        start = plan.checkpoint.name if plan.checkpoint else "step 0"
        wandb = f"; W&B run {self.wandb_run}" if self.wandb_run else ""
        return (f"resumedoctor launch: {start} -> step {self.last_step} in {self.seconds:.1f} s "
                f"({rate}{tokens}){wandb}")


def _import_object(dotted: str):
    module_name, _, name = dotted.rpartition(".")
    if not module_name:
        raise LaunchError(f"{dotted!r} is not a dotted import path")
    sys.path.insert(0, os.getcwd())  # as TRL does for reward functions
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise LaunchError(f"cannot import {dotted}: {exc}") from None


def _trl_recipe_copy(plan: LaunchPlan, folder: Path) -> Path:
    """The recipe without the launcher's own section: TrlParser refuses keys it does not know."""
    recipe = load_recipe(plan.recipe, [], {})
    data = recipe.data
    if LAUNCHER_SECTION in data:
        del data[LAUNCHER_SECTION]
    copy = folder / plan.recipe.name
    copy.write_bytes(dump_yaml(data))
    return copy


def run_training(plan: LaunchPlan, *, progress: bool | None = None) -> TrainingSummary:
    """Step 5: build GRPOTrainer as `trl grpo` does (trl/scripts/grpo.py), add our callbacks, train."""
    script_args, training_args, model_args, dataset_args = _trl_arguments(plan)
    reward_funcs = _reward_functions(script_args)
    model_init_kwargs = dict(revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code,
                             attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs
    dataset = _dataset(script_args, dataset_args)
    trainer = _grpo_trainer(plan, script_args, training_args, model_args, reward_funcs, dataset)
    if progress if progress is not None else sys.stdout.isatty():
        _use_rich_progress(trainer)
    first_step = _checkpoint_step(plan.checkpoint)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    seconds = time.perf_counter() - started
    trainer.save_model(training_args.output_dir)
    summary = _summary(trainer, first_step, seconds)
    if hasattr(trainer, "end"):
        trainer.end()
    return summary


def _trl_arguments(plan: LaunchPlan) -> tuple:
    """The four argument objects `trl grpo` parses from the recipe (without our section) and the overrides."""
    from trl.scripts.grpo import make_parser

    with tempfile.TemporaryDirectory(prefix="resumedoctor-launch-") as folder:
        recipe_copy = _trl_recipe_copy(plan, Path(folder))
        return make_parser().parse_args_and_config(["--config", str(recipe_copy), *plan.recipe_args])


def _reward_functions(script_args) -> list:
    """The reward model and functions, named as `trl grpo` names them."""
    from trl.rewards import (
        accuracy_reward,
        get_soft_overlong_punishment,
        reasoning_accuracy_reward,
        think_format_reward,
    )

    known = {  # the names the gate accepts: resumedoctor.integrations.trl.import_paths.TRL_REWARD_NAMES
        "accuracy_reward": accuracy_reward,
        "reasoning_accuracy_reward": reasoning_accuracy_reward,
        "think_format_reward": think_format_reward,
        "get_soft_overlong_punishment": get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256),
    }
    reward_funcs = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    for name in script_args.reward_funcs or []:
        reward_funcs.append(known[name] if name in known else _import_object(name))
    return reward_funcs


def _dataset(script_args, dataset_args):
    """The training data as `trl grpo` loads it, except that a local file is read locally."""
    from datasets import load_dataset
    from trl import get_dataset

    from resumedoctor.integrations.trl.prompt_lengths import (
        load_local_dataset,
        looks_local,
    )

    if dataset_args.datasets:
        return get_dataset(dataset_args)
    if script_args.dataset_name and looks_local(script_args.dataset_name):
        # datasets' load_dataset sends a bare file name (prompts.jsonl) to the hub; trl grpo fails there.
        from datasets import DatasetDict

        location = Path(script_args.dataset_name).expanduser()
        return DatasetDict({split: load_local_dataset(location, split) for split in {script_args.dataset_train_split}})
    if script_args.dataset_name:
        return load_dataset(script_args.dataset_name, name=script_args.dataset_config,
                            streaming=script_args.dataset_streaming)
    raise LaunchError("the recipe names no dataset (dataset_name or datasets)")


def _callbacks(plan: LaunchPlan) -> list:
    """SealCallback (every save of a launched run is sealed), the curriculum, the recipe's own callbacks."""
    from resumedoctor.integrations.seal.callback import SealCallback

    callbacks = [SealCallback()]
    if plan.curriculum:
        from resumedoctor.integrations.curriculum.callback import CurriculumCallback

        callbacks.append(CurriculumCallback(**plan.curriculum))
    return callbacks + [_import_object(path)() for path in plan.callbacks]


def _grpo_trainer(plan: LaunchPlan, script_args, training_args, model_args, reward_funcs: list, dataset):
    from trl import GRPOTrainer, get_peft_config, get_quantization_config

    callbacks = _callbacks(plan)
    return GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )


def _summary(trainer, first_step: int, seconds: float) -> TrainingSummary:
    history = trainer.state.log_history
    tokens = [entry.get("num_tokens") for entry in history if entry.get("num_tokens") is not None]
    trained_tokens = (tokens[-1] - (_tokens_at(history, first_step) or 0)) if tokens else None
    wandb_run = None
    try:
        import wandb

        wandb_run = wandb.run.id if wandb.run is not None else None
    except ImportError:
        pass
    return TrainingSummary(first_step, trainer.state.global_step, seconds, trained_tokens, wandb_run)


def _use_rich_progress(trainer) -> None:
    from transformers.trainer_callback import ProgressCallback
    from trl.trainer.callbacks import RichProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RichProgressCallback())


def _checkpoint_step(checkpoint: Path | None) -> int:
    from resumedoctor.engine.target import checkpoint_step

    return (checkpoint_step(checkpoint) or 0) if checkpoint else 0


def _tokens_at(history: list[dict], step: int) -> float | None:
    values = [e["num_tokens"] for e in history if e.get("step") == step and e.get("num_tokens") is not None]
    return values[-1] if values else None


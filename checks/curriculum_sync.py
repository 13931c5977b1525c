"""CURR: is the curriculum's state that of the checkpoint being resumed?

Runs when the run has a curriculum: a live `<output_dir>/curriculum_state.json`, a snapshot in a
checkpoint, or curriculum state in `trainer_state.json`'s `stateful_callbacks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.integrations.curriculum.state import (
    STATE_FILE,
    read_state,
    validate_state,
)
from resumedoctor.integrations.trl.recipe import RecipeError

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
CALLBACK_NAME = "CurriculumCallback"

LIVE_MISSING = Rule(
    "CURR001", "live-state-missing", WARNING,
    "The live curriculum_state.json is missing while the checkpoint holds curriculum state.",
    "Whatever reads the live file (a data sampler, a reward server, a dashboard) starts from stage 0 "
    "while the weights are at a later stage.",
)
LIVE_INVALID = Rule(
    "CURR002", "live-state-invalid", ERROR,
    "The live curriculum_state.json cannot be parsed or breaks the state contract.",
    "The live state must be {global_step, stage, history: [{step, stage, metric}]}; a cut-off or "
    "hand-edited file makes the curriculum restart or crash on resume.",
)
LIVE_AHEAD = Rule(
    "CURR003", "live-state-ahead", WARNING,
    "The live curriculum state is ahead of the checkpoint being resumed.",
    "The run was killed after the last save, so the live state recorded steps (and maybe promotions) "
    "that the resumed weights never saw: the normal state of a crashed run. CurriculumCallback "
    "rewrites the live file from the checkpoint's state when the run resumes, so how much this "
    "matters depends on how it resumes. Info when the recipe adds CurriculumCallback (`resumedoctor: "
    "curriculum:` or `callbacks:`, what `resumedoctor launch` runs) and the checkpoint holds a state "
    "it can take (its snapshot, or stateful_callbacks with restore_callback_states_from_checkpoint). "
    "Warning without a recipe: it cannot be known how the run resumes. Error when nothing restores "
    "it: the recipe adds no CurriculumCallback, the callback would find no state and start over at "
    "stage 0, or the live state is not an earlier state of this run. Anything that reads the live "
    "file before then (a data sampler, a reward server) runs a stage ahead of the model; `fix --auto` "
    "restores the checkpoint's state now.",
)
LIVE_BEHIND = Rule(
    "CURR004", "live-state-behind", ERROR,
    "The live curriculum state is behind the checkpoint being resumed.",
    "A live file that is not an earlier state of this run (restored from a backup, or written by "
    "another run) makes a curriculum that reads it repeat stages the model already passed. A live "
    "state that is an earlier state of the same run (logging_steps sparser than save_steps: the "
    "callback writes the live file when it logs, the snapshot when it saves) is judged like CURR003: "
    "CurriculumCallback rewrites it on resume.",
)
HISTORY_AFTER_CHECKPOINT = Rule(
    "CURR005", "history-after-checkpoint", WARNING,
    "The curriculum history has entries after the checkpoint's step.",
    "Those entries belong to steps that will be trained again; kept, they count twice in the "
    "promotion window and can promote a stage early. Like CURR003 (the same crash leaves both), "
    "info when the resume runs CurriculumCallback, which drops them, warning when how the run "
    "resumes is unknown, error when nothing drops them.",
)
STAGE_INCONSISTENT = Rule(
    "CURR006", "stage-inconsistent", ERROR,
    "The curriculum stage does not follow from its history.",
    "Stages in the history only go up, and the current stage is the last entry's stage or the next "
    "one (a promotion after the last log). Anything else is a damaged or hand-edited state.",
)
SNAPSHOT_DISAGREES = Rule(
    "CURR007", "snapshot-disagrees", ERROR,
    "The checkpoint's curriculum_state.json disagrees with trainer_state.json's stateful_callbacks.",
    "Both are written during the same save. The Trainer restores stateful_callbacks (with "
    "restore_callback_states_from_checkpoint), other tools read the snapshot: which stage the run "
    "continues in would depend on who asks.",
)
RESTORE_OFF = Rule(
    "CURR008", "restore-callback-states-off", WARNING,
    "The recipe leaves restore_callback_states_from_checkpoint false while the checkpoint holds callback state.",
    "transformers restores stateful callbacks only when restore_callback_states_from_checkpoint=True "
    "(default False): a curriculum, early stopping or any ExportableState callback silently restarts "
    "from its initial state. Not reported for CurriculumCallback when the checkpoint has its "
    "curriculum_state.json snapshot, which the callback restores itself. `fix --auto` sets it in the recipe.",
)
SNAPSHOT_MISSING = Rule(
    "CURR009", "snapshot-missing", WARNING,
    "The checkpoint has curriculum state in trainer_state.json but no curriculum_state.json snapshot.",
    "Tools that read the snapshot (and resumedoctor's callback when the Trainer does not restore it) "
    "cannot find the stage this checkpoint was trained in.",
)

RULES = (LIVE_MISSING, LIVE_INVALID, LIVE_AHEAD, LIVE_BEHIND, HISTORY_AFTER_CHECKPOINT, STAGE_INCONSISTENT,
         SNAPSHOT_DISAGREES, RESTORE_OFF, SNAPSHOT_MISSING)


def stage_problem(state: dict) -> str | None:
    history = state["history"]
    stages = [entry["stage"] for entry in history]
    if any(later < earlier for earlier, later in zip(stages, stages[1:])):
        return "history stages go down"
    if history and state["stage"] not in (stages[-1], stages[-1] + 1):
        return f"stage {state['stage']} does not follow from the last history entry (stage {stages[-1]})"
    if not history and state["stage"] != 0:
        return f"stage {state['stage']} with an empty history"
    return None


def trainer_callback_state(ctx: RunContext, checkpoint: Path) -> dict | None:
    """This curriculum's attributes in trainer_state.json's stateful_callbacks, if any."""
    trainer_state = ctx.trainer_state(checkpoint)
    if trainer_state is None:
        return None  # unreadable or ill-typed: CKPT013
    stored = (trainer_state.get("stateful_callbacks") or {}).get(CALLBACK_NAME)
    if isinstance(stored, list):
        stored = stored[0] if stored else None
    return stored if isinstance(stored, dict) else None


def checkpoint_state(ctx: RunContext, checkpoint: Path) -> tuple[dict | None, str]:
    """The state the checkpoint had: its snapshot, else its stateful_callbacks; and where it came from."""
    snapshot = checkpoint / STATE_FILE
    if snapshot.is_file():
        try:
            return ctx.load(read_state, snapshot), "snapshot"
        except ValueError:
            pass
    stored = trainer_callback_state(ctx, checkpoint)
    if stored and isinstance(stored.get("attributes"), dict):
        attributes = dict(stored["attributes"])
        try:
            validate_state(attributes)
            return attributes, "stateful_callbacks"
        except ValueError:
            return None, ""
    return None, ""


def _fixable(finding: Finding, **extra) -> Finding:
    finding.extra.update(extra)
    return finding


def _at(finding: Finding, severity: Severity) -> Finding:
    """The finding at another severity than its rule's default (the user's settings still override it)."""
    return dataclasses.replace(finding, severity=severity)


def recipe_adds_curriculum(ctx: RunContext) -> str | None:
    """Where the recipe adds CurriculumCallback (the launcher's `resumedoctor:` section), or None."""
    from resumedoctor.integrations.trl.launcher import LAUNCHER_SECTION

    section = ctx.recipe().data.get(LAUNCHER_SECTION)
    if not isinstance(section, dict):
        return None
    if section.get("curriculum"):
        return f"`{LAUNCHER_SECTION}: curriculum:` in the recipe"
    callbacks = section.get("callbacks")
    if isinstance(callbacks, list) and any(str(path).rsplit(".", 1)[-1] == CALLBACK_NAME for path in callbacks):
        return f"`{LAUNCHER_SECTION}: callbacks:` in the recipe"
    return None


def on_resume(ctx: RunContext, checkpoint: Path, saved: dict | None, source: str) -> tuple[Severity, str]:
    """What a resume does to a live state that is only out of step with the checkpoint, and how much it matters."""
    if saved is None:
        return ERROR, (f"{checkpoint.name} holds no curriculum state: a resume with {CALLBACK_NAME} starts over at "
                       f"stage 0")
    from_trainer = source == "stateful_callbacks"  # no snapshot: only the Trainer's restore brings it back
    if ctx.options.recipe is None:
        condition = " and restore_callback_states_from_checkpoint: true" if from_trainer else ""
        return WARNING, (f"restored from {checkpoint.name}'s {source} if the run resumes with {CALLBACK_NAME}"
                         f"{condition} (resumedoctor launch with `resumedoctor: curriculum:` in the recipe); "
                         f"no recipe given, so how it resumes is unknown")
    try:
        where = recipe_adds_curriculum(ctx)
        restores = recipe_restore_flag(ctx) if from_trainer and where else True
    except (RecipeError, ImportError):
        return WARNING, "the recipe cannot be read: whether the resume restores it is unknown"
    if where is None:
        return ERROR, (f"the recipe adds no {CALLBACK_NAME} (`resumedoctor: curriculum:` or `callbacks:`): nothing "
                       f"rewrites it when the run resumes")
    if not restores:
        return ERROR, (f"{checkpoint.name} has no {STATE_FILE} snapshot and restore_callback_states_from_checkpoint "
                       f"is false: {CALLBACK_NAME} starts over at stage 0")
    return INFO, f"{CALLBACK_NAME} ({where}) rewrites it from {checkpoint.name}'s {source} when the run resumes"


def recipe_restore_flag(ctx: RunContext) -> bool:
    return bool(ctx.recipe().resolve("restore_callback_states_from_checkpoint").value)


def earlier_state(earlier: dict, later: dict) -> bool:
    """Is `earlier` a state this run had before `later` (its history a prefix of the later one's)?"""
    history = earlier["history"]
    return later["history"][:len(history)] == history


def run(ctx: RunContext) -> Iterator[Finding]:
    checkpoint = ctx.resume_point()
    output_dir = ctx.target.output_dir
    live_path = output_dir / STATE_FILE
    if checkpoint is None:
        return
    stored = trainer_callback_state(ctx, checkpoint)
    has_curriculum = live_path.exists() or (checkpoint / STATE_FILE).exists() or stored is not None
    yield from check_restore_flag(ctx, checkpoint)
    if not has_curriculum:
        return
    step = ctx.global_step(checkpoint)
    if step is None:
        return  # the CKPT family reports the broken trainer_state.json
    saved, source = checkpoint_state(ctx, checkpoint)
    fix_args = dict(checkpoint=str(checkpoint), live=str(live_path), step=step, saved=saved)

    snapshot_path = checkpoint / STATE_FILE
    if stored is not None and not snapshot_path.exists():
        yield _fixable(SNAPSHOT_MISSING.finding(f"{checkpoint.name} has no {STATE_FILE}", path=str(snapshot_path)),
                       **fix_args)
    if snapshot_path.is_file() and stored is not None:
        yield from check_snapshot(ctx, snapshot_path, stored)

    if not live_path.exists():
        if saved is not None:
            yield _fixable(LIVE_MISSING.finding(f"no {STATE_FILE} in {output_dir}", path=str(live_path),
                                                hint="fix --auto restores it from the checkpoint"), **fix_args)
        return
    try:
        live = read_state(live_path)
    except ValueError as exc:
        yield _fixable(LIVE_INVALID.finding(f"{STATE_FILE}: {exc}", path=str(live_path)), **fix_args)
        return
    fix_args["live_state"] = live
    yield from (_fixable(finding, **fix_args) for finding in check_live(ctx, checkpoint, step, live, saved, source))


def check_snapshot(ctx: RunContext, snapshot_path: Path, stored: dict) -> Iterator[Finding]:
    try:
        snapshot = ctx.load(read_state, snapshot_path)
        attributes = stored.get("attributes") or {}
        keys = ("global_step", "stage", "history")
        if any(snapshot.get(key) != attributes.get(key) for key in keys):
            yield SNAPSHOT_DISAGREES.finding(
                f"{STATE_FILE} says stage {snapshot.get('stage')} at step {snapshot.get('global_step')}, "
                f"stateful_callbacks says stage {attributes.get('stage')} at step {attributes.get('global_step')}",
                path=str(snapshot_path))
    except ValueError as exc:
        yield SNAPSHOT_DISAGREES.finding(f"{STATE_FILE} is unreadable ({exc}) while stateful_callbacks holds state",
                                         path=str(snapshot_path))


def check_live(ctx: RunContext, checkpoint: Path, step: int, live: dict, saved: dict | None,
               source: str) -> Iterator[Finding]:
    """The live state against the checkpoint's: ahead (a crash after the save), behind, or inconsistent."""
    live_path = str(ctx.target.output_dir / STATE_FILE)
    where = f"{checkpoint.name} (from its {source})" if source else checkpoint.name
    hint = "fix --auto restores the checkpoint's state now"
    later = [entry for entry in live["history"] if entry["step"] > step]
    ahead, behind = live["global_step"] > step, live["global_step"] < step
    if ahead or behind or later:
        # Out of step only (an earlier or later state of this same run): the resume may repair it.
        same_run = saved is None or (earlier_state(saved, live) if ahead or later else earlier_state(live, saved))
        severity, why = on_resume(ctx, checkpoint, saved, source) if same_run else (
            ERROR, f"its history is not {'a continuation' if ahead else 'an earlier state'} of {checkpoint.name}'s: "
                   f"not this run's state")
        if ahead:
            yield _at(LIVE_AHEAD.finding(
                f"live state is at step {live['global_step']} (stage {live['stage']}), {where} at step {step}"
                + (f" (stage {saved['stage']})" if saved else "") + f"; {why}", path=live_path, hint=hint), severity)
        elif behind:
            yield _at(LIVE_BEHIND.finding(
                f"live state is at step {live['global_step']}, {where} at step {step}; {why}", path=live_path,
                hint=hint), severity)
        if later:
            yield _at(HISTORY_AFTER_CHECKPOINT.finding(
                f"{len(later)} history entries after step {step} (steps {later[0]['step']}-{later[-1]['step']}); {why}",
                path=live_path, hint=hint), severity)
    problem = stage_problem(live)
    if problem:
        yield STAGE_INCONSISTENT.finding(f"live state: {problem}", path=live_path)


def check_restore_flag(ctx: RunContext, checkpoint: Path) -> Iterator[Finding]:
    if ctx.options.recipe is None:
        return
    trainer_state = ctx.trainer_state(checkpoint)
    try:
        recipe = ctx.recipe()
        resolved = recipe.resolve("restore_callback_states_from_checkpoint")
    except (RecipeError, ImportError):
        return  # unreadable recipe: LEN001; no TRL to know the defaults: nothing to compare
    if trainer_state is None:
        return  # unreadable or ill-typed: CKPT013
    callbacks = trainer_state.get("stateful_callbacks")
    # TrainerControl is always there; any other entry is a callback whose state would be lost, except
    # CurriculumCallback with a snapshot: it takes its state from the snapshot when the Trainer does not.
    source = checkpoint_state(ctx, checkpoint)[1]
    others = sorted(name for name in (callbacks or {})
                    if name != "TrainerControl" and not (name == CALLBACK_NAME and source == "snapshot"))
    if others and not resolved.value:
        yield RESTORE_OFF.finding(
            f"{checkpoint.name} holds state of {', '.join(others)}, but restore_callback_states_from_checkpoint is "
            f"{resolved.value!r} ({resolved.source})", path=str(ctx.options.recipe),
            hint="fix --auto sets restore_callback_states_from_checkpoint: true in the recipe")


FAMILY = CheckFamily(
    name="curriculum-sync",
    prefix="CURR",
    title="Curriculum: the live state is the resumed checkpoint's",
    rules=RULES,
    run=run,
    not_applicable=lambda ctx: None if _has_curriculum(ctx) or ctx.options.recipe else "no curriculum state in this run",
)


def _has_curriculum(ctx: RunContext) -> bool:
    checkpoint = ctx.target.checkpoint
    if checkpoint is None:
        return False
    return ((ctx.target.output_dir / STATE_FILE).exists() or (checkpoint / STATE_FILE).exists()
            or trainer_callback_state(ctx, checkpoint) is not None)

"""CURR: is the curriculum's state that of the checkpoint being resumed?

Runs when the run has a curriculum: a live `<output_dir>/curriculum_state.json`, a snapshot in a
checkpoint, or curriculum state in `trainer_state.json`'s `stateful_callbacks`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from resumedoctor.context import JsonFileError, RunContext
from resumedoctor.curriculum_state import STATE_FILE, read_state, validate_state
from resumedoctor.findings import Finding, Rule, Severity
from resumedoctor.recipe import RecipeError
from resumedoctor.registry import CheckFamily

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
    "CURR003", "live-state-ahead", ERROR,
    "The live curriculum state is ahead of the checkpoint being resumed.",
    "The run was killed after the last save, so the live state recorded steps (and maybe promotions) "
    "that the resumed weights never saw. A curriculum that reads it runs a stage ahead of the model.",
)
LIVE_BEHIND = Rule(
    "CURR004", "live-state-behind", ERROR,
    "The live curriculum state is behind the checkpoint being resumed.",
    "The live file is older than the checkpoint (restored from a backup, or written by another run): "
    "a curriculum that reads it repeats stages the model already passed.",
)
HISTORY_AFTER_CHECKPOINT = Rule(
    "CURR005", "history-after-checkpoint", ERROR,
    "The curriculum history has entries after the checkpoint's step.",
    "Those entries belong to steps that will be trained again; kept, they count twice in the "
    "promotion window and can promote a stage early.",
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
    "from its initial state. `fix --auto` sets it in the recipe.",
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
    try:
        trainer_state = ctx.read_json(checkpoint / "trainer_state.json")
    except JsonFileError:
        return None
    stored = (trainer_state.get("stateful_callbacks") or {}).get(CALLBACK_NAME) if isinstance(trainer_state, dict) else None
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


def run(ctx: RunContext) -> Iterator[Finding]:
    checkpoint = ctx.target.checkpoint
    output_dir = ctx.target.output_dir
    live_path = output_dir / STATE_FILE
    if checkpoint is None:
        return
    stored = trainer_callback_state(ctx, checkpoint)
    has_curriculum = live_path.exists() or (checkpoint / STATE_FILE).exists() or stored is not None
    yield from check_restore_flag(ctx, checkpoint)
    if not has_curriculum:
        return
    try:
        step = int(ctx.read_json(checkpoint / "trainer_state.json")["global_step"])
    except (JsonFileError, KeyError, TypeError, ValueError):
        return  # the CKPT family reports it
    saved, source = checkpoint_state(ctx, checkpoint)
    fix_args = dict(checkpoint=str(checkpoint), live=str(live_path), step=step, saved=saved)

    snapshot_path = checkpoint / STATE_FILE
    if stored is not None and not snapshot_path.exists():
        yield _fixable(SNAPSHOT_MISSING.finding(f"{checkpoint.name} has no {STATE_FILE}", path=str(snapshot_path)),
                       **fix_args)
    if snapshot_path.is_file() and stored is not None:
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
    where = f"{checkpoint.name} (from its {source})" if source else checkpoint.name
    if live["global_step"] > step:
        yield _fixable(LIVE_AHEAD.finding(
            f"live state is at step {live['global_step']} (stage {live['stage']}), {where} at step {step}"
            + (f" (stage {saved['stage']})" if saved else ""), path=str(live_path),
            hint="fix --auto restores the checkpoint's state"), **fix_args)
    elif live["global_step"] < step:
        yield _fixable(LIVE_BEHIND.finding(
            f"live state is at step {live['global_step']}, {where} at step {step}", path=str(live_path),
            hint="fix --auto restores the checkpoint's state"), **fix_args)
    later = [entry for entry in live["history"] if entry["step"] > step]
    if later:
        yield _fixable(HISTORY_AFTER_CHECKPOINT.finding(
            f"{len(later)} history entries after step {step} (steps {later[0]['step']}-{later[-1]['step']})",
            path=str(live_path)), **fix_args)
    problem = stage_problem(live)
    if problem:
        yield _fixable(STAGE_INCONSISTENT.finding(f"live state: {problem}", path=str(live_path)), **fix_args)


def check_restore_flag(ctx: RunContext, checkpoint: Path) -> Iterator[Finding]:
    if ctx.options.recipe is None:
        return
    try:
        trainer_state = ctx.read_json(checkpoint / "trainer_state.json")
        recipe = ctx.recipe()
        resolved = recipe.resolve("restore_callback_states_from_checkpoint")
    except (JsonFileError, RecipeError, ImportError):
        return  # unreadable recipe: LEN001; no TRL to know the defaults: nothing to compare
    callbacks = trainer_state.get("stateful_callbacks") if isinstance(trainer_state, dict) else None
    # TrainerControl is always there; any other entry is a callback whose state would be lost.
    others = sorted(name for name in (callbacks or {}) if name != "TrainerControl")
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

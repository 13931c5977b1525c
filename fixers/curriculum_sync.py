"""Fixers of the CURR family: put back the curriculum state the resumed checkpoint had."""

from __future__ import annotations

import json
from pathlib import Path

from resumedoctor.checks.curriculum_sync import (
    HISTORY_AFTER_CHECKPOINT,
    LIVE_AHEAD,
    LIVE_BEHIND,
    LIVE_INVALID,
    LIVE_MISSING,
    RESTORE_OFF,
    SNAPSHOT_MISSING,
    STAGE_INCONSISTENT,
)

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation, WriteFile
from resumedoctor.engine.registry import Fixer
from resumedoctor.integrations.curriculum.state import STATE_FILE, promotion_due, replay
from resumedoctor.integrations.trl.recipe_edit import recipe_change

FAMILY = "curriculum-sync"
LIVE_RULES = (LIVE_MISSING, LIVE_INVALID, LIVE_AHEAD, LIVE_BEHIND, HISTORY_AFTER_CHECKPOINT, STAGE_INCONSISTENT)


def state_bytes(state: dict) -> bytes:
    return (json.dumps(state, indent=2) + "\n").encode("utf-8")


def plan_restore_live(ctx: RunContext, finding: Finding) -> list[Operation]:
    live, step, saved = finding.extra.get("live"), finding.extra.get("step"), finding.extra.get("saved")
    if live is None or step is None:
        return []
    if saved is not None:
        return [WriteFile(Path(live), state_bytes(saved), f"live state restored from {Path(finding.extra['checkpoint']).name}")]
    current = finding.extra.get("live_state")
    if current is None:
        return []  # nothing to cut: --create-fresh replays the rule over log_history (unsafe)
    kept = [entry for entry in current["history"] if entry["step"] <= step]
    dropped = [entry for entry in current["history"] if entry["step"] > step]
    stage, how = stage_at_cut(current, kept, dropped)
    rebuilt = {**current, "global_step": step, "history": kept, "stage": stage}
    return [WriteFile(Path(live), state_bytes(rebuilt), f"live history cut at step {step}; stage {stage} {how}")]


def stage_at_cut(current: dict, kept: list[dict], dropped: list[dict]) -> tuple[int, str]:
    """The stage in force right after the last kept entry.

    Stages change only when a metric is logged, so the first dropped entry was logged in exactly
    that stage. Without one, the promotion rule (when the state carries it) is replayed over the
    kept entries; else the last kept entry's stage is the best that is known.
    """
    if dropped:
        return dropped[0]["stage"], "(the stage the next entry was logged in)"
    rule = {key: current.get(key) for key in ("thresholds", "window", "mode")}
    if kept and rule["thresholds"] is not None and rule["window"] and rule["mode"] in ("max", "min"):
        stage = kept[-1]["stage"]
        if promotion_due(kept, stage, rule["thresholds"], rule["window"], rule["mode"]):
            stage += 1
        return stage, "(the promotion rule applied to the kept entries)"
    return (kept[-1]["stage"] if kept else 0), "(from the last kept entry)"


def plan_replay(ctx: RunContext, finding: Finding) -> list[Operation]:
    if not ctx.options.create_fresh:
        return []
    checkpoint, live, step = finding.extra.get("checkpoint"), finding.extra.get("live"), finding.extra.get("step")
    if checkpoint is None or live is None:
        return []
    trainer_state = ctx.trainer_state(Path(checkpoint))
    if trainer_state is None:
        return []
    stored = (trainer_state.get("stateful_callbacks") or {}).get("CurriculumCallback") or {}
    stored = (stored[0] if stored else {}) if isinstance(stored, list) else stored
    rule = stored.get("args") if isinstance(stored.get("args"), dict) else {}
    current = finding.extra.get("live_state") or {}
    rule = {key: rule.get(key, current.get(key)) for key in ("metric", "thresholds", "window", "mode")}
    if not rule["metric"] or rule["thresholds"] is None or not rule["window"] or rule["mode"] not in ("max", "min"):
        return []  # the promotion rule is unknown: nothing to replay
    state = replay(trainer_state.get("log_history") or [], up_to_step=step, **rule)
    return [WriteFile(Path(live), state_bytes({**state, **rule}),
                      f"replayed the promotion rule over log_history up to step {step}")]


def plan_write_snapshot(ctx: RunContext, finding: Finding) -> list[Operation]:
    checkpoint, saved = finding.extra.get("checkpoint"), finding.extra.get("saved")
    if checkpoint is None or saved is None:
        return []
    return [WriteFile(Path(checkpoint) / STATE_FILE, state_bytes(saved), "snapshot written from stateful_callbacks")]


def plan_enable_restore(ctx: RunContext, finding: Finding) -> list[Operation]:
    return recipe_change(ctx, "restore_callback_states_from_checkpoint", True,
                         "restore_callback_states_from_checkpoint: true")


FIXERS = (
    Fixer("restore-live-curriculum", FAMILY, LIVE_RULES, FixSafety.SAFE,
          "write the resumed checkpoint's curriculum state (its snapshot, else stateful_callbacks, else the live "
          "history cut at its step) to the live curriculum_state.json", plan_restore_live),
    Fixer("replay-curriculum", FAMILY, LIVE_RULES, FixSafety.UNSAFE,
          "with --create-fresh: rebuild the state by replaying the promotion rule over trainer_state.json's "
          "log_history", plan_replay),
    Fixer("write-curriculum-snapshot", FAMILY, (SNAPSHOT_MISSING,), FixSafety.SAFE,
          f"write checkpoint-N/{STATE_FILE} from trainer_state.json's stateful_callbacks", plan_write_snapshot),
    Fixer("enable-callback-restore", FAMILY, (RESTORE_OFF,), FixSafety.SAFE,
          "set restore_callback_states_from_checkpoint: true in the recipe (comments and order kept)",
          plan_enable_restore),
)

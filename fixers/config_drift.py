"""Fixers of the CFG family: edit the recipe (comments and order kept) to resume what was trained.

Each finding names the keys of its one fact and, in `extra["restore"]`, the checkpoint's values of
the keys it is honest to write back; a finding without them plans nothing (a world-size change, a
run that has finished its horizon, a schedule the recipe means to change).
"""

from __future__ import annotations

import copy

from resumedoctor.checks.config_drift import (
    ADAPTER_WITHOUT_PEFT,
    DATA_SKIP,
    LORA_MISMATCH,
    NO_RESUME,
    NOTHING_TO_TRAIN,
    OPTIMIZER_KEPT,
    OTHER_CHANGE,
    RESUME_TARGET_WRONG,
)

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation, WriteFile
from resumedoctor.engine.registry import Fixer
from resumedoctor.integrations.trl.recipe import RecipeError, dump_yaml
from resumedoctor.integrations.trl.recipe_edit import recipe_change, set_key

FAMILY = "config-drift"


def plan_set_resume_path(ctx: RunContext, finding: Finding) -> list[Operation]:
    newest = finding.extra.get("newest")
    if not newest:
        return []
    return recipe_change(ctx, "resume_from_checkpoint", newest, f"resume_from_checkpoint: {newest}")


def plan_restore_saved_values(ctx: RunContext, finding: Finding) -> list[Operation]:
    """One write of the recipe with every key of the finding set to the checkpoint's value."""
    restore = finding.extra.get("restore") or {}
    try:
        recipe = ctx.recipe()
    except RecipeError:
        return []
    changed = {key: value for key, value in restore.items() if not (key in recipe.data and recipe.data[key] == value)}
    if not changed:
        return []
    data = copy.deepcopy(recipe.data)
    for key, value in changed.items():
        set_key(data, key, value)
    reason = ", ".join(f"{key}: {value!r}" for key, value in changed.items()) + " (the checkpoint's values)"
    return [WriteFile(recipe.path, dump_yaml(data), reason)]


FIXERS = (
    Fixer("set-resume-from-checkpoint", FAMILY, (NO_RESUME, RESUME_TARGET_WRONG), FixSafety.SAFE,
          "set resume_from_checkpoint in the recipe to the newest usable checkpoint's path (the diff is shown)",
          plan_set_resume_path),
    Fixer("restore-data-values", FAMILY, (DATA_SKIP,), FixSafety.UNSAFE,
          "write the checkpoint's batch, generation and seed values back into the recipe, so that the data skip "
          "lands where the run stopped (a WORLD_SIZE change has no key to write: relaunch on the checkpoint's "
          "number of processes)", plan_restore_saved_values),
    Fixer("restore-horizon", FAMILY, (NOTHING_TO_TRAIN,), FixSafety.UNSAFE,
          "set max_steps / num_train_epochs back to the checkpoint's when its horizon is beyond global_step (the "
          "original schedule continues); a run that has reached its horizon gets nothing: raise max_steps by hand",
          plan_restore_saved_values),
    Fixer("restore-training-values", FAMILY, (OTHER_CHANGE,), FixSafety.UNSAFE,
          "write the checkpoint's value back into the recipe: the resume then computes what the paused run did",
          plan_restore_saved_values),
    Fixer("restore-optimizer-values", FAMILY, (OPTIMIZER_KEPT,), FixSafety.SAFE,
          "write the checkpoint's learning_rate / weight_decay / Adam values into the recipe, so that it states "
          "what the resume really uses (optimizer.pt and scheduler.pt restore them: training does not change)",
          plan_restore_saved_values),
    Fixer("set-lora-values", FAMILY, (ADAPTER_WITHOUT_PEFT, LORA_MISMATCH), FixSafety.SAFE,
          "set use_peft and lora_r / lora_alpha / lora_target_modules / lora_modules_to_save in the recipe to the "
          "adapter's (adapter_config.json), so that the recipe builds the adapter the checkpoint holds",
          plan_restore_saved_values),
)

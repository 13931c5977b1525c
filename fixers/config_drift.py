"""Fixers of the CFG family: edit the recipe (comments and order kept) to resume what was trained."""

from __future__ import annotations

from resumedoctor.context import RunContext
from resumedoctor.findings import Finding, FixSafety
from resumedoctor.journal import Operation
from resumedoctor.recipe_edit import recipe_change
from resumedoctor.registry import Fixer

FAMILY = "config-drift"


def plan_set_resume_path(ctx: RunContext, finding: Finding) -> list[Operation]:
    newest = finding.extra.get("newest")
    if not newest:
        return []
    return recipe_change(ctx, "resume_from_checkpoint", newest, f"resume_from_checkpoint: {newest}")


def plan_restore_saved_value(ctx: RunContext, finding: Finding) -> list[Operation]:
    key, saved = finding.extra.get("key"), finding.extra.get("saved")
    if key is None:
        return []
    return recipe_change(ctx, key, saved, f"{key}: {saved!r}, the checkpoint's value")


FIXERS = (
    Fixer("set-resume-from-checkpoint", FAMILY, ("CFG006", "CFG007"), FixSafety.SAFE,
          "set resume_from_checkpoint in the recipe to the newest usable checkpoint's path (the diff is shown)",
          plan_set_resume_path),
    Fixer("restore-checkpoint-values", FAMILY, ("CFG001", "CFG002", "CFG005"), FixSafety.UNSAFE,
          "write the checkpoint's saved value of the key back into the recipe", plan_restore_saved_value),
)

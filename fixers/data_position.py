"""Fixers of the DATA family: a recipe edit where the recipe asks for what the finding describes."""

from __future__ import annotations

from resumedoctor.checks.data_position import IGNORE_DATA_SKIP

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation
from resumedoctor.engine.registry import Fixer
from resumedoctor.integrations.trl.recipe_edit import recipe_change

FAMILY = "data-position"


def plan_data_skip(ctx: RunContext, finding: Finding) -> list[Operation]:
    if not finding.extra.get("in_recipe"):
        return []  # from training_args.bin: the resume's own arguments are not a file here
    return recipe_change(ctx, "ignore_data_skip", False, "ignore_data_skip: false (the resume skips what was trained)")


FIXERS = (
    Fixer("restore-data-skip", FAMILY, (IGNORE_DATA_SKIP,), FixSafety.UNSAFE,
          "set ignore_data_skip: false in the recipe, so that the resume skips the samples the run already trained",
          plan_data_skip),
)

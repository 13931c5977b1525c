"""Fixers of the DATA family: a recipe edit where the recipe asks for what the finding describes."""

from __future__ import annotations

import io
from pathlib import Path

from resumedoctor.checks.data_position import IGNORE_DATA_SKIP, ROWS_ADDED, ROWS_CHANGED

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation
from resumedoctor.engine.registry import Fixer
from resumedoctor.integrations.trl.prompt_lengths import (
    DatasetError,
    load_local_dataset,
)
from resumedoctor.integrations.trl.recipe import RecipeError
from resumedoctor.integrations.trl.recipe_edit import (
    dataset_copy_path,
    recipe_change,
    use_dataset_copy,
)

FAMILY = "data-position"


def plan_data_skip(ctx: RunContext, finding: Finding) -> list[Operation]:
    if not finding.extra.get("in_recipe"):
        return []  # from training_args.bin: the resume's own arguments are not a file here
    return recipe_change(ctx, "ignore_data_skip", False, "ignore_data_skip: false (the resume skips what was trained)")


def plan_pin_dataset(ctx: RunContext, finding: Finding) -> list[Operation]:
    """A Parquet copy of the rows the run started with, in their order, inside the output_dir's state folder
    (Parquet keeps the Arrow types, so the copy digests as the original rows did), and dataset_name pointed at
    its folder (a folder: `trl grpo` loads folders, not files)."""
    pin = finding.extra.get("pin")
    if not pin:
        return []  # rows are gone or edited: nothing to pin them to
    try:
        recipe = ctx.recipe()
        source = Path(str(recipe.get("dataset_name"))).expanduser()
        dataset = load_local_dataset(source, recipe.get("dataset_train_split") or "train")
    except (RecipeError, DatasetError):
        return []
    buffer = io.BytesIO()
    dataset.select(pin["rows"]).to_parquet(buffer)
    stem = source.stem if source.is_file() else source.name
    folder = dataset_copy_path(ctx.target.output_dir, f"{stem}-pinned-{pin['sealed']}-rows")
    return use_dataset_copy(recipe, folder / "train.parquet", buffer.getvalue(),
                            f"the {pin['sealed']} rows {source.name} held when the run started, in their order",
                            dataset=folder, comment=f"resumedoctor: the {pin['sealed']} rows of {source} the run "
                            "started with", clear_config=True)


FIXERS = (
    Fixer("restore-data-skip", FAMILY, (IGNORE_DATA_SKIP,), FixSafety.UNSAFE,
          "set ignore_data_skip: false in the recipe, so that the resume skips the samples the run already trained",
          plan_data_skip),
    Fixer("pin-dataset", FAMILY, (ROWS_ADDED, ROWS_CHANGED), FixSafety.SAFE,
          "write the rows the run started with (the seal's row manifest), in their order, as a copy inside the "
          "output_dir and point the recipe's dataset_name at it, so that the resume continues exactly; rows added "
          "since join when dataset_name points at the original again", plan_pin_dataset),
)

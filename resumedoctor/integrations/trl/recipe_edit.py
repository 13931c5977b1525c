"""Edits of the recipe that fixers plan: one key at a time, comments and order kept.

Values are compared as TrlParser reads them (`Recipe.file_value`), edits are made on the round-trip
document: `use_vllm: no` already is `False`, and a write keeps every comment and the key order.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.operations import Operation, WriteFile
from resumedoctor.engine.target import state_dir
from resumedoctor.integrations.trl.recipe import Recipe, RecipeError, dump_yaml


def set_key(data, key: str, value: Any, *, comment: str | None = None) -> None:
    """Set a key of a round-trip mapping in place (or at the end); a user's own comment on it stays."""
    has_comment = key in data and data.ca.items.get(key)
    data[key] = value
    if comment and not has_comment:
        data.yaml_add_eol_comment(comment, key)


def recipe_change(ctx: RunContext, key: str, value: Any, reason: str, *, comment: str | None = None) -> list[Operation]:
    """The write that sets `key: value` in the run's recipe, or nothing when it is already so."""
    try:
        recipe = ctx.recipe()
    except RecipeError:
        return []
    if key in recipe.values and _same(recipe.file_value(key), value):
        return []
    data = copy.deepcopy(recipe.data)
    set_key(data, key, value, comment=comment)
    return [WriteFile(recipe.path, dump_yaml(data), reason, key=key)]


def _same(current: Any, wanted: Any) -> bool:
    if isinstance(current, bool) != isinstance(wanted, bool):
        return False  # 1 == True in Python, not in a recipe
    return current == wanted


def dataset_copy_path(output_dir: Path, name: str) -> Path:
    """Where a fixer writes a copy of the recipe's dataset: inside the output_dir's own state folder."""
    return state_dir(output_dir) / "datasets" / name


def use_dataset_copy(recipe: Recipe, file: Path, content: bytes, what: str, *, dataset: Path, comment: str,
                     clear_config: bool = False) -> list[Operation]:
    """Write a copy of the dataset (`file`, `content`) and point the recipe's dataset_name at `dataset`
    (the file, or the folder holding it); the original dataset is never written."""
    data = copy.deepcopy(recipe.data)
    set_key(data, "dataset_name", str(dataset.resolve()), comment=comment)
    if "dataset_train_split" in data:
        set_key(data, "dataset_train_split", "train")
    if clear_config and data.get("dataset_config") is not None:
        set_key(data, "dataset_config", None)  # the copy is one plain split: no configuration to pick
    return [WriteFile(file, content, what),
            WriteFile(recipe.path, dump_yaml(data), f"dataset_name -> {dataset.name}", key="dataset_name")]

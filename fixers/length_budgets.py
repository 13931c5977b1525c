"""Fixers of the LEN family: every one edits the recipe in place, comments and key order kept."""

from __future__ import annotations

import copy
import io
from pathlib import Path

from resumedoctor.checks.length_budgets import (
    COMPLETION_EXCEEDS_WINDOW,
    PROMPTS_EXCEED_WINDOW,
    REMOVED_KEY,
)

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation, WriteFile
from resumedoctor.engine.registry import Fixer
from resumedoctor.integrations.trl.prompt_lengths import load_local_dataset
from resumedoctor.integrations.trl.recipe import REMOVED_KEYS, RecipeError, dump_yaml
from resumedoctor.integrations.trl.recipe_edit import (
    dataset_copy_path,
    recipe_change,
    use_dataset_copy,
)

FAMILY = "length-budgets"
STRATEGIES = ("balanced", "completion_heavy", "prompt_heavy", "data")


def completion_budget(strategy: str, window: int, lengths=None) -> int:
    """How much of the window goes to the completion under a strategy (the rest is the prompt budget)."""
    if strategy == "data" and lengths is not None and len(lengths.lengths):
        budget = window - lengths.percentile(99)
        if budget >= 1:
            return budget
        strategy = "balanced"  # the p99 prompt alone fills the window: share it instead
    share = {"balanced": 0.5, "completion_heavy": 0.75, "prompt_heavy": 0.25}.get(strategy)
    if share is None:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return max(1, int(window * share))


def plan_migrate_removed_keys(ctx: RunContext, finding: Finding) -> list[Operation]:
    try:
        recipe = ctx.recipe()
    except RecipeError:
        return []
    data = copy.deepcopy(recipe.data)
    changed = []
    for key in [k for k in list(data) if k in REMOVED_KEYS]:
        replacement, _ = REMOVED_KEYS[key]
        value = data[key]
        position = list(data).index(key)
        del data[key]
        if replacement and replacement not in data:
            data.insert(position, replacement, value, comment=f"was {key} (resumedoctor migrated it)")
            changed.append(f"{key} -> {replacement}")
        else:
            changed.append(f"{key} removed (was {value})")
    if not changed:
        return []
    return [WriteFile(recipe.path, dump_yaml(data), "migrated: " + ", ".join(changed))]


def plan_reallocate_window(ctx: RunContext, finding: Finding) -> list[Operation]:
    window = finding.extra.get("window")
    if not window:
        return []
    try:
        recipe = ctx.recipe()
    except RecipeError:
        return []
    lengths = finding.extra.get("lengths")
    strategy = ctx.options.strategy or ("data" if lengths is not None else "balanced")
    budget = completion_budget(strategy, window, lengths)
    if recipe.get("max_completion_length") == budget:
        return []  # already allocated this way: what is left is the dataset's business
    return recipe_change(ctx, "max_completion_length", budget,
                         f"max_completion_length {recipe.get('max_completion_length')} -> {budget} ({strategy})",
                         comment=f"resumedoctor: {strategy} split of a {window}-token window")


def plan_filter_dataset(ctx: RunContext, finding: Finding) -> list[Operation]:
    lengths, window = finding.extra.get("lengths"), finding.extra.get("window")
    if lengths is None or not window:
        return []
    try:
        recipe = ctx.recipe()
    except RecipeError:
        return []
    room = window - int(recipe.get("max_completion_length"))
    keep = [row for row, length in enumerate(lengths.lengths) if length <= room]
    if not keep or len(keep) == len(lengths.lengths):
        return []
    source = Path(str(recipe.get("dataset_name"))).expanduser()
    dataset = load_local_dataset(source, recipe.get("dataset_train_split") or "train")
    buffer = io.BytesIO()
    dataset.select(keep).to_json(buffer, lines=True)
    stem = source.stem if source.is_file() else source.name
    target = dataset_copy_path(ctx.target.output_dir, f"{stem}-fits-{room}-tokens.jsonl")
    dropped = len(lengths.lengths) - len(keep)
    return use_dataset_copy(recipe, target, buffer.getvalue(),
                            f"filtered copy of {source.name}: {dropped} over-long prompts left out", dataset=target,
                            comment=f"resumedoctor: {len(keep)} of {len(lengths.lengths)} prompts of {source} fit "
                            f"{room} tokens")


FIXERS = (
    Fixer("migrate-removed-keys", FAMILY, (REMOVED_KEY,), FixSafety.SAFE,
          "rename vllm_max_model_len to vllm_max_model_length and remove max_prompt_length in the recipe "
          "(comments and order kept)", plan_migrate_removed_keys),
    Fixer("reallocate-window", FAMILY, (COMPLETION_EXCEEDS_WINDOW, PROMPTS_EXCEED_WINDOW), FixSafety.UNSAFE,
          "set max_completion_length by --strategy (balanced, completion_heavy, prompt_heavy, or data: "
          "the prompt budget is the p99 of the real prompts) in the recipe", plan_reallocate_window),
    Fixer("filter-dataset", FAMILY, (PROMPTS_EXCEED_WINDOW,), FixSafety.UNSAFE,
          "write a copy of the dataset without the prompts that cannot fit and point the recipe at it "
          "(the original is untouched)", plan_filter_dataset),
)

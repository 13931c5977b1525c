"""The checkpoint's saved training arguments against the recipe: the one comparison of the two.

training_args.bin (through the restricted unpickler) holds the arguments the run was trained with;
the recipe, as TrlParser resolves it, holds those of the resume. Both the CFG family (which judges
each difference by its consequence) and `resumedoctor config` (which shows every value) ask here
which keys differ, and what each key decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

# What each compared key decides; every difference is then judged by its consequence for the resume.
DATA_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "num_iterations",
             "generation_batch_size", "steps_per_generation")
ORDER_KEYS = ("seed", "data_seed")
SCHEDULE_KEYS = ("lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "max_steps",
                 "num_train_epochs")
OPTIMIZER_KEYS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")
COSMETIC_KEYS = ("logging_steps", "logging_strategy", "logging_first_step", "save_steps", "save_strategy",
                 "save_total_limit", "report_to", "run_name", "eval_steps", "push_to_hub", "disable_tqdm",
                 "logging_dir", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "hub_model_id")
# The training value each key sets, for the message.
TRAINING_KEYS = {
    "beta": "KL coefficient", "temperature": "sampling temperature", "top_p": "nucleus sampling top_p",
    "top_k": "sampling top_k", "epsilon": "lower clip range", "epsilon_high": "upper clip range",
    "loss_type": "loss", "scale_rewards": "reward scaling", "max_completion_length": "completion budget (tokens)",
    "max_grad_norm": "gradient clipping norm", "optim": "optimizer", "reward_weights": "reward weights",
    "bf16": "bf16 precision", "fp16": "fp16 precision", "dataloader_drop_last": "last partial batch of an epoch",
}
DATA_SKIP_KEYS = DATA_KEYS + ORDER_KEYS
COMPARED_KEYS = (*DATA_KEYS, *ORDER_KEYS, *SCHEDULE_KEYS, *OPTIMIZER_KEYS, *COSMETIC_KEYS, *TRAINING_KEYS)
# GRPOConfig derives these when the recipe leaves them unset; the saved value is the derived one.
DERIVED_WHEN_UNSET = ("generation_batch_size", "steps_per_generation")
# Where the resume runs, not what it trains: judged on their own (CFG006-CFG008), never as drift.
NOT_DRIFT = ("output_dir", "resume_from_checkpoint")
# What a difference in each key decides, as `resumedoctor config` labels it (any other key: training).
KEY_CLASSES: dict[str, str] = {
    **{key: "cosmetic" for key in COSMETIC_KEYS},
    **{key: "training" for key in TRAINING_KEYS},
    **{key: "optimizer-state" for key in OPTIMIZER_KEYS},
    **{key: "schedule" for key in SCHEDULE_KEYS},
    **{key: "data-skip" for key in DATA_SKIP_KEYS},
}


class Change(NamedTuple):
    """One key whose saved value and recipe value differ."""

    saved: Any
    value: Any  # the recipe's, as TrlParser resolves it
    source: str  # where the recipe's value comes from: cli, env, file, default


def normalize(key: str, value: Any) -> Any:
    """A value in the form both sides are compared in (report_to as a sorted list, whole floats as ints)."""
    if key == "lr_scheduler_kwargs" and value in (None, "", {}):
        return {}
    if key == "report_to":
        if value in (None, "none"):
            return []
        return sorted([value] if isinstance(value, str) else list(value))
    if isinstance(value, float) and value.is_integer() and key not in ("learning_rate",):
        return int(value)
    return value


# Lists whose order is their meaning: reward_weights[i] weighs reward_funcs[i].
ORDERED_LISTS = frozenset({"reward_funcs", "reward_weights"})


def differing_keys(saved: Mapping[str, Any], values: Mapping[str, Any]) -> set[str]:
    """The keys of `values` whose saved value differs once both are normalized.

    Equal values are settled by `==` (DeepDiff, and the pandas it imports, load only when something
    differs). DeepDiff then compares nested values (lr_scheduler_kwargs, lists) with int against float
    ignored and the order of a list ignored, except in ORDERED_LISTS; repeated list items count. Its
    report is read through its API (the root key each change is under)."""
    before = {key: normalize(key, saved[key]) for key in values}
    after = {key: normalize(key, value) for key, value in values.items()}
    unequal = [key for key in values if before[key] != after[key]]
    if not unequal:
        return set()
    from deepdiff import DeepDiff

    changed: set[str] = set()
    for ordered in (False, True):
        keys = [key for key in unequal if (key in ORDERED_LISTS) == ordered]
        if keys:
            difference = DeepDiff({key: before[key] for key in keys}, {key: after[key] for key in keys},
                                  ignore_order=not ordered, report_repetition=not ordered,
                                  ignore_numeric_type_changes=True)
            changed.update(difference.affected_root_keys)
    return changed


def judged_keys(saved: Mapping[str, Any], recipe: Any, keys: Iterable[str] = COMPARED_KEYS) -> dict[str, Any]:
    """The compared keys a difference means something for (a resolved recipe value for each).

    Left out: keys the checkpoint did not save, keys GRPOConfig derives when the recipe leaves them
    unset, defaults of None that GRPOConfig decides at start-up (bf16, fp16, ...), and NOT_DRIFT."""
    resolved = {key: recipe.resolve(key) for key in keys if key in saved}
    return {key: value for key, value in resolved.items()
            if not (key in DERIVED_WHEN_UNSET and value.source == "default")
            and not (value.source == "default" and value.value is None)
            and key not in NOT_DRIFT}


def changes(saved: Mapping[str, Any], recipe: Any) -> dict[str, Change]:
    """key -> Change for every judged key whose saved value and recipe value differ."""
    judged = judged_keys(saved, recipe)
    changed = differing_keys(saved, {key: resolved.value for key, resolved in judged.items()})
    return {key: Change(saved[key], resolved.value, resolved.source)
            for key, resolved in judged.items() if key in changed}

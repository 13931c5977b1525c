"""Fixers of the CKPT family. Each plans operations; the engine backs up, applies and journals them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from resumedoctor.checks.checkpoint_integrity import (
    BEST_MODEL_MISSING,
    GLOBAL_STEP_MISMATCH,
    RESUME_TARGET_UNUSABLE,
    SAFETENSORS_INDEX,
    SEAL_INTERRUPTED,
    SEAL_INVALID,
    SHARD_INDEX_INCOMPLETE,
    SHARD_INDEX_MISSING,
    SHARD_MISSING,
    SHARD_NAME,
    TMP_CHECKPOINT_DEBRIS,
    UNSEALED_SAVE,
)

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.live_save import held_back
from resumedoctor.engine.operations import Operation, Quarantine, WriteFile
from resumedoctor.engine.registry import Fixer
from resumedoctor.engine.target import checkpoint_step
from resumedoctor.io.bounded_read import JsonFileError
from resumedoctor.io.safetensors_header import SafetensorsError

FAMILY = "checkpoint-integrity"


def trainer_state_bytes(state: dict) -> bytes:
    """Serialised exactly as transformers' TrainerState.save_to_json does."""
    return (json.dumps(state, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _checkpoint_of(finding: Finding) -> Path | None:
    folder = finding.extra.get("checkpoint")
    return Path(folder) if folder else None


def plan_quarantine_newer_than_usable(ctx: RunContext, finding: Finding) -> list[Operation]:
    fallback = finding.extra.get("fallback")
    if not fallback:
        return []  # nothing usable to fall back to: quarantining everything would restart from step 0
    fallback_step = checkpoint_step(Path(fallback))
    newer = [folder for folder in ctx.target.checkpoints if (checkpoint_step(folder) or 0) > fallback_step]
    if any(held_back(ctx, folder) or folder.is_symlink() for folder in newer):
        return []  # a trainer is writing (what looks broken may be a save in progress), or a link we never move
    return [Quarantine(folder, f"unusable; the resume moves back to {Path(fallback).name}") for folder in newer]


QUARANTINE_REASONS = {
    "CKPT005": "its index names a shard that does not exist",
    "CKPT030": "its save did not finish (no seal, files missing or damaged)",
}


def plan_quarantine_checkpoint(ctx: RunContext, finding: Finding) -> list[Operation]:
    folder = _checkpoint_of(finding)
    if folder is None or held_back(ctx, folder) or folder.is_symlink():
        return []  # fix never moves a link (confinement): the finding says no fix, rather than one that refuses
    return [Quarantine(folder, QUARANTINE_REASONS.get(finding.code, "unusable"))]


def plan_seal_after_the_fact(ctx: RunContext, finding: Finding) -> list[Operation]:
    """The seal the save did not live to write (or an unreadable one replaced), marked after the fact;
    nothing for a checkpoint with an error: a seal must not bless a broken save."""
    from resumedoctor.integrations.seal.existing import SealRefused, after_the_fact_seal
    from resumedoctor.integrations.seal.record import AFTER_THE_FACT_REASONS, SEAL_FILE

    folder = _checkpoint_of(finding)
    reason = finding.extra.get("seal_reason")
    if folder is None or reason not in AFTER_THE_FACT_REASONS:
        return []
    try:
        content = after_the_fact_seal(ctx, folder, reason)
    except SealRefused:
        return []
    return [WriteFile(folder / SEAL_FILE, content, f"sealed after the fact: {AFTER_THE_FACT_REASONS[reason]}")]


def plan_quarantine_tmp_checkpoint(ctx: RunContext, finding: Finding) -> list[Operation]:
    folder = _checkpoint_of(finding)
    if folder is None or held_back(ctx, folder) or folder.is_symlink():
        return []
    return [Quarantine(folder, "left over from an interrupted save")]


def build_shard_index(ctx: RunContext, folder: Path) -> dict | None:
    """The index transformers would have written, from the shard headers; None if the shards are not whole."""
    shards = sorted(p.name for p in folder.iterdir() if SHARD_NAME.match(p.name) and p.name.startswith("model-"))
    if not shards:
        return None
    declared = {int(re.search(r"-of-(\d+)\.", name).group(1)) for name in shards}
    if declared != {len(shards)}:
        return None  # a shard is missing: an index cannot bring it back
    weight_map: dict[str, str] = {}
    total_size = total_parameters = 0
    for name in shards:
        try:
            header = ctx.safetensors_header(folder / name)
        except SafetensorsError:
            return None
        if header.size_problem():
            return None
        for tensor, entry in header.tensors.items():
            if tensor in weight_map:
                return None  # the same tensor in two shards: which one is right is not ours to guess
            weight_map[tensor] = name
            total_size += entry.end - entry.begin
            count = 1
            for dimension in entry.shape:
                count *= dimension
            total_parameters += count
    return {"metadata": {"total_parameters": total_parameters, "total_size": total_size},
            "weight_map": dict(sorted(weight_map.items()))}


def plan_rebuild_shard_index(ctx: RunContext, finding: Finding) -> list[Operation]:
    folder = _checkpoint_of(finding)
    if folder is None:
        return []
    index = build_shard_index(ctx, folder)
    if index is None:
        return []
    path = folder / SAFETENSORS_INDEX
    try:
        existing = ctx.read_json(path) if path.exists() else None
    except JsonFileError:
        existing = None
    if isinstance(existing, dict) and isinstance(existing.get("metadata"), dict):
        index["metadata"] = {**existing["metadata"], **index["metadata"]}
    content = (json.dumps(index, indent=2, sort_keys=False) + "\n").encode("utf-8")
    return [WriteFile(path, content, "rebuilt from the shard headers")]


def _trainer_state(ctx: RunContext, finding: Finding) -> tuple[Path, dict] | None:
    folder = _checkpoint_of(finding)
    if folder is None:
        return None
    path = folder / "trainer_state.json"
    try:
        state = ctx.read_json(path)
    except JsonFileError:
        return None
    return (path, dict(state)) if isinstance(state, dict) else None


def plan_clear_best_model_checkpoint(ctx: RunContext, finding: Finding) -> list[Operation]:
    loaded = _trainer_state(ctx, finding)
    if loaded is None:
        return []
    path, state = loaded
    state["best_model_checkpoint"] = None
    return [WriteFile(path, trainer_state_bytes(state), "best_model_checkpoint set to null")]


def plan_restore_global_step(ctx: RunContext, finding: Finding) -> list[Operation]:
    loaded = _trainer_state(ctx, finding)
    folder = _checkpoint_of(finding)
    if loaded is None or folder is None:
        return []
    path, state = loaded
    step = checkpoint_step(folder)
    logged = [e.get("step") for e in state.get("log_history") or [] if isinstance(e, dict) and isinstance(e.get("step"), int)]
    if step is None or not logged or max(logged) != step:
        return []  # only when log_history agrees with the folder name: otherwise who is right is unknown
    state["global_step"] = step
    return [WriteFile(path, trainer_state_bytes(state), f"global_step restored to {step} (folder name and log_history agree)")]


FIXERS = (
    Fixer("quarantine-unusable-newest", FAMILY, (RESUME_TARGET_UNUSABLE,), FixSafety.UNSAFE,
          "move the checkpoints newer than the newest usable one into .resumedoctor/quarantine/, "
          "so that resume_from_checkpoint=True picks the newest usable checkpoint",
          plan_quarantine_newer_than_usable),
    Fixer("quarantine-missing-shard", FAMILY, (SHARD_MISSING,), FixSafety.UNSAFE,
          "move the checkpoint whose index names a missing shard into .resumedoctor/quarantine/",
          plan_quarantine_checkpoint),
    Fixer("quarantine-unfinished-save", FAMILY, (UNSEALED_SAVE,), FixSafety.UNSAFE,
          "move the checkpoint whose save did not finish into .resumedoctor/quarantine/",
          plan_quarantine_checkpoint),
    Fixer("seal-after-the-fact", FAMILY, (SEAL_INTERRUPTED, SEAL_INVALID), FixSafety.SAFE,
          "write the seal of a checkpoint whose files are whole, marked as made after the fact "
          "(only when the checkpoint has no error)",
          plan_seal_after_the_fact),
    Fixer("rebuild-shard-index", FAMILY, (SHARD_INDEX_MISSING, SHARD_INDEX_INCOMPLETE), FixSafety.SAFE,
          "rebuild model.safetensors.index.json from the shard headers (only when every shard is whole)",
          plan_rebuild_shard_index),
    Fixer("clear-best-model-checkpoint", FAMILY, (BEST_MODEL_MISSING,), FixSafety.SAFE,
          "set best_model_checkpoint to null in trainer_state.json", plan_clear_best_model_checkpoint),
    Fixer("restore-global-step", FAMILY, (GLOBAL_STEP_MISMATCH,), FixSafety.SAFE,
          "set global_step to N of checkpoint-N when log_history agrees with the folder name",
          plan_restore_global_step),
    Fixer("quarantine-tmp-checkpoint", FAMILY, (TMP_CHECKPOINT_DEBRIS,), FixSafety.SAFE,
          "move the tmp-checkpoint-N folder into .resumedoctor/quarantine/", plan_quarantine_tmp_checkpoint),
)

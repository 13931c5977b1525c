"""`resumedoctor seal PATH`: seal checkpoints that were saved without SealCallback, marked as such.

Only checkpoints without an error finding are sealed (a seal must not bless a broken save), through
the fix engine's journal, so `resumedoctor undo` takes the seals back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.checks.checkpoint_integrity import _errors, inspect_checkpoint
from resumedoctor.checks.environment import recorded_versions
from resumedoctor.context import JsonFileError, Options, RunContext
from resumedoctor.journal import Transaction, WriteFile, new_id
from resumedoctor.safe_pickle import PickleReadError, UnsafePickleError
from resumedoctor.seal import SEAL_FILE, build_seal, seal_bytes
from resumedoctor.settings import Settings
from resumedoctor.target import resolve_target


@dataclass
class SealResult:
    sealed: list[Path] = field(default_factory=list)
    already: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    transaction: Transaction | None = None


def seal_existing(path: str | os.PathLike, *, settings: Settings | None = None) -> SealResult:
    target = resolve_target(path)
    ctx = RunContext(target, settings or Settings(), Options())
    result = SealResult()
    operations = []
    for checkpoint in target.checkpoints:
        if (checkpoint / SEAL_FILE).is_file():
            result.already.append(checkpoint)
            continue
        errors = _errors(ctx, inspect_checkpoint(ctx, checkpoint))
        if errors:
            result.refused.append((checkpoint, f"{errors[0].code}: {errors[0].message}"))
            continue
        try:
            state = ctx.read_json(checkpoint / "trainer_state.json")
            global_step = int(state["global_step"])
        except (JsonFileError, KeyError, TypeError, ValueError):
            result.refused.append((checkpoint, "trainer_state.json has no global_step"))
            continue
        try:
            arguments = ctx.training_args(checkpoint / "training_args.bin")
        except (UnsafePickleError, PickleReadError, OSError):
            arguments = {}
        ranks = len(list(checkpoint.glob("rng_state_*.pth")))
        seal = build_seal(checkpoint, global_step=global_step, world_size=ranks or 1, arguments=arguments,
                          versions=recorded_versions(ctx, checkpoint), after_the_fact=True)
        operations.append(WriteFile(checkpoint / SEAL_FILE, seal_bytes(seal), "sealed after the fact",
                                    code="SEAL", fixer="seal"))
        result.sealed.append(checkpoint)
    if operations:
        transaction = Transaction.prepare(target.output_dir, operations, "seal", new_id())
        transaction.complete()
        result.transaction = transaction
    return result

"""`resumedoctor seal PATH`: seal checkpoints that were saved without SealCallback, marked as such.

Only checkpoints without an error finding are sealed (a seal must not bless a broken save), through
the fix engine's journal, so `resumedoctor undo` takes the seals back. A checkpoint whose seal write
was cut off (CKPT034) or whose seal cannot be read (CKPT031) is sealed too, with that reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.engine.checkpoint_facts import recorded_versions, saved_world_size
from resumedoctor.engine.context import Options, RunContext
from resumedoctor.engine.operations import WriteFile
from resumedoctor.engine.runner import new_context
from resumedoctor.engine.settings import Settings
from resumedoctor.engine.target import resolve_target
from resumedoctor.fixing.journal import Transaction, new_id
from resumedoctor.fixing.writer_lock import writer_lock
from resumedoctor.integrations.seal.record import (
    AFTER_THE_FACT_REASONS,
    SEAL_FILE,
    build_seal,
    read_seal,
    seal_bytes,
)
from resumedoctor.io.safe_pickle import PickleReadError, UnsafePickleError


@dataclass
class SealResult:
    sealed: list[Path] = field(default_factory=list)
    already: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    reasons: dict[Path, str] = field(default_factory=dict)  # sealed checkpoint -> after_the_fact_reason
    transaction: Transaction | None = None


class SealRefused(Exception):
    """The checkpoint is not sealed; the message says why in one line."""


def after_the_fact_reason(ctx: RunContext, checkpoint: Path) -> str | None:
    """Why this checkpoint would be sealed after the fact; None when it has a readable seal."""
    if (checkpoint / SEAL_FILE).is_file():
        try:
            read_seal(checkpoint)
            return None
        except ValueError:
            return "seal-unreadable"
    # The checkpoint checks mark a save whose seal write was cut off (CKPT034) with this reason.
    reasons = {finding.extra.get("seal_reason") for finding in ctx.checkpoint_findings(checkpoint) or ()}
    return "seal-interrupted" if "seal-interrupted" in reasons else "never-sealed"


def after_the_fact_seal(ctx: RunContext, checkpoint: Path, reason: str) -> bytes:
    """The seal of a usable checkpoint, marked after the fact; SealRefused for a broken one."""
    errors = ctx.checkpoint_errors(checkpoint)
    if errors is None:
        raise SealRefused("no installed check family judges checkpoints: a seal must not bless an unchecked save")
    if errors:
        raise SealRefused(f"{errors[0].code}: {errors[0].message}")
    global_step = ctx.global_step(checkpoint)
    if global_step is None:
        raise SealRefused("trainer_state.json has no global_step")
    try:
        arguments = ctx.training_args(checkpoint / "training_args.bin")
    except (UnsafePickleError, PickleReadError, OSError):
        arguments = {}
    seal = build_seal(checkpoint, global_step=global_step, world_size=saved_world_size(ctx, checkpoint),
                      arguments=arguments, versions=recorded_versions(ctx, checkpoint), after_the_fact=True,
                      after_the_fact_reason=reason)
    return seal_bytes(seal)


def seal_existing(path: str | os.PathLike, *, settings: Settings | None = None) -> SealResult:
    """Seal every unsealed usable checkpoint of PATH, as one journaled transaction under the writer lock.

    ConfinementError / LockBusyError (ReasonError) when `.resumedoctor/` is not to be trusted or busy."""
    target = resolve_target(path)
    with writer_lock(target.output_dir):
        return _seal_locked(target, settings)


def _seal_locked(target, settings: Settings | None) -> SealResult:
    ctx = new_context(target, settings or Settings(), Options())
    result = SealResult()
    operations = []
    for checkpoint in target.checkpoints:
        reason = after_the_fact_reason(ctx, checkpoint)
        if reason is None:
            result.already.append(checkpoint)
            continue
        try:
            content = after_the_fact_seal(ctx, checkpoint, reason)
        except SealRefused as exc:
            result.refused.append((checkpoint, str(exc)))
            continue
        operations.append(WriteFile(checkpoint / SEAL_FILE, content,
                                    f"sealed after the fact: {AFTER_THE_FACT_REASONS[reason]}",
                                    code="SEAL", fixer="seal"))
        result.sealed.append(checkpoint)
        result.reasons[checkpoint] = reason
    if operations:
        transaction = Transaction.prepare(target.output_dir, operations, "seal", new_id())
        transaction.complete()
        result.transaction = transaction
    return result

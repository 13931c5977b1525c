"""Fixers of the RUN family: move another run's checkpoints out of the resume's and the rotation's way."""

from __future__ import annotations

from pathlib import Path

from resumedoctor.checks.run_identity import OTHER_RUN_LEFTOVERS, TARGET_OTHER_RUN

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.live_save import held_back
from resumedoctor.engine.operations import Operation, Quarantine
from resumedoctor.engine.registry import Fixer


def plan_quarantine_other_run(ctx: RunContext, finding: Finding) -> list[Operation]:
    """Every checkpoint the finding names as another run's, into .resumedoctor/quarantine/; nothing when
    one is a link (fix never moves a link) or a trainer is writing the output_dir."""
    folders = [Path(folder) for folder in finding.extra.get("quarantine") or ()]
    if not folders or any(folder.is_symlink() or held_back(ctx, folder) for folder in folders):
        return []
    return [Quarantine(folder, "a checkpoint of another run") for folder in folders]


FIXERS = (
    Fixer("quarantine-other-run", "run-identity", (TARGET_OTHER_RUN, OTHER_RUN_LEFTOVERS), FixSafety.UNSAFE,
          "move the other run's checkpoints into .resumedoctor/quarantine/ (undoable): the resume then picks this "
          "run's newest checkpoint, and the rotation no longer counts them",
          plan_quarantine_other_run),
)

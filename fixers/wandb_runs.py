"""Fixers of the WANDB family: record how the next start logs, for `env` and `launch` to apply."""

from __future__ import annotations

from resumedoctor.checks.wandb_runs import (
    DECISION_STALE,
    NEW_RUN,
    RUN_AHEAD,
    RUN_ID_MISMATCH,
)

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation, WriteFile
from resumedoctor.engine.registry import Fixer
from resumedoctor.engine.target import state_dir
from resumedoctor.integrations.wandb.runs import DECISION_FILE


def plan_record_decision(ctx: RunContext, finding: Finding) -> list[Operation]:
    decision = finding.extra.get("decision")
    if decision is None:
        return []
    path = state_dir(ctx.target.output_dir) / DECISION_FILE
    return [WriteFile(path, decision.to_json(), f"W&B: {decision.mode} run {decision.run_id}"
                      + (f" at _step {decision.step}" if decision.step is not None else ""))]


FIXERS = (
    Fixer("record-wandb-decision", "wandb-run-sync", (RUN_AHEAD, NEW_RUN, RUN_ID_MISMATCH, DECISION_STALE), FixSafety.SAFE,
          "record in .resumedoctor/wandb.json whether the next start resumes the run or forks it (and at "
          "which _step); `resumedoctor env` exports it and `launch` passes it to wandb.init",
          plan_record_decision),
)

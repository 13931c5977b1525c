"""`resumedoctor env`: the shell lines that make the next start log to the right place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.engine.context import Options
from resumedoctor.engine.settings import Settings
from resumedoctor.engine.target import resolve_target
from resumedoctor.io.printable import printable


@dataclass
class ShellEnvironment:
    target: str
    checkpoint: str | None
    comments: list[str] = field(default_factory=list)
    lines: list = field(default_factory=list)  # EnvLine

    def render(self) -> str:
        out = [comment_line(f"resumedoctor env: {self.target} -> {self.checkpoint or 'no checkpoint'}")]
        out += [comment_line(comment) for comment in self.comments]
        out += [line.render() for line in self.lines]
        return "\n".join(out) + "\n"


def comment_line(text: str) -> str:
    """`# text` that stays one shell comment whatever the text holds.

    Comments quote run ids, paths and folder names read from the output_dir (untrusted): a newline in
    one would end the comment and start a command under `eval "$(resumedoctor env OUT)"`, and a bidi
    override would show another text than the shell reads. Every such character is escaped.
    """
    return "# " + printable(text)


def shell_environment(path: str | os.PathLike, *, wandb_dir: Path | None = None,
                      environ: Mapping[str, str] | None = None, recipe: Path | None = None) -> ShellEnvironment:
    """Decide the W&B identity of the next start (the recorded decision when it still fits)."""
    import importlib.util

    from resumedoctor.engine.runner import new_context

    target = resolve_target(path)
    ctx = new_context(target, Settings(), Options(wandb_dir=wandb_dir, recipe=recipe), environ)
    # The checkpoint the resume really starts from (the newest usable one): the same plan as diagnose and fix.
    checkpoint = ctx.resume_point()
    result = ShellEnvironment(str(target.path), checkpoint.name if checkpoint else None)
    if importlib.util.find_spec("wandb") is None:
        result.comments.append("wandb is not installed: no W&B run to match")
        return result
    decision, new_run_id = _wandb_decision(ctx, checkpoint, result.comments) if checkpoint is not None else (None, None)
    from resumedoctor.integrations.wandb.runs import env_lines

    result.lines = env_lines(decision, ctx.environ, new_run_id=new_run_id)
    return result


def _wandb_decision(ctx, checkpoint: Path, comments: list[str]):
    """(the W&B decision for the checkpoint or None, a WANDB_RUN_ID kept for a new run or None); says why in `comments`."""
    from resumedoctor.integrations.wandb.runs import (
        decide,
        decision_problem,
        find_runs,
        judge_run_id,
        read_decision,
        shown,
    )

    runs = find_runs(ctx)
    progress = ctx.progress(checkpoint)
    global_step = progress.global_step if progress is not None else None
    if runs.ambiguous and not runs.matches:
        comments.append(f"runs {', '.join(runs.ambiguous)} could each be this output_dir's (a relative "
                        "output_dir in a shared wandb folder): not decided; export WANDB_RUN_ID yourself")
        return None, None
    if not runs.matches:
        comments.append("no local W&B run logged this output_dir")
        return None, None
    if global_step is None:
        return None, None
    match = runs.matches[-1]
    if problem := match.identity_problem:  # a crafted log: nothing of it may reach the shell
        comments.append(f"W&B: run {shown(match.run_id)} logged this output_dir, but {problem}: nothing is "
                        f"exported for it, and the next start begins a new run (WANDB012)")
        return None, None
    decision = decide(match, checkpoint, global_step)
    recorded = read_decision(ctx.target.output_dir, ctx)
    if recorded is not None and (why := decision_problem(recorded)):
        comments.append(f"the recorded decision (.resumedoctor/wandb.json) is not applied: {why}; using the "
                        "current one (resumedoctor fix --auto records it)")
    elif recorded is not None and not recorded.same_choice(decision):
        comments.append(f"the recorded decision ({shown(recorded.mode)} for {shown(recorded.checkpoint)}) no longer "
                        f"fits; using the current one (resumedoctor fix --auto records it)")
    comments.append(f"W&B: {decision.reason}")
    wanted = ctx.environ.get("WANDB_RUN_ID")
    verdict = None if ctx.environ.get("WANDB_FORK_FROM") else judge_run_id(ctx, runs, wanted)
    if verdict is None or verdict.kind != "fresh":
        return decision, None
    comments.append(f"WANDB_RUN_ID={wanted} names no local run: kept, " + (
        "the fork gets this id" if decision.mode == "fork" else
        f"a new run with this id starts (unset WANDB_RUN_ID and run this again to continue run {decision.run_id})"))
    return decision, wanted

"""`resumedoctor env`: the shell lines that make the next start log to the right place."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.context import Options
from resumedoctor.settings import Settings
from resumedoctor.target import resolve_target


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
    one would end the comment and start a command under `eval "$(resumedoctor env OUT)"`. Every control
    character (and Unicode's line and paragraph separators) becomes `?`.
    """
    return "# " + "".join("?" if unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029\x85" else ch for ch in text)


def shell_environment(path: str | os.PathLike, *, wandb_dir: Path | None = None,
                      environ: Mapping[str, str] | None = None, recipe: Path | None = None) -> ShellEnvironment:
    """Decide the W&B identity of the next start (the recorded decision when it still fits)."""
    import importlib.util

    from resumedoctor.diagnose import new_context

    target = resolve_target(path)
    ctx = new_context(target, Settings(), Options(wandb_dir=wandb_dir, recipe=recipe), environ)
    # The checkpoint the resume really starts from (the newest usable one): the same plan as diagnose and fix.
    checkpoint = ctx.resume_point()
    result = ShellEnvironment(str(target.path), checkpoint.name if checkpoint else None)
    if importlib.util.find_spec("wandb") is None:
        result.comments.append("wandb is not installed: no W&B run to match")
        return result
    from resumedoctor.wandb_runs import (
        decide,
        env_lines,
        find_runs,
        judge_run_id,
        read_decision,
    )

    decision, new_run_id = None, None
    if checkpoint is not None:
        runs = find_runs(ctx)
        progress = ctx.progress(checkpoint)
        global_step = progress.global_step if progress is not None else None
        if runs.matches and global_step is not None:
            decision = decide(runs.matches[-1], checkpoint, global_step)
            recorded = read_decision(target.output_dir, ctx)
            if recorded is not None and not recorded.same_choice(decision):
                result.comments.append(f"the recorded decision ({recorded.mode} for {recorded.checkpoint}) no longer "
                                       f"fits; using the current one (resumedoctor fix --auto records it)")
            result.comments.append(f"W&B: {decision.reason}")
            wanted = ctx.environ.get("WANDB_RUN_ID")
            verdict = None if ctx.environ.get("WANDB_FORK_FROM") else judge_run_id(ctx, runs, wanted)
            if verdict is not None and verdict.kind == "fresh":
                new_run_id = wanted
                result.comments.append(
                    f"WANDB_RUN_ID={wanted} names no local run: kept, " + (
                        "the fork gets this id" if decision.mode == "fork" else
                        f"a new run with this id starts (unset WANDB_RUN_ID and run this again to continue "
                        f"run {decision.run_id})"))
        elif runs.ambiguous:
            result.comments.append(f"runs {', '.join(runs.ambiguous)} could each be this output_dir's (a relative "
                                   "output_dir in a shared wandb folder): not decided; export WANDB_RUN_ID yourself")
        elif not runs.matches:
            result.comments.append("no local W&B run logged this output_dir")
    result.lines = env_lines(decision, ctx.environ, new_run_id=new_run_id)
    return result

"""`resumedoctor env`: the shell lines that make the next start log to the right place.

`runs` decides which W&B run the next start logs to; this module turns that decision into shell lines
(export, unset, each with its `#` comment) and is the only one that writes shell text.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.engine.context import Options
from resumedoctor.engine.settings import Settings
from resumedoctor.engine.target import resolve_target
from resumedoctor.integrations.wandb.runs import RESUME_VARIABLES, WandbDecision
from resumedoctor.io.printable import printable


@dataclass
class ShellEnvironment:
    target: str
    checkpoint: str | None
    comments: list[str] = field(default_factory=list)
    lines: list[EnvLine] = field(default_factory=list)

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


@dataclass(frozen=True)
class EnvLine:
    text: str  # `export NAME=value` or `unset NAME`
    why: str
    name: str = ""
    value: str | None = None  # None: unset

    def render(self) -> str:
        return f"{self.text}  {comment_line(self.why)}"  # the value is shlex-quoted; the comment is made one line

    def apply(self, environ: dict[str, str]) -> None:
        """What `eval` of this line does to an environment."""
        if self.value is None:
            environ.pop(self.name, None)
        else:
            environ[self.name] = self.value


def env_lines(decision: WandbDecision | None, environ: dict[str, str], *,
              new_run_id: str | None = None) -> list[EnvLine]:
    """Shell lines that make the next start log where the decision says (and drop stale variables).

    `new_run_id`: a WANDB_RUN_ID that names no local run, kept as the user's choice of a new run
    (or of the fork's id) instead of being replaced.
    """
    lines: list[EnvLine] = []

    def export(name: str, value: str, why: str) -> None:
        lines.append(EnvLine(f"export {name}={shlex.quote(value)}", why, name, value))

    def unset(name: str, why: str) -> None:
        if name in environ:
            lines.append(EnvLine(f"unset {name}", why, name, None))

    if decision is None:
        if environ.get("WANDB_RESUME") == "must" and not environ.get("WANDB_RUN_ID"):
            unset("WANDB_RESUME", "stale: resume=must without WANDB_RUN_ID makes wandb.init fail")
        if sum(1 for name in RESUME_VARIABLES if environ.get(name)) > 1:
            for name in ("WANDB_RESUME_FROM", "WANDB_FORK_FROM"):
                unset(name, "stale: resume, resume_from and fork_from are mutually exclusive")
        return lines
    if decision.mode == "fork":
        export("WANDB_FORK_FROM", decision.moment, f"{decision.checkpoint} is global step {decision.global_step}; "
               f"run {decision.run_id} logged past it, so fork it at _step {decision.step}")
        if not new_run_id:
            unset("WANDB_RUN_ID", "a fork is a new run with a new id")
        unset("WANDB_RESUME", "resume and fork_from are mutually exclusive")
        unset("WANDB_RESUME_FROM", "resume_from and fork_from are mutually exclusive")
    elif not new_run_id:
        export("WANDB_RUN_ID", decision.run_id, f"continue run {decision.run_id}, which ends at {decision.checkpoint}")
        export("WANDB_RESUME", "allow", "resume that run if it exists")
        unset("WANDB_FORK_FROM", "resume and fork_from are mutually exclusive")
        unset("WANDB_RESUME_FROM", "resume and resume_from are mutually exclusive")
    if decision.project and environ.get("WANDB_PROJECT") != decision.project:
        export("WANDB_PROJECT", decision.project, "the project the run lives in")
    if decision.entity and environ.get("WANDB_ENTITY") not in (None, decision.entity):
        export("WANDB_ENTITY", decision.entity, "the entity the run lives in")
    return lines


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

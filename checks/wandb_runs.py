"""WANDB: will the resumed run log to the right W&B run, from the right step?"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.wandb.runs import (
    RESUME_VARIABLES,
    SEARCHED,
    LocalRuns,
    RunIdVerdict,
    RunMatch,
    decide,
    decision_problem,
    find_runs,
    judge_run_id,
    read_decision,
    wandb_dirs,
)

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

RUN_AHEAD = Rule(
    "WANDB001", "run-ahead-of-checkpoint", WARNING,
    "The W&B run logged global steps after the checkpoint: a resume logs them twice or splits the run.",
    "transformers' WandbCallback logs without step=, so W&B's _step counts log calls and every chart "
    "uses train/global_step. Resuming checkpoint-N of a run that logged past N into the same run id "
    "logs steps N+1... a second time (charts zig-zag); without the id a new run starts and the history "
    "is split. Fork the run at the _step that follows checkpoint-N (W&B's recommendation; rewind is "
    "the alternative): `resumedoctor fix --auto` records that decision, `resumedoctor env` exports "
    "WANDB_FORK_FROM=<run>?_step=<N>, and `resumedoctor launch` passes it to wandb.init.",
)
NEW_RUN = Rule(
    "WANDB002", "resume-starts-new-run", WARNING,
    "No run id is configured while this output_dir already has a W&B run: the history splits in two.",
    "Without WANDB_RUN_ID (and WANDB_RESUME=allow) wandb.init starts a new run on every restart. "
    "The charts of one training run end up in several W&B runs with separate step axes.",
)
RUN_ID_MISMATCH = Rule(
    "WANDB003", "run-id-mismatch", ERROR,
    "WANDB_RUN_ID names a local run that is not this output_dir's: the resume appends to it.",
    "A stale WANDB_RUN_ID from another job makes this resume append its steps to someone else's run "
    "and corrupt its history: an error when that run logged another output_dir. A warning when the "
    "run is an older run of this output_dir (its newest run holds the later steps) or logged no "
    "output_dir at all (whose it is cannot be told). Export the id of this output_dir's run "
    "(resumedoctor env does). An id that names no local run is WANDB010, not this.",
)
RESUME_MUST_WITHOUT_ID = Rule(
    "WANDB004", "resume-must-without-run-id", ERROR,
    "WANDB_RESUME=must without WANDB_RUN_ID: wandb.init fails.",
    "resume=\"must\" requires the id of the run to resume; without it wandb.init raises as the job "
    "starts, after the GPUs are allocated.",
)
RESUME_CONFLICT = Rule(
    "WANDB005", "resume-options-conflict", ERROR,
    "More than one of WANDB_RESUME, WANDB_RESUME_FROM, WANDB_FORK_FROM is set: wandb.init fails.",
    "W&B's resume, resume_from (rewind) and fork_from are mutually exclusive; wandb.init raises when "
    "more than one is given.",
)
OFFLINE_RUN = Rule(
    "WANDB006", "offline-run", INFO,
    "The run is an offline run: W&B resumes or forks it only after `wandb sync`.",
    "An offline run exists only in the local wandb/ folder. Resume and fork are server-side "
    "operations, so the new segment links to it only once both are synced (`wandb sync <run folder>`).",
)
LOG_UNREADABLE = Rule(
    "WANDB007", "run-log-unreadable", WARNING,
    "A run's .wandb log cannot be read (empty or damaged); its steps cannot be checked.",
    "The transaction log run-<id>.wandb holds the run's history. An empty or corrupt one cannot be "
    "matched to the checkpoint, so a duplicated or split history cannot be ruled out.",
)
DECISION_RECORDED = Rule(
    "WANDB008", "decision-recorded", INFO,
    "A W&B decision is recorded: `resumedoctor env` and `launch` apply it.",
    "`resumedoctor fix` recorded how the next start logs (resume the same run, or fork it at a "
    "_step) in <output_dir>/.resumedoctor/wandb.json. `eval \"$(resumedoctor env OUT)\"` exports it "
    "for any training command, and `resumedoctor launch` passes it to wandb.init.",
)
DECISION_STALE = Rule(
    "WANDB009", "decision-stale", WARNING,
    "The recorded W&B decision is for another checkpoint or run.",
    "The decision in .resumedoctor/wandb.json was made for a different resume point; applying it "
    "would fork or resume at the wrong _step. `resumedoctor fix --auto` records the current one.",
)

NEW_RUN_ID = Rule(
    "WANDB010", "new-run-id", INFO,
    "WANDB_RUN_ID names no local run: a new run with this id will be started.",
    "An id chosen on purpose for a new run (a new run for the resumed segment, or the id of a fork). "
    "The earlier run of this output_dir is not continued: its history stays in that run. Only local "
    "runs can be checked: if a run with this id exists on the W&B server (logged from another "
    "machine), wandb.init with WANDB_RESUME=allow continues it instead, and WANDB_RESUME=must fails "
    "unless it exists there (a warning then).",
)

RUN_AMBIGUOUS = Rule(
    "WANDB011", "run-ambiguous", WARNING,
    "Several local W&B runs logged this output_dir's relative path: which one it is cannot be told.",
    "transformers logs output_dir as given, often relative (`out`). In a wandb folder shared by several "
    "projects, runs of different folders named `out` look alike, and choosing one could fork or "
    "continue another project's run. No decision is made: export WANDB_RUN_ID of the right run (or a "
    "new id), or pass --wandb-dir with the run's own wandb folder.",
)

RUN_IDENTITY_INVALID = Rule(
    "WANDB012", "run-identity-invalid", WARNING,
    "The run's log names a run id, project or entity that W&B does not accept: the run cannot be continued.",
    "W&B refuses a run id that is empty, starts or ends with whitespace, or holds one of :;,#?/' "
    "(wandb's Settings.validate_run_id), and a project (or entity) longer than 128 characters or holding "
    "one of /\\#?%: or a newline (Settings.validate_project). W&B's own ids are lowercase letters and "
    "digits, so a log naming anything else, or a value with control, bidi-override or line-separator "
    "characters, was altered or crafted. resumedoctor exports and records nothing for such a run: the next "
    "start begins a new run and the history is split. An error when the environment already names that id "
    "(wandb.init raises as the job starts). Check where the wandb folder came from; export WANDB_RUN_ID of "
    "a run you trust, or a new id.",
)

RULES = (RUN_AHEAD, NEW_RUN, RUN_ID_MISMATCH, RESUME_MUST_WITHOUT_ID, RESUME_CONFLICT, OFFLINE_RUN,
         LOG_UNREADABLE, DECISION_RECORDED, DECISION_STALE, NEW_RUN_ID, RUN_AMBIGUOUS, RUN_IDENTITY_INVALID)


def _with_decision(finding: Finding, decision) -> Finding:
    finding.extra["decision"] = decision
    return finding


def _at(finding: Finding, severity: Severity) -> Finding:
    """The finding at another severity than its rule's default (the user's settings still override it)."""
    return dataclasses.replace(finding, severity=severity)


def check_resume_options(environ: dict[str, str]) -> Iterator[Finding]:
    set_resume_options = [name for name in RESUME_VARIABLES if environ.get(name)]
    if len(set_resume_options) > 1:
        yield RESUME_CONFLICT.finding(f"{' and '.join(set_resume_options)} are all set", hint="unset all but one (resumedoctor env prints the lines)")
    if environ.get("WANDB_RESUME") == "must" and not environ.get("WANDB_RUN_ID"):
        yield RESUME_MUST_WITHOUT_ID.finding("WANDB_RESUME=must but WANDB_RUN_ID is not set", hint="unset WANDB_RESUME or export the run id")


def run_id_finding(ctx: RunContext, runs: LocalRuns, verdict: RunIdVerdict | None) -> Finding | None:
    """WANDB003 or WANDB010 for WANDB_RUN_ID, or None when it is this output_dir's run (or not set)."""
    if verdict is None or verdict.kind in ("ours", "unknown"):
        return None
    match = runs.matches[-1] if runs.matches else None
    wanted = verdict.run_id
    hint = "resumedoctor env prints the right run id" if match else "unset WANDB_RUN_ID, or export a new id"
    path = str(match.newest.path) if match else None
    if verdict.kind == "foreign":
        ours = f", but this output_dir was logged by run {match.run_id}" if match else ""
        return RUN_ID_MISMATCH.finding(
            f"WANDB_RUN_ID={wanted} is the run of {verdict.other_output_dir}{ours}: the resume would append "
            f"this run's steps to it", path=path, hint=hint)
    if verdict.kind == "older":
        return _at(RUN_ID_MISMATCH.finding(
            f"WANDB_RUN_ID={wanted} is an older run of this output_dir; its newest run is {match.run_id} (up to global "
            f"step {match.max_global_step}): the resume would continue the older one", path=path, hint=hint), WARNING)
    if verdict.kind == "unowned":
        return _at(RUN_ID_MISMATCH.finding(
            f"WANDB_RUN_ID={wanted} is a local run that logged no output_dir, but this output_dir was logged by run "
            f"{match.run_id}", path=path, hint=hint), WARNING)
    # "fresh": names no local run.
    earlier = (f"; run {match.run_id}, which logged this output_dir up to global step {match.max_global_step}, is not "
               f"continued" if match else "")
    if ctx.environ.get("WANDB_RESUME") == "must":
        return _at(NEW_RUN_ID.finding(
            f"WANDB_RUN_ID={wanted} names no local run, and WANDB_RESUME=must: wandb.init fails unless run {wanted} "
            f"exists on the W&B server{earlier}", path=path,
            hint="WANDB_RESUME=allow starts the new run if the server has none"), WARNING)
    return NEW_RUN_ID.finding(
        f"WANDB_RUN_ID={wanted} names no local run: a new run with this id will be started (unless the W&B server "
        f"has one){earlier}", path=path)


def run(ctx: RunContext) -> Iterator[Finding]:
    environ = ctx.environ
    yield from check_resume_options(environ)
    checkpoint = ctx.resume_point()
    wanted = environ.get("WANDB_RUN_ID") or None
    if checkpoint is None and wanted is None:
        return
    runs = find_runs(ctx)
    # With WANDB_FORK_FROM set, WANDB_RUN_ID is the id of the fork, a new run.
    verdict = None if environ.get("WANDB_FORK_FROM") else judge_run_id(ctx, runs, wanted)
    identity = run_id_finding(ctx, runs, verdict)
    if checkpoint is None:
        # A start from step 0: only another output_dir's run id matters (this run's steps appended to it).
        if identity is not None and verdict.kind == "foreign":
            yield identity
        return
    for path, reason in runs.unreadable:
        yield LOG_UNREADABLE.finding(f"{path.name}: {reason}", path=str(path))
    if not runs.matches:
        if runs.ambiguous and not wanted:
            yield RUN_AMBIGUOUS.finding(
                f"runs {', '.join(runs.ambiguous)} each logged an output_dir that could be this one; the next "
                f"start's W&B run was not decided", path=str(ctx.target.output_dir),
                hint="export WANDB_RUN_ID=<the right run> WANDB_RESUME=allow, or --wandb-dir <its wandb folder>")
        if identity is not None and verdict.kind in ("foreign", "fresh"):
            yield identity
        return
    match = runs.matches[-1]
    if problem := match.identity_problem:
        if identity is not None:
            yield identity
        yield identity_invalid(ctx, match, problem)
        return
    global_step = ctx.global_step(checkpoint)
    if global_step is None:
        if identity is not None:
            yield identity
        return  # the CKPT family reports the broken state
    decision = decide(match, checkpoint, global_step)
    fresh = verdict is not None and verdict.kind == "fresh"
    if identity is not None:
        yield identity if fresh else _with_decision(identity, decision)
    if fresh and decision.mode == "resume":
        return  # a new run chosen on purpose: nothing is logged twice, nothing to record
    yield from check_decision(ctx, runs, decision, global_step, wanted, fresh)


def identity_invalid(ctx: RunContext, match: RunMatch, problem: str) -> Finding:
    """WANDB012: the matched run's log names an identity W&B refuses; nothing is exported for it."""
    path = str(match.newest.path)
    if ctx.environ.get("WANDB_RUN_ID") == match.run_id:
        return _at(RUN_IDENTITY_INVALID.finding(
            f"WANDB_RUN_ID is the run id of {match.newest.path.name}, and {problem}: wandb.init refuses it as the "
            f"job starts", path=path, hint="export a valid WANDB_RUN_ID (a new run), and check where this log came from"),
            ERROR)
    return RUN_IDENTITY_INVALID.finding(
        f"{match.newest.path.name} logged this output_dir, but {problem}: resumedoctor exports and records nothing "
        f"for it, so the next start begins a new W&B run and this run's history is not continued", path=path,
        hint="check where this wandb folder came from; export WANDB_RUN_ID of a run you trust, or a new id")


def check_decision(ctx: RunContext, runs: LocalRuns, decision, global_step: int, wanted: str | None,
                   fresh: bool) -> Iterator[Finding]:
    """The recorded decision, the run ahead of the checkpoint, a resume without a run id."""
    environ, checkpoint = ctx.environ, ctx.resume_point()
    match = runs.matches[-1]
    path = str(match.newest.path)
    offline = OFFLINE_RUN.finding(f"run {match.run_id} is offline ({match.newest.path.parent.name})", path=path,
                                  hint=f"wandb sync {match.newest.path.parent}")
    recorded = read_decision(ctx.target.output_dir, ctx)
    if recorded is not None and (why := decision_problem(recorded)):
        yield _with_decision(DECISION_STALE.finding(
            f"the recorded decision in .resumedoctor/wandb.json cannot be applied: {why}; `env` and `launch` use "
            f"the current one ({decision.mode} run {decision.run_id})", path=path), decision)
        recorded = None
    if recorded is not None:
        if recorded.same_choice(decision):
            yield DECISION_RECORDED.finding(
                f"next start: {decision.mode} run {decision.run_id}"
                + (f" at _step {decision.step}" if decision.step is not None else ""),
                path=path, hint=f'eval "$(resumedoctor env {ctx.target.path})" before training')
            if decision.offline and decision.mode == "fork":
                yield offline
            return
        yield _with_decision(DECISION_STALE.finding(
            f"the recorded decision ({recorded.mode} run {recorded.run_id} for {recorded.checkpoint}) does not fit "
            f"{checkpoint.name}", path=path), decision)

    if decision.mode == "fork":
        moment = decision.moment
        if environ.get("WANDB_FORK_FROM") == moment or environ.get("WANDB_RESUME_FROM") == moment:
            pass  # the environment already forks (or rewinds) at the right step
        else:
            duplicated = f"global steps {global_step + 1}-{match.max_global_step}"
            if wanted == match.run_id:
                outcome = f"resuming run {match.run_id} logs {duplicated} a second time"
            elif fresh:
                outcome = f"the new run {wanted} logs {duplicated} again, apart from the history of run {match.run_id}"
            else:
                outcome = f"a new run starts and the history of run {match.run_id} is split"
            yield _with_decision(RUN_AHEAD.finding(
                f"run {match.run_id} logged up to global step {match.max_global_step} (_step {match.last_step}); "
                f"{checkpoint.name} is global step {global_step}, which W&B logged up to _step {decision.step - 1}: "
                f"{outcome}", path=path,
                hint=f"fork at _step {decision.step}: export WANDB_FORK_FROM={moment}"), decision)
        if match.newest.offline:
            yield offline
    elif wanted is None:
        yield _with_decision(NEW_RUN.finding(
            f"run {match.run_id} logged this output_dir, but WANDB_RUN_ID is not set: the resume starts a new run",
            path=path, hint=f"export WANDB_RUN_ID={match.run_id} WANDB_RESUME=allow"), decision)


FAMILY = CheckFamily(
    name="wandb-run-sync",
    prefix="WANDB",
    title="W&B: the resumed run logs to the right run, from the right step",
    rules=RULES,
    run=run,
    requires=("wandb",),
    not_applicable=lambda ctx: _not_applicable(ctx),
)


def _not_applicable(ctx: RunContext) -> str | None:
    if ctx.options.recipe is not None and not _recipe_reports_to_wandb(ctx):
        return "the recipe does not report to W&B (report_to)"
    if _env_set(ctx):
        return None
    if not wandb_dirs(ctx):
        return f"no wandb folder ({SEARCHED})"
    if ctx.resume_point() is None:
        return None  # a start from step 0 with the run folders found: nothing to continue, nothing to judge
    runs = find_runs(ctx)
    if not (runs.matches or runs.ambiguous or runs.unreadable):
        # "no problems" would claim the W&B side was checked; no run of this output_dir was found to check
        return "no local W&B run logged this output_dir (pass --wandb-dir DIR if it logged elsewhere)"
    return None


def _recipe_reports_to_wandb(ctx: RunContext) -> bool:
    """True unless the recipe, as TRL resolves it, leaves W&B out (an unreadable recipe: assume it reports)."""
    from resumedoctor.integrations.trl.recipe import reports_to_wandb

    try:
        return reports_to_wandb(ctx.recipe().resolve("report_to").value)
    except ReasonError:
        return True


def _env_set(ctx: RunContext) -> bool:
    return any(ctx.environ.get(name) for name in ("WANDB_RUN_ID", *RESUME_VARIABLES))

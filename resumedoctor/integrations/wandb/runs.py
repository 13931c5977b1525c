"""Find the local W&B run(s) of a checkpoint and decide how the next start should log.

transformers' WandbCallback logs without `step=`, so W&B's `_step` counts log calls, not trainer
steps, and `train/global_step` is the step metric of every chart. A resume from checkpoint-N of a
run that logged past N logs those global steps again (same run id) or splits the history (new id).
The decision made here, resume the same run or fork it at the `_step` that follows checkpoint-N, is
what `resumedoctor env` exports and `launch` passes to `wandb.init`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.target import checkpoint_step, state_dir
from resumedoctor.integrations.wandb.log_reader import (
    RUN_FOLDER,
    RunLog,
    WandbLogError,
    read_run_log,
)
from resumedoctor.io.bounded_read import (
    JSON_CONFIG_LIMIT,
    JsonFileError,
    read_json_file,
)

DECISION_FILE = "wandb.json"
RESUME_VARIABLES = ("WANDB_RESUME", "WANDB_RESUME_FROM", "WANDB_FORK_FROM")


# What W&B accepts, from wandb 0.31's own checks (read in its sources):
# - a run id: `wandb.sdk.wandb_settings.Settings.validate_run_id`: not empty, no whitespace at either end,
#   none of RUN_ID_RESERVED (wandb.init raises UsageError otherwise);
# - a project: `Settings.validate_project`: at most 128 characters, none of PROJECT_RESERVED; the artifact
#   registry's `wandb.sdk.artifacts._validators.validate_project_name` also refuses \r and \n.
# W&B checks no entity name before the server does; an entity is a URL path segment like a project, so it
# gets the project's rule. Beyond W&B's checks, a value with an unprintable character (shell_env's
# UNPRINTABLE_CATEGORIES: controls, bidi overrides, line separators) is refused: W&B never generates one
# (its ids are [a-z0-9]), it cannot be shown faithfully, and it is what a crafted log carries into a shell.
RUN_ID_RESERVED = ":;,#?/'"
PROJECT_RESERVED = "/\\#?%:\r\n"
PROJECT_MAX_LENGTH = 128


def _unprintable(value: str) -> str | None:
    from resumedoctor.io.printable import unprintable

    bad = unprintable(value)
    return None if bad is None else f"it holds the unprintable character U+{ord(bad):04X}"


def run_id_problem(value: object) -> str | None:
    """Why W&B would refuse this run id (Settings.validate_run_id), or None when it accepts it."""
    if not isinstance(value, str):
        return f"it is not text but {shown(value)}"
    if not value.strip():
        return "it is empty"
    if value != value.strip():
        return "it starts or ends with whitespace"
    reserved = sorted({ch for ch in value if ch in RUN_ID_RESERVED})
    if reserved:
        return f"it holds {' '.join(reserved)}, which W&B reserves"
    return _unprintable(value)


def name_problem(value: object) -> str | None:
    """Why W&B would refuse this project (or entity) name (Settings.validate_project), or None."""
    if not isinstance(value, str):
        return f"it is not text but {shown(value)}"
    if not value:
        return "it is empty"
    if len(value) > PROJECT_MAX_LENGTH:
        return f"it has {len(value)} characters, more than W&B's {PROJECT_MAX_LENGTH}"
    reserved = sorted({ch for ch in value if ch in PROJECT_RESERVED})
    if reserved:
        return f"it holds {' '.join(repr(ch)[1:-1] for ch in reserved)}, which W&B refuses in a name"
    return _unprintable(value)


def shown(value: object, most: int = 80) -> str:
    """A value read from the output_dir as one printable, bounded token (escapes instead of raw characters)."""
    from resumedoctor.io.printable import printable

    text = value if isinstance(value, str) else repr(value)
    return printable(text[:most] + "..." if len(text) > most else text)


def identity_problem(run_id: object, project: object, entity: object) -> str | None:
    """Why W&B would not accept this run's identity, naming the field; None when it would."""
    problem = run_id_problem(run_id)
    if problem:
        return f"its run id {shown(run_id)} cannot be a W&B run id: {problem}"
    for what, value in (("project", project), ("entity", entity)):
        if value is not None and (problem := name_problem(value)):
            return f"its {what} {shown(value)} cannot be a W&B {what}: {problem}"
    return None


@dataclass(frozen=True)
class LocalRun:
    folder: Path
    log_path: Path
    run_id: str


@dataclass(frozen=True)
class WandbDecision:
    """How the next start logs to W&B; recorded as `.resumedoctor/wandb.json`."""

    checkpoint: str
    global_step: int
    run_id: str
    mode: str  # "resume": same run id, resume=allow; "fork": a new run forked at `step`
    step: int | None
    project: str | None
    entity: str | None
    wandb_dir: str | None
    offline: bool
    reason: str

    def to_json(self) -> bytes:
        return (json.dumps({"version": 1, **asdict(self)}, indent=2) + "\n").encode("utf-8")

    @property
    def moment(self) -> str | None:
        return f"{self.run_id}?_step={self.step}" if self.mode == "fork" else None

    def same_choice(self, other: WandbDecision) -> bool:
        """The same resume point, run, mode and _step: where the wandb folder was found does not matter."""
        keys = ("checkpoint", "global_step", "run_id", "mode", "step")
        return all(getattr(self, key) == getattr(other, key) for key in keys)


ANCESTOR_LEVELS = 3  # how far above the output_dir a training's working directory (and its wandb/) may be
SEARCHED = "--wandb-dir, $WANDB_DIR, <output_dir>/wandb, the wandb/ folders of 3 folders above it, ./wandb"


def wandb_dirs(ctx: RunContext) -> list[Path]:
    """Where the runs of this output_dir may be, as absolute paths, the first place that names a folder first.

    --wandb-dir, $WANDB_DIR (wandb writes into $WANDB_DIR/wandb), <output_dir>/wandb, then the wandb/
    folder of the output_dir's parents: wandb writes to the training's working directory by default,
    and a relative output_dir lies below it. Found from the output_dir, not from where this command
    runs, so the verdict does not depend on the working directory; ./wandb is searched last, for a
    run trained from here with an output_dir elsewhere.
    """
    candidates = []
    if ctx.options.wandb_dir is not None:
        candidates += [ctx.options.wandb_dir, ctx.options.wandb_dir / "wandb"]
    if ctx.environ.get("WANDB_DIR"):
        candidates += [Path(ctx.environ["WANDB_DIR"]) / "wandb", Path(ctx.environ["WANDB_DIR"])]
    output_dir = absolute_output_dir(ctx)
    candidates.append(output_dir / "wandb")
    candidates += [parent / "wandb" for parent in output_dir.parents[:ANCESTOR_LEVELS]]
    candidates.append(Path.cwd() / "wandb")
    seen, found = set(), []
    for candidate in candidates:
        candidate = Path(os.path.abspath(candidate))
        if candidate.is_dir() and candidate.resolve() not in seen:
            seen.add(candidate.resolve())
            found.append(candidate)
    return found


def absolute_output_dir(ctx: RunContext) -> Path:
    """The output_dir without `.`/`..`: `diagnose .` inside it must match a run by its name too."""
    return Path(os.path.abspath(ctx.target.output_dir))


def local_runs(folder: Path) -> list[LocalRun]:
    runs = []
    for entry in sorted(folder.iterdir()):
        match = RUN_FOLDER.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            log = entry / f"run-{match.group(3)}.wandb"
            if log.is_file():
                runs.append(LocalRun(entry, log, match.group(3)))
    return runs


def _same_output_dir(logged: object, output_dir: Path, *, by_name: bool = False) -> bool:
    """Does a run's logged output_dir name this (absolute) one? `by_name`: the folder name is enough."""
    if not isinstance(logged, str) or not logged:
        return False
    logged_path = Path(logged)
    if logged_path.is_absolute():
        if os.path.realpath(logged_path) == os.path.realpath(output_dir):
            return True
        return by_name and logged_path.name == output_dir.name  # a moved run keeps its name
    # Relative to wherever training ran, unknown here (never to where this command runs): its tail decides.
    parts = Path(os.path.normpath(logged_path)).parts
    if by_name or ".." in parts:
        return logged_path.name == output_dir.name
    return bool(parts) and output_dir.parts[-len(parts):] == parts


@dataclass
class RunMatch:
    """The run (possibly several resumed segments with one id) that belongs to the checkpoint."""

    run_id: str
    segments: list[RunLog]
    wandb_dir: Path

    @property
    def history(self) -> list[tuple[int, int | None, bool]]:
        return [row for segment in self.segments for row in segment.history]

    @property
    def newest(self) -> RunLog:
        return self.segments[-1]

    @property
    def max_global_step(self) -> int | None:
        steps = [g for _, g, _ in self.history if g is not None]
        return max(steps) if steps else None

    @property
    def last_step(self) -> int | None:
        return self.history[-1][0] if self.history else None

    def first_step_after(self, global_step: int) -> int:
        combined = RunLog(self.newest.path, history=self.history)
        return combined.first_step_after(global_step)

    @property
    def identity_problem(self) -> str | None:
        """Why W&B would refuse to continue or fork this run as its log names it (a crafted log)."""
        return identity_problem(self.run_id, self.newest.project, self.newest.entity)


@dataclass
class LocalRuns:
    """What the local wandb folders hold for this output_dir."""

    matches: list[RunMatch]  # the runs that logged this output_dir, newest last
    unreadable: list[tuple[Path, str]]  # (log, why) for the logs that cannot be read
    by_id: dict[str, list[RunLog]]  # every readable run, its segments oldest first
    # Runs that could each be this output_dir's (a relative output_dir such as `out` logged by runs in a
    # shared wandb folder): no match is chosen among them.
    ambiguous: list[str] = field(default_factory=list)

    def logged_output_dirs(self, run_id: str) -> list[str]:
        return [log.config["output_dir"] for log in self.by_id.get(run_id, [])
                if isinstance(log.config.get("output_dir"), str) and log.config["output_dir"]]


def _could_have_written(match: RunMatch, checkpoints: tuple[Path, ...]) -> bool:
    """A run matched by its folder name alone must have logged up to the checkpoints it is to continue.

    A crash loses at most the logs after the newest save, so the run's logged steps reach the
    second-newest checkpoint at least; a run that stopped logging long before is another run's.
    """
    steps = sorted(step for step in (checkpoint_step(c) for c in checkpoints) if step is not None)
    if len(steps) < 2:
        return True
    return (match.max_global_step or 0) >= steps[-2]


def find_runs(ctx: RunContext) -> LocalRuns:
    """Every local run, and the ones whose logged config names this output_dir (found once per run)."""
    return ctx.memo(("find_runs",), lambda: _find_runs(ctx), "find_runs")


def _find_runs(ctx: RunContext) -> LocalRuns:
    unreadable: list[tuple[Path, str]] = []
    by_id: dict[str, list[tuple[LocalRun, RunLog, Path]]] = {}
    seen_folders: set[str] = set()
    for folder in wandb_dirs(ctx):
        for run in local_runs(folder):
            if run.folder.name in seen_folders:
                continue  # the same run folder copied into two of the searched places
            seen_folders.add(run.folder.name)
            try:
                log = ctx.load(read_run_log, run.log_path)
            except WandbLogError as exc:
                unreadable.append((run.log_path, exc.reason))
                continue
            by_id.setdefault(log.run_id or run.run_id, []).append((run, log, folder))
    for entries in by_id.values():
        entries.sort(key=lambda entry: entry[0].folder.name.split("-")[-2])  # by start date in the name
    output_dir = absolute_output_dir(ctx)

    def matching(by_name: bool) -> list[RunMatch]:
        return [
            RunMatch(run_id, [log for _, log, _ in entries], entries[-1][2])
            for run_id, entries in by_id.items()
            if any(_same_output_dir(log.config.get("output_dir"), output_dir, by_name=by_name)
                   for _, log, _ in entries)
        ]

    def anchored(match: RunMatch) -> bool:
        """wandb writes into the training's working folder by default: a relative output_dir resolves there."""
        return any(isinstance(log.config.get("output_dir"), str) and (
            Path(log.config["output_dir"]).is_absolute()
            or os.path.realpath(log.path.parent.parent.parent / log.config["output_dir"]) == os.path.realpath(output_dir))
            for log in match.segments)

    matches = matching(by_name=False)
    if len(matches) > 1 and not all(anchored(match) for match in matches):
        sure = [match for match in matches if anchored(match)]
        if sure:
            matches = sure
        else:  # several runs logged the same relative path somewhere else: which one is ours cannot be told
            return LocalRuns([], unreadable, {run_id: [log for _, log, _ in entries] for run_id, entries in by_id.items()},
                             ambiguous=sorted(match.run_id for match in matches))
    if not matches:
        # The output_dir was moved (another disk, another machine): its name alone decides, if unambiguous.
        by_name = [match for match in matching(by_name=True) if _could_have_written(match, ctx.target.checkpoints)]
        matches = by_name if len(by_name) == 1 else []
    matches.sort(key=lambda match: match.newest.path.parent.name.split("-")[-2])
    return LocalRuns(matches, unreadable, {run_id: [log for _, log, _ in entries] for run_id, entries in by_id.items()})


@dataclass(frozen=True)
class RunIdVerdict:
    """What WANDB_RUN_ID does to this resume. kind: "ours" (the run of this output_dir), "older" (an
    earlier run of it), "fresh" (names no local run: a new run starts), "foreign" (the run of another
    output_dir), "unowned" (a local run that logged no output_dir), "unknown" (cannot be told)."""

    kind: str
    run_id: str
    other_output_dir: str | None = None


def judge_run_id(ctx: RunContext, runs: LocalRuns, wanted: str | None) -> RunIdVerdict | None:
    """How WANDB_RUN_ID relates to this output_dir's runs; None when it is not set."""
    if not wanted:
        return None
    ours = [match.run_id for match in runs.matches]
    if ours and wanted == ours[-1]:
        return RunIdVerdict("ours", wanted)
    if wanted in ours:
        return RunIdVerdict("older", wanted)
    if wanted not in runs.by_id:
        return RunIdVerdict("fresh", wanted)
    logged = runs.logged_output_dirs(wanted)
    if not logged:
        return RunIdVerdict("unowned" if ours else "unknown", wanted)
    output_dir = absolute_output_dir(ctx)
    if any(_same_output_dir(path, output_dir, by_name=True) for path in logged):
        return RunIdVerdict("unknown", wanted)  # one of several runs of a moved output_dir's name
    return RunIdVerdict("foreign", wanted, logged[-1])


def read_decision(output_dir: Path, ctx: RunContext | None = None) -> WandbDecision | None:
    path = state_dir(output_dir) / DECISION_FILE
    if not path.is_file():
        return None
    try:
        raw = ctx.read_json(path) if ctx else read_json_file(path, JSON_CONFIG_LIMIT)
        raw = dict(raw)
        raw.pop("version", None)
        return WandbDecision(**raw)
    except (JsonFileError, ValueError, TypeError):
        return None


def decision_problem(decision: WandbDecision) -> str | None:
    """Why a recorded decision cannot be applied as it stands (values W&B refuses, wrong types); None if it can."""
    if decision.mode not in ("resume", "fork"):
        return f"its mode {shown(decision.mode)} is neither resume nor fork"
    if type(decision.global_step) is not int or (decision.step is not None and type(decision.step) is not int):
        return "its steps are not whole numbers"
    if not isinstance(decision.checkpoint, str):
        return "its checkpoint is not a name"
    return identity_problem(decision.run_id, decision.project, decision.entity)


def sealed_wandb_position(checkpoint: Path) -> dict | None:
    from resumedoctor.integrations.seal.record import SEAL_FILE, read_seal

    if not (checkpoint / SEAL_FILE).is_file():
        return None
    try:
        return read_seal(checkpoint).get("wandb")
    except ValueError:
        return None


def decide(match: RunMatch, checkpoint: Path, global_step: int) -> WandbDecision:
    """Resume the same run when it is not ahead of the checkpoint, else fork it (W&B recommends forking)."""
    ahead = (match.max_global_step or 0) > global_step
    newest = match.newest
    sealed = sealed_wandb_position(checkpoint)
    common = dict(
        checkpoint=checkpoint.name, global_step=global_step, run_id=match.run_id,
        project=newest.project, entity=newest.entity, wandb_dir=str(match.wandb_dir.parent),
        offline=newest.offline,
    )
    if ahead:
        if sealed and sealed.get("run_id") == match.run_id and isinstance(sealed.get("next_step"), int):
            step, how = sealed["next_step"], "the seal's"  # exact: W&B's counter at the moment of the save
        else:
            step, how = match.first_step_after(global_step), "the log's"
        return WandbDecision(
            mode="fork", step=step,
            reason=(f"run {match.run_id} logged up to global step {match.max_global_step} (_step {match.last_step}); "
                    f"{checkpoint.name} is global step {global_step}: fork at _step {step} ({how})"),
            **common,
        )
    logged = match.max_global_step
    if logged is not None and logged < global_step:
        reason = (f"run {match.run_id} logged up to global step {logged}, before {checkpoint.name} (global step "
                  f"{global_step}): the crash lost the rest of its buffered logs; continue it")
    else:
        reason = f"run {match.run_id} ends at global step {logged}, {checkpoint.name}'s step: continue it"
    if newest.offline:
        reason += (". It is an offline run: a resumed offline segment restarts _step at 0, and W&B drops rows "
                   "whose _step does not increase when both are synced; `wandb sync` the earlier segment before "
                   "resuming online")
    return WandbDecision(mode="resume", step=None, reason=reason, **common)

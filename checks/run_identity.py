"""RUN: one run per output_dir, and a rotation that deletes what the user expects.

A reused output_dir can hold checkpoints of two runs: a fresh run (another seed, another batch size)
writes checkpoint-2 and -4 over the first run's, and the first run's checkpoint-6 stays. transformers'
`get_last_checkpoint` picks the highest checkpoint-N, so `resume_from_checkpoint=True` silently
continues the older run; its rotation (`rotate_checkpoints(use_mtime=True)` after every save) orders
the folders by mtime, so a copy that reset the mtimes deletes other checkpoints than the oldest.

Which checkpoints belong together is told by evidence, strongest first:
- log_history: a resume loads trainer_state.json as it is, so every checkpoint of one run carries the
  same entries for the steps an earlier checkpoint logged; another run logs other losses at those steps;
- trainer_state.json's train_batch_size, which a resume keeps from the checkpoint it loads;
- the saved arguments (training_args.bin, else the seal's copy): a resume may change them on purpose
  (the CFG family judges that), so a difference there alone only makes another run probable.
The seal holds no identity of its own (its W&B run id changes whenever a resume starts a new W&B run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumedoctor.engine.checkpoint_facts import readable_seal
from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.engine.target import checkpoint_step
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.trl.saved_arguments import normalize
from resumedoctor.io.printable import printable
from resumedoctor.io.safe_pickle import PickleReadError, UnsafePickleError

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

TARGET_OTHER_RUN = Rule(
    "RUN001", "resume-target-other-run", ERROR,
    "The checkpoint the resume picks is from another, older run than the one saved last in this output_dir.",
    "transformers' get_last_checkpoint (resume_from_checkpoint=True) picks the highest checkpoint-N, whoever "
    "wrote it. When an output_dir is reused for a new run, the new run writes checkpoint-2, -4... over the old "
    "run's, and the old run's higher-numbered checkpoints stay: the resume silently continues the old run "
    "(its weights, optimizer, schedule and data position). Runs are told apart by log_history (a resumed run "
    "carries its checkpoint's entries unchanged, another run logs other losses at the same steps) and by "
    "trainer_state.json's train_batch_size (kept across resumes): then an error (a branch resumed from an "
    "earlier checkpoint parts from the checkpoints above it in the same way, and the resume goes back to "
    "them). When only the saved arguments (seed, batch size, learning rate) differ, a resume with changed "
    "arguments cannot be ruled out: a warning. The run is the one saved last, or the one the recipe's "
    "arguments describe. "
    "`fix --unsafe` moves the other run's checkpoints into .resumedoctor/quarantine/ (undoable).",
)
OTHER_RUN_LEFTOVERS = Rule(
    "RUN002", "other-run-checkpoints", INFO,
    "Checkpoints of another run sit beside this run's; the resume does not pick them.",
    "A reused output_dir kept checkpoints of an earlier (or later) run that the resume does not start from. "
    "They count against save_total_limit: a warning when the rotation after the next save deletes them (a "
    "run you may still want is lost), otherwise info (leftovers that take disk space, and that a resume "
    "falls back to if this run's checkpoints become unusable). `fix --unsafe` moves them into "
    ".resumedoctor/quarantine/.",
)
ROTATION_DELETES_NEWEST = Rule(
    "RUN003", "rotation-deletes-newest", WARNING,
    "The rotation after the next save deletes a newer checkpoint of this run and keeps an older one.",
    "After every save transformers calls rotate_checkpoints(use_mtime=True): the checkpoint folders are "
    "ordered by their mtime (by step only when all mtimes lie within one second) and the oldest beyond "
    "save_total_limit are deleted, keeping the most recent by mtime and best_model_checkpoint. A copy that "
    "reset the mtimes (cp -r, rsync without -t), a restore, or a filesystem with odd mtimes puts them out of "
    "step order, and the rotation deletes newer checkpoints while older ones stay; a folder with an mtime in "
    "the future even outranks the checkpoint just saved. Set the folders' mtimes in step order (touch, "
    "oldest first) before resuming.",
)
RULES = (TARGET_OTHER_RUN, OTHER_RUN_LEFTOVERS, ROTATION_DELETES_NEWEST)

# Saved arguments a resume rarely changes: a difference makes another run probable (never proves it).
IDENTITY_KEYS = ("seed", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                 "num_generations", "run_name")
# log_history values named when two runs disagree, the first one both entries hold.
SHOWN_METRICS = ("loss", "reward", "eval_loss", "train_loss", "grad_norm")
_CHECKPOINT_GLOB = re.compile(r"^checkpoint-")
_STEP_IN_PATH = re.compile(r".*checkpoint-([0-9]+)")  # transformers' sort_checkpoints regex


@dataclass(frozen=True)
class Saved:
    """What one checkpoint tells about the run that saved it."""

    folder: Path
    step: int
    history: tuple[dict, ...] | None  # log_history's entries; None: not comparable
    batch: int | None  # trainer_state.json's train_batch_size
    arguments: dict[str, Any] = field(default_factory=dict)  # IDENTITY_KEYS the run saved
    saved_at: float | None = None  # trainer_state.json's mtime

    @property
    def name(self) -> str:
        return self.folder.name

    def describe(self) -> str:
        parts = [f"global step {self.step}"]
        if "seed" in self.arguments:
            parts.append(f"seed {self.arguments['seed']}")
        if self.batch is not None:
            parts.append(f"train_batch_size {self.batch}")
        if self.saved_at is not None:
            parts.append("saved " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved_at)))
        return ", ".join(parts)


@dataclass(frozen=True)
class Verdict:
    """Whether two checkpoints belong to one run: same, other, or unknown; `strong` when proven."""

    kind: str
    strong: bool = False
    evidence: str = ""


def _entries(log_history: list) -> tuple[dict, ...] | None:
    """The entries when each is an object with a numeric step; None otherwise (damaged: the CKPT family
    reports the state, and nothing is judged from it)."""
    if not all(isinstance(entry, dict) and type(entry.get("step")) in (int, float) for entry in log_history):
        return None
    return tuple(log_history)


def _canonical(entries: list[dict]) -> list[str] | None:
    """Each entry as its JSON text, where NaN equals NaN; None when an entry cannot be written."""
    try:
        return [json.dumps(entry, sort_keys=True, allow_nan=True) for entry in entries]
    except (TypeError, ValueError):
        return None


def _same_entries(mine: list[dict], theirs: list[dict]) -> bool:
    """Equal entries: `==` first (fast), the JSON texts only when a NaN may make equal entries unequal."""
    return mine == theirs or (len(mine) == len(theirs) and (text := _canonical(mine)) is not None
                              and text == _canonical(theirs))


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except (OSError, ValueError):
        return None


def saved_arguments(ctx: RunContext, folder: Path) -> dict[str, Any]:
    """The identity arguments from training_args.bin, else from the seal; {} when neither can be read."""
    path = folder / "training_args.bin"
    saved: dict[str, Any] = {}
    if path.is_file():
        try:
            saved = ctx.training_args(path)
        except (PickleReadError, UnsafePickleError, OSError):  # CKPT010/CKPT028 report them
            saved = {}
    if not saved:
        saved = (readable_seal(ctx, folder) or {}).get("arguments") or {}
    return {key: normalize(key, saved[key]) for key in IDENTITY_KEYS
            if key in saved and isinstance(saved[key], (str, int, float, type(None)))}


def read_saved(ctx: RunContext, folder: Path) -> Saved | None:
    """The checkpoint's run facts; None when its trainer_state.json cannot be read (CKPT013 says why)."""
    state = ctx.trainer_state(folder)
    if state is None:
        return None
    batch = state.get("train_batch_size")
    return Saved(folder, ctx.global_step(folder), _entries(state.get("log_history") or []),
                 batch if type(batch) is int else None, saved_arguments(ctx, folder),
                 _mtime(folder / "trainer_state.json"))


def compare(one: Saved, other: Saved) -> Verdict:
    """Whether two checkpoints are of one run, strongest evidence first (see the module's docstring)."""
    low, high = sorted((one, other), key=lambda saved: saved.step)
    if low.history is not None and high.history is not None:
        mine = [entry for entry in low.history if entry["step"] <= low.step]
        theirs = [entry for entry in high.history if entry["step"] <= low.step]
        if mine or theirs:
            if _same_entries(mine, theirs):
                return Verdict("same", True, f"log_history agrees up to step {low.step}")
            return Verdict("other", True, _history_difference(low, high, mine, theirs))
    if low.batch is not None and high.batch is not None and low.batch != high.batch:
        return Verdict("other", True, f"train_batch_size {low.batch} in {low.name}, {high.batch} in {high.name}")
    differing = [key for key in IDENTITY_KEYS if key in low.arguments and key in high.arguments
                 and low.arguments[key] != high.arguments[key]]
    if differing:
        return Verdict("other", False, "; ".join(
            f"{key} {low.arguments[key]!r} in {low.name}, {high.arguments[key]!r} in {high.name}" for key in differing))
    return Verdict("unknown")


def _history_difference(low: Saved, high: Saved, mine: list[dict], theirs: list[dict]) -> str:
    """Where two log_histories part: the first step both logged with other values, in words."""
    theirs_at: dict[float, dict] = {}
    for entry in theirs:
        theirs_at.setdefault(entry["step"], entry)
    for entry in mine:
        other = theirs_at.get(entry["step"])
        if other is not None and not _same_entries([entry], [other]):
            keys = _differing_keys(entry, other)
            return (f"at step {_number(entry['step'])} {_values(low.name, entry, keys)}, "
                    f"{_values(high.name, other, keys)}")
    return (f"{high.name}'s log_history does not hold the {len(mine)} entries {low.name} logged up to step "
            f"{low.step} (it has {len(theirs)} there)")


def _differing_keys(entry: dict, other: dict) -> list[str]:
    """The fields the two entries log with other values, SHOWN_METRICS first, three at most."""
    keys = [key for key in entry.keys() | other.keys() if key != "step"
            and _canonical([{"v": entry.get(key, None)}]) != _canonical([{"v": other.get(key, None)}])]
    return sorted(keys, key=lambda key: (SHOWN_METRICS.index(key) if key in SHOWN_METRICS else len(SHOWN_METRICS),
                                         str(key)))[:3]


def _values(name: str, entry: dict, keys: list[str]) -> str:
    shown = [f"{printable(str(key)[:40])} {_number(entry[key]) if key in entry else '(none)'}" for key in keys]
    return f"{name} logged {', '.join(shown) if shown else 'other values'}"


def _number(value: Any) -> str:
    """A logged value as bounded text: 4 significant digits for any int or float (a 400-digit int included)."""
    if type(value) is bool or type(value) not in (int, float):
        return "a " + type(value).__name__
    try:
        return f"{value:.4g}"
    except OverflowError:  # an int beyond a float's range
        return f"{'-' if value < 0 else ''}an integer of about {int(value.bit_length() * 0.30103) + 1} digits"


# --- which run is "the" run -------------------------------------------------------------------


def _recipe_values(ctx: RunContext) -> dict[str, Any]:
    """The identity arguments as the recipe sets them (file, env or command line; defaults left out)."""
    if ctx.options.recipe is None:
        return {}
    try:
        recipe = ctx.recipe()
        resolved = {key: recipe.resolve(key) for key in IDENTITY_KEYS}
    except ReasonError:
        return {}
    return {key: normalize(key, value.value) for key, value in resolved.items() if value.source != "default"}


def the_run(ctx: RunContext, saved: list[Saved]) -> tuple[Saved, str]:
    """The checkpoint whose run the output_dir is for, and why: the recipe's resume_from_checkpoint, the
    newest one whose arguments the recipe sets, else the one saved last (trainer_state.json's mtime)."""
    def newest(candidates: list[Saved]) -> Saved:
        return max(candidates, key=lambda s: (s.saved_at if s.saved_at is not None else float("-inf"), s.step))

    explicit = ctx.explicit_resume_path()
    if explicit is not None:
        named = [s for s in saved if _same_folder(s.folder, explicit)]
        if named:
            return named[0], "the recipe's resume_from_checkpoint names it"
    wanted = _recipe_values(ctx)
    if wanted:
        fitting = [s for s in saved if all(s.arguments.get(key, value) == value for key, value in wanted.items())]
        if fitting and len(fitting) < len(saved):
            keys = ", ".join(f"{key} {value!r}" for key, value in wanted.items())
            return newest(fitting), f"its arguments are the recipe's ({keys})"
    return newest(saved), "saved last"


def _same_folder(one: Path, other: Path) -> bool:
    try:
        return one == other or os.path.samefile(one, other)
    except (OSError, ValueError):
        return False


# --- what the rotation after the next save deletes -----------------------------------------------


def save_settings(ctx: RunContext, target: Saved) -> tuple[int | None, int | None]:
    """(save_total_limit, save_steps) of the resumed run: the recipe's, else the target's saved ones."""
    saved: dict[str, Any] = {}
    path = target.folder / "training_args.bin"
    if path.is_file():
        try:
            saved = ctx.training_args(path)
        except (PickleReadError, UnsafePickleError, OSError):
            saved = {}
    values = {key: saved.get(key) for key in ("save_total_limit", "save_steps", "save_strategy")}
    if ctx.options.recipe is not None:
        try:
            resolved = {key: ctx.recipe().resolve(key) for key in values}
        except ReasonError:
            resolved = {}
        values.update({key: value.value for key, value in resolved.items() if value.source != "default"})
    limit, steps = values["save_total_limit"], values["save_steps"]
    steps = int(steps) if isinstance(steps, float) and steps.is_integer() and steps >= 1 else steps  # a float field
    strategy = str(values["save_strategy"] or "steps").rsplit(".", 1)[-1].lower()
    limit = limit if type(limit) is int and limit > 0 else None
    steps = steps if type(steps) is int and steps > 0 and strategy == "steps" else None
    return limit, steps


def rotation_order(mtimes: dict[str, float]) -> list[str]:
    """Checkpoint folder names oldest first, as transformers' sort_checkpoints(use_mtime=True) orders them."""
    ordered = sorted((mtime, name) for name, mtime in mtimes.items())
    if len(ordered) > 1 and ordered[-1][0] - ordered[0][0] < 1.0:  # "mtime may not be reliable": by step
        by_step = [(int(match.group(1)), name) for name in mtimes if (match := _STEP_IN_PATH.match(name))]
        return [name for _, name in sorted(by_step)]
    return [name for _, name in ordered]


def rotated_away(mtimes: dict[str, float], limit: int, best: str | None) -> list[str]:
    """The folders transformers' rotate_checkpoints deletes (its loop, on names)."""
    order = rotation_order(mtimes)
    if len(order) <= limit:
        return []
    protected = {order[-1]} | ({best} if best else set())
    remaining, deleted = len(order), []
    for name in order:
        if remaining <= max(limit, len(protected)):
            break
        if name not in protected:
            deleted.append(name)
            remaining -= 1
    return deleted


def next_save_rotation(ctx: RunContext, target: Saved) -> tuple[str, int, list[str]] | None:
    """(the next checkpoint's name, save_total_limit, what the rotation after that save deletes), or None
    when nothing is rotated. The new folder gets the newest mtime: now, as the save writes it."""
    limit, steps = save_settings(ctx, target)
    if limit is None:
        return None
    output_dir = target.folder.parent
    names = [name for name, is_dir in ctx.listing(output_dir).items() if is_dir and _CHECKPOINT_GLOB.match(name)]
    mtimes = {name: mtime for name in names if (mtime := _mtime(output_dir / name)) is not None}
    new = f"checkpoint-{(target.step // steps + 1) * steps}" if steps else "checkpoint-<next>"
    mtimes[new] = time.time()
    best = (ctx.trainer_state(target.folder) or {}).get("best_model_checkpoint")
    return new, limit, rotated_away(mtimes, limit, Path(best).name if isinstance(best, str) and best else None)


# --- the findings --------------------------------------------------------------------------------


def run(ctx: RunContext) -> Iterator[Finding]:
    saved = [facts for folder in ctx.target.checkpoints if (facts := read_saved(ctx, folder)) is not None]
    target_path = ctx.resume_point()
    target = next((s for s in saved if s.folder == target_path), None)
    others: list[tuple[Saved, Verdict]] = []
    if len(saved) > 1:
        reference, why = the_run(ctx, saved)
        verdicts = [(s, compare(s, reference)) for s in saved if s is not reference]
        others = [(s, verdict) for s, verdict in verdicts if verdict.kind == "other"]
        if target is not None and any(s is target for s, _ in others):
            yield target_finding(ctx, target, reference, why, dict((s.folder, v) for s, v in others)[target.folder],
                                 others)
        leftovers = [(s, v) for s, v in others if s is not target]
        if leftovers and target is not None:
            yield leftover_finding(ctx, leftovers, reference, why, target)
    if target is not None:
        yield from rotation_findings(ctx, target, {s.name for s, _ in others})


def _moved(others: list[tuple[Saved, Verdict]]) -> list[str]:
    return [str(s.folder) for s, _ in sorted(others, key=lambda pair: pair[0].step)]


def target_finding(ctx: RunContext, target: Saved, reference: Saved, why: str, verdict: Verdict,
                   others: list[tuple[Saved, Verdict]]) -> Finding:
    """RUN001: the resume starts from a checkpoint of another run than the run the folder is for."""
    probable = "" if verdict.strong else "probably "
    finding = TARGET_OTHER_RUN.finding(
        f"the resume starts from {target.name} ({target.describe()}), {probable}of another run than "
        f"{reference.name} ({reference.describe()}), the run this output_dir is for ({why}): {verdict.evidence}. "
        f"resume_from_checkpoint=True picks the highest checkpoint-N, so the resume continues the other run from "
        f"step {target.step}"
        + ("" if verdict.strong else "; a resume with changed arguments would look the same"),
        path=str(target.folder),
        hint=f"`resumedoctor fix --auto --unsafe` moves {', '.join(s.name for s, _ in others)} aside so the "
             f"resume picks {reference.name}; or resume with resume_from_checkpoint={reference.folder}")
    finding.extra.update(checkpoint=str(target.folder), quarantine=_moved(others))
    return finding if verdict.strong else _at(finding, WARNING)


def leftover_finding(ctx: RunContext, leftovers: list[tuple[Saved, Verdict]], reference: Saved, why: str,
                     target: Saved) -> Finding:
    """RUN002: other-run checkpoints the resume does not pick; a warning when the next rotation deletes them."""
    leftovers = sorted(leftovers, key=lambda pair: pair[0].step)
    names = ", ".join(s.name for s, _ in leftovers)
    evidence = "; ".join(f"{s.name}: {'' if v.strong else 'probably, '}{v.evidence}" for s, v in leftovers)
    rotation = next_save_rotation(ctx, target)
    doomed = [s.name for s, _ in leftovers if rotation and s.name in rotation[2]]
    consequence = (f"the rotation after the next save ({rotation[0]}, save_total_limit={rotation[1]}) deletes "
                   f"{', '.join(doomed)}" if doomed else "the resume does not pick them; they take disk space")
    finding = OTHER_RUN_LEFTOVERS.finding(
        f"{names} {'is' if len(leftovers) == 1 else 'are'} from another run than {reference.name} "
        f"({reference.describe()}), the run this output_dir is for ({why}): {evidence}. {consequence}",
        path=str(leftovers[-1][0].folder),
        hint="`resumedoctor fix --auto --unsafe` moves them into .resumedoctor/quarantine/ (undoable); copy them "
             "elsewhere if that run matters")
    finding.extra.update(quarantine=_moved(leftovers))
    return _at(finding, WARNING) if doomed else finding


def rotation_findings(ctx: RunContext, target: Saved, other_run: set[str]) -> Iterator[Finding]:
    """RUN003: the rotation after the next save deletes a newer checkpoint of this run, keeping an older one
    (or the checkpoint it just saved)."""
    rotation = next_save_rotation(ctx, target)
    if rotation is None or not rotation[2]:
        return
    new, limit, deleted = rotation
    ours = {folder.name: step for folder in ctx.target.checkpoints
            if folder.name not in other_run and (step := _step(folder.name)) is not None}
    kept = [name for name in ours if name not in deleted]
    wrong = [name for name in deleted if name in ours and any(ours[name] > ours[other] for other in kept)]
    highest = max((ours[name] for name in wrong), default=None)
    if new in deleted:
        wrong.insert(0, new)
        highest = 1 << 62
    if not wrong:
        return
    older = sorted((name for name in kept if ours[name] < highest), key=ours.get)
    output_dir = target.folder.parent
    in_order = " ".join(sorted(ours, key=ours.get))
    yield ROTATION_DELETES_NEWEST.finding(
        f"the rotation after the next save ({new}, save_total_limit={limit}) orders the folders by mtime and "
        f"deletes {', '.join(wrong)} while it keeps {', '.join(older) or 'older ones'}: the mtimes are not in step "
        f"order ({_mtimes_in_words(output_dir, wrong + older)})", path=str(output_dir),
        hint=f"cd {shlex.quote(str(output_dir))} && for c in {in_order}; do touch -m $c; sleep 1; done")


def _step(name: str) -> int | None:
    return checkpoint_step(Path(name))


def _mtimes_in_words(output_dir: Path, names: list[str]) -> str:
    shown = []
    for name in names:
        mtime = _mtime(output_dir / name)
        if mtime is not None:
            shown.append(f"{name} modified {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(mtime))}")
    return ", ".join(shown) or "mtimes unreadable"


def _at(finding: Finding, severity: Severity) -> Finding:
    """The finding at another severity than its rule's default (the user's settings still override it)."""
    return dataclasses.replace(finding, severity=severity)


def _not_applicable(ctx: RunContext) -> str | None:
    if not ctx.target.is_output_dir:
        return "one checkpoint was given: runs are told apart in an output_dir"
    return None


FAMILY = CheckFamily(
    name="run-identity",
    prefix="RUN",
    title="One run per output_dir: the resume and the rotation act on this run's checkpoints",
    rules=RULES,
    run=run,
    not_applicable=_not_applicable,
)

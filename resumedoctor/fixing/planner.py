"""The fix engine: plan fixes from findings, preview them, apply them as one journaled transaction.

`fix --auto` applies safe fixes, `--unsafe` adds the unsafe ones, `--dry-run` only previews.
Every change is backed up and undoable (`resumedoctor.fixing.journal`); afterwards the checks run again.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.engine.context import Options, RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation, Quarantine, ReplaceTail, WriteFile
from resumedoctor.engine.registry import Fixer, Registry, load_registry
from resumedoctor.engine.runner import Report, new_context, run_checks
from resumedoctor.engine.settings import Settings, user_settings
from resumedoctor.engine.target import Target, resolve_target, state_dir
from resumedoctor.fixing.confinement import ConfinementError, state_folder
from resumedoctor.fixing.journal import (
    JournalError,
    Transaction,
    UntrustedJournalError,
    list_transactions,
    new_id,
    remove_empty_state_dir,
)
from resumedoctor.fixing.writer_lock import LockBusyError, writer_lock

# Each round applies the safe fixes, or else the unsafe ones, then checks again: a quarantine can
# uncover findings in the checkpoint that becomes the newest. A few rounds always suffice.
MAX_ROUNDS = 5


class FixError(Exception):
    """The fix cannot be applied (read-only output_dir, a tree edited behind a journal's back, a journal
    or a `.resumedoctor/` that is not to be trusted, another writer holding the lock)."""


# What stops a writer before it changes anything: said in one line, exit 2.
REFUSALS = (ConfinementError, UntrustedJournalError, LockBusyError)


@dataclass(frozen=True)
class PlannedFix:
    finding: Finding
    fixer: Fixer
    operations: tuple[Operation, ...]


@dataclass
class FixResult:
    output_dir: Path
    before: Report
    planned: list[PlannedFix] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    skipped_unsafe: list[tuple[Finding, Fixer]] = field(default_factory=list)
    not_applicable: list[tuple[Finding, Fixer]] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    live_save: str | None = None  # why quarantines were held back: a trainer seems to be writing
    transactions: list[Transaction] = field(default_factory=list)
    deferred: list[Operation] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)  # one line per applied change
    after: Report | None = None
    dry_run: bool = False

    @property
    def final(self) -> Report:
        return self.after or self.before


def _diagnose(path: Path, settings: Settings, options: Options, registry: Registry,
              environ: Mapping[str, str] | None) -> tuple[RunContext, Report]:
    ctx = new_context(resolve_target(path, ledger=options.ledger_asked), settings, options, environ, registry)
    return ctx, run_checks(ctx, registry)


def plan_fixes(ctx: RunContext, report: Report, registry: Registry, *, unsafe: bool,
               settled_keys: frozenset[str] = frozenset()) -> FixResult:
    """Ask the fixers of every finding for their operations.

    `settled_keys`: recipe keys an earlier round of this fix run set; a finding about such a key is the
    consequence of our own edit, and a second fixer must not write the key back. A fixer whose write
    touches a file another fixer already writes in this round waits for the next round, which plans it
    on the updated file (two edits of one recipe never overwrite each other).
    """
    result = FixResult(ctx.target.output_dir, report)
    written: set[str] = set()
    for finding in report.findings:
        if finding.extra.get("key") in settled_keys:
            continue
        for fixer in registry.fixers_for(finding.code):
            if fixer.safety is FixSafety.UNSAFE and not unsafe:
                result.skipped_unsafe.append((finding, fixer))
                continue
            operations = fixer.changes(ctx, finding)
            if operations:
                paths = {os.path.abspath(op.path) for op in operations if not isinstance(op, Quarantine)}
                if paths & written:
                    break  # next round
                written |= paths
                stamped = tuple(_stamp(op, finding.code, fixer.name) for op in operations)
                result.planned.append(PlannedFix(finding, fixer, stamped))
                break
            result.not_applicable.append((finding, fixer))
    result.planned = _judged_on_what_stays(ctx, result.planned)
    result.operations = merge_operations(with_seals_updated([op for plan in result.planned for op in plan.operations]))
    return result


def _judged_on_what_stays(ctx: RunContext, planned: list[PlannedFix]) -> list[PlannedFix]:
    """The plans, less those judged against the checkpoint a planned quarantine moves away from the resume
    (another run's checkpoint, RUN001): the next round judges them against the checkpoint resumed then."""
    point = ctx.resume_point()
    moved = point is not None and any(isinstance(op, Quarantine) and _same_path(op.path, point)
                                      for plan in planned for op in plan.operations)
    return [plan for plan in planned if any(isinstance(op, Quarantine) for op in plan.operations)] if moved else planned


def _same_path(one: Path, other: Path) -> bool:
    return os.path.abspath(one) == os.path.abspath(other)


def with_seals_updated(operations: list[Operation]) -> list[Operation]:
    """The operations, plus a new seal for every sealed checkpoint a write changes.

    A safe fix of a sealed file (trainer_state.json's global_step, say) must not turn into a seal
    mismatch (CKPT029): the seal is rewritten with the fixed file's size and hash, and names the fix.
    """

    from resumedoctor.integrations.seal.record import (
        SEAL_FILE,
        read_seal,
        seal_bytes,
    )
    from resumedoctor.io.hashing import new_hasher, sha256_bytes

    by_folder: dict[Path, list[WriteFile]] = {}
    for op in operations:
        if isinstance(op, WriteFile) and op.path.name != SEAL_FILE and (op.path.parent / SEAL_FILE).is_file():
            by_folder.setdefault(op.path.parent, []).append(op)
    added: list[Operation] = []
    for folder, writes in by_folder.items():
        try:
            seal = read_seal(folder)
        except ValueError:
            continue  # an unreadable seal is its own finding (CKPT031)
        for write in writes:
            hasher = new_hasher(seal["hash"])
            hasher.update(write.content)
            seal["files"][write.path.name] = {"size": len(write.content), seal["hash"]: hasher.hexdigest()}
            if write.path.name == "curriculum_state.json":
                seal["curriculum_sha256"] = sha256_bytes(write.content)
        seal["edited_by_fix"] = sorted({*seal.get("edited_by_fix", []), *(w.path.name for w in writes)})
        added.append(WriteFile(folder / SEAL_FILE, seal_bytes(seal), "the seal follows the fixed file(s): "
                               + ", ".join(sorted(w.path.name for w in writes)), code=writes[0].code,
                               fixer=writes[0].fixer))
    return [*operations, *added]


def _stamp(operation: Operation, code: str, fixer: str) -> Operation:
    return dataclasses.replace(operation, code=operation.code or code, fixer=operation.fixer or fixer)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def merge_operations(operations: list[Operation]) -> list[Operation]:
    """One operation per path; nothing written inside a folder that is being quarantined.

    Writes come first, then moves, so a write never lands in a folder that has just moved.
    """
    moves: dict[str, Quarantine] = {}
    writes: dict[str, WriteFile] = {}
    for operation in operations:
        key = os.path.abspath(operation.path)
        if isinstance(operation, Quarantine):
            moves.setdefault(key, operation)
        else:
            writes.setdefault(key, operation)
    kept_writes = [w for w in writes.values() if not any(_inside(w.path, m.path) for m in moves.values())]
    kept_moves = [m for m in moves.values() if not any(_inside(m.path, o.path) and m is not o for o in moves.values())]
    return [*kept_writes, *kept_moves]


def ensure_writable(output_dir: Path) -> None:
    """Try the one write every fix needs (the state folder); as root, os.access cannot tell."""
    state = state_dir(output_dir)
    probe = state / ".write-probe"
    try:
        try:
            os.mkdir(state)  # never through a link: an existing one is refused just below
        except FileExistsError:
            pass
        state_folder(output_dir)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        probe.unlink()
    except OSError as exc:
        raise FixError(f"{output_dir} is not writable ({exc.strerror or exc}); nothing was changed") from None


def recover_interrupted(output_dir: Path) -> list[str]:
    """Finish every transaction a crash left half-applied; returns their ids."""
    finished = []
    for transaction in list_transactions(output_dir):
        if transaction.status in ("prepared", "applying"):
            try:
                transaction.complete()
            except (JournalError, OSError, ConfinementError) as exc:
                raise FixError(f"cannot finish the interrupted fix {transaction.id} ({transaction.journal_path}): "
                               f"{_said(exc)}") from None
            finished.append(transaction.id)
        elif transaction.status == "undoing":
            try:
                transaction.roll_back()
                transaction.discard()
            except (JournalError, OSError, ConfinementError) as exc:
                raise FixError(f"cannot finish the interrupted undo {transaction.id} ({transaction.journal_path}): "
                               f"{_said(exc)}") from None
            finished.append(transaction.id)
    return finished


def _changed_so_far(result: FixResult) -> str:
    """What a refused or failed round leaves: nothing, or the rounds this run applied before it."""
    if not result.transactions:
        return "nothing was changed"
    ids = ", ".join(transaction.id for transaction in result.transactions)
    return (f"this step changed nothing, but the {len(result.transactions)} fix(es) applied before it stand "
            f"({ids}; `resumedoctor undo` rolls them back)")


def _said(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def _apply(output_dir: Path, result: FixResult, planned: FixResult, run_id: str,
           outside: frozenset[Path] = frozenset()) -> None:
    """Apply one phase's operations as one transaction; roll it back if any step fails."""
    description = ", ".join(sorted({plan.fixer.name for plan in planned.planned}))
    try:
        transaction = Transaction.prepare(output_dir, planned.operations, description, run_id, outside)
    except ConfinementError as exc:
        raise FixError(f"refusing to fix: {exc.reason}; {_changed_so_far(result)}") from None
    except OSError as exc:
        raise FixError(f"cannot prepare the fix under {state_dir(output_dir)}: {exc.strerror or exc}") from None
    descriptions = [describe_operation(op, output_dir) for op in planned.operations]  # before the tree changes
    try:
        transaction.complete()
    except (OSError, JournalError, ConfinementError) as exc:
        try:
            transaction.roll_back()
        except (OSError, JournalError, ConfinementError) as undo_exc:
            raise FixError(f"fix failed ({exc}) and so did rolling it back ({undo_exc}); "
                           f"the journal is {transaction.folder}") from None
        raise FixError(f"fix failed and was rolled back: {exc}; {_changed_so_far(result)}") from None
    result.transactions.append(transaction)
    result.planned += planned.planned
    result.operations += planned.operations
    result.descriptions += descriptions


def fix(
    path: str | os.PathLike,
    *,
    unsafe: bool = False,
    dry_run: bool = False,
    settings: Settings | None = None,
    options: Options | None = None,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> FixResult:
    """Diagnose PATH, apply the fixes allowed, diagnose again: the one entry point of `fix`.

    Safe fixes go first; unsafe ones are planned only when no safe fix is left, on the repaired
    tree, so that a checkpoint a safe fix repairs is never quarantined. All rounds form one run
    for `undo`. Applying holds the output_dir's writer lock from the first read to the last write.
    """
    path = Path(path)
    options = options or Options()
    target = resolve_target(path, ledger=options.ledger_asked)
    refuse_linked_ledger(target)
    settings = settings if settings is not None else user_settings(path)
    registry = registry or load_registry()
    if dry_run:
        return _preview(path, unsafe, settings, options, registry, environ)
    try:
        with writer_lock(target.output_dir):
            return _fix_locked(path, target.output_dir, unsafe, settings, options, registry, environ)
    except REFUSALS as exc:
        raise FixError(exc.reason) from None


def refuse_linked_ledger(target: Target) -> None:
    """A results file given as a symbolic link is refused before anything is planned: its records lie
    wherever the link leads (often outside the folder the fixes may write), and no fix writes through it."""
    if target.is_ledger and target.path.is_symlink():
        leads = os.path.realpath(target.path)
        raise FixError(f"refusing to fix: {target.path} is a symbolic link (to {leads}); a ledger is fixed "
                       f"where its records are: run fix on {leads}; nothing was changed")


def _preview(path: Path, unsafe: bool, settings: Settings, options: Options, registry: Registry,
             environ: Mapping[str, str] | None) -> FixResult:
    """`fix --dry-run`: what would change, in order; nothing is written."""
    ctx, before = _diagnose(path, settings, options, registry, environ)
    safe = plan_fixes(ctx, before, registry, unsafe=False)
    result = FixResult(ctx.target.output_dir, before, dry_run=True, skipped_unsafe=[] if unsafe else safe.skipped_unsafe,
                       not_applicable=safe.not_applicable, live_save=live_save_note(ctx))
    result.planned, result.operations = list(safe.planned), list(safe.operations)
    if unsafe:
        both = plan_fixes(ctx, before, registry, unsafe=True)
        written = [op.path for op in safe.operations if not isinstance(op, Quarantine)]
        for plan in both.planned:
            if plan.fixer.safety is FixSafety.UNSAFE:
                result.planned.append(plan)
        for op in both.operations:
            if op in result.operations:
                continue
            if isinstance(op, Quarantine) and any(_inside(w, op.path) for w in written):
                result.deferred.append(op)  # decided after the safe fixes are in
            else:
                result.operations.append(op)
        result.live_save = live_save_note(ctx)
    return result


def _fix_locked(path: Path, output_dir: Path, unsafe: bool, settings: Settings, options: Options,
                registry: Registry, environ: Mapping[str, str] | None) -> FixResult:
    recovered = recover_interrupted(output_dir)
    ctx, before = _diagnose(path, settings, options, registry, environ)
    safe = plan_fixes(ctx, before, registry, unsafe=False)
    result = FixResult(output_dir, before, recovered=recovered, skipped_unsafe=[] if unsafe else safe.skipped_unsafe,
                       not_applicable=safe.not_applicable)
    outside = frozenset({Path(os.path.abspath(options.recipe))}) if options.recipe else frozenset()
    run_id = new_id()
    current, plan = ctx, safe
    settled: set[str] = set()
    for _ in range(MAX_ROUNDS):
        if not plan.operations and unsafe:
            plan = plan_fixes(current, plan.before, registry, unsafe=True, settled_keys=frozenset(settled))
        result.live_save = result.live_save or live_save_note(current)
        if not plan.operations:
            result.not_applicable = plan.not_applicable
            break
        ensure_writable(output_dir)
        _apply(output_dir, result, plan, run_id, outside)
        settled |= {op.key for op in plan.operations if isinstance(op, WriteFile) and op.key}
        again = path if path.exists() else output_dir
        current, report = _diagnose(again, settings, options, registry, environ)
        result.after = report
        plan = plan_fixes(current, report, registry, unsafe=False, settled_keys=frozenset(settled))
    if result.after is not None and not unsafe:
        result.skipped_unsafe = plan_fixes(current, result.after, registry, unsafe=False).skipped_unsafe
    return result


def live_save_note(ctx: RunContext) -> str | None:
    """What the live-trainer guard held back in this context (see resumedoctor.engine.live_save)."""
    from resumedoctor.engine.live_save import held_back_note

    return held_back_note(ctx)


def undo(path: str | os.PathLike, *, everything: bool = False) -> list[Transaction]:
    """Roll back the newest fix run (or every one), newest first; returns what was undone."""
    output_dir = resolve_target(path).output_dir
    try:
        with writer_lock(output_dir):
            return _undo_locked(output_dir, everything)
    except REFUSALS as exc:
        raise FixError(exc.reason) from None


def _undo_locked(output_dir: Path, everything: bool) -> list[Transaction]:
    transactions = [t for t in list_transactions(output_dir) if t.status != "undone"]
    if not transactions:
        return []
    newest_run = transactions[-1].run_id
    chosen = list(reversed(transactions if everything else [t for t in transactions if t.run_id == newest_run]))
    for transaction in chosen:
        if transaction.unverified is not None:
            raise FixError(_unverified_undo(transaction, chosen))
    for transaction in chosen:
        try:
            transaction.roll_back()
        except (JournalError, OSError, ConfinementError) as exc:
            raise FixError(f"cannot undo fix {transaction.id} ({transaction.journal_path}): {_said(exc)}") from None
        transaction.discard()
    remove_empty_state_dir(output_dir, keep_lock=True)
    return chosen


def _unverified_undo(transaction: Transaction, chosen: list[Transaction]) -> str:
    """Why undo stops before a finished journal whose outside write it cannot verify, and what to do."""
    recipe = transaction.unverified.unverified_outside
    backup = transaction.folder / "backup"
    return (f"cannot undo fix {transaction.id} ({transaction.journal_path}): {transaction.unverified.why}. Nothing was undone. If you "
            f"made that fix yourself with another key, restore {recipe} by hand from {backup}/ (the bytes "
            f"before the fix), then move {transaction.folder} out of the output_dir and run undo again"
            + (f" for the other {len(chosen) - 1} fix(es)" if len(chosen) > 1 else ""))


def _shown_path(path: Path, output_dir: Path) -> str:
    """Relative inside the output_dir; absolute outside it (the recipe), where `../recipe.yaml` would mislead."""
    where = os.path.relpath(path, output_dir)
    return os.path.abspath(path) if where == ".." or where.startswith(".." + os.sep) else where


def describe_operation(operation: Operation, output_dir: Path) -> str:
    where = _shown_path(operation.path, output_dir)
    if isinstance(operation, Quarantine):
        return f"quarantine {where}/ -> .resumedoctor/quarantine/ ({operation.code}: {operation.reason})"
    if isinstance(operation, ReplaceTail):
        return f"edit the end of {where} ({operation.code}: {operation.reason})"
    verb = "rewrite" if operation.path.exists() else "create"
    return f"{verb} {where} ({operation.code}: {operation.reason})"


def preview(operations: list[Operation], output_dir: Path) -> str:
    """What a fix would change: a unified diff per file, a line per move."""
    chunks = []
    for operation in operations:
        chunks.append(f"# {describe_operation(operation, output_dir)}")
        if isinstance(operation, ReplaceTail):
            chunks.append(_tail_preview(operation, output_dir))
        if isinstance(operation, WriteFile) and b"\0" in operation.content:
            chunks.append(f"  (binary, {len(operation.content)} bytes)")  # a Parquet copy: no text diff to read
        elif isinstance(operation, WriteFile):
            where = _shown_path(operation.path, output_dir)
            old = operation.path.read_text(encoding="utf-8", errors="replace") if operation.path.exists() else ""
            new = operation.content.decode("utf-8", errors="replace")
            chunks.append("".join(difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True),
                fromfile=f"a/{where}" if old else "/dev/null", tofile=f"b/{where}", n=2,
            )).rstrip("\n"))
    return "\n".join(chunks) + "\n"


def _tail_preview(operation: ReplaceTail, output_dir: Path, shown: int = 2000) -> str:
    """The bytes a tail edit cuts and adds, each cut to SHOWN characters (a torn line may be huge)."""
    where = _shown_path(operation.path, output_dir)
    with open(operation.path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(operation.keep)
        cut = handle.read(shown)
    lines = [f"--- a/{where} (bytes {operation.keep}-{size} of {size})", f"+++ b/{where}"]
    if size > operation.keep:
        more = f" ... ({size - operation.keep - shown} more bytes)" if size - operation.keep > shown else ""
        lines.append("-" + cut.decode("utf-8", errors="replace") + more)
    if operation.tail:
        lines.append("+" + operation.tail[:shown].decode("utf-8", errors="replace").replace("\n", "\\n"))
    return "\n".join(lines)

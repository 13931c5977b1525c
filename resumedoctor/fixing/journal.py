"""Transactions under `<output_dir>/.resumedoctor/`: backed up, atomic, idempotent, undoable.

A fix run is one transaction, a folder `.resumedoctor/transactions/<id>/` holding:
  journal.json  the operations, with the sha256 of each file before and after, and a status;
  new/<i>       the bytes every write will put in place (so a re-run can finish the job);
  backup/<i>    the bytes every write replaces (so undo can restore them).
Steps, each durable (fsync) before the next: write new/ and the journal ("prepared"), copy the
backups, mark "applying", apply the operations in order, mark "committed".

Every operation's state can be read off the tree (a file's hash is the old or the new one; a moved
folder is at its source or at its destination), so after a SIGKILL at any point a re-run finishes
the transaction (`complete`) and `undo` takes back whatever part of it was applied (`roll_back`).
Nothing of the user's is ever deleted: broken checkpoints are moved, not removed.

A journal may be crafted (it lies in the output_dir): it is validated (`journal_schema`) before use,
and every path it names is resolved inside the output_dir without following a link
(`confinement.resolve_inside`); a write whose new bytes equal the old ones is neither backed up nor
undone, so it can never wedge a transaction.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

from resumedoctor.engine.operations import Operation, ReplaceTail, WriteFile
from resumedoctor.engine.target import state_dir
from resumedoctor.errors import ReasonError
from resumedoctor.fixing.confinement import (
    ConfinementError,
    UnverifiedOutsideWrite,
    check_outside,
    outside_mac,
    real_folder,
    relative_inside,
    resolve_inside,
    state_folder,
)
from resumedoctor.fixing.journal_schema import ID, JournalInvalid, validate_journal
from resumedoctor.io.atomic_write import atomic_write, fsync_dir, temporary_path
from resumedoctor.io.bounded_read import JSON_CONFIG_LIMIT, read_json_file
from resumedoctor.io.hashing import new_hasher, sha256_bytes, sha256_file

TRANSACTIONS = "transactions"
QUARANTINE = "quarantine"


class JournalError(Exception):
    """The tree disagrees with a journal in a way no step can resolve (someone edited it since)."""


class UntrustedJournalError(ReasonError):
    """A journal that is not valid, or names a path outside the output_dir: it is never acted on."""

    def __init__(self, journal: Path, why: str, *, unverified_outside: str | None = None):
        super().__init__(f"{journal}: {why}; nothing was done with it. If you did not write it, move its "
                         f"folder {journal.parent} out of the output_dir and run again")
        self.journal = journal
        self.why = why
        self.unverified_outside = unverified_outside  # the outside path whose signature is not this key's




class Transaction:
    """One journaled fix run over an output_dir."""

    def __init__(self, output_dir: Path, folder: Path, journal: dict):
        self.output_dir = output_dir
        self.folder = folder
        self.journal = journal
        self.unverified: UntrustedJournalError | None = None  # a finished journal undo must not act on

    # ---- creation ------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, output_dir: Path, operations: list[Operation], description: str, run_id: str,
                outside: frozenset[Path] = frozenset()) -> Transaction:
        """Journal OPERATIONS (no-op writes left out). `outside`: files beyond the output_dir the user
        named (the recipe) that a write may change; any other path outside is ConfinementError."""
        transaction_id = new_id()
        root = state_folder(output_dir, TRANSACTIONS)
        folder = real_folder(root / transaction_id, create=True)
        try:
            entries = _entries(output_dir, folder, transaction_id, operations, outside)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # no journal yet: nothing of the tree was touched
            raise
        journal = {
            "version": 1,
            "id": transaction_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "created_ns": time.time_ns(),
            "run": run_id,
            "description": description,
            "status": "prepared",
            "operations": entries,
        }
        validate_journal(journal, transaction_id)  # what we write is what we accept
        transaction = cls(output_dir, folder, journal)
        transaction.save()
        return transaction

    @classmethod
    def load(cls, output_dir: Path, folder: Path) -> Transaction:
        """The transaction in FOLDER; UntrustedJournalError unless its journal passes the schema."""
        path = folder / JOURNAL_FILE
        try:
            resolve_inside(folder, JOURNAL_FILE)
            journal = validate_journal(read_json_file(path, JSON_CONFIG_LIMIT), folder.name)
        except (JournalInvalid, ConfinementError, ReasonError, ValueError, RecursionError) as exc:
            raise UntrustedJournalError(path, _one_line(exc)) from None
        return cls(output_dir, folder, journal)

    def save(self) -> None:
        atomic_write(self.folder / JOURNAL_FILE, json.dumps(self.journal, indent=2).encode("utf-8"))

    def set_status(self, status: str) -> None:
        self.journal["status"] = status
        self.save()

    @property
    def status(self) -> str:
        return self.journal["status"]

    @property
    def id(self) -> str:
        return self.journal["id"]

    @property
    def run_id(self) -> str:
        return self.journal.get("run", self.id)

    @property
    def journal_path(self) -> Path:
        return self.folder / JOURNAL_FILE

    # ---- where an entry points (checked each time it is used) ------------------------------------
    def check_paths(self) -> None:
        """Every path of every entry, resolved: UntrustedJournalError before anything is done."""
        for entry in self.journal["operations"]:
            try:
                self._paths(entry)
            except UnverifiedOutsideWrite as exc:
                raise UntrustedJournalError(self.journal_path, exc.reason, unverified_outside=exc.path) from None
            except ConfinementError as exc:
                raise UntrustedJournalError(self.journal_path, exc.reason) from None

    def _paths(self, entry: dict) -> tuple[Path, Path]:
        """(path, new bytes file) of a write or a tail edit; (source, destination) of a move."""
        if entry["kind"] == "write":
            target = check_outside(self.id, entry) if "mac" in entry else resolve_inside(self.output_dir, entry["path"])
            return target, resolve_inside(self.folder, entry["new"])
        if entry["kind"] == "tail":
            return resolve_inside(self.output_dir, entry["path"]), resolve_inside(self.folder, entry["new"])
        return (resolve_inside(self.output_dir, entry["src"], final_may_be_folder=True),
                resolve_inside(self.output_dir, entry["dst"], final_may_be_folder=True))

    # ---- reading the tree ----------------------------------------------------------------------
    def _state(self, entry: dict) -> str:
        """'old', 'new', or raise JournalError when the tree is neither ('partial': a tail edit cut short)."""
        if entry["kind"] == "tail":
            return _tail_state(self._paths(entry)[0], entry)
        if entry["kind"] == "write":
            path, _ = self._paths(entry)
            current = sha256_file(path)
            if current == entry["new_sha256"]:
                return "new"
            if current == entry["old_sha256"]:
                return "old"
            raise JournalError(f"{path} changed since fix {self.id} planned it; resolve by hand")
        source, destination = self._paths(entry)
        if os.path.lexists(source) and not os.path.lexists(destination):
            return "old"
        if os.path.lexists(destination) and not os.path.lexists(source):
            return "new"
        raise JournalError(f"both or neither of {source} and {destination} exist; resolve by hand")

    def _clear_temp_file(self, entry: dict) -> None:
        """A write killed between temp file and rename leaves the temp file: move it into the journal."""
        if entry["kind"] != "write":
            return
        path, _ = self._paths(entry)
        temporary = temporary_path(path)
        if os.path.lexists(temporary):
            debris = real_folder(self.folder / "debris", create=True)
            os.replace(temporary, debris / f"{len(os.listdir(debris))}-{temporary.name}")

    @staticmethod
    def _verified(path: Path, sha256: str) -> Path:
        """PATH (new/<i> or backup/<i>) when its bytes are the ones the journal names."""
        if sha256_file(path) != sha256:
            raise JournalError(f"{path} is missing or damaged")
        return path

    def _bytes(self, relative: str, sha256: str) -> bytes:
        """The bytes of new/<i> or backup/<i>, only when they are the ones the journal names."""
        path = resolve_inside(self.folder, relative)
        if sha256_file(path) != sha256:
            raise JournalError(f"{path} is missing or damaged")
        return path.read_bytes()

    # ---- doing ---------------------------------------------------------------------------------
    def _back_up(self) -> None:
        for entry in self.journal["operations"]:
            if entry["kind"] == "tail":
                self._back_up_tail(entry)
                continue
            if entry["kind"] != "write" or entry["old_sha256"] in (None, entry["new_sha256"]):
                continue
            backup = resolve_inside(self.folder, entry["backup"])
            if sha256_file(backup) == entry["old_sha256"]:
                continue
            if self._state(entry) != "old":
                raise JournalError(f"no backup of {entry['path']} and it was already changed")
            source, _ = self._paths(entry)
            with open(os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as reader, \
                    open(os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as writer:
                shutil.copyfileobj(reader, writer)
                writer.flush()
                os.fsync(writer.fileno())
        fsync_dir(self.folder / "backup")

    def _back_up_tail(self, entry: dict) -> None:
        """Copy the bytes a tail edit cuts (streamed: a torn line may be large)."""
        backup = resolve_inside(self.folder, entry["backup"])
        if sha256_file(backup) == entry["cut_sha256"]:
            return
        if self._state(entry) != "old":
            raise JournalError(f"no backup of {entry['path']} and it was already changed")
        source, _ = self._paths(entry)
        with open(os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as reader, \
                open(os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as writer:
            reader.seek(entry["keep"])
            shutil.copyfileobj(reader, writer)
            writer.flush()
            os.fsync(writer.fileno())

    def complete(self) -> None:
        """Bring the tree to the transaction's new state (idempotent; also after a crash)."""
        self.check_paths()
        self._back_up()
        if self.status != "applying":
            self.set_status("applying")
        for entry in self.journal["operations"]:
            self._clear_temp_file(entry)
            if self._state(entry) != "new":
                self._apply(entry)
        self.set_status("committed")

    def _apply(self, entry: dict) -> None:
        """Put one operation's new state in place (durably)."""
        if entry["kind"] == "tail":
            path, new = self._paths(entry)
            _put_tail(path, entry["keep"], self._verified(new, entry["tail_sha256"]))
        elif entry["kind"] == "write":
            path, _ = self._paths(entry)
            content = self._bytes(entry["new"], entry["new_sha256"])
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, content)
        else:
            source, destination = self._paths(entry)
            real_folder(destination.parent, create=True)
            os.rename(source, destination)
            fsync_dir(destination.parent)
            fsync_dir(source.parent)

    def roll_back(self) -> None:
        """Bring the tree back to the transaction's old state (idempotent; also after a crash)."""
        self._begin_undo()
        for entry in reversed(self.journal["operations"]):
            self._clear_temp_file(entry)
            if self._state(entry) == "old" or (entry["kind"] == "write" and entry["old_sha256"] == entry["new_sha256"]):
                continue
            self._revert(entry)
        self.set_status("undone")

    def _begin_undo(self) -> None:
        """Check every path, then mark the transaction as being undone (a prepared one never changed the tree)."""
        self.check_paths()
        if self.status != "prepared":
            self.set_status("undoing")

    def _revert(self, entry: dict) -> None:
        """Put one operation's old state back (durably)."""
        if entry["kind"] == "tail":
            path, _ = self._paths(entry)
            _put_tail(path, entry["keep"], self._verified(resolve_inside(self.folder, entry["backup"]), entry["cut_sha256"]))
        elif entry["kind"] == "write":
            path, _ = self._paths(entry)
            if entry["old_sha256"] is None:
                os.unlink(path)  # a file this transaction created; its bytes stay in new/
                fsync_dir(path.parent)
            else:
                atomic_write(path, self._bytes(entry["backup"], entry["old_sha256"]))
        else:
            source, destination = self._paths(entry)
            os.rename(destination, source)
            fsync_dir(source.parent)

    def discard(self) -> None:
        """Remove an undone transaction's folder (its backups are back in place)."""
        trash = self.folder.with_name(f".trash-{self.folder.name}")
        os.replace(self.folder, trash)
        shutil.rmtree(trash)


def _entries(output_dir: Path, folder: Path, transaction_id: str, operations: list[Operation],
             outside: frozenset[Path]) -> list[dict]:
    """The journal entries of OPERATIONS, with the new bytes written to new/<i> and fsynced."""
    (folder / "new").mkdir()
    (folder / "backup").mkdir()
    quarantine_root = state_dir(output_dir) / QUARANTINE
    taken: set[Path] = set()
    entries = []
    for operation in operations:
        if isinstance(operation, WriteFile):
            entry = _write_entry(output_dir, transaction_id, operation, len(entries), outside)
            if entry is None:
                continue  # the file already holds these bytes: nothing to change, back up or undo
            (folder / entry["new"]).write_bytes(operation.content)
        elif isinstance(operation, ReplaceTail):
            entry = _tail_entry(output_dir, operation, len(entries))
            if entry is None:
                continue
            (folder / entry["new"]).write_bytes(operation.tail)
        else:
            source = _confined(output_dir, operation.path, folder=True)
            destination = quarantine_root / f"{operation.path.name}.{transaction_id}"
            while destination in taken or os.path.lexists(destination):
                destination = destination.with_name(destination.name + "_")
            taken.add(destination)
            entry = {"kind": "move", "src": source, "dst": _confined(output_dir, destination, folder=True)}
        entries.append({**entry, "reason": operation.reason, "code": operation.code, "fixer": operation.fixer})
    for new_file in (folder / "new").iterdir():
        with open(new_file, "rb") as handle:
            os.fsync(handle.fileno())
    return entries


JOURNAL_FILE = "journal.json"


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def _confined(output_dir: Path, path: Path, *, folder: bool = False) -> str:
    """PATH relative to the output_dir, checked like a journal's path is; ConfinementError outside."""
    relative = relative_inside(output_dir, path)
    if relative is None:
        raise ConfinementError(f"{path} lies outside {output_dir}: refusing to change it")
    resolve_inside(output_dir, relative, final_may_be_folder=folder)
    return relative


def _write_entry(output_dir: Path, transaction_id: str, operation: WriteFile, index: int,
                 outside: frozenset[Path]) -> dict | None:
    """The journal entry of one write; None for a write of the bytes the file already holds."""
    new_sha256 = sha256_bytes(operation.content)
    entry = {"kind": "write", "new_sha256": new_sha256, "new": f"new/{index}", "backup": f"backup/{index}"}
    relative = relative_inside(output_dir, operation.path)
    if relative is None:
        absolute = os.path.abspath(operation.path)
        if Path(absolute) not in outside:
            raise ConfinementError(f"{operation.path} lies outside {output_dir}: refusing to change it")
        old_sha256 = sha256_file(Path(absolute))
        entry.update(path=absolute, mac=outside_mac(transaction_id, absolute, old_sha256, new_sha256))
    else:
        old_sha256 = sha256_file(resolve_inside(output_dir, relative))
        entry["path"] = relative
    if old_sha256 == new_sha256:
        return None
    entry["old_sha256"] = old_sha256
    return entry


def _tail_entry(output_dir: Path, operation: ReplaceTail, index: int) -> dict | None:
    """The journal entry of a tail edit (inside the output_dir only); None when it changes nothing."""
    relative = _confined(output_dir, operation.path)
    path = resolve_inside(output_dir, relative)
    digests = _tail_digests(path, operation.keep)
    if digests is None:
        raise ConfinementError(f"{path} is shorter than {operation.keep} bytes: the planned cut no longer fits it")
    prefix, old_sha256, cut_sha256, old_size = digests
    new = prefix.copy()
    new.update(operation.tail)
    if new.hexdigest() == old_sha256:
        return None
    return {"kind": "tail", "path": relative, "keep": operation.keep, "old_size": old_size,
            "prefix_sha256": prefix.hexdigest(), "old_sha256": old_sha256, "new_sha256": new.hexdigest(),
            "cut_sha256": cut_sha256, "tail_sha256": sha256_bytes(operation.tail),
            "new": f"new/{index}", "backup": f"backup/{index}"}


def _tail_digests(path: Path, keep: int):
    """(hasher of the first KEEP bytes, sha256 of the file, sha256 of the bytes after KEEP, size) in one
    streamed pass; None when the file is shorter than KEEP."""
    prefix, cut = new_hasher("sha256"), new_hasher("sha256")
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as handle:
        left = keep
        while left and (block := handle.read(min(left, 1 << 20))):
            prefix.update(block)
            left -= len(block)
        if left:
            return None
        whole = prefix.copy()
        size = keep
        while block := handle.read(1 << 20):
            whole.update(block)
            cut.update(block)
            size += len(block)
    return prefix, whole.hexdigest(), cut.hexdigest(), size


def _tail_state(path: Path, entry: dict) -> str:
    """'new', 'old', 'partial' (the first `keep` bytes intact, the tail cut short by a crash), else JournalError."""
    current = sha256_file(path)
    if current == entry["new_sha256"]:
        return "new"
    if current == entry["old_sha256"]:
        return "old"
    digests = _tail_digests(path, entry["keep"]) if current is not None else None
    if digests is not None and digests[0].hexdigest() == entry["prefix_sha256"]:
        return "partial"
    raise JournalError(f"{path} changed since fix planned it; resolve by hand")


def _put_tail(path: Path, keep: int, source: Path) -> None:
    """Cut PATH to KEEP bytes and append SOURCE's bytes, durably (crash-safe: state 'partial' redoes it)."""
    with open(os.open(path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as writer, open(source, "rb") as reader:
        writer.truncate(keep)
        writer.seek(keep)
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())


def new_id() -> str:
    """Sortable by creation time (to the nanosecond), unique enough for one output_dir."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    return f"{stamp}.{now % 10**9:09d}-{secrets.token_hex(2)}"


def list_transactions(output_dir: Path) -> list[Transaction]:
    """Every transaction with a journal, oldest first; unfinished leftovers without one are cleared.

    UntrustedJournalError for a journal that fails the schema or names a path outside, and
    ConfinementError for a `.resumedoctor/` (or an entry in it) that is a link or not the user's.
    """
    root = state_folder(output_dir, TRANSACTIONS, create=False)
    if not os.path.lexists(root):
        return []
    found = []
    for name in sorted(os.listdir(root)):
        folder = root / name
        trash = name.startswith(".trash-")
        if not ID.match(name.removeprefix(".trash-")):
            raise ConfinementError(f"{folder} was not written by resumedoctor; move it out of {root} and run again")
        real_folder(folder, create=False)
        if trash:
            shutil.rmtree(folder, ignore_errors=True)
        elif os.path.lexists(folder / JOURNAL_FILE):
            transaction = Transaction.load(output_dir, folder)
            try:
                transaction.check_paths()
            except UntrustedJournalError as exc:
                if not (exc.unverified_outside and transaction.status in ("committed", "undone")):
                    raise
                # Finished: fix never acts on it again, so it does not block fix; undo refuses it (unverified).
                transaction.unverified = exc
            found.append(transaction)
        else:
            shutil.rmtree(folder)  # killed before its journal existed: it never touched the tree
    found.sort(key=lambda t: (t.journal.get("created_ns", 0), t.folder.name))
    return found


def remove_empty_state_dir(output_dir: Path, *, keep_lock: bool = False) -> None:
    """After the last undo, leave no trace: drop the empty folders under .resumedoctor, then itself.

    Links are never followed (an emptied folder outside is not ours to remove).
    """
    state = state_dir(output_dir)
    try:
        real_folder(state, create=False)
    except ConfinementError:
        return
    if not os.path.isdir(state):
        return
    for root, folders, _ in os.walk(state, topdown=False):
        for name in folders:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
    if not keep_lock:
        try:
            state.rmdir()
        except OSError:
            pass

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
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.bounded_read import iter_blocks
from resumedoctor.target import state_dir

TRANSACTIONS = "transactions"
QUARANTINE = "quarantine"
TMP_SUFFIX = ".resumedoctor-tmp"


class JournalError(Exception):
    """The tree disagrees with a journal in a way no step can resolve (someone edited it since)."""


@dataclass(frozen=True)
class WriteFile:
    """Replace (or create) a small file with new bytes."""

    path: Path
    content: bytes
    reason: str
    code: str = ""
    fixer: str = ""
    # The recipe key this write sets, when it edits the recipe: later rounds leave it alone.
    key: str | None = None


@dataclass(frozen=True)
class Quarantine:
    """Move a folder out of transformers' sight, into `.resumedoctor/quarantine/`."""

    path: Path
    reason: str
    code: str = ""
    fixer: str = ""


Operation = WriteFile | Quarantine


def sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    for block in iter_blocks(path):  # a regular file only: never blocks on a FIFO
        digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over the target, fsync the folder."""
    temporary = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


_transactions_in_this_process = 0


def _crash_point(name: str) -> None:
    """Test hook: RESUMEDOCTOR_TEST_KILL_AT=t<N>-<name> SIGKILLs this process at that step of its
    N-th transaction (0-based), so the crash-safety tests can stop a real `fix` at every step;
    undo's steps are `undo-<operation index>`."""
    wanted = os.environ.get("RESUMEDOCTOR_TEST_KILL_AT")
    if wanted and wanted in (name, f"t{_transactions_in_this_process - 1}-{name}"):
        os.kill(os.getpid(), signal.SIGKILL)


class Transaction:
    """One journaled fix run over an output_dir."""

    def __init__(self, output_dir: Path, folder: Path, journal: dict):
        self.output_dir = output_dir
        self.folder = folder
        self.journal = journal

    # ---- creation ------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, output_dir: Path, operations: list[Operation], description: str, run_id: str) -> Transaction:
        global _transactions_in_this_process
        _transactions_in_this_process += 1
        transaction_id = new_id()
        root = state_dir(output_dir) / TRANSACTIONS
        root.mkdir(parents=True, exist_ok=True)
        folder = root / transaction_id
        (folder / "new").mkdir(parents=True)
        (folder / "backup").mkdir()
        quarantine_root = state_dir(output_dir) / QUARANTINE
        taken: set[Path] = set()
        entries = []
        for index, operation in enumerate(operations):
            if isinstance(operation, WriteFile):
                new_file = folder / "new" / str(index)
                new_file.write_bytes(operation.content)
                entries.append({
                    "kind": "write",
                    "path": _relative(output_dir, operation.path),
                    "old_sha256": sha256_file(operation.path),
                    "new_sha256": hashlib.sha256(operation.content).hexdigest(),
                    "new": f"new/{index}",
                    "backup": f"backup/{index}",
                    "reason": operation.reason, "code": operation.code, "fixer": operation.fixer,
                })
            else:
                destination = quarantine_root / f"{operation.path.name}.{transaction_id}"
                while destination in taken or destination.exists():
                    destination = destination.with_name(destination.name + "_")
                taken.add(destination)
                entries.append({
                    "kind": "move",
                    "src": _relative(output_dir, operation.path),
                    "dst": _relative(output_dir, destination),
                    "reason": operation.reason, "code": operation.code, "fixer": operation.fixer,
                })
        for new_file in (folder / "new").iterdir():
            with open(new_file, "rb") as handle:
                os.fsync(handle.fileno())
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
        transaction = cls(output_dir, folder, journal)
        transaction.save()
        _crash_point("prepared")
        return transaction

    @classmethod
    def load(cls, output_dir: Path, folder: Path) -> Transaction:
        journal = json.loads((folder / "journal.json").read_text(encoding="utf-8"))
        return cls(output_dir, folder, journal)

    def save(self) -> None:
        atomic_write(self.folder / "journal.json", json.dumps(self.journal, indent=2).encode("utf-8"))

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

    # ---- reading the tree ----------------------------------------------------------------------
    def _state(self, entry: dict) -> str:
        """'old', 'new', or raise JournalError when the tree is neither."""
        if entry["kind"] == "write":
            path = self.output_dir / entry["path"]
            current = sha256_file(path)
            if current == entry["new_sha256"]:
                return "new"
            if current == entry["old_sha256"]:
                return "old"
            raise JournalError(f"{path} changed since fix {self.id} planned it; resolve by hand")
        source, destination = self.output_dir / entry["src"], self.output_dir / entry["dst"]
        if source.exists() and not destination.exists():
            return "old"
        if destination.exists() and not source.exists():
            return "new"
        raise JournalError(f"both or neither of {source} and {destination} exist; resolve by hand")

    def _clear_temp_file(self, entry: dict) -> None:
        """A write killed between temp file and rename leaves the temp file: move it into the journal."""
        if entry["kind"] != "write":
            return
        path = self.output_dir / entry["path"]
        temporary = path.with_name(f".{path.name}{TMP_SUFFIX}")
        if temporary.exists():
            debris = self.folder / "debris"
            debris.mkdir(exist_ok=True)
            os.replace(temporary, debris / f"{len(list(debris.iterdir()))}-{temporary.name}")

    # ---- doing ---------------------------------------------------------------------------------
    def _back_up(self) -> None:
        for entry in self.journal["operations"]:
            if entry["kind"] != "write" or entry["old_sha256"] is None:
                continue
            backup = self.folder / entry["backup"]
            if sha256_file(backup) == entry["old_sha256"]:
                continue
            if self._state(entry) != "old":
                raise JournalError(f"no backup of {entry['path']} and it was already changed")
            source = self.output_dir / entry["path"]
            shutil.copyfile(source, backup)
            with open(backup, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(self.folder / "backup")

    def complete(self) -> None:
        """Bring the tree to the transaction's new state (idempotent; also after a crash)."""
        self._back_up()
        _crash_point("backed-up")
        if self.status != "applying":
            self.set_status("applying")
        for index, entry in enumerate(self.journal["operations"]):
            self._clear_temp_file(entry)
            if self._state(entry) == "new":
                continue
            if entry["kind"] == "write":
                path = self.output_dir / entry["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, (self.folder / entry["new"]).read_bytes())
            else:
                destination = self.output_dir / entry["dst"]
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.output_dir / entry["src"], destination)
                fsync_dir(destination.parent)
                fsync_dir((self.output_dir / entry["src"]).parent)
            _crash_point(f"applied-{index}")
        self.set_status("committed")
        _crash_point("committed")

    def roll_back(self) -> None:
        """Bring the tree back to the transaction's old state (idempotent; also after a crash)."""
        if self.status != "prepared":
            self.set_status("undoing")
        _crash_point("undo-started")
        for index, entry in reversed(list(enumerate(self.journal["operations"]))):
            self._clear_temp_file(entry)
            if self._state(entry) == "old":
                continue
            if entry["kind"] == "write":
                path = self.output_dir / entry["path"]
                if entry["old_sha256"] is None:
                    os.unlink(path)  # a file this transaction created; its bytes stay in new/
                    fsync_dir(path.parent)
                else:
                    backup = self.folder / entry["backup"]
                    if sha256_file(backup) != entry["old_sha256"]:
                        raise JournalError(f"the backup of {entry['path']} is missing or damaged")
                    atomic_write(path, backup.read_bytes())
            else:
                source = self.output_dir / entry["src"]
                os.rename(self.output_dir / entry["dst"], source)
                fsync_dir(source.parent)
            _crash_point(f"undo-{index}")
        self.set_status("undone")

    def discard(self) -> None:
        """Remove an undone transaction's folder (its backups are back in place)."""
        trash = self.folder.with_name(f".trash-{self.folder.name}")
        os.replace(self.folder, trash)
        shutil.rmtree(trash)


def new_id() -> str:
    """Sortable by creation time (to the nanosecond), unique enough for one output_dir."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    return f"{stamp}.{now % 10**9:09d}-{secrets.token_hex(2)}"


def _relative(output_dir: Path, path: Path) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(output_dir))


def list_transactions(output_dir: Path) -> list[Transaction]:
    """Every transaction with a journal, oldest first; unfinished leftovers without one are cleared."""
    root = state_dir(output_dir) / TRANSACTIONS
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.name.startswith(".trash-"):
            shutil.rmtree(folder, ignore_errors=True)
        elif (folder / "journal.json").is_file():
            found.append(Transaction.load(output_dir, folder))
        elif folder.is_dir():
            shutil.rmtree(folder)  # killed before its journal existed: it never touched the tree
    found.sort(key=lambda t: (t.journal.get("created_ns", 0), t.folder.name))
    return found


def remove_empty_state_dir(output_dir: Path) -> None:
    """After the last undo, leave no trace: drop the empty folders under .resumedoctor, then itself."""
    state = state_dir(output_dir)
    if not state.is_dir():
        return
    for folder in sorted((p for p in state.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass
    try:
        state.rmdir()
    except OSError:
        pass

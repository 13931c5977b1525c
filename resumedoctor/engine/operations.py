"""The changes a fixer plans: plain data shared by the engine, the fixers, the fix planner and the journal.

They live in the engine because a finding's fix column asks the fixers what they would change
(`Fixer.changes`) without applying anything; `resumedoctor.fixing.journal` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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


@dataclass(frozen=True)
class ReplaceTail:
    """Keep a file's first `keep` bytes and put `tail` after them (cut a torn last record, add a missing
    newline) without holding the file in memory; the bytes cut are backed up like a write's."""

    path: Path
    keep: int
    tail: bytes
    reason: str
    code: str = ""
    fixer: str = ""


Operation = WriteFile | Quarantine | ReplaceTail


def changes_nothing(operation: Operation) -> bool:
    """A write of the bytes the file already holds: no change to make, journal or undo."""
    if isinstance(operation, ReplaceTail):
        return _tail_is(operation.path, operation.keep, operation.tail)
    if not isinstance(operation, WriteFile):
        return False
    try:
        return operation.path.is_file() and operation.path.read_bytes() == operation.content
    except OSError:
        return False


def _tail_is(path: Path, keep: int, tail: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            if handle.seek(0, 2) != keep + len(tail):
                return False
            handle.seek(keep)
            return handle.read(len(tail)) == tail
    except OSError:
        return False

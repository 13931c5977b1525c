"""One writer at a time: fix, undo, seal and launch --fix hold an exclusive lock on the output_dir.

The lock is `fcntl.flock` on `<output_dir>/.resumedoctor/lock`, opened without following a link inside
a verified real `.resumedoctor/`; the holder writes its pid into it so that a second writer can say who
holds it. A busy lock is refused at once (one line naming the pid, exit 2) rather than waited for: a
fix can take minutes (hashing checkpoints), and the second run would then plan on a changed tree.
The kernel drops the lock when its holder dies, so a SIGKILLed fix never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resumedoctor.engine.target import STATE_DIR
from resumedoctor.errors import ReasonError
from resumedoctor.fixing.confinement import ConfinementError, state_folder

LOCK_FILE = "lock"


class LockBusyError(ReasonError):
    """Another resumedoctor process is changing this output_dir."""


class _ReadOnly(Exception):
    """The output_dir is on a read-only file system: no one can change it, there is nothing to lock."""


def _open_lock(path: Path) -> int:
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise _ReadOnly() from None
        if exc.errno == errno.ELOOP:
            raise ConfinementError(f"{path} is a symbolic link: refusing to use it as the lock") from None
        raise ConfinementError(f"cannot open the lock {path}: {exc.strerror or exc}") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(descriptor)
        raise ConfinementError(f"{path} is not a regular file of yours: refusing to use it as the lock")
    if info.st_nlink > 1:  # a hard link to a file elsewhere: writing the pid would change that file
        os.close(descriptor)
        raise ConfinementError(f"{path} is a hard link to another file ({info.st_nlink} names): refusing to "
                               "use it as the lock; remove it and run again")
    return descriptor


def _holder(descriptor: int) -> str:
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


def _acquire(path: Path) -> int:
    """The locked descriptor of PATH; retried when the file was replaced between open and flock."""
    for _ in range(5):
        state_folder(path.parent.parent)  # a previous holder may have removed it as it left
        descriptor = _open_lock(path)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise LockBusyError(f"{path.parent.parent} is being changed by another resumedoctor ({holder}); "
                                "wait for it to finish and run again") from None
        try:
            same = os.path.samestat(os.fstat(descriptor), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)  # the previous holder removed the file as it left: lock the new one
    raise LockBusyError(f"cannot take the lock {path}: it keeps being replaced")


def _cannot_write(output_dir: Path) -> bool:
    """True when `.resumedoctor/` cannot even be created: a read-only output_dir, which no one can change."""
    try:
        os.mkdir(Path(output_dir) / STATE_DIR)
    except FileExistsError:
        return False
    except OSError as exc:
        return exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    return False


@contextmanager
def writer_lock(output_dir: Path) -> Iterator[None]:
    """Hold the output_dir's lock; on release, leave no `.resumedoctor/` behind if nothing else is in it.

    In a read-only output_dir there is nothing to lock against: the caller runs, and says it cannot
    write if it has to (fix's "not writable").
    """
    path = Path(output_dir) / STATE_DIR / LOCK_FILE
    try:
        if _cannot_write(output_dir):
            raise _ReadOnly()
        descriptor = _acquire(path)
    except _ReadOnly:
        yield
        return
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        _remove_if_alone(path)
        os.close(descriptor)


def _remove_if_alone(path: Path) -> None:
    """While still holding the lock: a `.resumedoctor/` holding nothing but the lock goes (no trace left)."""
    try:
        if os.listdir(path.parent) == [LOCK_FILE]:
            os.unlink(path)
            os.rmdir(path.parent)
    except OSError:
        pass

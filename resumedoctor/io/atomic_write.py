"""The one atomic write: a reader sees the old bytes or the new ones, never a part.

The bytes go to a temporary file in the target's own folder (a rename never crosses a file system),
are fsynced, and the temporary is renamed over the target; then the folder is fsynced, so the rename
itself survives a power cut. A write that fails removes its temporary; a process killed mid-write
leaves it under a name its owner knows (`temporary_path`): the journal clears it on its next run, and
a seal's temporary is the evidence that the process died while sealing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

TMP_SUFFIX = ".resumedoctor-tmp"


def temporary_path(path: Path, *, unique: bool = False) -> Path:
    """The temporary that atomic_write renames over PATH; with `unique`, one per process."""
    pid = f".{os.getpid()}" if unique else ""
    return path.with_name(f".{path.name}{pid}{TMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """Make the entries of FOLDER (a rename, a new file) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: Path, data: bytes, *, durable: bool = True, unique: bool = False) -> None:
    """Replace PATH with DATA atomically.

    `durable`: fsync the file and then its folder (a cache entry skips both: losing it costs a
    recomputation). `unique`: a per-process temporary name, for files several processes may write at once.
    """
    temporary = temporary_path(path, unique=unique)
    try:
        os.unlink(temporary)  # our own temp name: never opened through a link someone put there
    except FileNotFoundError:
        pass
    mode = _kept_mode(path)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        if mode is not None:
            os.fchmod(descriptor, mode)
        with open(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    if durable:
        fsync_dir(path.parent)


def _kept_mode(path: Path) -> int | None:
    """The permission bits of the regular file being replaced: a private file stays private."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else None


def _remove(temporary: Path) -> None:
    try:
        os.unlink(temporary)
    except OSError:
        pass

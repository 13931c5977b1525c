"""Reading untrusted files: regular files only, never more bytes than the reader needs.

Everything inside an output_dir may come from anyone. A FIFO named `trainer_state.json` must not hang
the tool, a link to `/dev/zero` must not fill memory, and a 10 GB "config" must not be read whole. Every
reader of a file inside an output_dir opens it through here.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from array import array
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path
from typing import IO, Any

from resumedoctor.errors import ReasonError

KiB = 1024
MiB = 1024 * KiB

# Upper bounds fitted to what each file holds; a file beyond its bound is not what it claims to be.
JSON_STATE_LIMIT = 256 * MiB  # trainer_state.json: log_history of a week-long run is tens of MB
JSON_CONFIG_LIMIT = 16 * MiB  # config.json, generation_config.json, adapter_config.json, seals, journals
TEXT_LIMIT = 16 * MiB  # recipes, settings, chat templates
LOG_LIMIT = 1024 * MiB  # a W&B transaction log (.wandb): a long run's is hundreds of MB
MAX_JSON_DEPTH = 200  # real files nest < 10 deep; deeper is a crafted file, not a run


class NotRegularFileError(ReasonError):
    """A path that is a FIFO, device, socket or folder where a regular file was expected."""


class FileTooLargeError(ReasonError):
    """A file larger than the bound its reader allows."""


class FileReadError(ReasonError):
    """A file that cannot be read (permissions, I/O error, vanished)."""


def file_kind(mode: int) -> str:
    """A person's word for what a stat mode is."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def is_regular_file(path: Path) -> bool:
    """True for a regular file (following links); never blocks, never raises."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: Path) -> IO[bytes]:
    """Open a regular file for reading without ever blocking on a FIFO or device.

    O_NONBLOCK makes opening a FIFO return at once; the type is then checked on the open descriptor
    (not on the name, which could be swapped between a check and the open).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO on some systems
            raise NotRegularFileError("is not a regular file") from None
        raise FileReadError(f"cannot be read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"is {file_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def iter_blocks(path: Path, block_size: int = MiB) -> Iterator[bytes]:
    """The file's bytes block by block (for hashing), opened through open_regular."""
    with open_regular(path) as handle:
        while True:
            try:
                block = handle.read(block_size)
            except OSError as exc:
                raise FileReadError(f"cannot be read: {exc.strerror or exc}") from None
            if not block:
                return
            yield block


def read_bytes_bounded(path: Path, limit: int) -> bytes:
    """The whole file, or FileTooLargeError when it holds more than `limit` bytes."""
    with open_regular(path) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise FileReadError(f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FileTooLargeError(f"is larger than {_size(limit)}, more than this file ever holds")
    return data


def read_text_bounded(path: Path, limit: int = TEXT_LIMIT) -> str:
    data = read_bytes_bounded(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileReadError("is not UTF-8 text") from None


def parse_json_bounded(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with a nesting bound (json itself only stops at the interpreter's recursion limit)."""
    if _nesting_depth(data) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return json.loads(data)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def _nesting_depth(data: bytes | str) -> int:
    """Deepest bracket nesting outside strings; linear in the text, summed in C."""
    text = data.encode("utf-8") if isinstance(data, str) else data
    steps = _STRING.sub(b"", text).translate(None, _NOT_BRACKETS).translate(_AS_STEPS)
    return max(accumulate(array("b", steps)), default=0)


def _size(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit // KiB} KiB"

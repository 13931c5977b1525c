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
# JSON values (counted as `,` `{` `[` outside strings) one file may hold. The byte bound alone does not
# bound memory: json makes ~100 bytes of objects per value at worst (`[{"a":0},...]`: a dict per 2 counts),
# so 256 MiB of `{},` would cost ~6 GB. The largest real file, the trainer_state of a week-long GRPO run
# logging every step, holds ~100k log entries x ~40 keys = 4-5 M values; 20 M is 4x that and keeps a
# parse under ~2 GB.
MAX_JSON_VALUES = 20_000_000


class NotRegularFileError(ReasonError):
    """A path that is a FIFO, device, socket or folder where a regular file was expected."""


class FileTooLargeError(ReasonError):
    """A file larger than the bound its reader allows."""


class JsonBoundError(ValueError):
    """JSON text beyond a bound of parse_json_bounded (values or nesting): refused before json builds it."""


class FileReadError(ReasonError):
    """A file that cannot be read (permissions, I/O error, vanished)."""


class JsonFileError(ReasonError):
    """A JSON file that cannot be read or parsed; `unreadable`: not even its bytes could be read."""

    def __init__(self, reason: str, *, unreadable: bool = False):
        super().__init__(reason)
        self.unreadable = unreadable


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


def parse_json_bounded(data: bytes | str, max_depth: int = MAX_JSON_DEPTH, max_values: int = MAX_JSON_VALUES) -> Any:
    """json.loads with a nesting bound (json itself only stops at the interpreter's recursion limit) and a
    bound on how many values it builds (its memory), both checked on the text before parsing."""
    depth, values = _shape(data, max_values)
    if values > max_values:
        raise JsonBoundError(f"holds more than {max_values:,} JSON values, more than this file ever holds "
                             f"(parsing it would take gigabytes of memory)")
    if depth > max_depth:
        raise JsonBoundError(f"nested deeper than {max_depth} levels")
    return json.loads(data)


def read_json_file(path: Path, limit: int = JSON_STATE_LIMIT) -> Any:
    """A JSON file inside the output_dir: a regular file, at most `limit` bytes, within parse_json_bounded's
    bounds; JsonFileError says in one line why not."""
    try:
        text = read_bytes_bounded(path, limit)
    except (FileReadError, NotRegularFileError) as exc:  # the resume cannot read it either (or hangs on it)
        raise JsonFileError(exc.reason, unreadable=True) from None
    except ReasonError as exc:
        raise JsonFileError(exc.reason) from None
    if not text or text.isspace():  # (strip() would copy the whole file)
        raise JsonFileError("empty file")
    try:
        return parse_json_bounded(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise JsonFileError("not UTF-8 text") from None
    except JsonBoundError as exc:
        raise JsonFileError(f"refused: {exc}") from None
    except json.JSONDecodeError as exc:
        raise JsonFileError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise JsonFileError(f"not valid JSON: {exc if isinstance(exc, ValueError) else 'nested too deeply'}") from None


_STRING = re.compile(rb'"[^"]*"')  # once escapes are gone, every quote opens or closes a string
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_NOT_VALUE_MARKS = bytes(b for b in range(256) if b not in b",[{")
_CHUNK = MiB  # re.sub holds its pieces in a list (~20x the text): one chunk at a time keeps that bounded


def _shape(data: bytes | str, max_values: int) -> tuple[int, int]:
    """(deepest bracket nesting, `,` `[` `{` count) outside strings, read chunk by chunk, counted in C.

    The count is the number of values json builds, give or take one per container; counting stops once it
    passes `max_values`.
    """
    text = data.encode("utf-8") if isinstance(data, str) else data
    depth = deepest = values = 0
    in_string = False
    for bare, in_string in _outside_strings(text, in_string):
        values += len(bare.translate(None, _NOT_VALUE_MARKS))
        if values > max_values:
            return deepest, values
        steps = array("b", bare.translate(None, _NOT_BRACKETS).translate(_AS_STEPS))
        deepest = max(deepest, max(accumulate(steps, initial=depth)))
        depth += sum(steps)
    return deepest, values


def _outside_strings(text: bytes, in_string: bool) -> Iterator[tuple[bytes, bool]]:
    """Each chunk of the text with its strings removed, and whether the chunk ends inside a string."""
    start = 0
    while start < len(text):
        chunk = text[start:start + _CHUNK]
        escapes = len(chunk) - len(chunk.rstrip(b"\\"))
        if escapes % 2 and len(chunk) > 1:  # never split `\\` or `\"` between chunks: pairs stay whole
            chunk = chunk[:-1]
        start += len(chunk)
        bare = chunk.replace(b"\\\\", b"").replace(b'\\"', b"")  # escapes, left to right as JSON reads them
        if in_string:
            close = bare.find(b'"')
            if close < 0:
                continue
            bare, in_string = bare[close + 1:], False
        bare = _STRING.sub(b"", bare)
        opened = bare.find(b'"')  # a string that goes on into the next chunk
        if opened >= 0:
            bare, in_string = bare[:opened], True
        yield bare, in_string


def _size(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit // KiB} KiB"

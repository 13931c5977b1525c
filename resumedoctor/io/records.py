"""Stream the records of an untrusted results file: JSONL, a JSON array, CSV, Parquet.

Every record comes with where it lies (line number, byte offset and size), so a check can name it and
a fix can cut it; a record that cannot be used comes with the reason instead of a value. Nothing is
read whole except a JSON document (bounded), and no line costs more memory than `MAX_RECORD` bytes: a
2 GB line is passed over in blocks and reported as too long.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import (
    JsonFileError,
    MiB,
    open_regular,
    read_json_file,
)

MAX_RECORD = 64 * MiB  # one result line: a long completion is ~100 KB; 64 MiB is not a record
JSON_DOCUMENT_LIMIT = 1024 * MiB  # a JSON array / inference checkpoint.json is read whole

JSONL, JSON_ARRAY, JSON_OBJECT, CSV, PARQUET = "jsonl", "json", "json-object", "csv", "parquet"

# Why a record could not be used (Entry.problem).
TORN = "torn"  # the last line, cut off mid-record by a killed writer (no newline, does not parse)
UNTERMINATED = "unterminated"  # the last line parses but has no newline: the next append glues onto it
UNPARSEABLE = "unparseable"
TOO_LONG = "too long"
NOT_AN_OBJECT = "not an object"


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of a results file, or what stood where a record should be."""

    number: int  # 1-based line (JSONL, CSV) or position (JSON array, Parquet row)
    offset: int  # byte offset of its first byte; -1 where the format has none (JSON, Parquet)
    size: int  # its bytes, newline included; 0 where unknown
    value: Any = None  # the record (a dict for JSONL / JSON objects and CSV rows)
    problem: str | None = None  # TORN, UNTERMINATED, UNPARSEABLE, TOO_LONG, NOT_AN_OBJECT (+ ": detail")


class RecordsError(ReasonError):
    """The file cannot be read as records at all (unreadable, not text, an unknown format)."""


def detect_format(path: Path) -> str:
    """JSONL, JSON_ARRAY, JSON_OBJECT (a whole object: an inference checkpoint.json), CSV or PARQUET."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return PARQUET
    with open_regular(path) as handle:
        try:
            head = handle.read(4096)
        except OSError as exc:
            raise RecordsError(f"cannot be read: {exc.strerror or exc}") from None
    if head.startswith(PARQUET_MAGIC):
        return PARQUET
    if b"\0" in head:
        # No text format holds NUL bytes (UTF-16 text would: it is not what a writer of records writes).
        raise RecordsError("holds binary data (NUL bytes in its first 4 KiB): not JSON, JSON Lines or CSV")
    if suffix == ".csv":
        return CSV
    first = head.lstrip()[:1]
    if first == b"[":
        return JSON_ARRAY
    if suffix == ".json" and first == b"{" and not _one_object_per_line(path):
        return JSON_OBJECT
    if suffix == ".json" and first != b"{":  # `42`, `"text"`, `null`: a JSON value, not records
        raise RecordsError("holds a single JSON value, not records (a JSON array, JSON Lines objects or an "
                           "inference checkpoint.json)" if first else "is empty")
    return JSONL


def _one_object_per_line(path: Path) -> bool:
    """Is a `.json` file that starts with `{` JSON Lines (objects one per line) rather than one document?

    Its first line holds a whole object and more follows, or the one object is not an inference
    checkpoint (no `results`); a pretty-printed document's first line is just `{`.
    """
    with open_regular(path) as handle:
        line = handle.readline(MAX_RECORD)
        more = bool(handle.read(4096).strip())
    try:
        first = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(first, dict) and (more or "results" not in first)


def iter_entries(path: Path, fmt: str | None = None) -> Iterator[Entry]:
    """Every record of a results file in file order; RecordsError when it cannot be read at all."""
    return _iter(path, fmt or detect_format(path), plain=False)


def iter_records(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict] | Entry]:
    """`iter_entries` for a reader that only counts: a usable record comes as (number, record), a plain
    tuple (a frozen Entry costs ~0.5 us to build, a tuple ~30 ns), anything else as its Entry."""
    return _iter(path, fmt or detect_format(path), plain=True)


def object_records(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict]]:
    """(number, record) of every record that is an object, an unterminated last line's included: what a
    rewrite or a merge carries over."""
    for entry in iter_entries(path, fmt):
        if isinstance(entry.value, dict):
            yield entry.number, entry.value


def _iter(path: Path, fmt: str, plain: bool) -> Iterator[tuple[int, dict] | Entry]:
    if fmt == JSONL:
        return _iter_jsonl(path, plain)
    if fmt == CSV:
        return _iter_csv(path, plain)
    if fmt == JSON_ARRAY:
        return _iter_json_array(path, plain)
    if fmt == PARQUET:
        return _iter_parquet(path, plain)
    raise RecordsError(f"{fmt} files are not read record by record")


def _line_runs(path: Path, limit: int) -> Iterator[tuple]:
    """The file's lines, read in blocks and split: runs `(offset, [line, ...])` of whole lines (without
    their newlines) starting at `offset`, and single lines `(offset, size, line or None, terminated)`
    where a line spans blocks, is longer than `limit` (None: passed over, only its size counted) or is
    the last one without a newline. A run costs one slice per line and no tuple.
    """
    offset, pending, pending_size, too_long = 0, [], 0, False
    with open_regular(path) as handle:
        while block := (_skip_hole(handle) if too_long else 0) or _read_block(handle):
            if isinstance(block, int):  # a hole skipped inside an over-long line: counted, not read
                pending_size += block
                continue
            parts = block.split(b"\n")
            tail = parts.pop()
            if parts and (pending_size or too_long):
                first = parts.pop(0)
                size = pending_size + len(first) + 1
                yield offset, size, None if too_long or size > limit else b"".join(pending) + first, True
                offset, pending, pending_size, too_long = offset + size, [], 0, False
            if parts and limit < BLOCK:  # a limit below the block size: every line on its own
                for part in parts:
                    yield offset, len(part) + 1, part if len(part) < limit else None, True
                    offset += len(part) + 1
            elif parts:
                yield offset, parts
                offset += sum(map(len, parts)) + len(parts)
            pending_size += len(tail)
            if too_long or pending_size > limit:
                pending, too_long = [], True
            elif tail:
                pending.append(tail)
    if pending_size:
        yield offset, pending_size, None if too_long else b"".join(pending), False


def _lines(path: Path, limit: int) -> Iterator[tuple[int, int, bytes | None, bool]]:
    """(offset, size with the newline, line without its newline or None when over `limit`, terminated)."""
    for run in _line_runs(path, limit):
        if len(run) == 4:
            yield run
            continue
        offset, parts = run
        for part in parts:
            yield offset, len(part) + 1, part, True
            offset += len(part) + 1


BLOCK = 4 * MiB


def _skip_hole(handle) -> int:
    """Inside a line too long to hold, skip a sparse file's hole (zero bytes: never a newline) without
    reading it; the bytes skipped (0: none, or the system cannot tell)."""
    if not hasattr(os, "SEEK_DATA"):
        return 0
    fd, position = handle.fileno(), handle.tell()
    raw = os.lseek(fd, 0, os.SEEK_CUR)  # the buffered reader's idea of the descriptor's offset: kept
    try:
        data = _next_data(fd, position)
    finally:
        os.lseek(fd, raw, os.SEEK_SET)
    if data <= position:
        return 0
    handle.seek(data)
    return data - position


def _next_data(fd: int, position: int) -> int:
    """Where the next data at or after `position` starts (the file's end when only a hole is left)."""
    try:
        return os.lseek(fd, position, os.SEEK_DATA)
    except OSError:  # ENXIO: nothing but a hole up to the end (or at the end); EINVAL: not supported
        pass
    try:
        return os.fstat(fd).st_size if os.lseek(fd, position, os.SEEK_HOLE) == position else position
    except OSError:
        return position


def _read_block(handle) -> bytes:
    try:
        return handle.read(BLOCK)
    except OSError as exc:
        raise RecordsError(f"cannot be read: {exc.strerror or exc}") from None


def iter_lines(path: Path, limit: int = MAX_RECORD) -> Iterator[tuple[int, int, bytes | None, bool]]:
    """(offset, size, line with its newline or None when longer than `limit`, ends with a newline)."""
    for offset, size, line, terminated in _lines(path, limit):
        yield offset, size, line + b"\n" if terminated and line is not None else line, terminated


def _json_loads():
    """orjson's parser where installed (6x faster per line); json's exact semantics as the fallback."""
    try:
        from orjson import loads
    except ImportError:
        return json.loads
    return loads


def _parse(loads, line: bytes) -> Any:
    """One JSON value; orjson refuses what json accepts (NaN, huge integers, lone surrogates): json decides."""
    try:
        return loads(line)
    except ValueError:
        if loads is json.loads:
            raise
    return json.loads(line)


def iter_jsonl(path: Path) -> Iterator[Entry]:
    return _iter_jsonl(path, plain=False)


def _iter_jsonl(path: Path, plain: bool) -> Iterator[tuple[int, dict] | Entry]:
    loads = _json_loads()
    number = 0
    for run in _line_runs(path, MAX_RECORD):
        if len(run) == 4:
            number += 1
            yield from _jsonl_entry(number, *run, plain=plain)
            continue
        offset, parts = run
        for line in parts:  # the hot loop: whole lines, the common case of a well-formed record inline
            number += 1
            try:
                value = loads(line)
            except (ValueError, RecursionError):  # the slow path below says why (deep nesting too)
                value = None
            if type(value) is dict:
                yield (number, value) if plain else Entry(number, offset, len(line) + 1, value)
            else:
                yield from _jsonl_entry(number, offset, len(line) + 1, line, True, plain=plain)
            offset += len(line) + 1


def _jsonl_entry(number: int, offset: int, size: int, line: bytes | None, terminated: bool, *,
                 plain: bool) -> Iterator[tuple[int, dict] | Entry]:
    """One line outside the common case: too long, blank, json's reading, unparseable, unterminated."""
    if line is None:
        yield Entry(number, offset, size, problem=f"{TOO_LONG}: {size} bytes")
        return
    if not line.strip():
        return
    try:
        value = _parse(_json_loads(), line)
    except (ValueError, RecursionError) as exc:
        yield Entry(number, offset, size, problem=f"{UNPARSEABLE if terminated else TORN}: {_reason(exc)}")
        return
    if not terminated:
        yield Entry(number, offset, size, value if isinstance(value, dict) else None, problem=UNTERMINATED)
    elif isinstance(value, dict):
        yield (number, value) if plain else Entry(number, offset, size, value)
    else:
        yield Entry(number, offset, size, problem=f"{NOT_AN_OBJECT}: a JSON {type(value).__name__}")


def _reason(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(":")[0]


def iter_csv(path: Path) -> Iterator[Entry]:
    return _iter_csv(path, plain=False)


def _iter_csv(path: Path, plain: bool) -> Iterator[tuple[int, dict] | Entry]:
    """CSV rows as dicts keyed by the header; a last row cut off mid-line is TORN.

    A quoted field may hold line ends (pandas writes multi-line completions so): a row goes on while
    its quotes are open, bounded by MAX_RECORD. A UTF-8 byte-order mark before the header is dropped.
    """
    lines = _csv_rows(_lines(path, MAX_RECORD))
    header_line = next(lines, None)
    if header_line is None or header_line[2] is None:
        return
    header = next(csv.reader([header_line[2].decode("utf-8", "replace").removeprefix("\ufeff")]), [])
    number = 1
    for offset, size, line, terminated in lines:
        number += 1
        if line is None:
            yield Entry(number, offset, size, problem=f"{TOO_LONG}: {size} bytes")
            continue
        if not line.strip():
            continue
        row = next(csv.reader(io.StringIO(line.decode("utf-8", "replace"), newline="")), [])
        if len(row) != len(header):
            kind = UNPARSEABLE if terminated else TORN
            yield Entry(number, offset, size, problem=f"{kind}: {len(row)} fields, the header has {len(header)}")
        elif not terminated:  # a CSV value cut at any character still splits into the right field count
            yield Entry(number, offset, size, problem=f"{TORN}: the last row has no line end")
        else:
            record = dict(zip(header, row))
            yield (number, record) if plain else Entry(number, offset, size, record)


def _csv_rows(lines: Iterator[tuple[int, int, bytes | None, bool]]) -> Iterator[tuple[int, int, bytes | None, bool]]:
    """Lines joined into CSV rows: a line with its quotes still open goes on into the next one."""
    pending: list[bytes] = []
    start = size = 0
    for offset, length, line, terminated in lines:
        if line is None:
            if pending:
                yield start, size, None, True  # a quoted field longer than a record can be
                pending = []
            yield offset, length, None, terminated
            continue
        if not pending:
            start, size = offset, 0
        pending.append(line)
        size += length
        if sum(part.count(b'"') for part in pending) % 2 == 0 or not terminated or size > MAX_RECORD:
            joined = b"".join(pending) if size <= MAX_RECORD else None
            pending = []
            yield start, size, joined, terminated
    if pending:  # the file ended inside a quoted field: the last row was cut off
        yield start, size, b"".join(pending), False


class DamagedDocument(RecordsError):
    """A JSON document (array of records, inference checkpoint.json) whose text does not parse: a
    writer killed mid-dump, or an edit gone wrong. None of its records can be read."""


def read_json_document(path: Path) -> Any:
    """A whole JSON document (an array of records, an inference checkpoint.json), bounded."""
    try:
        return read_json_file(path, limit=JSON_DOCUMENT_LIMIT)
    except JsonFileError as exc:
        damaged = not exc.unreadable and (exc.reason.startswith("not valid JSON") or exc.reason == "empty file")
        raise (DamagedDocument if damaged else RecordsError)(exc.reason) from None
    except ReasonError as exc:
        raise RecordsError(exc.reason) from None


def _iter_json_array(path: Path, plain: bool) -> Iterator[tuple[int, dict] | Entry]:
    data = read_json_document(path)
    if not isinstance(data, list):
        raise RecordsError(f"holds a JSON {type(data).__name__}, not an array of records")
    for number, value in enumerate(data, 1):
        if isinstance(value, dict):
            yield (number, value) if plain else Entry(number, -1, 0, value)
        else:
            yield Entry(number, -1, 0, problem=f"{NOT_AN_OBJECT}: a JSON {type(value).__name__}")


PARQUET_MAGIC = b"PAR1"


class ParquetWithoutFooter(RecordsError):
    """A Parquet file that starts as one but has no footer: its writer was killed before closing it."""


def _iter_parquet(path: Path, plain: bool) -> Iterator[tuple[int, dict] | Entry]:
    """Parquet rows batch by batch (pyarrow, imported here only); a file without its footer cannot be
    read at all (the footer holds the schema and where every row group lies)."""
    with open_regular(path) as handle:
        head = handle.read(4)
        handle.seek(0, io.SEEK_END)
        size = handle.tell()
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    if head == PARQUET_MAGIC and (size < 12 or tail != PARQUET_MAGIC):
        raise ParquetWithoutFooter(f"is a Parquet file without its footer ({size} bytes, no closing "
                                   f"{PARQUET_MAGIC.decode()}): its writer was killed before closing it")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RecordsError("is Parquet; reading it needs pyarrow (pip install pyarrow)") from None
    return _parquet_rows(pq, path, plain)


def _parquet_rows(pq, path: Path, plain: bool) -> Iterator[tuple[int, dict] | Entry]:
    number = 0
    with open_regular(path) as handle:
        try:
            batches = pq.ParquetFile(handle).iter_batches(batch_size=4096)
            for batch in batches:
                for row in batch.to_pylist():
                    number += 1
                    yield (number, row) if plain else Entry(number, -1, 0, row)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises its own errors (ArrowInvalid, OSError...)
            if number == 0:
                raise RecordsError(f"is not a readable Parquet file: {_one_line(exc)}") from None
            yield Entry(number + 1, -1, 0, problem=f"{UNPARSEABLE}: rows from {number + 1} on: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__

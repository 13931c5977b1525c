"""Stream the records of an untrusted results file: JSONL, a JSON array, CSV (Parquet: see `iter_entries`).

Every record comes with where it lies (line number, byte offset and size), so a check can name it and
a fix can cut it; a record that cannot be used comes with the reason instead of a value. Nothing is
read whole except a JSON document (bounded), and no line costs more memory than `MAX_RECORD` bytes: a
2 GB line is passed over in blocks and reported as too long.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import MiB, open_regular, read_json_file

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
    if suffix == ".csv":
        return CSV
    with open_regular(path) as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1"):
        return PARQUET
    first = head.lstrip()[:1]
    if first == b"[":
        return JSON_ARRAY
    if suffix == ".json" and first == b"{" and not _one_object_per_line(path):
        return JSON_OBJECT
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
    fmt = fmt or detect_format(path)
    if fmt == JSONL:
        return iter_jsonl(path)
    if fmt == CSV:
        return iter_csv(path)
    if fmt == JSON_ARRAY:
        return _iter_json_array(path)
    raise RecordsError(f"{fmt} files are not read record by record")


def iter_lines(path: Path, limit: int = MAX_RECORD) -> Iterator[tuple[int, int, bytes | None, bool]]:
    """(offset, size, line or None when longer than `limit`, ends with a newline) for every line."""
    offset = 0
    with open_regular(path) as handle:
        while True:
            line = handle.readline(limit)
            if not line:
                return
            if len(line) == limit and not line.endswith(b"\n"):  # longer than a record can be: skip the rest
                size = len(line)
                while chunk := handle.readline(MiB):
                    size += len(chunk)
                    if chunk.endswith(b"\n"):
                        break
                yield offset, size, None, chunk.endswith(b"\n") if size > len(line) else False
                offset += size
                continue
            yield offset, len(line), line, line.endswith(b"\n")
            offset += len(line)


def iter_jsonl(path: Path) -> Iterator[Entry]:
    number = 0
    for offset, size, line, terminated in iter_lines(path):
        number += 1
        if line is None:
            yield Entry(number, offset, size, problem=f"{TOO_LONG}: {size} bytes")
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            kind = UNPARSEABLE if terminated else TORN
            yield Entry(number, offset, size, problem=f"{kind}: {_reason(exc)}")
            continue
        if not terminated:
            yield Entry(number, offset, size, value, problem=UNTERMINATED)
        elif not isinstance(value, dict):
            yield Entry(number, offset, size, problem=f"{NOT_AN_OBJECT}: a JSON {type(value).__name__}")
        else:
            yield Entry(number, offset, size, value)


def _reason(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(":")[0]


def iter_csv(path: Path) -> Iterator[Entry]:
    """CSV rows as dicts keyed by the header; a last row cut off mid-line is TORN."""
    lines = iter_lines(path)
    header_line = next(lines, None)
    if header_line is None or header_line[2] is None:
        return
    header = next(csv.reader([header_line[2].decode("utf-8", "replace")]), [])
    number = 1
    for offset, size, line, terminated in lines:
        number += 1
        if line is None:
            yield Entry(number, offset, size, problem=f"{TOO_LONG}: {size} bytes")
            continue
        if not line.strip():
            continue
        # Quoted fields may hold newlines; a row is read line by line here, which real result shards
        # (one record per line) satisfy.
        row = next(csv.reader(io.StringIO(line.decode("utf-8", "replace"))), [])
        if len(row) != len(header):
            kind = UNPARSEABLE if terminated else TORN
            yield Entry(number, offset, size, problem=f"{kind}: {len(row)} fields, the header has {len(header)}")
        elif not terminated:  # a CSV value cut at any character still splits into the right field count
            yield Entry(number, offset, size, problem=f"{TORN}: the last row has no line end")
        else:
            yield Entry(number, offset, size, dict(zip(header, row)))


def read_json_document(path: Path) -> Any:
    """A whole JSON document (an array of records, an inference checkpoint.json), bounded."""
    try:
        return read_json_file(path, limit=JSON_DOCUMENT_LIMIT)
    except ReasonError as exc:
        raise RecordsError(str(exc)) from None


def _iter_json_array(path: Path) -> Iterator[Entry]:
    data = read_json_document(path)
    if not isinstance(data, list):
        raise RecordsError(f"holds a JSON {type(data).__name__}, not an array of records")
    for number, value in enumerate(data, 1):
        yield Entry(number, -1, 0, value, None if isinstance(value, dict)
                    else f"{NOT_AN_OBJECT}: a JSON {type(value).__name__}")

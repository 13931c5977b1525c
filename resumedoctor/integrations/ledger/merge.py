"""The one merge of result shards: one record per id, a success winning over an error, in a fixed order.

Shards are taken in the order of their input ranges (the start in `..._data_<start>_to_<end>...`),
records in file order. For each id the first success is kept; an id with no success keeps its last
failure (the latest error says most). Records without the id field cannot be matched: all are kept.
Unusable entries (a torn tail, an unparseable line) are not records and are left out. Two passes over
the shards, so memory is one small entry per id, never the records.

`write_records` writes any record stream as JSONL, a JSON array, CSV or (with pyarrow) Parquet, through
a temporary file renamed over the target: a reader never sees half a merged file. `encode_records`
gives the same bytes for a journaled write (the GEN fixers).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from resumedoctor.integrations.ledger.config import LedgerConfig
from resumedoctor.integrations.ledger.layout import SHARD_RANGE_NAME
from resumedoctor.integrations.ledger.success import compile_success
from resumedoctor.integrations.ledger.tally import unit_key
from resumedoctor.io.atomic_write import fsync_dir, temporary_path
from resumedoctor.io.records import (
    CSV,
    JSON_ARRAY,
    JSONL,
    PARQUET,
    object_records,
)

FORMAT_BY_SUFFIX = {".jsonl": JSONL, ".ndjson": JSONL, ".jsonlines": JSONL, ".json": JSON_ARRAY,
                    ".csv": CSV, ".parquet": PARQUET}
_NO_RANGE = 1 << 63  # shards without a range in their name come after the others


def shard_order(path: Path) -> tuple[int, int, str]:
    """The merge order of a shard: its range start, then its end, then its name."""
    match = SHARD_RANGE_NAME.search(path.name)
    if match is None:
        return _NO_RANGE, _NO_RANGE, path.name
    return int(match.group(1)), int(match.group(2)), path.name


def merge_records(shards: list[Path], config: LedgerConfig,
                  is_success: Callable[[Any], bool] | None = None) -> Iterator[dict]:
    """One record per id (config.id_field) over every shard: the first success, else the last failure.

    `is_success` overrides the config's success expression (a Ledger given a callable).
    RecordsError when a shard cannot be read as records.
    """
    ordered = sorted(shards, key=shard_order)
    is_success = is_success or compile_success(config.success)
    chosen = _choose(ordered, config.id_field, is_success)
    for index, path in enumerate(ordered):
        for number, record in object_records(path):
            key = unit_key(record.get(config.id_field))
            if key is None or chosen[key] == (index, number):
                yield record


def _choose(shards: list[Path], id_field: str, is_success: Callable[[Any], bool]) -> dict[str, tuple[int, int]]:
    """id key -> (shard index, record number) of the record that stands for it."""
    chosen: dict[str, tuple[int, int]] = {}
    succeeded: set[str] = set()
    for index, path in enumerate(shards):
        for number, record in object_records(path):
            key = unit_key(record.get(id_field))
            if key is None or key in succeeded:
                continue
            if is_success(record):
                succeeded.add(key)
            chosen[key] = (index, number)
    return chosen


def format_of(path: Path) -> str:
    """The format a file name asks for; ValueError for a suffix that is not a results format."""
    fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path.name}: write .jsonl, .json, .csv or .parquet, not {path.suffix or 'no suffix'}")
    return fmt


def write_records(records: Iterable[dict], path: Path, fmt: str | None = None) -> int:
    """Write RECORDS to PATH atomically (temporary, fsync, rename, folder fsync); the number written.

    JSONL and JSON arrays are streamed; CSV and Parquet hold the records to learn their columns (the
    union of the keys, in first-seen order); a CSV value that is not a string is written as JSON.
    """
    path = Path(path)
    fmt = fmt or format_of(path)
    temporary = temporary_path(path, unique=True)
    try:
        with open(temporary, "xb") as handle:
            count = _write(records, handle, fmt)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return count


def encode_records(records: Iterable[dict], fmt: str) -> bytes:
    """RECORDS as the bytes of a FMT file, for a journaled WriteFile (the fixers)."""
    buffer = io.BytesIO()
    _write(records, buffer, fmt)
    return buffer.getvalue()


def _write(records: Iterable[dict], handle: BinaryIO, fmt: str) -> int:
    if fmt == PARQUET:
        return _write_parquet(records, handle)
    writers = {JSONL: _write_jsonl, JSON_ARRAY: _write_json_array, CSV: _write_csv}
    if fmt not in writers:
        raise ValueError(f"cannot write {fmt} records (known: {', '.join([*writers, PARQUET])})")
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    try:
        return writers[fmt](records, text)
    finally:
        text.flush()
        text.detach()  # the caller's handle stays open


def _dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def _write_jsonl(records: Iterable[dict], handle: TextIO) -> int:
    count = 0
    for record in records:
        handle.write(_dumps(record) + "\n")
        count += 1
    return count


def _write_json_array(records: Iterable[dict], handle: TextIO) -> int:
    count = 0
    handle.write("[")
    for record in records:
        handle.write(("," if count else "") + "\n" + _dumps(record))
        count += 1
    handle.write("\n]\n")
    return count


def _write_csv(records: Iterable[dict], handle: TextIO) -> int:
    rows = list(records)
    header = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_value(row.get(key)) for key in header])
    return len(rows)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _write_parquet(records: Iterable[dict], handle: BinaryIO) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("writing Parquet needs pyarrow (pip install pyarrow)") from None
    rows = list(records)
    header = list(dict.fromkeys(key for row in rows for key in row))
    columns = {key: [row.get(key) for row in rows] for key in header}
    for key, values in columns.items():  # a Parquet column has one type: a mixed one is written as text
        kinds = {type(value) for value in values if value is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            columns[key] = [None if value is None else _csv_value(value) for value in values]
    table = pa.table(columns)
    pq.write_table(table, handle)
    return table.num_rows

"""Fixers of the GEN family: repair a result ledger so that a resume neither loses nor redoes work.

Every change lies in the ledger's folder (`target.output_dir`), journaled and undoable like the
checkpoint fixes; the inputs file is only read. A torn tail is cut by a tail edit (`ReplaceTail`), so a
300 MB results file is never held in memory for it; the other fixes write whole files.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from resumedoctor.checks.generation_ledgers import (
    FAILURE_RECORDS,
    FAILURES_MARKED_DONE,
    MERGED_STALE,
    NEVER_ATTEMPTED,
    SHARDS_NOT_MERGED,
    SUCCESSES_NOT_MARKED_DONE,
    TORN_LAST_RECORD,
    WORK_LEFT,
    WORKER_NOT_FINISHED,
    config_of,
    ledger_files,
    ledger_tally,
)

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation, ReplaceTail, WriteFile
from resumedoctor.engine.registry import Fixer
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.ledger.config import LedgerConfig
from resumedoctor.integrations.ledger.layout import (
    SHARD_RANGE_NAME,
    is_ledger_file_name,
)
from resumedoctor.integrations.ledger.merge import (
    encode_records,
    merge_records,
    shard_order,
)
from resumedoctor.integrations.ledger.success import compile_judge, compile_success
from resumedoctor.integrations.ledger.tally import (
    Tally,
    inference_checkpoint,
    unit_key,
)
from resumedoctor.integrations.ledger.workers import inside
from resumedoctor.io.records import (
    CSV,
    JSON_ARRAY,
    JSON_DOCUMENT_LIMIT,
    JSON_OBJECT,
    JSONL,
    MAX_RECORD,
    PARQUET,
    detect_format,
    iter_entries,
    iter_lines,
    object_records,
)

FAMILY = "generation-ledgers"
# The field of the remaining-work file that says how many more successes a row needs.
REMAINING_FIELD = "remaining"
REMAINING_INFIX = ".remaining"
# What a fix cannot read makes it plan nothing (the check reports the file).
UNREADABLE = (OSError, ValueError, RecursionError, ReasonError)


# --- which files -----------------------------------------------------------------------------------
def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(folder)) in Path(os.path.abspath(path)).parents


def shard_files(folder: Path) -> list[Path]:
    """The worker shards of a folder ledger, by range then name."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    shards = [folder / name for name in names if is_ledger_file_name(name) and SHARD_RANGE_NAME.search(name)
              and (folder / name).is_file() and inside(folder, name)]
    return sorted(shards, key=shard_order)


def finding_file(ctx: RunContext, finding: Finding) -> Path | None:
    """The results file a finding is about (`extra["file"]`, else its path, else the target file),
    only when it is a regular file inside the ledger's folder."""
    for candidate in (finding.extra.get("file"), finding.path, ctx.target.path):
        if not candidate:
            continue
        for path in (Path(candidate), ctx.target.output_dir / str(candidate)):
            if path.is_file() and not path.is_symlink() and _inside(path, ctx.target.output_dir):
                return path
    return None


# --- reading records ----------------------------------------------------------------------------------
def _records(path: Path, config: LedgerConfig) -> Iterator[dict]:
    """The records of any results file, an inference checkpoint.json's `results` included."""
    if detect_format(path) == JSON_OBJECT:
        yield from inference_checkpoint(path, config)[0]
    else:
        yield from (record for _, record in object_records(path))


# --- cut-torn-record (GEN001) ---------------------------------------------------------------------
def last_line(path: Path, block: int = 64 * 1024) -> tuple[int, int | None]:
    """(file size, offset of its last line when that line lacks its newline, else None); read backwards."""
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return 0, None
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return size, None
        end = size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                return size, start + newline + 1
            end = start
        return size, 0


def _complete_object(path: Path, start: int, size: int) -> bool:
    if size - start > MAX_RECORD:
        return False
    with open(path, "rb") as handle:
        handle.seek(start)
        try:
            return isinstance(json.loads(handle.read(size - start)), dict)
        except (ValueError, RecursionError):
            return False


def plan_cut_torn_record(ctx: RunContext, finding: Finding) -> list[Operation]:
    """Cut the last line a killed writer left unfinished (its bytes go to the backup), or add the newline
    a whole last JSONL record lacks; a CSV row without its line end may be cut mid-value: it is cut."""
    path = finding_file(ctx, finding)
    try:
        fmt = detect_format(path) if path is not None else None
        if fmt not in (JSONL, CSV):
            return []
        size, start = last_line(path)
        if fmt == CSV:
            start = _torn_csv_row(finding, size, start)
        if start is None or (start == 0 and fmt == CSV):
            return []  # nothing unfinished, or a CSV of one unfinished line: its header
        if fmt == JSONL and _complete_object(path, start, size):
            return [ReplaceTail(path, size, b"\n", "the last record is whole but lacks its newline: add it")]
    except UNREADABLE:
        return []
    return [ReplaceTail(path, start, b"", f"cut the torn last record ({size - start} bytes at offset {start}; "
                                           "kept in the fix's backup)")]


def _torn_csv_row(finding: Finding, size: int, start: int | None) -> int | None:
    """Where the torn CSV row starts: a quoted field may hold line ends, so the check's offset of the
    row (when it reaches the end of the file as it is now) comes before the last line's."""
    offset, length = finding.extra.get("offset"), finding.extra.get("size")
    if isinstance(offset, int) and isinstance(length, int) and 0 < offset and offset + length == size:
        return offset
    return start


# --- rebuild-processed-ids (GEN004, GEN005) ---------------------------------------------------------
def dump_like(data: Any, raw: bytes) -> bytes:
    """DATA as JSON in the style of RAW (its indentation, separators, escaping and final newline)."""
    head = raw[:65536].decode("utf-8", errors="replace")
    nested = re.match(r"\s*[{\[][ \t]*\r?\n([ \t]*)\S", head)
    indent = nested.group(1) if nested else None
    colon = ": " if '": ' in head or indent is not None else ":"
    comma = "," if indent is not None or (',"' in head and ', "' not in head) else ", "
    text = json.dumps(data, indent=indent, separators=(comma, colon), ensure_ascii=raw.isascii())
    return (text + ("\n" if raw.endswith(b"\n") else "")).encode("utf-8")


def _read_document(path: Path) -> bytes:
    if path.stat().st_size > JSON_DOCUMENT_LIMIT:
        raise ValueError("too large")
    return path.read_bytes()


def rebuilt_processed_ids(records: list[dict], processed: list, config: LedgerConfig, keyed: bool) -> list:
    """The ids of the successful results in results order, each once, spelled as processed_ids spelled it
    (a results mapping has string keys: ids that were whole numbers there stay numbers)."""
    is_success = compile_success(config.success)
    spelling = {unit_key(value): value for value in processed}
    numbers = keyed and bool(processed) and all(type(value) is int for value in processed)
    rebuilt, seen = [], set()
    for record in records:
        value = record.get(config.id_field)
        key = unit_key(value)
        if key is None or key in seen or not is_success(record):
            continue
        seen.add(key)
        if key in spelling:
            value = spelling[key]
        elif numbers and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        rebuilt.append(value)
    return rebuilt


def plan_rebuild_processed_ids(ctx: RunContext, finding: Finding) -> list[Operation]:
    """processed_ids = the ids of the successful results; every other key of checkpoint.json kept."""
    config = config_of(ctx)
    path = finding_file(ctx, finding)
    try:
        if path is None or detect_format(path) != JSON_OBJECT:
            return []
        raw = _read_document(path)
        data = json.loads(raw)
        records, processed = inference_checkpoint(path, config)
    except UNREADABLE:
        return []
    if processed is None or _counts_errors_as_successes(ctx, path):
        return []
    rebuilt = rebuilt_processed_ids(records, processed, config, isinstance(data.get("results"), dict))
    if rebuilt == processed:
        return []
    kept = {unit_key(value) for value in rebuilt}
    dropped = sum(unit_key(value) not in kept for value in processed)
    added = len(kept - {unit_key(value) for value in processed})
    data["processed_ids"] = rebuilt
    return [WriteFile(path, dump_like(data, raw), f"processed_ids rebuilt from the successful results: "
                      f"{len(rebuilt)} ids ({dropped} failed or unanswered removed, {added} answered added)")]


def _counts_errors_as_successes(ctx: RunContext, path: Path) -> bool:
    """GEN019 fires for the file: a rebuild would put those errors' ids back into processed_ids."""
    return any(ft.error_like for ft in ledger_tally(ctx).files if ft.path == path)


# --- write-remaining-work (GEN006, GEN007, GEN017) ---------------------------------------------------
def _ledger_stem(ctx: RunContext) -> str:
    if not ctx.target.path.is_dir():
        return ctx.target.path.stem
    shards = shard_files(ctx.target.path)
    return shards[0].name[:SHARD_RANGE_NAME.search(shards[0].name).start()] if shards else ctx.target.path.name


def remaining_field(fields: Iterable[str]) -> str:
    """`remaining`, or `remaining_samples` when the inputs already have a `remaining` field."""
    return REMAINING_FIELD if REMAINING_FIELD not in set(fields) else REMAINING_FIELD + "_samples"


def remaining_rows(inputs: Path, fmt: str, tally: Tally, config: LedgerConfig) -> tuple[bytes, int, int, str]:
    """(the file of the input rows still short of the quota, each with how many it needs; rows; rows
    without the unit field, left out; the field that says how many). CSV rows keep their bytes."""
    if fmt == PARQUET:
        return _remaining_parquet(inputs, tally, config)
    rows, without, seen = [], 0, set()
    for entry in iter_entries(inputs, fmt):
        if not isinstance(entry.value, dict):
            continue
        key = unit_key(entry.value.get(config.input_key))
        if key is None:
            without += 1
            continue
        need = config.quota - tally.successes(key)
        if key in seen or need <= 0:
            continue
        seen.add(key)
        rows.append((entry, need))
    field = remaining_field(rows[0][0].value if rows else ())
    if fmt == CSV:
        return _remaining_csv(inputs, rows, field), len(rows), without, field
    return encode_records(({**entry.value, field: need} for entry, need in rows), fmt), len(rows), without, field


def _remaining_csv(inputs: Path, rows: list, field: str) -> bytes:
    with open(inputs, "rb") as handle:
        header = handle.readline(MAX_RECORD)
        ending = b"\r\n" if header.endswith(b"\r\n") else b"\n"
        out = [header.rstrip(b"\r\n") + b"," + field.encode() + ending]
        for entry, need in rows:
            handle.seek(entry.offset)
            out.append(handle.read(entry.size).rstrip(b"\r\n") + b"," + str(need).encode() + ending)
    return b"".join(out)


def _remaining_parquet(inputs: Path, tally: Tally, config: LedgerConfig) -> tuple[bytes, int, int, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(inputs)
    field = remaining_field(table.column_names)
    if config.input_key not in table.column_names:
        return b"", 0, table.num_rows, field
    keep, needs, seen = [], [], set()
    for value in table.column(config.input_key).to_pylist():
        key = unit_key(value)
        need = config.quota - tally.successes(key) if key is not None else 0
        keep.append(key is not None and need > 0 and key not in seen)
        if keep[-1]:
            seen.add(key)
            needs.append(need)
    without = sum(value is None for value in table.column(config.input_key).to_pylist())
    short = table.filter(pa.array(keep, pa.bool_()))
    short = short.append_column(field, pa.array(needs, pa.int64()))
    buffer = io.BytesIO()
    pq.write_table(short, buffer)
    return buffer.getvalue(), short.num_rows, without, field


def _units_below_quota(ctx: RunContext, tally: Tally, config: LedgerConfig) -> tuple[bytes, str, int]:
    """Without an inputs file: the units the results name that are below the quota, each spelled as
    its first record spells it (an id 12 stays a number)."""
    files = ledger_files(ctx)
    fmt = detect_format(files[0]) if files else JSONL
    fmt = fmt if fmt in (JSONL, CSV, PARQUET) else JSONL
    short = {key: config.quota - counts[0] for key, counts in tally.units.items() if counts[0] < config.quota}
    rows = [{config.unit_field: tally.spelled.get(key, key), REMAINING_FIELD: need} for key, need in short.items()]
    suffix = {JSONL: ".jsonl", CSV: ".csv", PARQUET: ".parquet"}[fmt]
    return encode_records(rows, fmt), suffix, len(rows)


def plan_write_remaining_work(ctx: RunContext, finding: Finding) -> list[Operation]:
    """A file beside the ledger, in the inputs' format: the input rows still short, each with `remaining`."""
    config = config_of(ctx)
    if ctx.target.path.is_symlink():
        return []  # a results file given as a link: `fix` refuses it (fixing.planner.refuse_linked_ledger)
    try:
        tally = ledger_tally(ctx)
        if config.inputs is not None:
            fmt = detect_format(config.inputs)
            content, rows, without, field = remaining_rows(config.inputs, fmt, tally, config)
            suffix = config.inputs.suffix or ".jsonl"
            note = f" ({without} input rows without `{config.input_key}` left out)" if without else ""
        else:
            content, suffix, rows = _units_below_quota(ctx, tally, config)
            field = REMAINING_FIELD
            note = " (no inputs file given: inputs never attempted are not listed)"
    except UNREADABLE:
        return []
    path = ctx.target.output_dir / f"{_ledger_stem(ctx)}{REMAINING_INFIX}{suffix}"
    if not rows or (config.inputs is not None and os.path.abspath(path) == os.path.abspath(config.inputs)):
        return []  # nothing left, or the name would be the inputs' own: never written
    return [WriteFile(path, content, f"the work left: {rows} rows below the quota of {config.quota} successes "
                      f"per {config.unit_field}, each with how many it still needs in `{field}`{note}")]


# --- merge-shards (GEN012, GEN013) ------------------------------------------------------------------
def plan_merge_shards(ctx: RunContext, finding: Finding) -> list[Operation]:
    """`<stem>_merged.<suffix>`: every shard's records, one per id (a success wins over an error)."""
    folder = ctx.target.path
    shards = shard_files(folder) if folder.is_dir() else []
    if not shards or len({shard.suffix.lower() for shard in shards}) != 1:
        return []
    merged = folder / f"{_ledger_stem(ctx)}_merged{shards[0].suffix}"
    try:
        fmt = detect_format(shards[0])
        content = encode_records(merge_records(shards, config_of(ctx)), fmt)
    except UNREADABLE:
        return []
    return [WriteFile(merged, content, f"{len(shards)} worker shards merged, one record per "
                      f"{config_of(ctx).id_field} (a success wins over an error)")]


# --- drop-failure-records (GEN018, unsafe) ----------------------------------------------------------
def _without_failures_lines(path: Path, fmt: str, config: LedgerConfig) -> tuple[bytes, int]:
    # Only records judged failures: one the success expression fails on (not judged) is kept.
    is_failure = _judged_failure(config)
    failed = {entry.offset: entry.offset + entry.size for entry in iter_entries(path, fmt)
              if isinstance(entry.value, dict) and is_failure(entry.value)}
    kept, dropping_to = [], -1
    for offset, _, line, _ in iter_lines(path):
        if line is None:
            raise ValueError("a line too long to rewrite")
        dropping_to = failed.get(offset, dropping_to)  # a CSV row may span lines: every line of it goes
        if offset >= dropping_to:
            kept.append(line)
    return b"".join(kept), len(failed)


def _judged_failure(config: LedgerConfig):
    judge = compile_judge(config.success)
    return lambda record: judge(record) is False


def _without_failures_document(path: Path, fmt: str, config: LedgerConfig) -> tuple[bytes, int]:
    is_failure = _judged_failure(config)
    raw = _read_document(path)
    data = json.loads(raw)
    results = data if fmt == JSON_ARRAY else data["results"]
    if isinstance(results, dict):
        records = dict(zip(results, inference_checkpoint(path, config)[0]))
        kept: Any = {key: value for key, value in results.items() if key not in records or not is_failure(records[key])}
    else:
        kept = [value for value in results if not isinstance(value, dict) or not is_failure(value)]
    if fmt == JSON_ARRAY:
        data = kept
    else:
        data["results"] = kept
    return dump_like(data, raw), len(results) - len(kept)


def plan_drop_failure_records(ctx: RunContext, finding: Finding) -> list[Operation]:
    """The results file without its failure records (by the success expression); the backup keeps them."""
    config = config_of(ctx)
    given = finding_file(ctx, finding)
    operations: list[Operation] = []
    for path in [given] if given is not None else ledger_files(ctx):
        try:
            fmt = detect_format(path)
            if fmt in (JSONL, CSV):
                content, dropped = _without_failures_lines(path, fmt, config)
            elif fmt in (JSON_ARRAY, JSON_OBJECT):
                content, dropped = _without_failures_document(path, fmt, config)
            else:
                continue
        except (*UNREADABLE, KeyError, TypeError):
            continue
        if dropped:
            operations.append(WriteFile(path, content, f"{dropped} failure records dropped (kept in the backup)"))
    return operations


# What `diagnose` asks to show a finding's fix, answered from the one tally without building the rewrite.
def offers_merge(ctx: RunContext, finding: Finding) -> bool:
    shards = shard_files(ctx.target.path) if ctx.target.path.is_dir() else []
    return bool(shards) and len({shard.suffix.lower() for shard in shards}) == 1


def offers_drop_failures(ctx: RunContext, finding: Finding) -> bool:
    given = finding_file(ctx, finding)
    return any(ft.failures and ft.format in (JSONL, CSV, JSON_ARRAY, JSON_OBJECT) and given in (None, ft.path)
               for ft in ledger_tally(ctx).files)


FIXERS = (
    Fixer("cut-torn-record", FAMILY, (TORN_LAST_RECORD,), FixSafety.SAFE,
          "cut the torn last record a killed writer left (its bytes kept in the backup), or add the newline a "
          "whole last record lacks, so the next append starts on a line of its own", plan_cut_torn_record),
    Fixer("rebuild-processed-ids", FAMILY, (FAILURES_MARKED_DONE, SUCCESSES_NOT_MARKED_DONE), FixSafety.SAFE,
          "rebuild checkpoint.json's processed_ids from the successful results (results order; every other key "
          "kept): the resume redoes the failures and skips the answers", plan_rebuild_processed_ids),
    Fixer("write-remaining-work", FAMILY, (WORK_LEFT, NEVER_ATTEMPTED, WORKER_NOT_FINISHED), FixSafety.SAFE,
          "write `<ledger>.remaining.<inputs suffix>` beside the ledger: the exact input rows still short of the "
          "quota, in the inputs' format, each with `remaining` (successes it still needs); the inputs are never "
          "written", plan_write_remaining_work),
    Fixer("merge-shards", FAMILY, (SHARDS_NOT_MERGED, MERGED_STALE), FixSafety.SAFE,
          "merge the worker shards into `<stem>_merged.<suffix>`, one record per id (a success wins over an "
          "error), ordered by worker range then record order", plan_merge_shards, offers=offers_merge),
    Fixer("drop-failure-records", FAMILY, (FAILURE_RECORDS,), FixSafety.UNSAFE,
          "rewrite the results without their failure records (by the success expression); the backup keeps "
          "them", plan_drop_failure_records, offers=offers_drop_failures),
)

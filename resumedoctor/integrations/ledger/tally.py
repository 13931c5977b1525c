"""One streaming pass over a ledger's results: what each unit of work (a task, or an input) has.

A unit is named by the config's `unit_field` (the task field, else the id field). Every results file
is read once, record by record; per unit only two counts are kept (successes, failures), so a
million-record ledger costs a dict of its units and a set of its successful ids, not its records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.integrations.ledger.config import LedgerConfig
from resumedoctor.integrations.ledger.success import compile_judge
from resumedoctor.io.records import (
    JSON_OBJECT,
    TOO_LONG,
    TORN,
    UNTERMINATED,
    DamagedDocument,
    Entry,
    ParquetWithoutFooter,
    RecordsError,
    detect_format,
    iter_records,
    read_json_document,
)

MAX_EXAMPLES = 5  # entries kept per kind of problem, to name in a message
# A string value a writer puts where an answer should be when the call failed. Conservative: the start
# of the value, with the bracket or colon an error message has (a completion about "Errors" is none).
ERROR_PREFIXES = ("[ERROR]", "[Error]", "ERROR:", "Error:", "Traceback (most recent call last)")


def unit_key(value: Any) -> str | None:
    """The one spelling of an id: `1`, `"1"` and a CSV's `1` are the same unit; None for a missing id."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


ERROR_FIRST = "".join(sorted({prefix[0] for prefix in ERROR_PREFIXES}))


def looks_like_error(record: dict) -> bool:
    """Does a top-level string value of the record start like an error message?"""
    for value in record.values():
        # (the first-character test skips most values before the 5-prefix test: a third of its cost)
        if type(value) is str and value[:1] in ERROR_FIRST and value.startswith(ERROR_PREFIXES):
            return True
    return False


@dataclass
class FileTally:
    """What one results file holds."""

    path: Path
    format: str
    records: int = 0  # usable records
    successes: int = 0
    failures: int = 0
    # records on which the success expression fails (a function given a value of another type): their
    # success was not judged, they are neither successes nor failures; the first error, for the message
    unjudged: int = 0
    unjudged_error: str | None = None
    without_key: int = 0  # records without the unit field
    without_key_examples: list[int] = field(default_factory=list)  # their record numbers (lines in JSONL)
    problems: list[Entry] = field(default_factory=list)  # the first MAX_EXAMPLES unusable entries
    problem_count: int = 0
    last_problem: Entry | None = None  # the last unusable entry (a torn tail is the file's last)
    # Successes with a value that starts like an error message (`[ERROR] ...`): counted, and named.
    error_like: int = 0
    error_like_examples: list[int] = field(default_factory=list)  # their record numbers
    # An inference checkpoint.json's `processed_ids` (None: the file has none), and per id whether any
    # of its results succeeded.
    processed_ids: list[Any] | None = None
    outcomes: dict[str, bool | None] | None = None
    # Why the file could not be read as records at all (then nothing of it is counted).
    unreadable: str | None = None
    no_footer: bool = False  # a Parquet file whose writer was killed before writing its footer
    damaged: bool = False  # a JSON document that does not parse (killed mid-dump): none of it is readable
    first_fields: list[str] | None = None  # the fields of the first record without the unit field

    @property
    def torn(self) -> Entry | None:
        """The last entry when it is a torn or unterminated tail."""
        last = self.last_problem
        if last is not None and last.problem and last.problem.split(":")[0] in (TORN, UNTERMINATED):
            return last
        return None

    @property
    def inner_problems(self) -> int:
        """Unusable entries other than the torn tail."""
        return self.problem_count - (self.torn is not None)


@dataclass
class Tally:
    config: LedgerConfig
    files: list[FileTally] = field(default_factory=list)
    # unit key -> [successes, failures], in the order first seen
    units: dict[str, list[int]] = field(default_factory=dict)
    # id key -> successes, for ids with more than one success (duplicates); with a task field an id is
    # counted within its task (ids 0..31 per task are no duplicates)
    duplicate_successes: dict[str, int] = field(default_factory=dict)
    # unit key -> the value as the records spell it, for units named by something else than a string
    # (an id 12 stays a number where the remaining work is written)
    spelled: dict[str, Any] = field(default_factory=dict)

    def successes(self, key: str) -> int:
        return self.units.get(key, (0, 0))[0]

    def failures(self, key: str) -> int:
        return self.units.get(key, (0, 0))[1]

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)


def tally_files(paths: Iterable[Path], config: LedgerConfig) -> Tally:
    """Read every results file once; a file that cannot be read is kept with its reason (`unreadable`)."""
    tally = Tally(config)
    is_success = compile_judge(config.success)
    seen: set[str] = set()
    duplicates: dict[str, int] = {}
    for path in paths:
        file_tally = FileTally(path, "")
        tally.files.append(file_tally)
        try:
            file_tally.format = detect_format(path)
            if file_tally.format == JSON_OBJECT:
                _count_checkpoint(tally, file_tally, is_success, (seen, duplicates))
            else:
                _count_stream(tally, file_tally, iter_records(path, file_tally.format), is_success,
                              (seen, duplicates))
        except ReasonError as exc:
            file_tally.unreadable = exc.reason
            file_tally.no_footer = isinstance(exc, ParquetWithoutFooter)
            file_tally.damaged = isinstance(exc, DamagedDocument)
    if config.task_field is None:  # the units are the ids: a unit with two successes is a duplicate
        tally.duplicate_successes = {key: c[0] for key, c in tally.units.items() if c[0] > 1}
    else:
        tally.duplicate_successes = duplicates
    return tally


def _count_stream(tally: Tally, ft: FileTally, items: Iterator, is_success,
                  samples: tuple[set[str], dict[str, int]]) -> None:
    """The hot loop (a million records): locals, two ints per unit. `samples`: the (task, id) pairs with a
    success, and those with more (one string each, `task\\0id`: a tuple keeps three objects alive)."""
    seen, duplicates = samples
    unit_field, units = tally.config.unit_field, tally.units
    id_field = tally.config.id_field if tally.config.task_field is not None else None
    records = successes = error_like = unjudged = 0
    for item in items:
        if type(item) is not tuple:
            _problem(ft, item)
            if item.value is None:
                continue
            item = (item.number, item.value)
        number, record = item
        records += 1
        key = record.get(unit_field)
        if key is None:
            _without_key(ft, number, record)
            continue
        if type(key) is not str:
            spelled, key = key, unit_key(key)
            if key not in units:
                tally.spelled[key] = spelled
        counts = units.get(key)
        if counts is None:
            counts = units[key] = [0, 0]
        verdict = is_success(record)
        if verdict is not True:
            if verdict is False:
                counts[1] += 1
            else:  # the expression failed on this record: neither a success nor a failure
                unjudged, ft.unjudged_error = unjudged + 1, ft.unjudged_error or verdict
            continue
        counts[0] += 1
        successes += 1
        for value in record.values():  # looks_like_error, inlined: a call per record costs ~0.1 us
            if type(value) is str and value[:1] in ERROR_FIRST and value.startswith(ERROR_PREFIXES):
                break
        else:
            value = None
        if value is not None:
            error_like += _error_like_example(ft, number)
        if id_field is not None and (sample := record.get(id_field)) is not None:
            pair = key + "\0" + (sample if type(sample) is str else unit_key(sample))
            if pair in seen:
                duplicates[pair] = duplicates.get(pair, 1) + 1
            else:
                seen.add(pair)
    _add_counts(ft, records, successes, unjudged, error_like)


def _error_like_example(ft: FileTally, number: int) -> int:
    if len(ft.error_like_examples) < MAX_EXAMPLES:
        ft.error_like_examples.append(number)
    return 1


def _add_counts(ft: FileTally, records: int, successes: int, unjudged: int, error_like: int) -> None:
    ft.records += records
    ft.successes += successes
    ft.failures += records - successes - ft.without_key - unjudged
    ft.unjudged += unjudged
    ft.error_like += error_like


def _problem(ft: FileTally, entry: Entry) -> None:
    ft.problem_count += 1
    ft.last_problem = entry
    if len(ft.problems) < MAX_EXAMPLES:
        ft.problems.append(entry)


def _without_key(ft: FileTally, number: int, record: dict) -> None:
    if ft.first_fields is None:
        ft.first_fields = list(record)[:20]
    ft.without_key += 1
    if len(ft.without_key_examples) < MAX_EXAMPLES:
        ft.without_key_examples.append(number)


def _count_checkpoint(tally: Tally, ft: FileTally, is_success, samples: tuple[set[str], dict[str, int]]) -> None:
    """An inference checkpoint.json: its results counted as a stream, and per id whether one succeeded."""
    records, ft.processed_ids = inference_checkpoint(ft.path, tally.config)
    _count_stream(tally, ft, ((number, record) for number, record in enumerate(records, 1)), is_success, samples)
    outcomes: dict[str, bool | None] = {}
    for record in records:
        key = unit_key(record.get(tally.config.id_field))
        if key is not None:  # True: a success; False: failures only; None: only results not judged
            verdict = is_success(record)
            verdict = verdict if type(verdict) is bool else None
            before = outcomes.get(key, None)
            outcomes[key] = True if True in (before, verdict) else (False if False in (before, verdict) else None)
    ft.outcomes = outcomes


def inference_checkpoint(path: Path, config: LedgerConfig) -> tuple[list[dict], list[Any] | None]:
    """An inference job's checkpoint.json: its `results` as records, and its `processed_ids`.

    `results` is a list of objects, or a mapping of id to an object (the id is added under the id
    field) or to a plain value (read as `{<id field>: id, "prediction": value}`).
    """
    data = read_json_document(path)
    if not isinstance(data, dict) or "results" not in data:
        raise RecordsError("is a JSON object without `results`: not a results file")
    results, processed = data["results"], data.get("processed_ids")
    if isinstance(results, dict):
        results = [{**value, config.id_field: key} if isinstance(value, dict)
                   else {config.id_field: key, "prediction": value} for key, value in results.items()]
    if not isinstance(results, list):
        raise RecordsError(f"`results` is a JSON {type(results).__name__}, not a list or mapping of results")
    return [r for r in results if isinstance(r, dict)], processed if isinstance(processed, list) else None


def too_long_count(ft: FileTally) -> int:
    """How many of the kept problem examples were lines too long to be a record (for the message)."""
    return sum(1 for entry in ft.problems if entry.problem and entry.problem.startswith(TOO_LONG))

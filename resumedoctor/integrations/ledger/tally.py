"""One streaming pass over a ledger's results: what each unit of work (a task, or an input) has.

A unit is named by the config's `unit_field` (the task field, else the id field). Every results file
is read once, record by record; per unit only two counts are kept (successes, failures), so a
million-record ledger costs a dict of a million small entries, not its records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumedoctor.integrations.ledger.config import LedgerConfig
from resumedoctor.integrations.ledger.success import compile_success
from resumedoctor.io.records import (
    JSON_OBJECT,
    Entry,
    detect_format,
    iter_entries,
    read_json_document,
)

MAX_EXAMPLES = 5  # entries kept per kind of problem, to name in a message


def unit_key(value: Any) -> str | None:
    """The one spelling of an id: `1`, `"1"` and a CSV's `1` are the same unit; None for a missing id."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass
class FileTally:
    """What one results file holds."""

    path: Path
    format: str
    records: int = 0  # usable records
    successes: int = 0
    failures: int = 0
    without_key: int = 0  # records without the unit field
    problems: list[Entry] = field(default_factory=list)  # the first MAX_EXAMPLES unusable entries
    problem_count: int = 0
    last_problem: Entry | None = None  # the last unusable entry (a torn tail is the file's last)
    # An inference checkpoint.json's `processed_ids` (None: the file has none).
    processed_ids: list[Any] | None = None


@dataclass
class Tally:
    config: LedgerConfig
    files: list[FileTally] = field(default_factory=list)
    # unit key -> [successes, failures]
    units: dict[str, list[int]] = field(default_factory=dict)
    # id key -> successes, for ids with more than one success (duplicates); counted by the id field
    duplicate_successes: dict[str, int] = field(default_factory=dict)

    def successes(self, key: str) -> int:
        return self.units.get(key, (0, 0))[0]

    def failures(self, key: str) -> int:
        return self.units.get(key, (0, 0))[1]


def tally_files(paths: Iterable[Path], config: LedgerConfig) -> Tally:
    """Read every results file once; unreadable files raise RecordsError (a finding for the caller)."""
    tally = Tally(config)
    is_success = compile_success(config.success)
    seen_success: dict[str, int] = {}
    for path in paths:
        file_tally = FileTally(path, detect_format(path))
        tally.files.append(file_tally)
        for entry in _entries(file_tally, config):
            if entry.value is None:
                file_tally.problem_count += 1
                file_tally.last_problem = entry
                if len(file_tally.problems) < MAX_EXAMPLES:
                    file_tally.problems.append(entry)
                continue
            _count(tally, file_tally, entry.value, is_success(entry.value), seen_success)
    tally.duplicate_successes = {key: count for key, count in seen_success.items() if count > 1}
    return tally


def _count(tally: Tally, file_tally: FileTally, record: dict, success: bool, seen_success: dict[str, int]) -> None:
    file_tally.records += 1
    key = unit_key(record.get(tally.config.unit_field))
    if key is None:
        file_tally.without_key += 1
        return
    counts = tally.units.setdefault(key, [0, 0])
    if success:
        file_tally.successes += 1
        counts[0] += 1
        sample = unit_key(record.get(tally.config.id_field))
        if sample is not None:
            seen_success[sample] = seen_success.get(sample, 0) + 1
    else:
        file_tally.failures += 1
        counts[1] += 1


def _entries(file_tally: FileTally, config: LedgerConfig) -> Iterator[Entry]:
    if file_tally.format != JSON_OBJECT:
        return iter_entries(file_tally.path, file_tally.format)
    records, processed = inference_checkpoint(file_tally.path, config)
    file_tally.processed_ids = processed
    return iter(Entry(number, -1, 0, record) for number, record in enumerate(records, 1))


def inference_checkpoint(path: Path, config: LedgerConfig) -> tuple[list[dict], list[Any] | None]:
    """An inference job's checkpoint.json: its `results` as records, and its `processed_ids`.

    `results` is a list of objects, or a mapping of id to an object (the id is added under the id
    field) or to a plain value (read as `{<id field>: id, "prediction": value}`).
    """
    from resumedoctor.io.records import RecordsError

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

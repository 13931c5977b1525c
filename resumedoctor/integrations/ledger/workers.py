"""A job split into worker ranges: each worker's state file, its result shard(s), and the merged file.

The convention (integrations/ledger/layout.py): `worker_args_<k>.json` = {"worker": k, "start": a,
"end": b, "status": "running" | "done" | "failed", "shard": "<file name in the folder>"} and one shard
per worker named `<stem>_data_<a>_to_<b>_<anything>.<suffix>`; the merged file is `<stem>_merged.<suffix>`.
Schedulers write variants of it, read here tolerantly: start_idx/end_idx, `"done": true`,
output/output_file, a `worker_state_<k>.json` beside the args file, a range only in the shard's name.
Everything in the folder is untrusted: a damaged or ill-typed state file is a `problem` of its worker,
never an exception, and a shard named outside the folder (`../x`, an absolute path elsewhere, a link
leading out) is never read: it is reported as `outside`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.integrations.ledger.layout import (
    SHARD_RANGE_NAME,
    WORKER_STATE_NAME,
    is_ledger_file_name,
)
from resumedoctor.io.bounded_read import JSON_CONFIG_LIMIT, read_json_file
from resumedoctor.io.printable import printable

MAX_STATE_FILES = 10_000  # state files read per folder; a scheduler with more workers is no job here
MAX_INDEX = 10**15  # a row position beyond this is no work list (a crafted or corrupted number)

# A worker's status, normalised.
DONE, FAILED, RUNNING, PENDING, UNKNOWN = "done", "failed", "running", "not started", "unknown"
_STATUS_WORDS = {
    DONE: ("done", "finished", "complete", "completed", "success", "succeeded", "ok"),
    FAILED: ("failed", "failure", "error", "errored", "crashed", "killed", "aborted"),
    RUNNING: ("running", "started", "in_progress", "in-progress", "processing", "active"),
    PENDING: ("pending", "queued", "waiting", "not_started", "todo", "new"),
}
_STATUS_OF = {word: status for status, words in _STATUS_WORDS.items() for word in words}
# Boolean flags some schedulers write instead of a status, in the order they are believed.
_FLAG_STATUS = (("failed", FAILED), ("done", DONE), ("finished", DONE), ("completed", DONE))
# The field names schedulers use, first found wins.
_START_KEYS = ("start", "start_idx", "start_index", "begin", "lo")
_END_KEYS = ("end", "end_idx", "end_index", "stop", "hi")
_SHARD_KEYS = ("shard", "output", "output_file", "output_path", "shard_file", "shard_path", "out_file",
               "result_file", "results_file")
_INPUTS_KEYS = ("inputs", "input", "input_file", "input_path")
MERGED_NAME = re.compile(r"(?:^|[_.-])merged(?:[_.-]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Worker:
    """One worker as its state file(s) describe it."""

    key: str  # <k> of worker_args_<k>.json
    state_files: tuple[str, ...]
    start: int | None = None
    end: int | None = None
    status: str = UNKNOWN
    status_text: str = "no status"  # the status as written
    shards: tuple[str, ...] = ()  # its shard(s) in the folder that exist (declared, or found by range)
    declared_shard: str | None = None  # the shard its state names, inside the folder (may not exist)
    outside: str | None = None  # the shard its state names outside the folder: never read
    problem: str | None = None  # why its state could not be read or used
    inputs: str | None = None  # the work list its state names, when that lies inside the folder

    @property
    def label(self) -> str:
        return f"worker {self.key}"

    @property
    def has_range(self) -> bool:
        return self.start is not None and self.end is not None

    @property
    def size(self) -> int:
        return (self.end - self.start) if self.has_range else 0


@dataclass(frozen=True)
class Shard:
    """A result file named by its input range."""

    name: str
    start: int
    end: int


@dataclass
class WorkerLayout:
    folder: Path
    workers: list[Worker] = field(default_factory=list)
    orphans: list[Shard] = field(default_factory=list)  # range-named shards that no state file claims
    merged: list[str] = field(default_factory=list)  # merged results files
    outside: list[str] = field(default_factory=list)  # range-named entries that are links leading out
    unread_states: int = 0  # state files beyond MAX_STATE_FILES

    @property
    def inputs(self) -> Path | None:
        """The work list every state that names one names (inside the folder: one outside is not read)."""
        named = {worker.inputs for worker in self.workers if worker.inputs is not None}
        return self.folder / named.pop() if len(named) == 1 else None

    @property
    def shard_names(self) -> list[str]:
        """Every shard of the folder that can be read, claimed or not, sorted."""
        return sorted({name for worker in self.workers for name in worker.shards} | {s.name for s in self.orphans})

    def result_files(self) -> list[Path]:
        """The files that hold the job's results, each once: the shards, else the merged file(s)."""
        return [self.folder / name for name in (self.shard_names or self.merged)]

    @property
    def is_worker_job(self) -> bool:
        return bool(self.workers or self.orphans or self.outside)


def read_layout(folder: Path, listing: dict[str, bool]) -> WorkerLayout:
    """The workers, shards and merged files of a folder (`listing`: name -> is a folder)."""
    layout = WorkerLayout(folder)
    files = sorted(name for name, is_dir in listing.items() if not is_dir)
    shards = _range_shards(folder, files, layout)
    layout.merged = [name for name in files if is_merged(name) and inside(folder, name)]
    states = _state_files(files)
    if len(states) > MAX_STATE_FILES:
        layout.unread_states = len(states) - MAX_STATE_FILES
        states = dict(list(states.items())[:MAX_STATE_FILES])
    claimed: set[str] = set()
    for key, names in states.items():
        worker = _claim_shards(folder, _read_worker(folder, key, names), shards, files)
        claimed.update(worker.shards)
        layout.workers.append(worker)
    layout.orphans = [shard for shard in shards if shard.name not in claimed]
    return layout


def inside(folder: Path, name: str) -> bool:
    """Does `folder/name` stay inside the folder, links followed? (Never read what leads out.)"""
    root = os.path.realpath(folder)
    return os.path.realpath(os.path.join(root, name)).startswith(root.rstrip(os.sep) + os.sep)


def shard_range(name: str) -> tuple[int, int] | None:
    match = SHARD_RANGE_NAME.search(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def is_merged(name: str) -> bool:
    return is_ledger_file_name(name) and not SHARD_RANGE_NAME.search(name) and bool(
        MERGED_NAME.search(name.rsplit(".", 1)[0]))


def _range_shards(folder: Path, files: list[str], layout: WorkerLayout) -> list[Shard]:
    shards = []
    for name in files:
        found = shard_range(name) if is_ledger_file_name(name) else None
        if found is None or found[1] < found[0]:
            continue
        if inside(folder, name):
            shards.append(Shard(name, *found))
        else:
            layout.outside.append(name)
    return shards


def _state_files(files: list[str]) -> dict[str, list[str]]:
    """Worker key -> its state files (worker_args_<k>.json first, then worker_state_<k>.json)."""
    states: dict[str, list[str]] = {}
    for name in sorted(files, key=lambda n: (not n.startswith("worker_args_"), n)):
        match = WORKER_STATE_NAME.match(name)
        if match:
            states.setdefault(match.group(1), []).append(name)
    return dict(sorted(states.items(), key=lambda item: _natural(item[0])))


def _natural(key: str) -> tuple:
    return (0, int(key), key) if key.isdigit() and len(key) < 19 else (1, 0, key)


def _read_worker(folder: Path, key: str, names: list[str]) -> Worker:
    """A worker from its state files merged (a later file's fields over an earlier's)."""
    data: dict[str, Any] = {}
    for name in names:
        try:
            value = read_json_file(folder / name, limit=JSON_CONFIG_LIMIT)
        except ReasonError as exc:
            return Worker(key, tuple(names), problem=f"{name}: {exc.reason}")
        if not isinstance(value, dict):
            return Worker(key, tuple(names), problem=f"{name}: holds a JSON {_kind(value)}, not an object")
        data.update(value)
    return _worker_from(folder, key, tuple(names), data)


def _worker_from(folder: Path, key: str, names: tuple[str, ...], data: dict[str, Any]) -> Worker:
    problems: list[str] = []
    start = _index(data, _START_KEYS, problems)
    end = _index(data, _END_KEYS, problems)
    if start is None and end is None and "range" in data:
        start, end = _pair(data["range"], problems)
    status, status_text = _status(data)
    declared, outside = _declared_file(folder, data, _SHARD_KEYS, problems)
    inputs, _ = _declared_file(folder, data, _INPUTS_KEYS, [])
    if start is not None and end is not None and end < start:
        problems.append(f"its range ends before it starts ([{start}, {end}))")
        start = end = None
    if (start is None) != (end is None):
        problems.append("its range has only one end")
        start = end = None
    return Worker(key, names, start, end, status, status_text, declared_shard=declared, outside=outside,
                  problem="; ".join(problems) or None, inputs=inputs)


def _index(data: dict[str, Any], keys: tuple[str, ...], problems: list[str]) -> int | None:
    for key in keys:
        if key in data:
            value, problem = _row_position(data[key])
            if problem:
                problems.append(f"`{key}` is {problem}")
            return value
    return None


def _row_position(value: Any) -> tuple[int | None, str | None]:
    """A row index from a state file: a whole number (or a string of digits) in [0, MAX_INDEX]."""
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 18:
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"{_kind(value)}, not a row index"
    if not 0 <= value <= MAX_INDEX:
        return None, f"{_short(value)}, not a row index (0 to {MAX_INDEX:.0e})"
    return value, None


def _pair(value: Any, problems: list[str]) -> tuple[int | None, int | None]:
    if not (isinstance(value, list) and len(value) == 2):
        problems.append(f"`range` is {_kind(value)}, not [start, end]")
        return None, None
    (start, bad_start), (end, bad_end) = _row_position(value[0]), _row_position(value[1])
    if bad_start or bad_end:
        problems.append(f"`range` holds {bad_start or bad_end}")
    return start, end


def _status(data: dict[str, Any]) -> tuple[str, str]:
    for key in ("status", "state"):
        value = data.get(key)
        if isinstance(value, str):
            return _STATUS_OF.get(value.strip().lower().replace(" ", "_"), UNKNOWN), _short(value)
        if key in data:
            return UNKNOWN, f"{key}: {_kind(data[key])}"
    for key, status in _FLAG_STATUS:
        if data.get(key) is True:
            return status, f"{key}: true"
    if data.get("done") is False or data.get("finished") is False:
        return RUNNING, "done: false"
    return UNKNOWN, "no status"


def _declared_file(folder: Path, data: dict[str, Any], keys: tuple[str, ...],
                   problems: list[str]) -> tuple[str | None, str | None]:
    """(the file the state names under one of `keys`, relative to the folder; or None, what it names outside)."""
    key = next((key for key in keys if key in data), None)
    if key is None:
        return None, None
    value = data[key]
    if not isinstance(value, str) or not value.strip() or "\x00" in value or len(value) > 4096:
        problems.append(f"`{key}` is {_kind(value)}, not a file name")
        return None, None
    path = PurePath(value)
    if path.is_absolute():
        if os.path.realpath(path.parent) != os.path.realpath(folder):
            return None, _short(value)
        path = PurePath(path.name)
    if ".." in path.parts or not inside(folder, str(path)):
        return None, _short(value)
    return str(path), None


def _claim_shards(folder: Path, worker: Worker, shards: list[Shard], files: list[str]) -> Worker:
    """The worker's shards: the one its state names, else the range-named shards of its range."""
    from dataclasses import replace

    if worker.declared_shard is not None:
        own = (worker.declared_shard,) if os.path.exists(folder / worker.declared_shard) else ()
        found = shard_range(PurePath(worker.declared_shard).name)
        if not worker.has_range and found and found[0] <= found[1]:
            worker = replace(worker, start=found[0], end=found[1])
        return replace(worker, shards=own)
    if worker.outside is not None:
        return worker
    mine = [s for s in shards if _names_worker(s.name, worker.key)]
    if worker.has_range:
        same = [s for s in shards if (s.start, s.end) == (worker.start, worker.end)]
        # A shard named for this worker over another range (an inclusive end, 1-based rows) is still its own.
        chosen = [s for s in same if s in mine] or same or mine
    else:  # no (usable) range in the state: a shard named for this worker carries it
        chosen = mine[:1]
        if chosen:
            worker = replace(worker, start=chosen[0].start, end=chosen[0].end)
    return replace(worker, shards=tuple(s.name for s in chosen))


def _names_worker(name: str, key: str) -> bool:
    """Does a shard's name carry the worker's key after its range (`..._to_500_w3.csv`, `..._worker3...`)?"""
    tail = name[SHARD_RANGE_NAME.search(name).end() - 1:] if SHARD_RANGE_NAME.search(name) else name
    return re.search(rf"(?:^|[_.-])(?:w|worker|rank|shard)?[_-]?{re.escape(key)}(?=[_.-]|$)", tail) is not None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {_short(value)}"
    if isinstance(value, str):
        return f"the string {_short(value)!r}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    """A value for a message, cut short and made printable (state files are untrusted)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"a number of about {int(abs(value).bit_length() * 0.30103) + 1} digits"  # (repr may refuse it)
    return printable(value if isinstance(value, str) else repr(value), limit=limit)

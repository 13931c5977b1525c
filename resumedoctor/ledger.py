"""A result ledger that cannot drift from the work: what `CurriculumCallback` is to training, for the
scripts around it (data generation, batch inference, labelling).

    from resumedoctor.ledger import Ledger

    with Ledger("out/results.jsonl", task_field="task_id") as ledger:
        for task, needed in ledger.remaining(tasks, quota=32):       # successes only count
            for _ in range(needed):
                ledger.record(id=new_id(), task=task["task_id"], success=ok, completion=text)

- Append-only JSON Lines, one `write` per record (a killed process never leaves half of one it was
  given), fsynced in batches: every `fsync_every` records or `fsync_seconds`, and on `flush`/`close`.
- Opening it takes an exclusive lock (one writer per file) and repairs a torn tail left by a killed
  writer: the cut-off line is moved to `<name>.torn` (nothing is lost) before the first append, so a
  new record never glues onto it; a last record without its newline gets one.
- Success is the GEN checks' own: a JMESPath expression over the record as written (default: no
  `error` and no `success: false`), or a callable. `record(success=...)` writes a `success` field and is
  refused when the expression would read the record otherwise, so the file and the counts never differ.
- `Ledger.for_worker(folder, worker=k, start=a, end=b)` writes one shard per worker and its state file
  (`worker_args_<k>.json`: running / done / failed), the layout `resumedoctor diagnose FOLDER` reads;
  `Ledger.merge(folder)` merges the shards (one record per id, a success winning over an error).

Importing this module is light: no torch, numpy or pandas.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from resumedoctor.integrations.ledger.config import LedgerConfig
from resumedoctor.integrations.ledger.layout import (
    SHARD_RANGE_NAME,
    WORKER_STATE_NAME,
    is_ledger_file_name,
)
from resumedoctor.integrations.ledger.merge import (
    format_of,
    merge_records,
    shard_order,
    write_records,
)
from resumedoctor.integrations.ledger.success import DEFAULT_SUCCESS, compile_success
from resumedoctor.integrations.ledger.tally import unit_key
from resumedoctor.io.atomic_write import atomic_write
from resumedoctor.io.records import JSONL, TORN, iter_entries

__all__ = ["Ledger", "LedgerBusy", "Todo", "WorkerLedger", "merge_shards", "read_worker_state"]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
WORKER_STATES = ("running", "done", "failed")
Success = str | Callable[[dict], bool]


class LedgerBusy(RuntimeError):
    """Another process holds this ledger open for writing."""


class Todo(NamedTuple):
    """An input still to run, and how many more successes it needs."""

    input: Any
    needed: int


class Ledger:
    """An append-only JSONL result ledger; see the module's docstring."""

    def __init__(self, path: str | os.PathLike, *, id_field: str = "id", task_field: str | None = None,
                 success: Success = DEFAULT_SUCCESS, fsync_every: int = 100, fsync_seconds: float = 1.0):
        self.path = Path(path)
        if not self.path.name.lower().endswith(JSONL_SUFFIXES):
            raise ValueError(f"{self.path.name}: a Ledger writes JSON Lines (.jsonl), not {self.path.suffix!r}")
        if fsync_every < 1 or fsync_seconds < 0:
            raise ValueError("fsync_every is at least 1 record and fsync_seconds at least 0")
        self.id_field, self.task_field = id_field, task_field
        self.success_expression = success if isinstance(success, str) else None
        self._is_success = compile_success(success) if isinstance(success, str) else success
        self.fsync_every, self.fsync_seconds = fsync_every, fsync_seconds
        self._successes: dict[str, int] = {}  # unit key -> successes
        self._failures: dict[str, int] = {}  # unit key -> failures
        self._succeeded: set[str] = set()  # id keys with a success
        self.records = self.problems = self.torn_bytes = 0
        self._pending, self._last_sync = 0, time.monotonic()
        self._fd: int | None = None
        self._open()

    # ---- reading what is there ---------------------------------------------------------------------
    @property
    def unit_field(self) -> str:
        """What a success counts toward: the task field, else the id field."""
        return self.task_field or self.id_field

    @property
    def config(self) -> LedgerConfig:
        """The same reading as a LedgerConfig (for merge_records and the GEN checks)."""
        return LedgerConfig(id_field=self.id_field, task_field=self.task_field,
                            success=self.success_expression or DEFAULT_SUCCESS)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            _lock(fd, self.path)
            last = None
            for entry in iter_entries(self.path, JSONL):
                last = entry
                if isinstance(entry.value, dict):
                    self._count(entry.value, self._is_success(entry.value))
                else:
                    self.problems += 1
            self._repair_tail(fd, last)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _repair_tail(self, fd: int, last) -> None:
        """Make the file end with a newline: move a torn last line to `<name>.torn`, end a whole one."""
        size = os.fstat(fd).st_size
        if size == 0 or _read_at(self.path, size - 1, 1) == b"\n":
            return
        if last is not None and last.problem and last.problem.startswith(TORN) and last.offset >= 0:
            torn = _read_at(self.path, last.offset, size - last.offset)
            side = self.path.with_name(self.path.name + ".torn")
            with _open_side_file(side) as handle:  # several tears over several restarts: all kept
                handle.write(torn + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.ftruncate(fd, last.offset)
            self.problems -= 1
            self.torn_bytes += len(torn)
        else:  # a whole record (or an over-long line) without its newline
            os.write(fd, b"\n")
        os.fsync(fd)

    def _count(self, record: dict, success: bool) -> None:
        self.records += 1
        unit = unit_key(record.get(self.unit_field))
        if unit is None:
            return
        counts = self._successes if success else self._failures
        counts[unit] = counts.get(unit, 0) + 1
        if success:
            sample = unit_key(record.get(self.id_field))
            if sample is not None:
                self._succeeded.add(sample)

    def done(self) -> dict[str, int]:
        """Successes per unit (task, else id), for the units that have any; failures never count."""
        return dict(self._successes)

    def successes(self, unit: Any) -> int:
        return self._successes.get(unit_key(unit), 0)

    def failures(self, unit: Any) -> int:
        return self._failures.get(unit_key(unit), 0)

    def succeeded(self, id: Any) -> bool:
        """Has the result with this id a success in the ledger?"""
        return unit_key(id) in self._succeeded

    def remaining(self, inputs: Iterable[Any], quota: int | Callable[[Any], int] = 1, *,
                  key: str | None = None) -> list[Todo]:
        """The inputs still to run, in their order, each with how many successes it still needs.

        INPUTS are ids or dicts (named by `key`, default the task field, else the id field); `quota` is
        the successes each needs (a number, or a function of the input). An input listed twice counts once.
        """
        field = key or self.unit_field
        todo, seen = [], set()
        for number, item in enumerate(inputs):
            if isinstance(item, dict):
                if item.get(field) is None:
                    raise ValueError(f"input {number} has no {field!r} field: {_short(item)}")
                unit = unit_key(item[field])
            else:
                unit = unit_key(item)
            if unit in seen:
                continue
            seen.add(unit)
            needed = (quota(item) if callable(quota) else quota) - self._successes.get(unit, 0)
            if needed > 0:
                todo.append(Todo(item, needed))
        return todo

    # ---- writing -----------------------------------------------------------------------------------
    def record(self, id: Any = None, task: Any = None, *, success: bool | None = None, **fields: Any) -> dict:
        """Append one result; `success` None: as the success expression reads the record. Returns it."""
        record = self._build(id, task, success, fields)
        derived = bool(self._is_success(record))
        if success is not None and derived != success:
            raise ValueError(f"record {_short(record)}: success={success}, but the ledger's success test "
                             f"({self.success_expression or 'the callable'}) reads it as {derived}; the file "
                             "would say otherwise on the next open")
        data = (_json_line(record) + "\n").encode("utf-8")
        self._write(data)
        self._count(record, derived)
        return record

    def _build(self, id: Any, task: Any, success: bool | None, fields: dict[str, Any]) -> dict:
        if self._fd is None:
            raise ValueError(f"{self.path}: the ledger is closed")
        if id is None:
            id = fields.pop(self.id_field, None)
        elif self.id_field in fields:
            raise TypeError(f"the id is given twice (id= and {self.id_field}=)")
        if id is None:
            raise TypeError(f"record() needs an id (id= or {self.id_field}=)")
        record = {self.id_field: id}
        if self.task_field is not None:
            task = task if task is not None else fields.pop(self.task_field, None)
            if task is None:
                raise TypeError(f"record() needs a task (task= or {self.task_field}=)")
            record[self.task_field] = task
        elif task is not None:
            raise TypeError("task= needs a ledger opened with task_field=")
        record.update(fields)
        if success is not None:
            record["success"] = bool(success)
        return record

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._pending += 1
        if self._pending >= self.fsync_every or time.monotonic() - self._last_sync >= self.fsync_seconds:
            self.flush()

    def flush(self) -> None:
        """Make every record written so far durable (fsync)."""
        if self._fd is not None and self._pending:
            os.fsync(self._fd)
        self._pending, self._last_sync = 0, time.monotonic()

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            os.close(self._fd)  # closing releases the lock
            self._fd = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, records={self.records}, units done={len(self._successes)})"

    # ---- one shard per worker ------------------------------------------------------------------------
    @classmethod
    def for_worker(cls, folder: str | os.PathLike, *, worker: int, start: int, end: int,
                   inputs: str | os.PathLike | None = None, stem: str = "results", **options: Any) -> WorkerLedger:
        """The shard of worker K for input rows [start, end): `<stem>_data_<a>_to_<b>_w<k>.jsonl` in FOLDER,
        with its state file `worker_args_<k>.json`: running now; on leaving the `with` block, failed on an
        exception, else done, unless the worker said otherwise (`set_status("failed")`: inputs left with
        only failures, which a resume must rerun)."""
        return WorkerLedger(Path(folder), worker=worker, start=start, end=end, inputs=inputs, stem=stem, **options)

    @staticmethod
    def merge(folder: str | os.PathLike, out: str | os.PathLike | None = None, *, id_field: str = "id",
              task_field: str | None = None, success: Success = DEFAULT_SUCCESS) -> Path:
        """Merge FOLDER's shards into OUT (default `<stem>_merged.<suffix>` in FOLDER); its path."""
        return merge_shards(folder, out, id_field=id_field, task_field=task_field, success=success)


class WorkerLedger(Ledger):
    """One worker's shard and state file (see Ledger.for_worker)."""

    def __init__(self, folder: Path, *, worker: int, start: int, end: int, inputs: str | os.PathLike | None,
                 stem: str, **options: Any):
        if not 0 <= start <= end:
            raise ValueError(f"worker {worker}: the range [{start}, {end}) is not a range of input rows")
        self.folder, self.worker, self.start, self.end = folder, worker, start, end
        # A relative path is the caller's (from the working directory), as any path argument.
        self.inputs_path = Path(inputs).absolute() if inputs is not None else None
        self.state_path = folder / f"worker_args_{worker}.json"
        super().__init__(folder / f"{stem}_data_{start}_to_{end}_w{worker}.jsonl", **options)
        self.set_status("running")

    def set_status(self, status: str) -> None:
        """Write the state file atomically; `done` and `failed` first make the shard durable."""
        if status not in WORKER_STATES:
            raise ValueError(f"status is one of {', '.join(WORKER_STATES)}, not {status!r}")
        if status != "running":
            self.flush()
        state = {"worker": self.worker, "start": self.start, "end": self.end, "status": status,
                 "shard": self.path.name, "pid": os.getpid(), "updated": round(time.time(), 3)}
        if self.inputs_path is not None:
            state["inputs"] = _relative(self.inputs_path, self.folder)
        atomic_write(self.state_path, (json.dumps(state, indent=2) + "\n").encode())
        self.status = status

    def inputs(self) -> Iterator[dict]:
        """The rows [start, end) of the inputs file (JSONL, JSON array or CSV), counted from 0."""
        if self.inputs_path is None:
            raise ValueError(f"worker {self.worker}: no inputs file was given")
        rows = (entry.value for entry in iter_entries(self.inputs_path) if isinstance(entry.value, dict))
        for index, row in enumerate(rows):
            if index >= self.end:
                return
            if index >= self.start:
                yield row

    def __exit__(self, exc_type, *rest) -> None:
        if self._fd is not None and (exc_type is not None or self.status == "running"):
            # A status the worker set itself (failed: inputs left with only failures) stands.
            self.set_status("failed" if exc_type is not None else "done")
        self.close()


def read_worker_state(folder: str | os.PathLike, worker: int) -> dict | None:
    """A worker's state file as written by Ledger.for_worker; None when it has none (or not a readable one)."""
    try:
        state = json.loads((Path(folder) / f"worker_args_{worker}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def merge_shards(folder: str | os.PathLike, out: str | os.PathLike | None = None, *, id_field: str = "id",
                 task_field: str | None = None, success: Success = DEFAULT_SUCCESS) -> Path:
    """Ledger.merge: every range-named shard of FOLDER into one file, one record per id."""
    folder = Path(folder)
    shards = _shards(folder)
    if not shards:
        raise FileNotFoundError(f"{folder}: no result shards (`<stem>_data_<start>_to_<end>_....jsonl`)")
    target = Path(out) if out is not None else folder / f"{_stem(shards)}_merged{shards[0].suffix}"
    format_of(target)  # a wrong suffix fails before any work
    config = LedgerConfig(id_field=id_field, task_field=task_field,
                          success=success if isinstance(success, str) else DEFAULT_SUCCESS)
    predicate = None if isinstance(success, str) else success
    write_records(merge_records(shards, config, predicate), target)
    return target


def _shards(folder: Path) -> list[Path]:
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file(follow_symlinks=False))
    return sorted((folder / name for name in names
                   if SHARD_RANGE_NAME.search(name) and is_ledger_file_name(name) and not name.startswith(".")
                   and not WORKER_STATE_NAME.match(name)), key=shard_order)


def _stem(shards: list[Path]) -> str:
    stems = {SHARD_RANGE_NAME.split(path.name)[0] for path in shards}
    if len(stems) > 1:
        raise ValueError(f"shards of several jobs ({', '.join(sorted(stems))}): name the output file")
    return stems.pop() or "results"


def _relative(path: Path, folder: Path) -> str:
    """PATH as seen from FOLDER (`../tasks.jsonl`): the state stays right when the job's folder moves."""
    try:
        return os.path.relpath(path, folder.absolute())
    except ValueError:  # another drive (Windows)
        return str(path)


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def _json_line(record: dict) -> str:
    """RECORD as one line of standard JSON: NaN and Infinity are refused (json.loads elsewhere, jq, pandas
    with other parsers read `NaN` as an error), naming the fields that hold them."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError:
        fields = [key for key, value in record.items() if isinstance(value, float) and not math.isfinite(value)]
        where = f"field(s) {', '.join(map(repr, fields))}" if fields else "a nested value"
        raise ValueError(f"record {_short(record)}: {where} is NaN or Infinity, which standard JSON cannot "
                         "hold; record None or a string instead") from None


def _open_side_file(path: Path):
    """PATH for appending, only as a regular file of its own: a link (or a FIFO) there is refused, never
    written through."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if os.path.islink(path) or exc.errno in (errno.ELOOP, errno.ENXIO):
            raise OSError(exc.errno, f"{path} is a symbolic link or not a regular file: the torn tail is not "
                                     "written through it; move it away and open the ledger again") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file: the torn tail is not written into it; "
                                    "move it away and open the ledger again")
    return open(fd, "ab")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _lock(fd: int, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; one writer per file stays the caller's promise
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LedgerBusy(f"{path}: another process is writing this ledger (one writer per file: "
                         "give each worker its own shard, Ledger.for_worker)") from None


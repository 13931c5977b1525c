"""Read a local W&B run's transaction log (`run-<id>.wandb`) without a W&B server.

Why we parse the framing ourselves: wandb 0.31's own reader is `wandb leet inspect --json`, a
subprocess that takes ~4.5 s for a run of 100,000 history records before we parse a line of its
output, which alone spends the whole budget of a diagnosis. The log is wandb's LevelDB-style
record log (32 KiB blocks; each chunk a 7-byte header: CRC-32, length, chunk type), and every
record is a `wandb.proto.wandb_internal_pb2.Record`, decoded here with wandb's own protobuf
classes. The test suite checks this reader against `wandb leet inspect --json` record for record.

A run killed mid-write leaves a cut-off last chunk: that is normal after a crash, so the records
before it are kept and the log is marked `complete=False`; only a log with no readable header is
an error.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import LOG_LIMIT, MiB, open_regular

HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version 0
HEADER_IDENT, HEADER_MAGIC, HEADER_VERSION = b":W&B", 0xBEE1, 0
BLOCK_LEN = 32768
CHUNK = struct.Struct("<IHB")  # crc32 over (type byte + data), data length, chunk type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_CRC = {kind: zlib.crc32(bytes([kind])) for kind in (FULL, FIRST, MIDDLE, LAST)}
RUN_FOLDER = re.compile(r"^(offline-)?run-(\d{8}_\d{6})-([a-z0-9]+)$")


class WandbLogError(ReasonError):
    """The log cannot be read at all; `reason` is one line for a person."""


@dataclass
class RecordStream:
    complete: bool = True
    problem: str | None = None


def iter_record_bytes(path: Path, stream: RecordStream) -> Iterator[bytes]:
    """Every record's serialized bytes; stops (and notes why) at the first damaged chunk.

    The header is checked before anything else is read, then the log is read one 32 KiB block at a
    time (a chunk never crosses a block), so memory is one block plus the record being assembled.
    """
    try:
        handle = open_regular(path)
    except ReasonError as exc:  # unreadable, or a FIFO / device / socket
        raise WandbLogError(exc.reason) from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > LOG_LIMIT:
            raise WandbLogError(f"is larger than {LOG_LIMIT // MiB} MiB, more than this file ever holds")
        block = _read(handle, BLOCK_LEN)
        if len(block) < HEADER.size:
            raise WandbLogError(f"{len(block)} bytes: too short for the W&B log header")
        ident, magic, version = HEADER.unpack_from(block)
        if ident != HEADER_IDENT or magic != HEADER_MAGIC or version != HEADER_VERSION:
            raise WandbLogError("not a W&B transaction log (bad header)")
        offset, position, pending = 0, HEADER.size, bytearray()  # offset: where `block` starts in the file
        while block and offset <= LOG_LIMIT:
            problem = yield from _records_in_block(block, offset, position, pending)
            if problem:
                stream.complete, stream.problem = False, problem
                return
            if len(block) < BLOCK_LEN:  # the end of the file (a full last block reads b"" next)
                return
            offset, position, block = offset + BLOCK_LEN, 0, _read(handle, BLOCK_LEN)
        if block:
            stream.complete, stream.problem = False, f"grew past {LOG_LIMIT // MiB} MiB while it was read"


def _read(handle, size: int) -> bytes:
    try:
        return handle.read(size)
    except OSError as exc:
        raise WandbLogError(f"cannot be read: {exc.strerror or exc}") from None


def _records_in_block(block: bytes, offset: int, position: int, pending: bytearray) -> Iterator[bytes]:
    """The records completed by the chunks of one block; returns why it stopped early (None: read to its end).

    `pending` carries a record split over blocks (FIRST, MIDDLE..., LAST) from one block to the next.
    """
    while position < len(block):
        room = BLOCK_LEN - position
        if room < CHUNK.size:  # the writer pads the tail of a block that cannot hold a header
            return None
        if position + CHUNK.size > len(block):
            return "cut off inside a chunk header"
        checksum, length, kind = CHUNK.unpack_from(block, position)
        if checksum == 0 and length == 0 and kind == 0:
            return None  # zero padding up to the next block
        start, end = position + CHUNK.size, position + CHUNK.size + length
        if kind not in _TYPE_CRC or length > room - CHUNK.size:
            return f"damaged chunk at byte {offset + position}"
        if end > len(block):
            return f"cut off inside a record at byte {offset + position}"
        payload = block[start:end]
        if zlib.crc32(payload, _TYPE_CRC[kind]) & 0xFFFFFFFF != checksum:
            return f"checksum mismatch at byte {offset + position}"
        position = end
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending[:] = payload
        elif kind == MIDDLE:
            pending += payload
        else:
            pending += payload
            yield bytes(pending)
            pending.clear()
    return None


@dataclass
class RunLog:
    """What resumedoctor needs from a run: identity, config, and how `_step` maps to global steps."""

    path: Path
    run_id: str | None = None
    project: str | None = None
    entity: str | None = None
    display_name: str | None = None
    offline: bool = False
    config: dict = field(default_factory=dict)
    # One (_step, train/global_step or None, logged train metrics?) per history record, in order.
    history: list[tuple[int, int | None, bool]] = field(default_factory=list)
    step_metric: str | None = None
    exit_code: int | None = None
    complete: bool = True
    problem: str | None = None
    records: int = 0

    @property
    def last_step(self) -> int | None:
        return self.history[-1][0] if self.history else None

    @property
    def max_global_step(self) -> int | None:
        steps = [g for _, g, _ in self.history if g is not None]
        return max(steps) if steps else None

    def first_step_after(self, global_step: int) -> int:
        """The `_step` a fork or rewind at checkpoint `global_step` starts from.

        Everything logged while the trainer was before that step stays, and so does the record
        of that step's own metrics (the Trainer logs them before it saves); records logged at
        that global step but without train metrics (GRPO's profiling of the next generation)
        came after the save and are logged again by the resumed run.
        """
        keep = -1
        for step, logged_global, has_train_metrics in self.history:
            if logged_global is None:
                continue
            if logged_global < global_step or (logged_global == global_step and has_train_metrics):
                keep = max(keep, step)
        return keep + 1


def _value(value_json: str):
    try:
        return json.loads(value_json)
    except ValueError:
        return None


def _apply_config(log: RunLog, update) -> None:
    for item in update:
        key = item.key or "/".join(item.nested_key)
        log.config[key] = _value(item.value_json)


def read_run_log(path: Path, *, step_metric: str = "train/global_step") -> RunLog:
    """Parse a run's `.wandb` log; raises WandbLogError only when nothing can be read."""
    from wandb.proto import wandb_internal_pb2

    log = RunLog(path, step_metric=step_metric)
    match = RUN_FOLDER.match(path.parent.name)
    if match:
        log.offline = bool(match.group(1))
        log.run_id = match.group(3)
    stream = RecordStream()
    record = wandb_internal_pb2.Record()
    for raw in iter_record_bytes(path, stream):
        try:
            record.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError moved between versions
            stream.complete, stream.problem = False, f"undecodable record after {log.records} records"
            break
        log.records += 1
        kind = record.WhichOneof("record_type")
        if kind == "history":
            step, global_step, has_train = None, None, False
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if key == "_step":
                    step = _value(item.value_json)
                elif key == step_metric:
                    value = _value(item.value_json)
                    global_step = int(value) if isinstance(value, (int, float)) else None
                elif key.startswith("train/"):
                    has_train = True
            if step is None and record.history.HasField("step"):
                step = record.history.step.num
            if isinstance(step, int):
                log.history.append((step, global_step, has_train))
        elif kind == "run":
            run = record.run
            log.run_id = run.run_id or log.run_id
            log.project = run.project or log.project
            log.entity = run.entity or log.entity
            log.display_name = run.display_name or log.display_name
            _apply_config(log, run.config.update)
        elif kind == "config":
            _apply_config(log, record.config.update)
        elif kind == "exit":
            log.exit_code = record.exit.exit_code
    log.complete, log.problem = stream.complete, stream.problem
    if log.records == 0 and not log.complete:
        raise WandbLogError(f"no readable record ({log.problem})")
    return log

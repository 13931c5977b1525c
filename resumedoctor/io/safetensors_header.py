"""Read and validate a safetensors header without touching the tensor data.

Layout: 8 bytes little-endian header length N, N bytes of JSON, then the data. Each tensor names
its dtype, shape and [begin, end) offsets into the data; a whole file is exactly 8 + N + data bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import open_regular

# safetensors' own reader refuses headers larger than this.
MAX_HEADER_SIZE = 100_000_000

# Bits per element of every dtype safetensors knows.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


class SafetensorsError(ReasonError):
    """The file is not a readable safetensors file."""

    def __init__(self, reason: str, *, truncated: bool = False, unreadable: bool = False):
        super().__init__(reason)
        self.truncated = truncated
        self.unreadable = unreadable


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_size: int
    file_size: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def data_size(self) -> int:
        return max((entry.end for entry in self.tensors.values()), default=0)

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    @property
    def expected_file_size(self) -> int:
        return self.data_start + self.data_size

    def size_problem(self) -> str | None:
        """Why the file size disagrees with the header, or None when it is exact."""
        missing = self.expected_file_size - self.file_size
        if missing > 0:
            return (
                f"truncated: the header describes {self.expected_file_size} bytes but the file has "
                f"{self.file_size} ({missing} bytes missing)"
            )
        if missing < 0:
            return f"{-missing} unexpected bytes after the last tensor (file {self.file_size} bytes, expected {self.expected_file_size})"
        return None


def _tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int | None:
    bits = DTYPE_BITS[dtype] * math.prod(shape)
    return bits // 8 if bits % 8 == 0 else None


def _parse_entry(name: str, raw: object) -> TensorEntry:
    if not isinstance(raw, dict):
        raise SafetensorsError(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise SafetensorsError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise SafetensorsError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise SafetensorsError(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end] with begin <= end")
    nbytes = _tensor_nbytes(dtype, tuple(shape))
    if nbytes is None:
        raise SafetensorsError(f"tensor {name!r}: {dtype} x {shape} is not a whole number of bytes")
    if offsets[1] - offsets[0] != nbytes:
        raise SafetensorsError(
            f"tensor {name!r}: {dtype} {shape} needs {nbytes} bytes but its offsets span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def parse_safetensors_header(prefix: bytes, file_size: int, path: Path = Path("<bytes>")) -> SafetensorsHeader:
    """Validate the header found at the start of a file of `file_size` bytes.

    `prefix` must hold at least the first 8 + N bytes when the file is that long; raises
    SafetensorsError (and nothing else) for any malformed input.
    """
    if file_size < 8 or len(prefix) < 8:
        raise SafetensorsError(f"{file_size} bytes: too short to hold the 8-byte header length", truncated=True)
    (header_size,) = struct.unpack("<Q", prefix[:8])
    if header_size > MAX_HEADER_SIZE:
        raise SafetensorsError(f"header length {header_size} is larger than safetensors allows ({MAX_HEADER_SIZE})")
    if 8 + header_size > file_size:
        raise SafetensorsError(
            f"truncated inside the header: it declares {header_size} bytes, the file has {file_size - 8} after the length",
            truncated=True,
        )
    raw = prefix[8 : 8 + header_size]
    if len(raw) < header_size:
        raise SafetensorsError("header bytes could not be read in full", truncated=True)
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: also a 5000-digit number
        raise SafetensorsError(f"header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise SafetensorsError("header JSON is not an object")
    metadata = document.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError("__metadata__ is not an object of strings")
    tensors = {name: _parse_entry(name, entry) for name, entry in document.items()}
    spans = sorted((entry.begin, entry.end, entry.name) for entry in tensors.values())
    position = 0
    for begin, end, name in spans:
        if begin != position:
            kind = "overlaps the previous tensor" if begin < position else f"leaves a gap of {begin - position} bytes"
            raise SafetensorsError(f"tensor {name!r} at offset {begin} {kind} (offsets are not contiguous)")
        position = end
    return SafetensorsHeader(path, header_size, file_size, tensors, metadata)


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read only the header of a safetensors file; raises SafetensorsError."""
    try:
        with open_regular(path) as handle:
            file_size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) == 8:
                (header_size,) = struct.unpack("<Q", head)
                if header_size <= MAX_HEADER_SIZE:
                    head += handle.read(header_size)
    except ReasonError as exc:  # a FIFO, device or socket: the resume would block or fail on it
        raise SafetensorsError(exc.reason, unreadable=True) from None
    except OSError as exc:
        raise SafetensorsError(f"cannot be read: {exc.strerror or exc}", unreadable=True) from None
    return parse_safetensors_header(head, file_size, path)


# Bit masks that select a non-finite value (exponent all ones) per float dtype, as unsigned ints.
_NON_FINITE_MASKS = {
    "F16": ("<u2", 0x7C00, 0x7C00),
    "BF16": ("<u2", 0x7F80, 0x7F80),
    "F32": ("<u4", 0x7F800000, 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000, 0x7FF0000000000000),
    "F8_E5M2": ("u1", 0x7C, 0x7C),
    "F8_E4M3": ("u1", 0x7F, 0x7F),  # e4m3fn has NaN only: S.1111.111
}
_SCAN_CHUNK_BYTES = 64 * 1024 * 1024


def count_non_finite(header: SafetensorsHeader) -> dict[str, int]:
    """Count NaN/Inf per float tensor, streaming the memory-mapped file in bounded chunks."""
    import mmap

    import numpy as np

    counts: dict[str, int] = {}
    if header.data_size == 0:
        return counts
    with open_regular(header.path) as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for entry in header.tensors.values():
            spec = _NON_FINITE_MASKS.get(entry.dtype)
            if spec is None or entry.end == entry.begin:
                continue
            dtype, mask, value = spec
            itemsize = np.dtype(dtype).itemsize
            step = _SCAN_CHUNK_BYTES - _SCAN_CHUNK_BYTES % itemsize
            start, stop = header.data_start + entry.begin, header.data_start + entry.end
            bad = 0
            for offset in range(start, stop, step):
                chunk = np.frombuffer(mapped, dtype=dtype, count=(min(offset + step, stop) - offset) // itemsize, offset=offset)
                bad += int(np.count_nonzero((chunk & mask) == value))
                del chunk  # release the buffer export before the map closes
            if bad:
                counts[entry.name] = bad
    return counts

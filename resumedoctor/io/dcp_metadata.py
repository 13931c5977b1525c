"""Read a torch.distributed.checkpoint folder's `.metadata` without running its pickle.

FSDP saves with SHARDED_STATE_DICT go through torch.distributed.checkpoint (DCP): every rank writes
`__<rank>_<n>.distcp`, then the coordinator pickles a `Metadata` object into `.metadata` (a temp file
renamed into place, so its presence means every rank finished). Its `storage_data` maps each tensor
chunk to (relative_path, offset, length) in those files: enough to tell a whole folder from a cut-off
copy without reading a tensor. torch loads `.metadata` with plain `pickle.load`; here every class it
names becomes an inert stand-in, and a global outside torch/pathlib stops the read (loading it for
real would run that code).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import FileTooLargeError, read_bytes_bounded
from resumedoctor.io.safe_pickle import UnsafePickleError, _Stub

METADATA_FILE = ".metadata"
MAX_METADATA_BYTES = 128 * 1024 * 1024  # tens of MB for a 70B model on 64 ranks; more is not a DCP index
DISTCP_NAME = re.compile(r"^__(\d+)_\d+\.distcp$")
# What a DCP Metadata pickle names: its own dataclasses, torch dtypes/sizes/layouts, and the checkpoint path.
_STUBBED_ROOTS = ("torch", "pathlib")
_PLAIN = {("collections", "OrderedDict"): dict, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset}


class DcpMetadataError(ReasonError):
    """`.metadata` cannot be read as a DCP index: cut off or damaged, `unsafe` when it names code that
    loading would run, `unfamiliar` when it is a whole pickle laid out unlike any torch we know."""

    def __init__(self, reason: str, *, unsafe: bool = False, unfamiliar: bool = False):
        super().__init__(reason)
        self.unsafe = unsafe
        self.unfamiliar = unfamiliar


class _IndexStub(_Stub):
    """An inert stand-in that also takes the items and list entries a pickle may add to it."""

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)


@dataclass(frozen=True)
class DcpIndex:
    """Where the index says the bytes are: per file, the end of the last chunk it names."""

    needed_bytes: dict[str, int]

    @property
    def ranks(self) -> set[int]:
        """The ranks that wrote data files (`__<rank>_<n>.distcp`)."""
        return {int(match.group(1)) for name in self.needed_bytes if (match := DISTCP_NAME.match(name))}


def _find_class(self, module: str, name: str) -> Any:
    if (module, name) in _PLAIN:
        return _PLAIN[(module, name)]
    if module.split(".")[0] in _STUBBED_ROOTS and name.replace(".", "_").isidentifier():
        return type(name, (_IndexStub,), {"qualname": f"{module}.{name}"})
    raise UnsafePickleError(f"{module}.{name}")


def _persistent_load(self, pid: Any) -> Any:
    raise DcpMetadataError("`.metadata` references tensor storage, which a DCP index never does")


def _unpickle(data: bytes) -> Any:
    import pickle

    class IndexUnpickler(pickle.Unpickler):
        find_class = _find_class
        persistent_load = _persistent_load

    return IndexUnpickler(io.BytesIO(data)).load()


def _fields(value: Any) -> dict:
    state = value._state if isinstance(value, _Stub) else None
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
    return state if isinstance(state, dict) else {}


def _storage_entry(info: Any) -> tuple[str, int, int] | None:
    """(relative_path, offset, length) of one `_StorageInfo` stand-in, by field or by position."""
    fields = _fields(info)
    if {"relative_path", "offset", "length"} <= set(fields):
        values = fields["relative_path"], fields["offset"], fields["length"]
    elif isinstance(info, _Stub) and len(info._args) >= 3:
        values = tuple(info._args[:3])
    else:
        return None
    path, offset, length = values
    if isinstance(path, str) and isinstance(offset, int) and isinstance(length, int) and offset >= 0 and length >= 0:
        return path, offset, length
    return None


def read_dcp_index(folder: Path) -> DcpIndex:
    """The byte ranges `.metadata` promises; DcpMetadataError when it is missing, cut off or not an index."""
    path = folder / METADATA_FILE
    try:
        data = read_bytes_bounded(path, MAX_METADATA_BYTES)
    except FileTooLargeError as exc:
        raise DcpMetadataError(f"`.metadata` {exc.reason}", unfamiliar=True) from None
    except ReasonError as exc:  # unreadable, or a FIFO / device / socket
        raise DcpMetadataError(f"`.metadata` {exc.reason}") from None
    import pickle

    try:
        metadata = _unpickle(data)
    except UnsafePickleError as exc:
        raise DcpMetadataError(f"`.metadata` names {exc.global_name}: torch would run it when loading "
                               "(it was not run here)", unsafe=True) from None
    except DcpMetadataError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DcpMetadataError(f"`.metadata` is cut off or damaged ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - a layout this reader does not know: it cannot judge
        raise DcpMetadataError(f"`.metadata` could not be read here ({type(exc).__name__}: {exc})",
                               unfamiliar=True) from None
    storage = _fields(metadata).get("storage_data")
    if not isinstance(storage, dict) or not storage:
        raise DcpMetadataError("`.metadata` has no storage_data", unfamiliar=True)
    needed: dict[str, int] = {}
    for info in storage.values():
        entry = _storage_entry(info)
        if entry is None:
            raise DcpMetadataError("`.metadata` holds a storage entry without path, offset and length",
                                   unfamiliar=True)
        relative, offset, length = entry
        needed[relative] = max(needed.get(relative, 0), offset + length)
    return DcpIndex(needed)

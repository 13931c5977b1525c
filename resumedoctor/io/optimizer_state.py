"""The tensor shapes and dtypes an optimizer.pt records, read from its pickle alone (never torch.load).

`torch.save(optimizer.state_dict())` writes a zip archive: `<name>/data.pkl`, the pickle of
{"state": {param_index: {"step": t, "exp_avg": t, ...}}, "param_groups": [{"params": [...], ...}]},
and one raw storage per tensor. Each tensor is pickled as a call of torch._utils._rebuild_tensor_v2
(storage, offset, shape, stride, ...) whose storage is a persistent id ("storage", torch.FloatStorage,
key, location, numel): shape and dtype are in the pickle, the bytes are not needed and never read.

The pickle is first scanned against the allow-list and budget of io.safe_pickle (no global outside it,
bounded bytes, opcodes and memo), then unpickled into inert records: every global resolves to a
stand-in defined here, nothing named in the file is imported or called. Anything outside the shape of
a torch optimizer state (another tensor type, numpy, string parameter keys of FSDP) is
UnfamiliarOptimizerState: the caller says it did not judge it.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import open_regular
from resumedoctor.io.safe_pickle import (
    STATE_BUDGET,
    PickleReadError,
    UnsafePickleError,
    scan_pickle,
)

# A shape no real tensor has: more dimensions, or a dimension past what an int64 numel can hold.
MAX_DIMS = 64
MAX_DIM = 1 << 62
MAX_PARAM_INDEX = 1 << 40  # beyond any real model's parameter count: a larger index is crafted


class OptimizerStateError(ReasonError):
    """optimizer.pt cannot be read (damaged, unsafe, over budget); `reason` is one line."""


class UnfamiliarOptimizerState(OptimizerStateError):
    """The pickle holds something other than a plain torch optimizer state dict; it is not judged."""


@dataclass(frozen=True)
class TensorRecord:
    """One tensor as the pickle describes it: its shape and dtype (torch's name: float32, bfloat16)."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ParamGroup:
    params: tuple[int, ...]
    options: dict[str, Any]  # lr, weight_decay, betas, ...: the plain values only


@dataclass(frozen=True)
class OptimizerState:
    """state[param_index][name] is a TensorRecord or a plain value; groups list the indices in order."""

    state: dict[int, dict[str, Any]]
    param_groups: tuple[ParamGroup, ...]

    @property
    def param_indices(self) -> tuple[int, ...]:
        """Every parameter index of the groups, in the order torch's load_state_dict pairs them."""
        return tuple(index for group in self.param_groups for index in group.params)


# --- inert stand-ins for the globals a state pickle names ----------------------------------------

_STORAGE_DTYPES = {
    "Float": "float32", "Double": "float64", "Half": "float16", "BFloat16": "bfloat16", "Long": "int64",
    "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8", "Bool": "bool",
    "ComplexFloat": "complex64", "ComplexDouble": "complex128",
}


@dataclass(frozen=True)
class _StorageType:
    dtype: str | None  # None for UntypedStorage: the tensor names its dtype (_rebuild_tensor_v3)


@dataclass(frozen=True)
class _Dtype:
    name: str


@dataclass(frozen=True)
class _Storage:
    dtype: str | None


def _shape(size: Any) -> tuple[int, ...]:
    if not isinstance(size, tuple) or len(size) > MAX_DIMS:
        raise OptimizerStateError("a tensor's shape is not a tuple of at most 64 dimensions")
    if not all(type(dim) is int and 0 <= dim <= MAX_DIM for dim in size):
        raise OptimizerStateError("a tensor's shape holds something other than a non-negative size")
    return size


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any, dtype: Any = None) -> TensorRecord:
    if not isinstance(storage, _Storage) or type(offset) is not int:
        raise OptimizerStateError("a tensor is rebuilt from something other than a storage record")
    name = dtype.name if isinstance(dtype, _Dtype) else storage.dtype
    if name is None:
        raise OptimizerStateError("a tensor names no dtype")
    return TensorRecord(_shape(size), name)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRecord:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorRecord:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       hooks: Any = None, dtype: Any = None, *rest: Any) -> TensorRecord:
    return _tensor(storage, offset, size, stride, dtype=dtype)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    if not isinstance(data, TensorRecord):
        raise OptimizerStateError("a parameter is rebuilt from something other than a tensor")
    return data


def _size(*args: Any) -> tuple:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else ()


_DTYPE_STEMS = ("float", "bfloat", "int", "uint", "complex", "bool", "qint", "quint")

_REBUILDERS = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "torch.Size": _size,
    "torch.storage.UntypedStorage": _StorageType(None),
}


def _find_class(self, module: str, name: str) -> Any:
    """Stand-ins only; the scan has already refused every global outside the allow-list."""
    qualname = f"{module}.{name}"
    if qualname in _REBUILDERS:
        return _REBUILDERS[qualname]
    if module in ("torch", "torch.cuda") and name.endswith("Storage") and name[:-7] in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name[:-7]])
    if module == "torch" and name.startswith(_DTYPE_STEMS):
        return _Dtype(name)  # torch.float32 & co, as the scan allowed them
    raise UnfamiliarOptimizerState(f"the pickle holds {qualname[:120]}, which a plain optimizer state never does")


def _persistent_load(self, pid: Any) -> _Storage:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
        raise OptimizerStateError("a storage record is not torch's ('storage', type, key, location, size)")
    return _Storage(pid[1].dtype)


def _unpickle(data: bytes) -> Any:
    import pickle

    class StateUnpickler(pickle.Unpickler):
        find_class = _find_class
        persistent_load = _persistent_load

    try:
        return StateUnpickler(io.BytesIO(data)).load()
    except OptimizerStateError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed pickle is one line for the user
        raise OptimizerStateError(f"its pickle cannot be read ({type(exc).__name__})") from None


# --- the state dict ----------------------------------------------------------------------------


def _plain_options(group: dict) -> dict[str, Any]:
    return {key: value for key, value in group.items()
            if isinstance(key, str) and key != "params" and isinstance(value, (int, float, bool, str, type(None), tuple))}


def _is_index(value: Any) -> bool:
    """A parameter index torch could have written (a crafted huge int cannot even be printed)."""
    return type(value) is int and 0 <= value <= MAX_PARAM_INDEX


def _groups(raw: Any) -> tuple[ParamGroup, ...]:
    if not isinstance(raw, list) or not all(isinstance(group, dict) for group in raw):
        raise UnfamiliarOptimizerState("param_groups is not a list of groups")
    groups = []
    for group in raw:
        params = group.get("params")
        if not isinstance(params, list) or not all(_is_index(index) for index in params):
            raise UnfamiliarOptimizerState("a parameter group does not list its parameters by index")
        groups.append(ParamGroup(tuple(params), _plain_options(group)))
    return tuple(groups)


def to_optimizer_state(loaded: Any) -> OptimizerState:
    """The unpickled stand-ins as an OptimizerState; UnfamiliarOptimizerState for any other layout."""
    if not isinstance(loaded, dict) or not {"state", "param_groups"} <= set(loaded):
        raise UnfamiliarOptimizerState("the pickle is not an optimizer state dict (no state and param_groups)")
    state = loaded["state"]
    if not isinstance(state, dict):
        raise UnfamiliarOptimizerState("its state is not a mapping")
    entries: dict[int, dict[str, Any]] = {}
    for index, values in state.items():
        if not _is_index(index) or not isinstance(values, dict):
            raise UnfamiliarOptimizerState("its state is not keyed by parameter index (FSDP and others key it by name)")
        entries[index] = {key: value for key, value in values.items() if isinstance(key, str)}
    return OptimizerState(entries, _groups(loaded["param_groups"]))


def parse_optimizer_pickle(data: bytes) -> OptimizerState:
    """The optimizer state a data.pkl describes; raises OptimizerStateError (or its Unfamiliar subclass)."""
    try:
        scan_pickle(data, STATE_BUDGET, storages=True)
    except UnsafePickleError as exc:
        raise OptimizerStateError(f"its pickle {exc}") from None
    except PickleReadError as exc:
        raise OptimizerStateError(f"its pickle cannot be read: {exc.reason}") from None
    return to_optimizer_state(_unpickle(data))


def _pickle_bytes(path: Path) -> bytes:
    """data.pkl of the archive, as torch.load finds it, within the state budget."""
    import zipfile

    from resumedoctor.io.torch_archive import ArchivePickleError, torch_pickle_member

    limit = STATE_BUDGET.max_bytes
    try:
        with open_regular(path) as handle, zipfile.ZipFile(handle) as archive:
            member = torch_pickle_member(archive)
            if member.file_size > limit:
                raise OptimizerStateError(f"its pickle is {member.file_size} bytes (at most {limit})")
            with archive.open(member) as stream:
                return stream.read(limit + 1)
    except (ReasonError, ArchivePickleError) as exc:
        if isinstance(exc, OptimizerStateError):
            raise
        raise OptimizerStateError(exc.reason) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise OptimizerStateError(f"not a readable torch archive ({type(exc).__name__})") from None


def read_optimizer_state(path: Path) -> OptimizerState:
    """The shapes and dtypes optimizer.pt records; reads its pickle only (bounded), never a tensor's bytes."""
    return parse_optimizer_pickle(_pickle_bytes(Path(path)))

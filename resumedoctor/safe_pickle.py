"""Read `training_args.bin` (a torch zip archive of a pickled TrainingArguments/GRPOConfig) safely.

A checkpoint may come from anyone, and a pickle can call any importable function while it loads.
This reader never imports or calls anything named in the file: every class it names must live in
transformers, trl, accelerate, peft or torch, and comes back as an inert stand-in that only records
its arguments and state; any other global (os.system, builtins.eval, subprocess.Popen, ...) stops
the read with UnsafePickleError naming it. The result is plain data: dataclasses become dicts, enums
and devices their value.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError

ALLOWED_ROOTS = ("transformers", "trl", "accelerate", "peft", "torch")
MAX_PICKLE_BYTES = 16 * 1024 * 1024  # arguments are a few KiB; anything huge is not what we expect


class UnsafePickleError(Exception):
    """The pickle names a global outside the argument classes: loading it could run code."""

    def __init__(self, global_name: str):
        super().__init__(global_name)
        self.global_name = global_name


class PickleReadError(ReasonError):
    """The archive or its pickle cannot be read as arguments; `reason` is one line."""


class _Stub:
    """Stands in for an allowed class: records constructor arguments and pickled state, runs nothing."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        instance = object.__new__(cls)
        instance._args = args
        instance._state = None
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._state = state


def _stub_class(module: str, name: str) -> type:
    return type(name, (_Stub,), {"qualname": f"{module}.{name}"})


def _restricted_unpickler(data: bytes):
    """A pickle.Unpickler that resolves no global of its own (pickle imported only when reading)."""
    import pickle

    class RestrictedUnpickler(pickle.Unpickler):
        find_class = _find_class
        persistent_load = _persistent_load

    return RestrictedUnpickler(io.BytesIO(data))



def _find_class(self, module: str, name: str) -> Any:
    root = module.split(".")[0]
    if root in ALLOWED_ROOTS and name.isidentifier() and not name.startswith("_"):
        return _stub_class(module, name)
    raise UnsafePickleError(f"{module}.{name}")


def _persistent_load(self, pid: Any) -> Any:
    raise PickleReadError("the arguments pickle references tensor storage, which arguments never do")


def to_plain(value: Any) -> Any:
    """Stand-ins to plain data: objects with state to dicts, one-argument objects (enums, devices) to that argument."""
    if isinstance(value, _Stub):
        state = value._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
        if isinstance(state, dict):
            return {str(key): to_plain(item) for key, item in state.items()}
        if len(value._args) == 1:
            return to_plain(value._args[0])
        return value.qualname
    if isinstance(value, dict):
        return {str(to_plain(key)): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(item) for item in value]
    return value


def read_pickle_member(path: Path) -> bytes:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
            if not members:
                raise PickleReadError("no data.pkl in the archive")
            if members[0].file_size > MAX_PICKLE_BYTES:
                raise PickleReadError(f"data.pkl is {members[0].file_size} bytes, far more than arguments take")
            return archive.read(members[0])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise PickleReadError(f"not a readable torch archive: {exc}") from None


def read_training_args(path: Path) -> dict[str, Any]:
    """The saved arguments as a dict; raises UnsafePickleError or PickleReadError, never runs the pickle."""
    data = read_pickle_member(path)
    try:
        loaded = _restricted_unpickler(data).load()
    except (UnsafePickleError, PickleReadError):
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed pickle is one line for the user
        raise PickleReadError(f"the arguments pickle cannot be read: {type(exc).__name__}: {exc}") from None
    plain = to_plain(loaded)
    if not isinstance(plain, dict):
        raise PickleReadError("the pickle does not hold an arguments object")
    plain["__class__"] = loaded.qualname if isinstance(loaded, _Stub) else type(loaded).__name__
    return plain

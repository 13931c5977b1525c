"""Read the pickles of a checkpoint's torch archives without running them, within a budget.

A checkpoint may come from anyone, and a pickle can call any importable function while it loads.
Nothing named in a file is ever imported or called here. Every global a pickle names must be on an
explicit allow-list (PICKLE_ALLOW_LIST, modelled on torch's own `weights_only` list and derived from
the files transformers/TRL/torch really write: training_args.bin, optimizer.pt, scheduler.pt,
rng_state*.pth, scaler.pt); any other global (os.system, builtins.eval, torch.hub.load, ...) is
UnsafePickleError naming it. A pickle is first scanned opcode by opcode within a budget (bytes,
opcodes, memo indices), so a crafted one can exhaust neither time nor memory; training_args.bin is
then unpickled into inert stand-ins and converted to plain data with memoisation (a shared-reference
DAG stays linear), a bound on depth and on the size of the result, and cycles refused.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import marshal
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.printable import printable

# --- the allow-list ---------------------------------------------------------------------------------

# What a global may be used for. DATA_CLASS: created without running its __init__ (NEWOBJ + BUILD, as
# pickle stores a dataclass); calling it (REDUCE) would run __init__/__post_init__, so it is refused.
# VALUE: an enum or value type looked up or built from its arguments, a tensor/array rebuild function or
# a type marker. Stand-ins replace both; none of them is ever imported.
DATA_CLASS, VALUE = "data class", "value"

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
             "ComplexFloat", "ComplexDouble")
_DTYPES = ("float16", "float32", "float64", "bfloat16", "complex32", "complex64", "complex128", "bool",
           "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float8_e4m3fn",
           "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "qint8", "quint8", "qint32")

PICKLE_ALLOW_LIST: dict[str, str] = {
    # torch: tensors and storages of optimizer/scheduler/RNG/scaler states (a subset of torch's weights_only list)
    **{f"torch._utils.{name}": VALUE for name in (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
        "_rebuild_meta_tensor_no_storage", "_rebuild_device_tensor_from_numpy")},
    "torch._tensor._rebuild_from_type_v2": VALUE,
    **{f"torch.{stem}Storage": VALUE for stem in _STORAGES},
    **{f"torch.cuda.{stem}Storage": VALUE for stem in _STORAGES},
    "torch.storage.UntypedStorage": VALUE, "torch.storage.TypedStorage": VALUE,
    **{f"torch.{dtype}": VALUE for dtype in _DTYPES},
    "torch.device": VALUE, "torch.Size": VALUE, "torch.Tensor": VALUE, "torch.nn.parameter.Parameter": VALUE,
    "torch.serialization._get_layout": VALUE,
    # numpy: the RNG state (rng_state*.pth), the list transformers' trainer_pt_utils.safe_globals() adds
    "numpy._core.multiarray._reconstruct": VALUE, "numpy.core.multiarray._reconstruct": VALUE,
    "numpy.ndarray": VALUE, "numpy.dtype": VALUE, "numpy.dtypes.UInt32DType": VALUE,
    # the field types of TrainingArguments (transformers 5 / accelerate 1)
    **{f"transformers.trainer_utils.{name}": VALUE for name in (
        "IntervalStrategy", "SaveStrategy", "HubStrategy", "SchedulerType", "FSDPOption", "HPSearchBackend")},
    "transformers.training_args.OptimizerNames": VALUE, "transformers.training_args.ParallelMode": VALUE,
    "transformers.debug_utils.DebugOption": VALUE,
    "transformers.trainer_pt_utils.AcceleratorConfig": DATA_CLASS,
    "transformers.training_args.TrainingArguments": DATA_CLASS,
    "transformers.training_args_seq2seq.Seq2SeqTrainingArguments": DATA_CLASS,
    "accelerate.state.PartialState": DATA_CLASS,
    "accelerate.utils.dataclasses.DistributedType": VALUE,
    "accelerate.parallelism_config.ParallelismConfig": DATA_CLASS,
    # DeepSpeed runs keep these on the arguments (read from the sources: deepspeed is not installed here)
    "accelerate.utils.dataclasses.DeepSpeedPlugin": DATA_CLASS,
    "transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig": DATA_CLASS,
    # its base class, the plugin's hf_ds_config in a real DeepSpeed 0.19.8 save (tests: test_real_deepspeed_save)
    "transformers.integrations.deepspeed.HfDeepSpeedConfig": DATA_CLASS,
}
# Stdlib containers get the real (harmless) type, _codecs.encode a checked stand-in, as in torch's weights_only
# list. Not bytearray (bytearray(10**12) allocates what it is told, and no checkpoint file pickles one) or complex.
STDLIB_ALLOWED = ("collections.OrderedDict", "collections.Counter", "builtins.set", "_codecs.encode")

# A TRL trainer's arguments class: `trl.trainer.<stem>_config.<Stem>Config` (or under trl.experimental.<pkg>),
# its name the module stem in CamelCase. Checked by name only, without importing TRL; tests/test_untrusted.py
# proves that in the installed TRL each such name is a dataclass subclass of TrainingArguments and that no
# arguments class escapes the rule.
_TRL_CONFIG_MODULE = re.compile(r"^trl\.(?:trainer|experimental\.[a-z0-9_]+)\.([a-z0-9_]+)_config$")
_NOT_ARGUMENTS = {"model", "base"}  # trl.trainer.model_config.ModelConfig holds model options, not arguments


def allowed_kind(module: str, name: str) -> str | None:
    """DATA_CLASS, VALUE or "stdlib" for a global on the allow-list; None for any other."""
    module, name = _python3_name(module, name)
    qualname = f"{module}.{name}"
    if qualname in PICKLE_ALLOW_LIST:
        return PICKLE_ALLOW_LIST[qualname]
    if qualname in STDLIB_ALLOWED:
        return "stdlib"
    match = _TRL_CONFIG_MODULE.match(module)
    if match and match.group(1) not in _NOT_ARGUMENTS and _spells_config(match.group(1), name):
        return DATA_CLASS
    return None


# The copyreg pattern protocols 0 and 1 use to rebuild an object without its __init__:
# _reconstructor(cls, object, None) then BUILD. Allowed in the arguments pickle only, checked when called.
REBUILD_GLOBALS = ("copyreg._reconstructor", "builtins.object")


def unlisted_class(module: str, name: str) -> bool:
    """Whether a global not on the allow-list may be the user's own arguments class (`__main__.MyArgs`,
    `my_pkg.config.MyGRPOConfig`): dotted identifiers outside the standard library. Whether it is one is
    decided by how the pickle uses it (see _UnlistedClassStub)."""
    module, name = _python3_name(module, name)
    parts = module.split(".")
    return (name.isidentifier() and all(part.isidentifier() for part in parts)
            and parts[0] not in sys.stdlib_module_names and parts[0] not in ("builtins", "__builtin__"))


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol 2 (torch.save's) writes Python 2 names (__builtin__.set); map them as pickle's own find_class does."""
    if module.isascii() and ("__builtin__" in module or module in _PY2_MODULES):
        import _compat_pickle

        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        return _compat_pickle.IMPORT_MAPPING.get(module, module), name
    return module, name


_PY2_MODULES = {"copy_reg", "UserDict", "UserList", "exceptions"}


def _spells_config(stem: str, name: str) -> bool:
    """Whether `name` spells `stem` + Config in any capitalisation (grpo -> GRPOConfig, online_dpo -> OnlineDPOConfig)."""
    return name.isidentifier() and name.isascii() and name.lower() == stem.replace("_", "") + "config"


# --- errors and budgets -----------------------------------------------------------------------------


class UnsafePickleError(Exception):
    """The pickle names a global outside the allow-list, or uses one as it would run code; nothing was run."""

    def __init__(self, global_name: str, reason: str | None = None):
        super().__init__(global_name)
        self.global_name = global_name
        self.reason = reason or f"names {global_name}, which is not on the allow-list of checkpoint pickles"

    def __str__(self) -> str:
        return self.reason


class PickleBudgetError(UnsafePickleError):
    """The pickle exceeds what the files torch.save writes for a checkpoint ever need (a resource bomb)."""

    def __init__(self, reason: str):
        super().__init__("", f"exceeds the reader's budget: {reason}")


class PickleReadError(ReasonError):
    """The archive or its pickle cannot be read; `reason` is one line."""


@dataclass(frozen=True)
class PickleBudget:
    max_bytes: int
    max_opcodes: int
    max_depth: int = 64
    max_nodes: int = 200_000  # values in the plain result, counted as a tree (a shared reference counts each time)

    @property
    def max_memo(self) -> int:
        return self.max_opcodes  # pickle numbers memo entries in order: an index past the opcode count is crafted


# training_args.bin is ~6 KiB and ~1000 opcodes; optimizer.pt grows ~100 opcodes per parameter tensor.
ARGS_BUDGET = PickleBudget(max_bytes=4 << 20, max_opcodes=1_000_000)
STATE_BUDGET = PickleBudget(max_bytes=64 << 20, max_opcodes=2_000_000)


# --- the opcode scan --------------------------------------------------------------------------------


# What the scan does with an opcode: skip it, remember a string, put to or get from the memo, or check it.
_SKIP, _STRING, _PUT, _MEMOIZE, _GET, _CHECK, _STOP = range(7)
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_PREFIX = {-2: (1, False), -3: (4, True), -4: (4, False), -5: (8, False)}  # pickletools' TAKEN_FROM_ARGUMENT*


def _action(name: str) -> int:
    if name in _STRINGS:
        return _STRING
    return {"PUT": _PUT, "BINPUT": _PUT, "LONG_BINPUT": _PUT, "MEMOIZE": _MEMOIZE, "GET": _GET, "BINGET": _GET,
            "LONG_BINGET": _GET, "FRAME": _SKIP, "PROTO": _SKIP, "STOP": _STOP}.get(name, _CHECK)


@functools.lru_cache(maxsize=1)
def _opcode_table() -> list[tuple[str, int, str, int] | None]:
    """opcode byte -> (name, argument length code of pickletools, argument name, action); None for no opcode."""
    import pickletools

    table: list[tuple[str, int, str, int] | None] = [None] * 256
    for op in pickletools.opcodes:
        table[ord(op.code)] = (op.name, op.arg.n if op.arg else 0, op.arg.name if op.arg else "", _action(op.name))
    return table


_SCANNED: dict[tuple[bytes, PickleBudget, bool], tuple[str, ...]] = {}  # verdicts by content
_READ_ARGS: dict[bytes, dict[str, Any]] = {}
_CACHE_LIMIT = 4096


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def scan_pickle(data: bytes, budget: PickleBudget, *, storages: bool) -> tuple[str, ...]:
    """scan_pickle_bytes, judged once per content: checkpoints of one run repeat the same pickles."""
    key = (_digest(data), budget, storages)
    if key not in _SCANNED:
        found = scan_pickle_bytes(data, budget, storages=storages)
        if len(_SCANNED) >= _CACHE_LIMIT:
            _SCANNED.clear()
        _SCANNED[key] = found
    return _SCANNED[key]


def scan_pickle_bytes(data: bytes, budget: PickleBudget, *, storages: bool) -> tuple[str, ...]:
    """Every global the pickle names, checked against the allow-list and the budget without building anything.

    `storages`: a state pickle (tensors by persistent id; torch, numpy and containers only), not the arguments one.
    """
    if len(data) > budget.max_bytes:
        raise PickleBudgetError(f"the pickle is {len(data)} bytes (at most {budget.max_bytes})")
    table, found, memo, size = _opcode_table(), set(), {}, len(data)
    recent: tuple[Any, Any] = (None, None)  # the last two values pushed, when they are known strings
    pos = count = 0
    while pos < size:
        entry = table[data[pos]]
        if entry is None:
            raise PickleReadError(f"byte {data[pos]:#04x} at offset {pos} is not a pickle opcode")
        count += 1
        if count > budget.max_opcodes:
            raise PickleBudgetError(f"more than {budget.max_opcodes} opcodes")
        name, length, arg_name, action = entry
        if length >= 0 and action == _CHECK:  # the common case, kept short: a fixed-size argument, no global
            pos += 1 + length
            if name in _NAMING:
                found.add(_check_opcode(name, None, recent, storages=storages))
            recent = (recent[1], None)
            continue
        pos, arg = _read_argument(data, pos + 1, length, arg_name)
        if action == _STOP:
            found.discard("")
            return tuple(sorted(found))
        if action == _PUT or action == _MEMOIZE:
            index = len(memo) if action == _MEMOIZE else _index(arg)
            if index > budget.max_memo:
                raise PickleBudgetError(f"memo index {index} (at most {budget.max_memo})")
            memo[index] = recent[1]
        elif action == _STRING:
            recent = (recent[1], arg)
        elif action == _GET:
            recent = (recent[1], memo.get(_index(arg)))
        elif action == _CHECK:
            found.add(_check_opcode(name, arg, recent, storages=storages))
            recent = (recent[1], None)
    raise PickleReadError("the pickle ends before its STOP opcode")


# Fixed-size opcodes that name a global or need a look: STACK_GLOBAL, copyreg extensions, persistent ids.
_NAMING = {"STACK_GLOBAL", "EXT1", "EXT2", "EXT4", "BINPERSID"}


def _index(arg: Any) -> int:
    try:
        return int(arg)
    except (TypeError, ValueError):
        raise PickleReadError(f"a memo index {str(arg)[:20]!r} is not a number") from None


def _read_argument(data: bytes, pos: int, length: int, arg_name: str) -> tuple[int, Any]:
    """(position after the argument, the argument: an int for 1-4 fixed bytes, text or bytes) for one opcode."""
    if length >= 0:
        if pos + length > len(data):
            raise PickleReadError("an argument runs past the end of the pickle")
        return pos + length, (int.from_bytes(data[pos:pos + length], "little") if 0 < length <= 4 else None)
    if length == -1:  # up to a newline; GLOBAL and INST carry two lines
        lines = 2 if arg_name == "stringnl_noescape_pair" else 1
        end = pos
        for _ in range(lines):
            end = data.find(b"\n", end) + 1
            if end == 0:
                raise PickleReadError("a text argument has no end of line")
        text = data[pos:end - 1].decode("latin-1")
        return end, text.replace("\n", " ") if lines == 2 else text
    size_bytes, signed = _PREFIX[length]
    if pos + size_bytes > len(data):
        raise PickleReadError("an argument runs past the end of the pickle")
    size = int.from_bytes(data[pos:pos + size_bytes], "little", signed=signed)
    start = pos + size_bytes
    if size < 0 or start + size > len(data):
        raise PickleReadError("an argument runs past the end of the pickle")
    payload = data[start:start + size]
    return start + size, payload.decode("utf-8", "replace") if "unicode" in arg_name else payload


def _check_opcode(name: str, arg: Any, recent: tuple[Any, Any], *, storages: bool) -> str | None:
    """The global an opcode names (checked), None for one that names none; raises for what is never allowed."""
    if name in ("EXT1", "EXT2", "EXT4"):
        raise UnsafePickleError("copyreg extension", "names a global through copyreg's extension registry")
    if name in ("PERSID", "BINPERSID") and not storages:
        raise PickleReadError("the arguments pickle references tensor storage, which arguments never do")
    if name == "STACK_GLOBAL":
        module, attr = recent
        if not (isinstance(module, str) and isinstance(attr, str)):
            raise UnsafePickleError("computed global", "names a global through a computed name (STACK_GLOBAL on "
                                    "values that are not the two strings pushed just before)")
    elif name in ("GLOBAL", "INST"):
        module, _, attr = str(arg).partition(" ")
    else:
        return ""
    kind = allowed_kind(module, attr)
    qualname = ".".join(_python3_name(module, attr))
    if kind is None and not storages and (qualname in REBUILD_GLOBALS or unlisted_class(module, attr)):
        return qualname  # judged by how the pickle uses it, when the restricted unpickler rebuilds it
    if kind is None:
        raise UnsafePickleError(_printable(f"{module}.{attr}"))
    if storages and kind != "stdlib" and not qualname.startswith(("torch.", "numpy.")):
        raise UnsafePickleError(qualname, f"names {qualname}, an arguments type that optimizer, scheduler, RNG "
                                          "and scaler states never hold")
    return qualname


def _printable(text: str) -> str:
    """A global's name as one short line (a crafted one may hold control characters or be huge)."""
    return printable(text, limit=200)


# --- the restricted unpickler ---------------------------------------------------------------------


class _Stub:
    """Stands in for an allowed global: records constructor arguments and pickled state, runs nothing."""

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


class _DataClassStub(_Stub):
    """A data class is rebuilt without its __init__; a pickle that calls it would run __post_init__."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsafePickleError(self.qualname, f"calls {self.qualname}(...), which would run its __init__")


class _UnlistedClassStub(_DataClassStub):
    """A class outside the allow-list, accepted only as the class of an object rebuilt without its __init__
    (NEWOBJ without arguments, or copyreg's _reconstructor) whose state is a TrainingArguments' state.
    One class per read (not cached), so that `built` counts this pickle's rebuilds only."""

    built = 0

    def __new__(cls, *args: Any, **kwargs: Any):
        if args or kwargs:  # NEWOBJ with arguments, or a call through REDUCE
            raise UnsafePickleError(cls.qualname)
        cls.built += 1
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsafePickleError(self.qualname)  # called through REDUCE or INST/OBJ: it would run its code


class _ObjectMarker:
    """builtins.object, which the arguments pickle may name only as _reconstructor's second argument."""

    qualname = "builtins.object"


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor, accepted only as protocols 0-1 rebuild a data class: (cls, object, None)."""
    if not (isinstance(cls, type) and issubclass(cls, _DataClassStub) and base is _ObjectMarker and state is None):
        raise UnsafePickleError("copyreg._reconstructor", "calls copyreg._reconstructor other than to rebuild an "
                                "arguments object")
    return cls.__new__(cls)


# An arguments object's state always holds these (TrainingArguments' first fields).
ARGUMENTS_KEYS = ("output_dir", "per_device_train_batch_size")


@functools.lru_cache(maxsize=1024)
def _stub_class(module: str, name: str, kind: str = VALUE) -> type:
    """One stand-in class per global (cached: a pickle naming it a million times makes one class)."""
    base = _DataClassStub if kind == DATA_CLASS else _Stub
    return type(name, (base,), {"qualname": f"{module}.{name}"})


def _encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """_codecs.encode as pickle uses it for bytes (latin-1 text); no other codec is looked up."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise UnsafePickleError("_codecs.encode", f"calls _codecs.encode with the codec {_printable(str(encoding))}")
    return text.encode("latin-1", errors)


def _stdlib(qualname: str) -> Any:
    import collections

    return {"collections.OrderedDict": collections.OrderedDict, "collections.Counter": collections.Counter,
            "builtins.set": set, "_codecs.encode": _encode}[qualname]


def _find_class(self, module: str, name: str) -> Any:
    kind = allowed_kind(module, name)
    qualname = ".".join(_python3_name(module, name))
    if kind is None and qualname == "copyreg._reconstructor":
        return _reconstructor
    if kind is None and qualname == "builtins.object":
        return _ObjectMarker
    if kind is None and unlisted_class(module, name):
        if qualname not in self.unlisted:  # imports nothing: a stand-in named after it
            self.unlisted[qualname] = type(qualname.rpartition(".")[2], (_UnlistedClassStub,), {"qualname": qualname})
        return self.unlisted[qualname]
    if kind is None:
        raise UnsafePickleError(_printable(f"{module}.{name}"))
    module, name = _python3_name(module, name)
    return _stdlib(f"{module}.{name}") if kind == "stdlib" else _stub_class(module, name, kind)


def _persistent_load(self, pid: Any) -> Any:
    raise PickleReadError("the arguments pickle references tensor storage, which arguments never do")


def _restricted_unpickler(data: bytes):
    """A pickle.Unpickler that resolves only stand-ins of allowed globals (pickle imported only when reading)."""
    import pickle

    class RestrictedUnpickler(pickle.Unpickler):
        find_class = _find_class
        persistent_load = _persistent_load

    unpickler = RestrictedUnpickler(io.BytesIO(data))
    unpickler.unlisted = {}  # qualname -> its stand-in class, for this read
    return unpickler


# --- to plain data -------------------------------------------------------------------------------


class _Plain:
    """Converts stand-ins to plain data once per object (a DAG stays a DAG), within depth and size bounds."""

    def __init__(self, budget: PickleBudget):
        self.budget = budget
        self.done: dict[int, tuple[Any, int]] = {}  # id -> (plain value, its size as a tree)
        self.busy: set[int] = set()
        self.keep: list[Any] = []  # ids stay valid while the converted objects are alive

    def convert(self, value: Any, depth: int = 0) -> tuple[Any, int]:
        if isinstance(value, (str, bytes, int, float, bool, type(None), complex)):
            return value, 1
        if isinstance(value, type):
            if issubclass(value, (_UnlistedClassStub, _ObjectMarker)):  # a class as a value, not as a class
                raise UnsafePickleError(_printable(value.qualname))
            return getattr(value, "qualname", value.__name__), 1
        if value is _reconstructor:
            raise UnsafePickleError("copyreg._reconstructor")
        key = id(value)
        if key in self.done:
            return self.done[key]
        if key in self.busy:
            raise UnsafePickleError("", "holds a value that contains itself (a cycle), which no arguments object does")
        if depth > self.budget.max_depth:
            raise PickleBudgetError(f"values nested more than {self.budget.max_depth} deep")
        self.busy.add(key)
        self.keep.append(value)
        result = self._convert_new(value, depth + 1)
        self.busy.discard(key)
        if result[1] > self.budget.max_nodes:
            raise PickleBudgetError(f"the result would hold more than {self.budget.max_nodes} values")
        self.done[key] = result
        return result

    def _convert_new(self, value: Any, depth: int) -> tuple[Any, int]:
        if isinstance(value, _Stub):
            state = value._state
            if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
                state = {**(state[0] if isinstance(state[0], dict) else {}), **state[1]}  # (dict state, slot state)
            if isinstance(value, _UnlistedClassStub) and not (
                    isinstance(state, dict) and all(key in state for key in ARGUMENTS_KEYS)):
                raise UnsafePickleError(_printable(value.qualname))  # not an arguments object: unknown code
            if isinstance(state, dict):
                return self._mapping(state, depth)
            if len(value._args) == 1:
                plain, size = self.convert(value._args[0], depth)
                return plain, size + 1
            return value.qualname, 1
        if isinstance(value, dict):
            return self._mapping(value, depth)
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [self.convert(item, depth) for item in value]
            return [plain for plain, _ in items], 1 + sum(size for _, size in items)
        return str(value), 1

    def _mapping(self, mapping: dict, depth: int) -> tuple[Any, int]:
        result, total = {}, 1
        for key, item in mapping.items():
            plain_key, key_size = self.convert(key, depth)
            plain_item, item_size = self.convert(item, depth)
            result[str(plain_key)] = plain_item
            total += key_size + item_size
            if total > self.budget.max_nodes:
                raise PickleBudgetError(f"the result would hold more than {self.budget.max_nodes} values")
        return result, total


def to_plain(value: Any, budget: PickleBudget = ARGS_BUDGET) -> Any:
    """Stand-ins to plain data: objects with state to dicts, one-argument objects (enums, devices) to that argument."""
    return _Plain(budget).convert(value)[0]


# --- entry points ------------------------------------------------------------------------------


def read_pickle_member(path: Path, budget: PickleBudget = ARGS_BUDGET) -> bytes:
    """The bytes of the pickle torch.load would unpickle from this archive (see torch_archive.torch_pickle_member)."""
    import zipfile

    from resumedoctor.io.torch_archive import ArchivePickleError, torch_pickle_member

    try:
        with zipfile.ZipFile(path) as archive:
            member = torch_pickle_member(archive)
            if member.file_size > budget.max_bytes:
                raise PickleBudgetError(f"{member.filename} is {member.file_size} bytes (at most {budget.max_bytes})")
            with archive.open(member) as handle:
                return handle.read(budget.max_bytes + 1)  # one byte over: scan_pickle says it is too big
    except ArchivePickleError as exc:
        raise PickleReadError(exc.reason) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise PickleReadError(f"not a readable torch archive: {exc}") from None


def check_state_pickle(path: Path) -> tuple[str, ...]:
    """The globals of an optimizer/scheduler/RNG/scaler archive's pickle, all on the allow-list (never unpickled).

    Raises UnsafePickleError (PickleBudgetError) or PickleReadError.
    """
    return scan_pickle(read_pickle_member(path, STATE_BUDGET), STATE_BUDGET, storages=True)


def check_legacy_pickle(path: Path) -> tuple[str, ...]:
    """The globals of the first pickle of a file in torch's pre-zip format, all on the allow-list.

    torch.load of that format unpickles its first pickle at once (weights_only=False runs whatever it
    names), so it is scanned like any other; what follows it (storages, more pickles) stays unverified.
    Raises UnsafePickleError or PickleReadError (no STOP within the budget: cannot be judged).
    """
    from resumedoctor.io.bounded_read import open_regular

    with open_regular(path) as handle:
        data = handle.read(STATE_BUDGET.max_bytes)
    # scanning stops at the first STOP: that pickle is the one torch.load runs first
    return scan_pickle_bytes(data, STATE_BUDGET, storages=path.name != "training_args.bin")


def read_training_args(path: Path) -> dict[str, Any]:
    """The saved arguments as a dict; raises UnsafePickleError or PickleReadError, never runs the pickle."""
    data = read_pickle_member(path, ARGS_BUDGET)
    key = _digest(data)
    if key not in _READ_ARGS:
        if len(_READ_ARGS) >= _CACHE_LIMIT:
            _READ_ARGS.clear()
        _READ_ARGS[key] = _unpickle_arguments(data)
    return _copy_plain(_READ_ARGS[key])


def _copy_plain(value: dict[str, Any]) -> dict[str, Any]:
    """A private copy for each caller; marshal copies plain data in C, far faster than deepcopy."""
    try:
        return marshal.loads(marshal.dumps(value))
    except ValueError:  # a value marshal does not know (never in to_plain's output, but stay correct)
        return copy.deepcopy(value)


def _unpickle_arguments(data: bytes) -> dict[str, Any]:
    scan_pickle(data, ARGS_BUDGET, storages=False)
    unpickler = _restricted_unpickler(data)
    try:
        loaded = unpickler.load()
    except (UnsafePickleError, PickleReadError):
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed pickle is one line for the user
        raise PickleReadError(f"the arguments pickle cannot be read: {type(exc).__name__}: {_printable(str(exc))}") from None
    for qualname, stand_in in unpickler.unlisted.items():
        if not stand_in.built:  # named but never the class of a rebuilt object
            raise UnsafePickleError(_printable(qualname))
    plain = to_plain(loaded)
    if not isinstance(plain, dict):
        raise PickleReadError("the pickle does not hold an arguments object")
    plain["__class__"] = loaded.qualname if isinstance(loaded, _Stub) else type(loaded).__name__
    if unpickler.unlisted:
        plain[UNLISTED_KEY] = sorted(unpickler.unlisted)
    return plain


# The key of read_training_args' result that lists the classes outside the allow-list it rebuilt as
# arguments objects (the user's own subclass of TrainingArguments), when there are any.
UNLISTED_KEY = "__unlisted_classes__"

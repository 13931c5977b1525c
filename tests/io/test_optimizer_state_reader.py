"""optimizer.pt's shapes and dtypes from its pickle alone, checked against torch.load of the same file."""

from __future__ import annotations

import io
import os
import pickle
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest

from resumedoctor.io.optimizer_state import (
    OptimizerStateError,
    TensorRecord,
    UnfamiliarOptimizerState,
    parse_optimizer_pickle,
    read_optimizer_state,
)


def _torch_view(path: Path) -> tuple[dict, list]:
    """The oracle: torch's own reading of the file, as {index: {key: (shape, dtype)}} and the groups."""
    import torch

    loaded = torch.load(path, weights_only=True, map_location="cpu")
    state = {index: {key: (tuple(value.shape), str(value.dtype).removeprefix("torch.")) if torch.is_tensor(value)
                     else value for key, value in values.items()} for index, values in loaded["state"].items()}
    return state, loaded["param_groups"]


def _our_view(path: Path) -> tuple[dict, list]:
    read = read_optimizer_state(path)
    state = {index: {key: (value.shape, value.dtype) if isinstance(value, TensorRecord) else value
                     for key, value in values.items()} for index, values in read.state.items()}
    return state, read.param_groups


def test_real_adamw_state_matches_torch_load(built_runs):
    path = built_runs["full"] / "checkpoint-6" / "optimizer.pt"
    theirs, their_groups = _torch_view(path)
    ours, our_groups = _our_view(path)
    assert ours == theirs
    assert [list(group.params) for group in our_groups] == [group["params"] for group in their_groups]
    assert [group.options["weight_decay"] for group in our_groups] == [g["weight_decay"] for g in their_groups]
    assert our_groups[0].options["betas"] == tuple(their_groups[0]["betas"])


def test_other_optimizers_and_dtypes_match_torch_load(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)).to(torch.bfloat16)
    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      torch.optim.Adam(model.parameters(), amsgrad=True)):
        model(torch.ones(1, 3, dtype=torch.bfloat16)).sum().backward()
        optimizer.step()
        path = tmp_path / "optimizer.pt"
        torch.save(optimizer.state_dict(), path)
        assert _our_view(path)[0] == _torch_view(path)[0]
        assert read_optimizer_state(path).param_indices == (0, 1, 2, 3)


# --- crafted pickles, written by pickle itself with torch's real rebuild function -----------------


class _Tensor:
    def __init__(self, shape, storage="FloatStorage"):
        self.shape, self.storage = shape, storage


class _Storage:
    def __init__(self, storage):
        self.storage = storage


class _Crafter(pickle.Pickler):
    """Pickles _Tensor as torch.save does: _rebuild_tensor_v2 over a persistent storage record."""

    def reducer_override(self, obj):
        import torch

        if isinstance(obj, _Tensor):
            return torch._utils._rebuild_tensor_v2, (_Storage(obj.storage), 0, obj.shape, (1,) * len(obj.shape),
                                                     False, OrderedDict())
        return NotImplemented

    def persistent_id(self, obj):
        import torch

        if isinstance(obj, _Storage):
            return ("storage", getattr(torch, obj.storage), "0", "cpu", 1)
        return None


def _craft(value) -> bytes:
    buffer = io.BytesIO()
    _Crafter(buffer, protocol=2).dump(value)
    return buffer.getvalue()


def _state(*shapes, groups=None) -> dict:
    state = {index: {"step": _Tensor(()), "exp_avg": _Tensor(shape), "exp_avg_sq": _Tensor(shape)}
             for index, shape in enumerate(shapes)}
    return {"state": state, "param_groups": groups or [{"params": list(range(len(shapes))), "lr": 0.1}]}


def test_crafted_state_reads_like_a_real_one():
    read = parse_optimizer_pickle(_craft(_state((4, 2), (7,))))
    assert read.state[1]["exp_avg"] == TensorRecord((7,), "float32")
    assert read.param_groups[0].options == {"lr": 0.1}


@pytest.mark.parametrize("shape", [(10**30,), (-1, 2), tuple([1] * 100), ("2",), (2.5,)])
def test_impossible_shapes_are_refused(shape):
    with pytest.raises(OptimizerStateError, match="shape"):
        parse_optimizer_pickle(_craft(_state(shape)))


@pytest.mark.parametrize("value", [
    {"state": {"model.weight": {}}, "param_groups": []},  # keyed by name (FSDP's full optimizer state)
    {"state": {}, "param_groups": [{"params": ["model.weight"]}]},
    {"state": [], "param_groups": []},
    [1, 2, 3],
    {"model": 1},
    {"state": {1 << 40000: {"exp_avg": _Tensor((2,))}}, "param_groups": [{"params": [0]}]},  # LONG4 key
    {"state": {}, "param_groups": [{"params": [1 << 40000] * 3}]},  # would not even print
    {"state": {-5: {"exp_avg": _Tensor((9,))}}, "param_groups": [{"params": [-5]}]},
])
def test_other_layouts_are_unfamiliar(value):
    with pytest.raises(UnfamiliarOptimizerState):
        parse_optimizer_pickle(_craft(value))


def test_keys_that_are_not_strings_are_dropped_not_printed():
    value = _state((3,))
    value["state"][0][1 << 40000] = 1
    value["param_groups"][0][1 << 40000] = 2
    read = parse_optimizer_pickle(_craft(value))
    assert set(read.state[0]) == {"step", "exp_avg", "exp_avg_sq"} and read.param_groups[0].options == {"lr": 0.1}


def test_unknown_and_unsafe_globals_are_refused_without_running():
    import numpy

    with pytest.raises(UnfamiliarOptimizerState, match="numpy"):
        parse_optimizer_pickle(pickle.dumps({"state": numpy.zeros(2), "param_groups": []}, protocol=2))
    with pytest.raises(OptimizerStateError, match="os.system|posix.system"):
        parse_optimizer_pickle(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")


def test_pickle_bombs_stay_within_budget():
    started = time.perf_counter()
    with pytest.raises(OptimizerStateError, match="budget"):
        parse_optimizer_pickle(b"\x80\x02" + b"N0" * 1_100_000 + b"N.")  # more opcodes than any optimizer
    nested = b"\x80\x02" + b"(" * 200_000 + b"l" * 200_000 + b"."  # lists nested 200 000 deep
    with pytest.raises(OptimizerStateError):
        parse_optimizer_pickle(nested)
    assert time.perf_counter() - started < 10


def _archive(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("optimizer/data.pkl", data)
        archive.writestr("optimizer/data/0", b"\0" * 4)
    return path


def test_damaged_files_are_errors_not_crashes(tmp_path, built_runs):
    real = (built_runs["full"] / "checkpoint-6" / "optimizer.pt").read_bytes()
    cases = {
        "empty.pt": b"", "garbage.pt": b"\x00garbage" * 50, "cut.pt": real[: len(real) // 2],
        "cut_end.pt": real[:-30],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(OptimizerStateError):
            read_optimizer_state(tmp_path / name)
    with pytest.raises(OptimizerStateError):
        read_optimizer_state(_archive(tmp_path / "cut_pickle.pt", _craft(_state((4,)))[:-5]))
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(OptimizerStateError):
        read_optimizer_state(tmp_path / "fifo.pt")  # refused, never opened for reading (it would block)
    assert read_optimizer_state(_archive(tmp_path / "ok.pt", _craft(_state((4,))))).param_indices == (0,)

"""The safetensors header reader: exact on real files, never an exception on garbage."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from resumedoctor.io.safetensors_header import (
    SafetensorsError,
    count_non_finite,
    parse_safetensors_header,
    read_safetensors_header,
)


def write_raw(path: Path, header: dict, data: bytes) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def test_real_checkpoint_header_matches_safetensors(built_runs):
    path = built_runs["full"] / "checkpoint-6" / "model.safetensors"
    header = read_safetensors_header(path)
    with safe_open(path, "np") as handle:
        assert set(header.tensors) == set(handle.keys())
        for name in handle.keys():
            assert list(header.tensors[name].shape) == list(handle.get_slice(name).get_shape())
    assert header.size_problem() is None
    assert header.expected_file_size == path.stat().st_size
    assert header.metadata.get("format") == "pt"


def test_truncated_file_reports_missing_bytes(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones((4, 4), dtype=np.float32)}, path)
    whole = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(whole - 10)
    problem = read_safetensors_header(path).size_problem()
    assert problem is not None and "10 bytes missing" in problem


def test_trailing_bytes_are_a_size_problem(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones(3, dtype=np.float32)}, path)
    with open(path, "ab") as handle:
        handle.write(b"xx")
    assert "2 unexpected bytes" in read_safetensors_header(path).size_problem()


def test_header_length_of_2_pow_62_is_invalid_not_truncated(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}" * 100)
    with pytest.raises(SafetensorsError) as caught:
        read_safetensors_header(path)
    assert not caught.value.truncated
    assert str(2**62) in caught.value.reason


def test_cut_inside_header_is_truncation(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones(3, dtype=np.float32)}, path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(SafetensorsError) as caught:
        read_safetensors_header(path)
    assert caught.value.truncated


@pytest.mark.parametrize(
    ("header", "data", "needle"),
    [
        ({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8 bytes"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "overlaps"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "data_offsets"),
        ({"__metadata__": {"format": 1}}, b"", "__metadata__"),
        ({"w": [1, 2]}, b"", "not an object"),
    ],
)
def test_inconsistent_headers_are_rejected(tmp_path, header, data, needle):
    path = write_raw(tmp_path / "m.safetensors", header, data)
    with pytest.raises(SafetensorsError) as caught:
        read_safetensors_header(path)
    assert needle in caught.value.reason


def test_invalid_json_header(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{not}")
    with pytest.raises(SafetensorsError, match="JSON"):
        read_safetensors_header(path)


def test_unreadable_path_is_an_error_not_a_crash(tmp_path):
    link = tmp_path / "m.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(SafetensorsError, match="cannot be read"):
        read_safetensors_header(link)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=2**40))
def test_random_bytes_give_a_header_or_a_clean_error(data, extra_size):
    try:
        header = parse_safetensors_header(data, len(data) + extra_size % 64)
    except SafetensorsError as exc:
        assert exc.reason
    else:
        assert header.header_size <= len(data) - 8


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_headers_give_a_header_or_a_clean_error(tmp_path_factory, data):
    base = tmp_path_factory.getbasetemp() / "mutation-base.safetensors"
    if not base.exists():
        save_file({"a": np.ones((3, 2), dtype=np.float32), "b": np.zeros(5, dtype=np.int64)}, base)
    raw = bytearray(base.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytes(raw[:cut])
    try:
        header = parse_safetensors_header(mutated, len(mutated))
    except SafetensorsError:
        return
    problem = header.size_problem()
    assert problem is None or isinstance(problem, str)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_count_non_finite_finds_nan_and_inf(tmp_path, dtype):
    values = np.zeros(1000, dtype=dtype)
    values[[3, 500]] = np.nan
    values[999] = np.inf
    path = tmp_path / "m.safetensors"
    save_file({"bad": values, "good": np.ones(10, dtype=dtype)}, path)
    assert count_non_finite(read_safetensors_header(path)) == {"bad": 3}


def test_count_non_finite_reads_bf16_written_by_torch(tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch

    values = torch.zeros(64, dtype=torch.bfloat16)
    values[7] = float("inf")
    values[8] = float("nan")
    path = tmp_path / "m.safetensors"
    save_torch({"w": values, "ok": torch.ones(4, dtype=torch.bfloat16)}, path)
    assert count_non_finite(read_safetensors_header(path)) == {"w": 2}

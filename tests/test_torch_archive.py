"""torch zip archives are checked with zipfile only; nothing is unpickled."""

from __future__ import annotations

import zipfile

import pytest

from resumedoctor.torch_archive import inspect_torch_archive


def test_real_optimizer_archive_is_whole(built_runs):
    report = inspect_torch_archive(built_runs["full"] / "checkpoint-6" / "optimizer.pt", deep=True)
    assert report.ok, report.problems
    assert any(name.endswith("data.pkl") for name in report.members)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_archive_loses_its_central_directory(full_run, keep):
    path = full_run / "checkpoint-6" / "optimizer.pt"
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(int(size * keep))
    report = inspect_torch_archive(path)
    assert not report.ok
    assert "cut off" in report.problems[0]


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00garbage" * 100)
    assert inspect_torch_archive(empty).problems == ("empty file (0 bytes)",)
    assert "not a zip archive" in inspect_torch_archive(garbage).problems[0]


def test_legacy_pickle_format_is_recognised_not_loaded(tmp_path):
    import torch

    path = tmp_path / "old.pt"
    torch.save({"a": 1}, path, _use_new_zipfile_serialization=False)
    report = inspect_torch_archive(path)
    assert report.legacy_pickle and not report.ok


def test_zip_without_data_pkl_is_not_a_torch_archive(tmp_path):
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    assert "no data.pkl" in inspect_torch_archive(path).problems[0]


def test_flipped_byte_is_caught_by_crc_only_with_deep(full_run):
    path = full_run / "checkpoint-6" / "optimizer.pt"
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    raw = bytearray(path.read_bytes())
    # The local header's extra field can differ from the central one; find the data by the local header.
    name_length = int.from_bytes(raw[member.header_offset + 26 : member.header_offset + 28], "little")
    extra_length = int.from_bytes(raw[member.header_offset + 28 : member.header_offset + 30], "little")
    offset = member.header_offset + 30 + name_length + extra_length
    raw[offset + member.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert inspect_torch_archive(path).ok
    deep = inspect_torch_archive(path, deep=True)
    assert not deep.ok and "CRC" in deep.problems[0]

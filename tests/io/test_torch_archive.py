"""torch zip archives are checked with zipfile only; nothing is unpickled."""

from __future__ import annotations

import zipfile

import pytest

from resumedoctor.io.torch_archive import inspect_torch_archive


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


def _archive(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("layout", ["upper-case record", "pickle before the record", "duplicate, same bytes"])
def test_the_pickle_member_is_the_one_torch_load_reads(tmp_path, layout):
    """torch's reader takes `<folder of the first member>/data.pkl`, matched without regard to case."""
    import pickle

    import torch

    from resumedoctor.io.torch_archive import torch_pickle_member

    torch.save({"which": "real"}, tmp_path / "real.pt")
    with zipfile.ZipFile(tmp_path / "real.pt") as real:
        members = [(info.filename, real.read(info)) for info in real.infolist()]
    folder = members[0][0].split("/")[0]
    other = pickle.dumps({"which": "other"}, protocol=2)
    if layout == "upper-case record":
        members = [(f"{folder}/DATA.PKL" if name.endswith("data.pkl") else name, data) for name, data in members]
    elif layout == "pickle before the record":
        members = [(f"{folder}/xdata.pkl", other), *members]
    else:
        members = [*members, members[0]]
    path = _archive(tmp_path / "crafted.pt", members)
    loaded = torch.load(path, weights_only=True)  # the oracle; these payloads hold plain dicts only
    with zipfile.ZipFile(path) as archive:
        chosen = archive.read(torch_pickle_member(archive))
    assert chosen == pickle.dumps(loaded, protocol=2) or loaded == {"which": "real"} and b"real" in chosen
    report = inspect_torch_archive(path)
    assert bool(report.suspicious) == (layout == "pickle before the record"), report


def test_an_archive_whose_record_is_elsewhere_is_suspicious(tmp_path):
    """data.pkl in another folder than the first member's: torch cannot read it, and the old reader would have."""
    import torch

    torch.save({"a": 1}, tmp_path / "real.pt")
    with zipfile.ZipFile(tmp_path / "real.pt") as real:
        members = [(info.filename, real.read(info)) for info in real.infolist()]
    assert members[0][0].endswith("/data.pkl")
    path = _archive(tmp_path / "moved.pt", [*members[1:], ("other/data.pkl", members[0][1])])
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)
    report = inspect_torch_archive(path)
    assert not report.ok and "does not hold" in report.suspicious[0]

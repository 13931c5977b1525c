"""io/records.py's block reader against bytes.split, across block boundaries and over-long lines."""

from __future__ import annotations

import random

import pytest

from resumedoctor.io import records


def oracle(data: bytes, limit: int) -> list[tuple[int, int, bytes | None, bool]]:
    lines, offset = [], 0
    pieces = data.split(b"\n")
    for index, piece in enumerate(pieces):
        terminated = index < len(pieces) - 1
        if not terminated and not piece:
            break
        size = len(piece) + terminated
        lines.append((offset, size, None if size > limit else piece + b"\n" * terminated, terminated))
        offset += size
    return lines


@pytest.mark.parametrize("block", [1, 3, 7, 64])
@pytest.mark.parametrize("limit", [5, 20, 10**6])
def test_lines_match_split_at_every_block_size(tmp_path, monkeypatch, block, limit):
    rng = random.Random(block * 1000 + limit)
    path = tmp_path / "r.jsonl"
    for trial in range(20):
        data = b"".join(rng.choice([b"", b"\n", b"ab", b"{\"x\": 1}", b"y" * 30]) for _ in range(rng.randrange(30)))
        path.write_bytes(data)
        monkeypatch.setattr(records, "BLOCK", block)
        got = list(records.iter_lines(path, limit=limit))
        assert got == oracle(data, limit), (data, block, limit)
        for offset, size, line, _ in got:
            if line is not None:
                assert data[offset:offset + size] == line


def test_entries_name_where_each_record_lies(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "BLOCK", 16)
    data = b'{"id": 1}\n\n[1]\n{"id": 2, "text": "' + b"z" * 40 + b'"}\nnot json\n{"id": 3}'
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    entries = list(records.iter_entries(path))
    assert [(e.number, e.problem and e.problem.split(":")[0]) for e in entries] == [
        (1, None), (3, records.NOT_AN_OBJECT), (4, None), (5, records.UNPARSEABLE), (6, records.UNTERMINATED)]
    for entry in entries:
        assert data[entry.offset:entry.offset + entry.size].rstrip(b"\n") == data.split(b"\n")[entry.number - 1]
    plain = list(records.iter_records(path))
    assert [item[0] for item in plain if type(item) is tuple] == [1, 4]

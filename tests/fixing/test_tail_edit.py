"""The tail edit (`ReplaceTail`): a large file's end cut or extended, journaled, crash-safe and undoable."""

from __future__ import annotations

import json

import pytest

from resumedoctor.engine.operations import ReplaceTail, changes_nothing
from resumedoctor.fixing.journal import JournalError, Transaction
from resumedoctor.fixing.journal_schema import JournalInvalid, validate_journal

BODY = b"".join(json.dumps({"id": i, "text": "x" * 50}).encode() + b"\n" for i in range(2000))
TORN = b'{"id": 2000, "text": "xx'


@pytest.fixture
def torn_file(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(BODY + TORN)
    return path


def prepared(path, keep=len(BODY), tail=b""):
    return Transaction.prepare(path.parent, [ReplaceTail(path, keep, tail, "cut", "GEN001", "cut-torn-record")],
                               "cut-torn-record", "20240101T000000.000000000-abcd")


def test_cut_backs_up_the_cut_bytes_and_undo_restores_them(torn_file):
    transaction = prepared(torn_file)
    entry = transaction.journal["operations"][0]
    assert (entry["kind"], entry["keep"], entry["old_size"]) == ("tail", len(BODY), len(BODY) + len(TORN))
    transaction.complete()
    assert torn_file.read_bytes() == BODY
    assert (transaction.folder / entry["backup"]).read_bytes() == TORN
    transaction.roll_back()
    assert torn_file.read_bytes() == BODY + TORN


def test_a_newline_added_and_taken_back(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(BODY + b'{"id": 2000}')
    operation = ReplaceTail(path, path.stat().st_size, b"\n", "newline")
    assert not changes_nothing(operation)
    transaction = Transaction.prepare(tmp_path, [operation], "x", "20240101T000000.000000000-abcd")
    transaction.complete()
    assert path.read_bytes() == BODY + b'{"id": 2000}\n'
    assert changes_nothing(operation)  # the planner drops it: the fix is idempotent
    transaction.roll_back()
    assert path.read_bytes() == BODY + b'{"id": 2000}'


@pytest.mark.parametrize("crash_at", ["after-truncate", "half-written"])
def test_a_crash_in_the_middle_is_finished_and_undone(torn_file, crash_at):
    transaction = prepared(torn_file, keep=len(BODY) - 5, tail=b"abcdef\n")
    transaction._back_up()
    transaction.set_status("applying")
    with open(torn_file, "r+b") as handle:  # what a SIGKILL inside _put_tail leaves
        handle.truncate(len(BODY) - 5)
        if crash_at == "half-written":
            handle.seek(0, 2)
            handle.write(b"abc")
    again = Transaction.load(torn_file.parent, transaction.folder)
    again.complete()
    assert torn_file.read_bytes() == BODY[:-5] + b"abcdef\n"
    with open(torn_file, "r+b") as handle:  # killed again, now while undoing
        handle.truncate(len(BODY) - 5)
    again.roll_back()
    assert torn_file.read_bytes() == BODY + TORN


def test_a_file_edited_since_the_plan_is_refused(torn_file):
    transaction = prepared(torn_file)
    torn_file.write_bytes(b"someone else's bytes\n")
    with pytest.raises(JournalError):
        transaction.complete()
    assert torn_file.read_bytes() == b"someone else's bytes\n"


def test_the_schema_refuses_crafted_tail_entries(torn_file):
    journal = prepared(torn_file).journal
    entry = journal["operations"][0]
    for change in ({"keep": entry["old_size"] + 1}, {"keep": -1}, {"path": "../outside"}, {"cut_sha256": "x"},
                   {"path": ".resumedoctor/transactions/x"}, {"mac": "0" * 64}):
        crafted = {**journal, "operations": [{**entry, **change}]}
        with pytest.raises(JournalInvalid):
            validate_journal(crafted, journal["id"])
    assert validate_journal(journal, journal["id"]) is journal

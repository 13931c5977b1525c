"""Links and non-JSON values around a ledger: a fix never reads records through a link nor writes through
one, and says truly what it changed; the Ledger API never writes NaN, nor through a `.torn` or merge link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resumedoctor import api
from resumedoctor.api import ResumeDoctorError
from resumedoctor.ledger import Ledger

RECORDS = b'{"id":1}\n{"id":2,"error":"x"}\n{"id":3,"t'  # a success, a failure, a torn tail


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ROOT: a file's bytes, a link's target (links not followed)."""
    return {p.relative_to(root).as_posix(): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def linked_ledger(root: Path) -> Path:
    """The breaker's repro: run/results.jsonl is a link to ../outside.jsonl."""
    (root / "run").mkdir()
    (root / "outside.jsonl").write_bytes(RECORDS)
    (root / "run" / "results.jsonl").symlink_to("../outside.jsonl")
    return root / "run" / "results.jsonl"


@pytest.mark.parametrize("flags", [("--auto", "--unsafe"), ("--dry-run",)])
def test_fix_of_a_linked_ledger_is_refused_up_front_and_changes_nothing(tmp_path, flags):
    link = linked_ledger(tmp_path)
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "resumedoctor", "fix", str(link), *flags],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "symbolic link" in done.stderr and "nothing was changed" in done.stderr
    assert snapshot(tmp_path) == before  # no remaining-work file, no transaction, no lock folder
    assert not (tmp_path / "run" / ".resumedoctor").exists()


def test_diagnose_of_a_linked_ledger_reads_it_and_writes_nothing(tmp_path):
    link = linked_ledger(tmp_path)
    before = snapshot(tmp_path)
    report = api.diagnose(link)
    assert {"GEN001", "GEN018"} <= {finding.code for finding in report.findings}
    assert snapshot(tmp_path) == before


def test_the_real_file_behind_the_link_is_fixed_where_it_lies(tmp_path):
    link = linked_ledger(tmp_path)
    with pytest.raises(ResumeDoctorError, match="symbolic link"):
        api.fix(link)
    api.fix(tmp_path / "outside.jsonl")
    assert (tmp_path / "outside.jsonl").read_bytes() == RECORDS[:RECORDS.rindex(b"\n") + 1]
    assert os.readlink(link) == "../outside.jsonl"


def test_the_fixers_never_read_shards_through_a_link_leading_out(tmp_path):
    from resumedoctor.fixers.generation_ledgers import shard_files

    job = tmp_path / "job"
    job.mkdir()
    (tmp_path / "elsewhere.jsonl").write_bytes(b'{"id":9}\n')
    (job / "results_data_0_to_2_w0.jsonl").write_bytes(b'{"id":0}\n')
    (job / "results_data_2_to_4_w1.jsonl").symlink_to("../elsewhere.jsonl")  # leads out: never read
    (job / "results_data_4_to_6_w2.jsonl").symlink_to("results_data_0_to_2_w0.jsonl")  # stays inside
    assert [path.name for path in shard_files(job)] == ["results_data_0_to_2_w0.jsonl",
                                                        "results_data_4_to_6_w2.jsonl"]


# -- the Ledger API ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_record_refuses_nan_and_infinity_and_writes_nothing(tmp_path, value):
    path = tmp_path / "results.jsonl"
    with Ledger(path) as ledger:
        with pytest.raises(ValueError, match="'score'.*NaN or Infinity"):
            ledger.record(id=1, score=value)
        with pytest.raises(ValueError, match="NaN or Infinity"):
            ledger.record(id=float("nan"))
        with pytest.raises(ValueError, match="nested value"):
            ledger.record(id=2, scores=[1.0, value])
        ledger.record(id=3, score=0.5)
    raw = path.read_bytes()
    assert [json.loads(line, parse_constant=lambda c: pytest.fail(c)) for line in raw.splitlines()] == [
        {"id": 3, "score": 0.5}]
    assert Ledger(path).records == 1


def test_a_torn_side_file_that_is_a_link_is_never_written_through(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"id":1}\n{"id":2,"t')
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me\n")
    (tmp_path / "results.jsonl.torn").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        Ledger(path)
    assert victim.read_bytes() == b"keep me\n"
    assert path.read_bytes() == b'{"id":1}\n{"id":2,"t'  # the tail is not cut while it cannot be kept
    (tmp_path / "results.jsonl.torn").unlink()
    with Ledger(path) as ledger:  # moved away: repaired as usual
        assert ledger.records == 1
    assert (tmp_path / "results.jsonl.torn").read_bytes() == b'{"id":2,"t\n'


def test_merge_onto_a_linked_target_replaces_the_link_never_writes_through_it(tmp_path):
    job = tmp_path / "job"
    for worker, (start, end) in enumerate([(0, 2), (2, 4)]):
        with Ledger.for_worker(job, worker=worker, start=start, end=end) as ledger:
            for i in range(start, end):
                ledger.record(id=i, answer=str(i))
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(b"keep me\n")
    merged = job / "results_merged.jsonl"
    merged.symlink_to(victim)
    assert Ledger.merge(job) == merged
    assert victim.read_bytes() == b"keep me\n"
    assert not merged.is_symlink()
    assert [json.loads(line)["id"] for line in merged.read_bytes().splitlines()] == [0, 1, 2, 3]

"""The one atomic write and the one hashing module, against the standard library and xxhash as oracles."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from resumedoctor.io.atomic_write import TMP_SUFFIX, atomic_write, temporary_path
from resumedoctor.io.cache import write_entry
from resumedoctor.io.hashing import (
    cache_key,
    fastest_algorithm,
    file_digest,
    file_digest_pipelined,
    sha256_bytes,
    sha256_file,
)

PACKAGE = Path(__file__).resolve().parents[2] / "resumedoctor"


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    for durable, unique in ((True, False), (False, True)):
        atomic_write(target, b"new", durable=durable, unique=unique)
        assert target.read_bytes() == b"new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
        target.write_bytes(b"old")


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "private.json"
    target.write_bytes(b"old")
    target.chmod(0o600)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o600
    fresh = tmp_path / "fresh.json"
    atomic_write(fresh, b"x")
    assert (fresh.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    # A real failure at the rename: a non-empty folder cannot be replaced by a file.
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert (target / "inside").is_dir()
    assert not os.path.lexists(temporary_path(target))


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    folder = tmp_path / "run"
    folder.mkdir()
    target = folder / "trainer_state.json"
    temporary_path(target).symlink_to(outside)
    atomic_write(target, b"{}")
    assert outside.read_bytes() == b"precious" and target.read_bytes() == b"{}"
    assert temporary_path(target).name == f".trainer_state.json{TMP_SUFFIX}"  # the name the journal and seal check know


def test_a_cache_entry_that_cannot_be_written_is_no_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    write_entry(blocker / "sub" / "entry.json", "{}")  # mkdir fails: silently not cached
    write_entry(tmp_path / "cache" / "entry.json", json.dumps({"rates": [1.0]}))
    assert json.loads((tmp_path / "cache" / "entry.json").read_text()) == {"rates": [1.0]}


@pytest.fixture
def big_file(tmp_path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several blocks and a partial one
    return path


def test_file_digests_match_hashlib_and_xxhash(big_file):
    import xxhash

    data = big_file.read_bytes()
    assert file_digest(big_file) == hashlib.sha256(data).hexdigest() == sha256_file(big_file) == sha256_bytes(data)
    assert file_digest(big_file, "xxh3_128", 1 << 20) == xxhash.xxh3_128(data).hexdigest()
    assert file_digest_pipelined(big_file, "xxh3_128", 1 << 20) == xxhash.xxh3_128(data).hexdigest()
    assert file_digest_pipelined(big_file, "sha256") == hashlib.sha256(data).hexdigest()
    assert fastest_algorithm() == "xxh3_128"  # the wheel is installed here


def test_sha256_file_follows_no_link_and_reads_only_regular_files(big_file, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(big_file)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert sha256_file(link) is None and sha256_file(fifo) is None and sha256_file(tmp_path / "missing") is None


def test_cache_keys_are_the_ones_already_on_disk():
    text = json.dumps(["5.2", {"steps": [1, 2]}], sort_keys=True)
    assert cache_key(text) == hashlib.sha256(text.encode()).hexdigest()[:32]


def test_the_installed_package_holds_no_test_hook():
    """Crash tests kill from the outside (tests/fix_crash_helpers.py): no test switch in the product."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "RESUMEDOCTOR_TEST" not in text and "signal.SIGKILL" not in text, path

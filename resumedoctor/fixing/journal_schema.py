"""The shape a journal must have before anything is done with it.

A journal lies inside an output_dir, so it may be crafted. `validate_journal` checks types, known keys,
states and actions, and that every path is relative to the output_dir without `..` or absolute parts
(a write of the user's own recipe is the one absolute path, accepted only with its HMAC, checked when
it is used). Anything else raises JournalInvalid, with one line saying what is wrong.
"""

from __future__ import annotations

import os
import re
from typing import Any

from resumedoctor.engine.target import STATE_DIR
from resumedoctor.fixing.confinement import ConfinementError, check_relative

VERSION = 1
ID = re.compile(r"^\d{8}T\d{6}\.\d{9}-[0-9a-f]{4}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
STATUSES = frozenset({"prepared", "applying", "committed", "undoing", "undone"})
JOURNAL_KEYS = frozenset({"version", "id", "created", "created_ns", "run", "description", "status", "operations"})
JOURNAL_REQUIRED = frozenset({"version", "id", "status", "operations"})
LABELS = ("reason", "code", "fixer")
WRITE_KEYS = frozenset({"kind", "path", "old_sha256", "new_sha256", "new", "backup", "mac", *LABELS})
MOVE_KEYS = frozenset({"kind", "src", "dst", *LABELS})
TAIL_KEYS = frozenset({"kind", "path", "keep", "old_size", "prefix_sha256", "old_sha256", "new_sha256", "cut_sha256",
                       "tail_sha256", "new", "backup", *LABELS})
# Inside .resumedoctor/ a fix writes its own files (wandb.json, datasets/), never the journals or quarantine.
RESERVED = ("transactions", "quarantine", "lock")
MAX_OPERATIONS = 100_000


class JournalInvalid(Exception):
    """A journal that is not one resumedoctor writes: it is never acted on."""


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise JournalInvalid(message)


def _keys(data: dict, known: frozenset[str], required: frozenset[str], what: str) -> None:
    unknown = [str(key)[:40] for key in data if key not in known]
    _need(not unknown, f"{what} has unknown key(s): {', '.join(sorted(unknown))}")
    missing = sorted(required - set(data))
    _need(not missing, f"{what} lacks {', '.join(missing)}")


def _string(value: Any, what: str) -> None:
    _need(isinstance(value, str), f"{what} is not a string")


def _relative(value: Any, what: str) -> str:
    try:
        return str(check_relative(value))
    except ConfinementError as exc:
        raise JournalInvalid(f"{what}: {exc.reason}") from None


def _write_path(entry: dict, what: str) -> None:
    path = entry["path"]
    if "mac" in entry:  # the user's recipe, outside the output_dir: absolute, its HMAC checked on use
        _need(isinstance(entry["mac"], str) and bool(SHA256.match(entry["mac"])), f"{what}.mac is not an HMAC")
        _need(isinstance(path, str) and "\0" not in path and os.path.isabs(path)
              and os.path.normpath(path) == path, f"{what}.path is not a plain absolute path")
        return
    parts = _relative(path, f"{what}.path").split("/")
    _need(not (parts[0] == STATE_DIR and len(parts) > 1 and parts[1] in RESERVED),
          f"{what}.path points into resumedoctor's own journals, quarantine or lock")


def _write(entry: dict, index: int, what: str) -> None:
    _keys(entry, WRITE_KEYS, WRITE_KEYS - {"mac"}, what)
    _write_path(entry, what)
    _need(entry["old_sha256"] is None or (isinstance(entry["old_sha256"], str) and SHA256.match(entry["old_sha256"])),
          f"{what}.old_sha256 is not a sha256 or null")
    _need(isinstance(entry["new_sha256"], str) and bool(SHA256.match(entry["new_sha256"])),
          f"{what}.new_sha256 is not a sha256")
    _need(entry["new"] == f"new/{index}" and entry["backup"] == f"backup/{index}",
          f"{what}: new/backup must be new/{index} and backup/{index}")


def _tail(entry: dict, index: int, what: str) -> None:
    """A tail edit: inside the output_dir only, its sizes whole numbers, every hash a sha256."""
    _keys(entry, TAIL_KEYS, TAIL_KEYS, what)
    _need("mac" not in entry, f"{what}: a tail edit never leaves the output_dir")
    _write_path(entry, what)
    for key in ("keep", "old_size"):
        _need(type(entry[key]) is int and entry[key] >= 0, f"{what}.{key} is not a whole number")
    _need(entry["keep"] <= entry["old_size"], f"{what}.keep is beyond old_size")
    for key in ("prefix_sha256", "old_sha256", "new_sha256", "cut_sha256", "tail_sha256"):
        _need(isinstance(entry[key], str) and bool(SHA256.match(entry[key])), f"{what}.{key} is not a sha256")
    _need(entry["new"] == f"new/{index}" and entry["backup"] == f"backup/{index}",
          f"{what}: new/backup must be new/{index} and backup/{index}")


def _move(entry: dict, what: str) -> None:
    _keys(entry, MOVE_KEYS, MOVE_KEYS, what)
    source = _relative(entry["src"], f"{what}.src")
    _need("/" not in source and source != STATE_DIR, f"{what}.src is not a folder of the output_dir itself")
    destination = _relative(entry["dst"], f"{what}.dst").split("/")
    _need(len(destination) == 3 and destination[:2] == [STATE_DIR, "quarantine"],
          f"{what}.dst is not a folder of {STATE_DIR}/quarantine/")


def _operations(operations: Any) -> None:
    _need(isinstance(operations, list), "operations is not a list")
    _need(len(operations) <= MAX_OPERATIONS, "operations: too many")
    touched: set[str] = set()
    for index, entry in enumerate(operations):
        what = f"operations[{index}]"
        _need(isinstance(entry, dict), f"{what} is not an object")
        _need(entry.get("kind") in ("write", "move", "tail"), f"{what}.kind is not 'write', 'move' or 'tail'")
        if entry["kind"] in ("write", "tail"):
            (_write if entry["kind"] == "write" else _tail)(entry, index, what)
            paths = [entry["path"]]
        else:
            _move(entry, what)
            paths = [entry["src"], entry["dst"]]
        for label in LABELS:
            _string(entry[label], f"{what}.{label}")
        _need(not touched & set(paths), f"{what} touches a path an earlier operation touches")
        touched |= set(paths)


def validate_journal(data: Any, folder_name: str) -> dict:
    """DATA when it is a journal resumedoctor writes for the transaction folder FOLDER_NAME."""
    _need(isinstance(data, dict), f"a journal is a JSON object, this one is {type(data).__name__}")
    _keys(data, JOURNAL_KEYS, JOURNAL_REQUIRED, "the journal")
    _need(type(data["version"]) is int and data["version"] == VERSION, f"version is not {VERSION}")
    _need(isinstance(data["id"], str) and bool(ID.match(data["id"])) and data["id"] == folder_name,
          "id is not the name of its transaction folder")
    _need(isinstance(data["status"], str) and data["status"] in STATUSES, "status is not a known state")
    for key in ("created", "description"):
        if key in data:
            _string(data[key], key)
    _need("created_ns" not in data or type(data["created_ns"]) is int, "created_ns is not an integer")
    _need("run" not in data or (isinstance(data["run"], str) and bool(ID.match(data["run"]))), "run is not a run id")
    _operations(data["operations"])
    return data

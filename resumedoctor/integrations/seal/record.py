"""Sealed checkpoints: `checkpoint-N/resumedoctor.seal.json`, written as the last act of every save.

The seal lists every file of the checkpoint with its size and a fast content hash (xxh3-128 from
the `xxhash` wheel, which ran at ~10 GiB/s here, against ~4.7 for BLAKE3 and ~1.6 for sha256;
sha256 when xxhash is not installed), plus what a resume depends on: global_step, world size, the
library versions, the arguments that govern the data skip and the budgets, the dataset fingerprint
and its rows (`dataset_rows`: the row count, the columns and the name and sha256 of the row manifest
the output_dir holds, integrations/trl/dataset_rows), the W&B run id and the `_step` at the moment of
the save, and the curriculum state's hash.

A save killed before its end has no seal. A seal makes every later diagnosis exact: sizes are always
compared, hashes with --deep (a flipped byte that keeps the size is caught too).

`resumedoctor seal` (and `fix`, for a save whose seal write was cut off) seals after the fact:
`after_the_fact` is true and `after_the_fact_reason` says why (AFTER_THE_FACT_REASONS).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.atomic_write import TMP_SUFFIX, temporary_path
from resumedoctor.io.bounded_read import (
    JSON_CONFIG_LIMIT,
    JsonFileError,
    is_regular_file,
    read_json_file,
)
from resumedoctor.io.hashing import (
    ALGORITHMS,
    fastest_algorithm,
    file_digest,
    file_digest_pipelined,
)

SEAL_FILE = "resumedoctor.seal.json"
# The temp file atomic_write renames over the seal: left behind when the process died while sealing.
SEAL_TEMP_FILE = temporary_path(Path(SEAL_FILE)).name
AFTER_THE_FACT_REASONS = {
    "never-sealed": "saved without SealCallback",
    "seal-interrupted": "SealCallback was sealing this run, but the process died before this seal was written",
    "seal-unreadable": "its seal could not be read and was replaced",
}
CHUNK = 16 * 1024 * 1024
RESUME_ARGUMENTS = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                    "generation_batch_size", "steps_per_generation", "seed", "data_seed", "max_completion_length",
                    "max_steps", "save_steps", "lr_scheduler_type", "learning_rate", "num_train_epochs")
LIBRARIES = ("torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "datasets")


def checkpoint_files(folder: Path) -> list[Path]:
    """Every regular file under the checkpoint; linked folders are not entered (no way out, no loop)."""
    found = []
    for root, _dirs, names in os.walk(folder, followlinks=False):
        found += [path for name in names if name != SEAL_FILE and not name.endswith(TMP_SUFFIX)
                  and is_regular_file(path := Path(root, name))]
    return sorted(found)


def installed_versions() -> dict[str, str]:
    from resumedoctor.integrations.trl.recipe import installed_version

    return {name: found for name in LIBRARIES if (found := installed_version(name))}


def build_seal(folder: Path, *, global_step: int, world_size: int, arguments: dict[str, Any],
               dataset_fingerprint: str | None = None, dataset_rows: dict | None = None, wandb: dict | None = None,
               versions: dict[str, str] | None = None, after_the_fact: bool = False, pipelined: bool = True,
               with_hashes: bool = True, after_the_fact_reason: str | None = None) -> dict:
    if after_the_fact_reason is not None and after_the_fact_reason not in AFTER_THE_FACT_REASONS:
        raise ValueError(f"unknown after-the-fact reason {after_the_fact_reason!r}")
    name = fastest_algorithm()
    paths = checkpoint_files(folder)
    digest = file_digest_pipelined if pipelined else file_digest  # one file after another, each pipelined
    hashes = {path: digest(path, name, CHUNK) for path in paths} if with_hashes else {}
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, **({name: hashes[p]} if p in hashes else {})}
             for p in paths}
    curriculum = folder / "curriculum_state.json"
    return {
        "version": 1,
        "sealed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "after_the_fact": after_the_fact,
        "after_the_fact_reason": (after_the_fact_reason or "never-sealed") if after_the_fact else None,
        "hash": name,
        "hashes_complete": with_hashes,
        "global_step": global_step,
        "world_size": world_size,
        "rng_state_files": len([f for f in files if f.startswith("rng_state")]),
        "files": files,
        "versions": versions if versions is not None else installed_versions(),
        "arguments": {key: arguments[key] for key in RESUME_ARGUMENTS if key in arguments},
        "dataset_fingerprint": dataset_fingerprint,
        "dataset_rows": dataset_rows,  # checked where it is used (dataset_rows.sealed_rows): a bad one is not judged
        "wandb": wandb,
        "curriculum_sha256": file_digest(curriculum) if is_regular_file(curriculum) else None,
    }


def seal_bytes(seal: dict) -> bytes:
    return (json.dumps(seal, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def read_seal(folder: Path) -> dict:
    """The seal of a checkpoint; ValueError when it is unreadable or not a seal."""
    try:
        data = read_json_file(folder / SEAL_FILE, JSON_CONFIG_LIMIT)
    except JsonFileError as exc:
        raise ValueError(f"{SEAL_FILE} cannot be read: {exc.reason}") from None
    if not isinstance(data, dict) or data.get("hash") not in ALGORITHMS or not _valid_files(data.get("files")):
        raise ValueError(f"{SEAL_FILE} is not a resumedoctor seal")
    wrong = next((key for key, valid in _SEAL_FIELDS.items() if key in data and not valid(data[key])), None)
    if wrong is not None:
        raise ValueError(f"{SEAL_FILE} is not a resumedoctor seal: {wrong} has the wrong type")
    return data


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


# The fields readers use besides `files`, each with what a seal written by build_seal holds there.
_SEAL_FIELDS = {
    "global_step": _count,
    "world_size": _count,
    "rng_state_files": _count,
    "after_the_fact": lambda value: isinstance(value, bool),
    "after_the_fact_reason": lambda value: value is None or (isinstance(value, str) and value in AFTER_THE_FACT_REASONS),
    "hashes_complete": lambda value: isinstance(value, bool),
    "versions": lambda value: isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
    "arguments": lambda value: isinstance(value, dict),
    "wandb": lambda value: value is None or isinstance(value, dict),
    "dataset_fingerprint": lambda value: value is None or isinstance(value, str),
    "curriculum_sha256": lambda value: value is None or isinstance(value, str),
}


def _valid_files(files: Any) -> bool:
    """{relative path inside the checkpoint: {"size": int, hash name: str}}."""
    return isinstance(files, dict) and all(
        _inside(relative) and isinstance(entry, dict) and type(entry.get("size")) is int
        and all(isinstance(value, str) for key, value in entry.items() if key != "size")
        for relative, entry in files.items())


def _inside(relative: str) -> bool:
    """A seal's path names a file below the checkpoint: relative, without `..`."""
    parts = PurePosixPath(relative).parts
    return bool(parts) and not relative.startswith("/") and ".." not in parts and "\0" not in relative


def sealing_was_on(seal: dict) -> bool:
    """Whether SealCallback was sealing the run when this checkpoint was saved: a save-time seal, or an
    after-the-fact one that only replaces a seal write the process did not live to finish."""
    return not seal.get("after_the_fact") or seal.get("after_the_fact_reason") == "seal-interrupted"


def verify(folder: Path, seal: dict, *, deep: bool) -> list[str]:
    """What disagrees with the seal: missing files, other sizes, and with `deep` other contents."""
    problems = []
    name = seal["hash"]
    to_hash = []
    for relative, entry in sorted(seal["files"].items()):
        path = folder / relative
        if not is_regular_file(path) or _leaves(folder, path):
            problems.append(f"{relative} is missing" if not os.path.lexists(path)
                            else f"{relative} is not a regular file of the checkpoint")
            continue
        size = path.stat().st_size
        if size != entry.get("size"):
            problems.append(f"{relative} is {size} bytes, sealed at {entry.get('size')}")
        elif deep and entry.get(name):
            to_hash.append((relative, path, entry.get(name)))
    for relative, path, expected in to_hash:
        try:
            if file_digest_pipelined(path, name, CHUNK) != expected:
                problems.append(f"{relative}: content differs from the seal ({name}), same size")
        except ReasonError as exc:
            problems.append(f"{relative} {exc.reason}")
    return problems


def _leaves(folder: Path, path: Path) -> bool:
    """Whether a folder on the way to `path` is a link: a seal's path must not lead out of the checkpoint."""
    relative = path.relative_to(folder)
    return any((folder / parent).is_symlink() for parent in relative.parents if parent != Path("."))

"""Row manifests: one 8-byte digest per row of a dataset, in the dataset's order.

SealCallback writes the manifest of the dataset a run trains on once per distinct dataset, as
`resumedoctor-dataset-<fingerprint>.rows` in the output_dir, and every seal names it and its sha256.
Diagnosing with a recipe digests the recipe's local dataset as it is now (in a helper process:
`datasets` imports pyarrow; cached by the data files' hash) and compares: rows added, removed,
changed, reordered. A digest is xxh3-64 (blake2b-64 without the xxhash wheel) of the row as canonical
JSON (sorted keys, no spaces), the rows taken from Arrow in batches.

The sampler side: GRPO's RepeatSampler seeds one torch.Generator when it is built and draws one
`torch.randperm(len(dataset))` per epoch, so a resume (a new sampler) walks its resumed epoch in the
first permutation. `permutation` computes that permutation with torch (in a helper process too).
"""

from __future__ import annotations

import json
import re
import sys
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.atomic_write import atomic_write
from resumedoctor.io.bounded_read import is_regular_file, read_bytes_bounded
from resumedoctor.io.cache import cache_dir
from resumedoctor.io.hashing import cache_key, digest_blocks

MAGIC = b"resumedoctor-rows 1\n"
MANIFEST_NAME = re.compile(r"resumedoctor-dataset-[0-9A-Za-z_-]{1,64}\.rows")
MAX_ROWS = 32 * 1024 * 1024  # 256 MiB of digests: far beyond a prompt dataset, and a bounded read
MAX_DRAW = 1000  # epochs of permutations computed to reach a resumed epoch
BATCH = 4096
XXH3_64, BLAKE2B_64 = "xxh3_64", "blake2b_64"
ROW_HASHES = (XXH3_64, BLAKE2B_64)


class RowsError(ReasonError):
    """The rows could not be compared; `reason` says why in one line."""


def row_hash_name() -> str:
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return BLAKE2B_64
    return XXH3_64


def _row_hasher(name: str) -> Callable[[bytes], bytes]:
    if name == XXH3_64:
        import xxhash

        return lambda data: xxhash.xxh3_64_digest(data)
    if name == BLAKE2B_64:
        import hashlib

        return lambda data: hashlib.blake2b(data, digest_size=8).digest()
    raise RowsError(f"unknown row hash {name!r}")


def canonical(row: Any) -> bytes:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def digests_of(dataset: Any, name: str) -> bytes:
    """8 bytes per row of a `datasets.Dataset`, in its order (an indices mapping applied)."""
    digest = _row_hasher(name)
    arrow = dataset.with_format("arrow")
    out = bytearray()
    for start in range(0, len(dataset), BATCH):
        for row in arrow[start:start + BATCH].to_pylist():
            out += digest(canonical(row))
    return bytes(out)


def manifest_name(fingerprint: Any) -> str:
    text = str(fingerprint)
    name = f"resumedoctor-dataset-{text}.rows"
    return name if MANIFEST_NAME.fullmatch(name) else f"resumedoctor-dataset-{cache_key(text)[:32]}.rows"


def write_manifest(dataset: Any, output_dir: Path) -> dict | None:
    """Write the dataset's manifest into output_dir (unless it is already there) and return the seal's
    `dataset_rows` record; None for what has no rows to digest (an IterableDataset, a torch Dataset)."""
    if not all(hasattr(dataset, name) for name in ("with_format", "column_names", "_fingerprint", "__len__")):
        return None
    name = row_hash_name()
    content = MAGIC + digests_of(dataset, name)
    path = Path(output_dir) / manifest_name(dataset._fingerprint)
    if not (is_regular_file(path) and path.stat().st_size == len(content) and path.read_bytes() == content):
        atomic_write(path, content)
    return {"rows": len(dataset), "columns": list(dataset.column_names), "row_hash": name,
            "manifest": path.name, "manifest_sha256": digest_blocks([content])}


@dataclass
class Rows:
    """A dataset's rows as digests: `digests` holds 8 bytes per row."""

    columns: list[str]
    row_hash: str
    digests: bytes

    def __len__(self) -> int:
        return len(self.digests) // 8

    def keys(self) -> array:
        keys = array("Q")
        keys.frombytes(self.digests)
        return keys


def sealed_rows(output_dir: Path, record: Any) -> Rows:
    """The rows a seal's `dataset_rows` record names; RowsError when the record or its manifest cannot be trusted."""
    if not isinstance(record, dict):
        raise RowsError("the seal's dataset_rows is not a record")
    rows, columns, name = record.get("rows"), record.get("columns"), record.get("manifest")
    row_hash, expected = record.get("row_hash"), record.get("manifest_sha256")
    if type(rows) is not int or not 0 <= rows <= MAX_ROWS or row_hash not in ROW_HASHES:
        raise RowsError("the seal's dataset_rows has no usable row count or row hash")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns) or not isinstance(expected, str):
        raise RowsError("the seal's dataset_rows has no usable columns or manifest hash")
    if not isinstance(name, str) or not MANIFEST_NAME.fullmatch(name):
        raise RowsError("the seal's dataset_rows names no manifest file")
    path, size = Path(output_dir) / name, len(MAGIC) + 8 * rows
    if path.is_symlink() or not is_regular_file(path):
        raise RowsError(f"the row manifest {name} is missing from the output_dir or not a regular file there")
    if path.stat().st_size != size:
        raise RowsError(f"the row manifest {name} is damaged ({path.stat().st_size} bytes, {size} for the "
                        f"{rows} rows its seal records)")
    try:
        content = read_bytes_bounded(path, size)
    except ReasonError as exc:
        raise RowsError(f"the row manifest {name} {exc.reason}") from None
    if len(content) != size or not content.startswith(MAGIC) or digest_blocks([content]) != expected:
        raise RowsError(f"the row manifest {name} is damaged (other size or content than its seal records)")
    return Rows(columns, row_hash, content[len(MAGIC):])


@dataclass(frozen=True)
class RowChange:
    """How the rows of now differ from the sealed ones (by digest; an edited row counts as changed)."""

    added: int
    removed: int
    changed: int
    reordered: bool  # the rows both have are in another order

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed or self.reordered)

    @property
    def only_added(self) -> bool:
        return not (self.removed or self.changed or self.reordered)


def compare(before: Rows, now: Rows) -> RowChange:
    old, new = before.keys(), now.keys()
    if old == new:
        return RowChange(0, 0, 0, False)
    lost, gained = Counter(old) - Counter(new), Counter(new) - Counter(old)
    # An edit in place: at the same position a row that is gone gave way to one that is new.
    changed = sum(1 for a, b in zip(old, new) if a != b and a in lost and b in gained)
    kept_old = [key for key in old if key not in lost]
    kept_new = [key for key in new if key not in gained]
    return RowChange(sum(gained.values()) - changed, sum(lost.values()) - changed, changed, kept_old != kept_new)


def pin_rows(before: Rows, now: Rows) -> list[int] | None:
    """The rows of now, one per sealed row in the sealed order; None when a sealed row is gone."""
    where: dict[int, list[int]] = {}
    for index, key in enumerate(now.keys()):
        where.setdefault(key, []).append(index)
    for positions in where.values():
        positions.reverse()
    picked = []
    for key in before.keys():
        positions = where.get(key)
        if not positions:
            return None
        picked.append(positions.pop())
    return picked


def current_rows(location: Path, split: str, row_hash: str, *, in_process: bool | None = None) -> Rows:
    """The rows of a local dataset as it is now, cached by the data files' hash.

    DatasetError: the dataset cannot be loaded; RowsError: the digesting failed here (the helper)."""
    from resumedoctor.integrations.trl.prompt_lengths import _hash_files, dataset_files

    files = dataset_files(location)
    key = cache_key(json.dumps([_hash_files(files), split, row_hash, "rows-1"]))
    cached = cache_dir() / "dataset-rows" / f"{key}.rows"
    try:
        return _read_cached(cached, row_hash)
    except (OSError, ValueError, ReasonError):
        pass
    request = {"op": "rows", "location": str(location), "split": split, "row_hash": row_hash, "out": str(cached)}
    _run(request, "datasets" in sys.modules if in_process is None else in_process)
    try:
        return _read_cached(cached, row_hash)
    except (OSError, ValueError, ReasonError):
        raise RowsError("the dataset's rows were digested, but the cache folder could not hold them") from None


def _read_cached(path: Path, row_hash: str) -> Rows:
    meta = json.loads(read_bytes_bounded(path.with_suffix(".json"), 1 << 20))
    content = read_bytes_bounded(path, len(MAGIC) + 8 * MAX_ROWS)
    if not content.startswith(MAGIC) or len(content) != len(MAGIC) + 8 * meta["rows"]:
        raise ValueError("damaged cache entry")
    return Rows([str(c) for c in meta["columns"]], row_hash, content[len(MAGIC):])


def permutation(seed: int, size: int, draw: int, *, in_process: bool | None = None) -> array:
    """The `draw`-th (0-based) torch.randperm(size) of a torch.Generator seeded with `seed`: the order
    RepeatSampler walks in the epoch it draws `draw`-th."""
    if not 0 <= draw <= MAX_DRAW or not 0 <= size <= MAX_ROWS:
        raise RowsError(f"the order of epoch {draw + 1} over {size} rows was not computed (beyond the limits)")
    cached = cache_dir() / "sampler-orders" / f"{cache_key(json.dumps([seed, size, draw, 'randperm-1']))}.u32"
    for attempt in range(2):
        try:
            order = array("I")
            order.frombytes(read_bytes_bounded(cached, 4 * size))
            if len(order) == size:
                return order
        except (ReasonError, OSError, ValueError):
            pass
        if attempt == 0:
            _run({"op": "order", "seed": seed, "size": size, "draw": draw, "out": str(cached)},
                 "torch" in sys.modules if in_process is None else in_process)
    raise RowsError("the sampler's order was computed, but the cache folder could not hold it")


def _run(request: dict, in_process: bool) -> None:
    """Do a request here (the library it needs is imported already), else in a helper process."""
    from resumedoctor.integrations.trl.prompt_lengths import DatasetError

    if in_process:
        answer = _serve(request)
    else:
        from resumedoctor.io.helper_process import HelperError, run_json

        try:
            answer = run_json("resumedoctor.integrations.trl.dataset_rows", request)
        except HelperError as exc:
            raise RowsError(exc.reason) from None
    if "error" in answer:
        raise DatasetError(str(answer["error"]))


def _serve(request: dict) -> dict:
    from resumedoctor.integrations.trl.prompt_lengths import (
        DatasetError,
        load_local_dataset,
    )

    out = Path(request["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if request["op"] == "order":
        import torch

        generator = torch.Generator()
        generator.manual_seed(int(request["seed"]))
        for _ in range(int(request["draw"]) + 1):
            order = torch.randperm(int(request["size"]), generator=generator)
        atomic_write(out, array("I", order.tolist()).tobytes(), durable=False, unique=True)
        return {}
    try:
        dataset = load_local_dataset(Path(request["location"]), request["split"])
    except DatasetError as exc:
        return {"error": exc.reason}
    if len(dataset) > MAX_ROWS:
        return {"error": f"{request['location']} has {len(dataset)} rows, more than {MAX_ROWS} are compared"}
    digests = digests_of(dataset, request["row_hash"])
    atomic_write(out.with_suffix(".json"), json.dumps({"rows": len(dataset), "columns": dataset.column_names}).encode(),
                 durable=False, unique=True)
    atomic_write(out, MAGIC + digests, durable=False, unique=True)
    return {}


if __name__ == "__main__":  # the helper process of current_rows() and permutation()
    try:
        print(json.dumps(_serve(json.loads(sys.argv[1]))))
    except ReasonError as exc:
        print(json.dumps({"error": exc.reason}))

"""How the jobs around training lay out their results: one file, or one shard per worker.

A scheduler splits the work list into worker ranges `[0,250) [250,500) ...`; each worker keeps a state
file (`worker_args_<k>.json`) and writes one result shard whose name carries its range
(`..._data_500_to_750_....csv`). `resumedoctor.ledger.Ledger` writes the same layout, so what it
writes `diagnose` reads without flags.
"""

from __future__ import annotations

import re

# Result files `diagnose PATH` takes as a ledger, by suffix.
LEDGER_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines", ".json", ".csv", ".parquet")
# A worker's state / arguments file.
WORKER_STATE_NAME = re.compile(r"^worker_(?:args|state)_(\w+)\.json$")
# A shard named by its input range: `<anything>_data_<start>_to_<end>[_<anything>].<suffix>`.
SHARD_RANGE_NAME = re.compile(r"_data_(\d{1,18})_to_(\d{1,18})(?:[_.-]|$)")


def is_ledger_file_name(name: str) -> bool:
    return name.lower().endswith(LEDGER_SUFFIXES)


def looks_like_worker_folder(names: list[str]) -> bool:
    """A folder of worker state files or range-named result shards."""
    return any(WORKER_STATE_NAME.match(name) or (SHARD_RANGE_NAME.search(name) and is_ledger_file_name(name))
               for name in names)

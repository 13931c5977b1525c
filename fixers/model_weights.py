"""Fixers of the MODEL family: strip a torch.compile / DDP wrapper prefix from the tensor names.

Only the names change. The header keeps its length (padded with spaces, which safetensors' JSON reader
skips), so every tensor keeps its offset and the data bytes are copied unchanged; a sharded
checkpoint's index is renamed the same way. The journal backs up every file it replaces.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from resumedoctor.checks.model_weights import (
    FULL_INDEX,
    WRAPPED_KEYS,
    read_weights,
    wrapper_prefix,
)

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, FixSafety
from resumedoctor.engine.operations import Operation, WriteFile
from resumedoctor.engine.registry import Fixer
from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import JsonFileError, open_regular
from resumedoctor.io.safetensors_header import SafetensorsError, SafetensorsHeader

# A write holds the whole new file in memory (and the journal reads it back once): weights beyond this
# are left to the user, with the hint's recipe.
FIX_SIZE_LIMIT = 1024**3


def renamed_header(header: SafetensorsHeader) -> bytes | None:
    """The header with every name unwrapped, padded to the old length; None when names would collide."""
    document: dict = {}
    if header.metadata:
        document["__metadata__"] = header.metadata
    for name, entry in header.tensors.items():
        new_name = name[len(wrapper_prefix(name)):]
        if new_name in document or not new_name:
            return None
        document[new_name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                              "data_offsets": [entry.begin, entry.end]}
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > header.header_size:
        return None
    return text + b" " * (header.header_size - len(text))


def renamed_file(header: SafetensorsHeader) -> bytes | None:
    """The whole file with the renamed header and the same data; None when it cannot be done safely."""
    new_header = renamed_header(header)
    if new_header is None or header.size_problem() is not None:
        return None
    with open_regular(header.path) as handle:
        if os.fstat(handle.fileno()).st_size != header.file_size:
            return None  # changed since it was read
        handle.seek(header.data_start)
        data = handle.read(header.data_size)
    if len(data) != header.data_size:
        return None
    return struct.pack("<Q", header.header_size) + new_header + data


def renamed_index(ctx: RunContext, checkpoint: Path) -> WriteFile | None:
    path = checkpoint / FULL_INDEX
    index = ctx.read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        return None
    renamed = {name[len(wrapper_prefix(name)):]: shard for name, shard in weight_map.items()}
    if len(renamed) != len(weight_map):
        return None
    content = (json.dumps({**index, "weight_map": renamed}, indent=2) + "\n").encode("utf-8")
    return WriteFile(path, content, "tensor names without the wrapper prefix")


def plan_strip_prefix(ctx: RunContext, finding: Finding) -> list[Operation]:
    checkpoint = finding.extra.get("checkpoint")
    weights = read_weights(ctx, checkpoint) if checkpoint is not None else None
    if weights is None:
        return []
    try:
        headers = [ctx.safetensors_header(path) for path in weights.files]
        if sum(header.file_size for header in headers) > FIX_SIZE_LIMIT:
            return []
        operations: list[Operation] = []
        for header in headers:
            content = renamed_file(header)
            if content is None:
                return []
            operations.append(WriteFile(header.path, content, "tensor names without the wrapper prefix"))
        if (checkpoint / FULL_INDEX).is_file():
            index = renamed_index(ctx, checkpoint)
            if index is None:
                return []
            operations.append(index)
    except (SafetensorsError, JsonFileError, ReasonError, OSError):
        return []
    return operations


FIXERS = (
    Fixer("strip-wrapper-prefix", "model-weights", (WRAPPED_KEYS,), FixSafety.SAFE,
          "rename the tensors without torch.compile's `_orig_mod.` / DDP's `module.` prefix (names only; the "
          f"tensor data is copied unchanged; weights up to {FIX_SIZE_LIMIT // 1024**3} GiB in all)",
          plan_strip_prefix),
)

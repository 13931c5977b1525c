#!/usr/bin/env python
"""Diagnosing a sharded checkpoint reads headers only: its cost must not grow with the weights.

Builds sharded safetensors checkpoints of 0.5, 1 and 2 GiB (transformers' layout: shards of
<= 512 MiB plus model.safetensors.index.json, and the small training-state files), then measures
in the same run:
  - `diagnose()` in-process and the `resumedoctor diagnose` command line;
  - the obvious alternative: reading every shard with safetensors (`safetensors.torch.load_file`,
    what transformers does on resume, then copying each tensor as loading it into the model does:
    load_file alone only maps the file and reads nothing), from a warm page cache: its best case.
Also cold: each file's pages are evicted from the page cache first (posix_fadvise DONTNEED).
Target: diagnosing 2 GiB is at least 50x faster than reading it.

    python benchmarks/bench_sharded_diagnose.py [--workdir DIR] [--sizes-gib 0.5 1 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record, time_call, time_command  # noqa: E402


def time_command_cold(command: list[str], folder: Path, repeat: int = 3) -> dict:
    import subprocess

    return time_call(cold(lambda: subprocess.run(command, check=False, stdout=subprocess.DEVNULL), folder), repeat)

SHARD_BYTES = 512 * 1024 * 1024
TENSOR_BYTES = 32 * 1024 * 1024


def build_sharded_checkpoint(folder: Path, total_bytes: int) -> Path:
    import torch
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    tensors_per_shard = SHARD_BYTES // TENSOR_BYTES
    tensor_count = total_bytes // TENSOR_BYTES
    shard_count = -(-tensor_count // tensors_per_shard)
    weight_map = {}
    rng = np.random.default_rng(0)
    block = rng.standard_normal(TENSOR_BYTES // 2, dtype=np.float32).astype(np.float16)
    for shard in range(shard_count):
        name = f"model-{shard + 1:05d}-of-{shard_count:05d}.safetensors"
        first = shard * tensors_per_shard
        tensors = {f"model.layers.{i}.weight": block for i in range(first, min(first + tensors_per_shard, tensor_count))}
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update({tensor: name for tensor in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": tensor_count * TENSOR_BYTES}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    step = int(folder.name.split("-")[1])
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": [{"step": step}]}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"state": torch.zeros(16)}, folder / name)
    return folder


def read_all_shards(folder: Path) -> int:
    """Load every shard the way a resume does: safetensors maps the file, the model copies it in."""
    from safetensors.torch import load_file

    total = 0
    for shard in sorted(folder.glob("model-*.safetensors")):
        # load_file only maps the file; copying touches every byte, as loading into parameters does.
        for tensor in load_file(shard).values():
            total += tensor.clone().numel() * tensor.element_size()
    return total


def drop_page_cache(folder: Path) -> None:
    """Evict the files' pages (posix_fadvise DONTNEED: clean pages, no root needed): a cold read."""
    import os

    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def cold(function, folder: Path):
    def run():
        drop_page_cache(folder)
        function()
    return run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--sizes-gib", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    args = parser.parse_args()

    from resumedoctor.engine.runner import diagnose
    from resumedoctor.engine.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="rd-bench-", dir=args.workdir))
    rows = []
    try:
        for gib in args.sizes_gib:
            folder = build_sharded_checkpoint(workdir / f"size-{gib}" / "checkpoint-100", int(gib * 2**30))
            report = diagnose(folder, settings=Settings())
            assert report.findings == (), [f.message for f in report.findings]
            read_all_shards(folder)  # warm the page cache: the alternative's best case
            in_process = time_call(lambda: diagnose(folder, settings=Settings()), repeat=7)
            cli = time_command([sys.executable, "-m", "resumedoctor", "diagnose", str(folder)], repeat=5)
            reading = time_call(lambda: read_all_shards(folder), repeat=3)
            cold_cli = time_command_cold([sys.executable, "-m", "resumedoctor", "diagnose", str(folder)], folder)
            cold_reading = time_call(cold(lambda: read_all_shards(folder), folder), repeat=3)
            rows.append({
                "size_gib": gib,
                "shards": len(list(folder.glob("model-*.safetensors"))),
                "diagnose_in_process_s": in_process["median_s"],
                "diagnose_cli_s": cli["median_s"],
                "read_shards_safetensors_s": reading["median_s"],
                "ratio_read_over_diagnose": reading["median_s"] / in_process["median_s"],
                "ratio_read_over_cli": reading["median_s"] / cli["median_s"],
                "cold_diagnose_cli_s": cold_cli["median_s"],
                "cold_read_shards_safetensors_s": cold_reading["median_s"],
                "cold_ratio_read_over_cli": cold_reading["median_s"] / cold_cli["median_s"],
            })
            print(json.dumps(rows[-1]))
            shutil.rmtree(folder.parent)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path = record("sharded_diagnose", {"rows": rows, "target": "ratio_read_over_diagnose >= 50 at >= 2 GiB"})
    print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

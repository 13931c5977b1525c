#!/usr/bin/env python
"""The optimizer check reads optimizer.pt's pickle only: its cost must not grow with the optimizer.

Writes one checkpoint with a real ~2 GiB optimizer.pt (torch.save of an AdamW state dict of a
Llama-like model: exp_avg and exp_avg_sq in float32 per parameter) beside the matching
model.safetensors (its header is real, its data a sparse hole: only the header is read), then
measures in the same run, each in a fresh process for its peak memory:
  - read_optimizer_state() of optimizer.pt (what the OPT family does);
  - `resumedoctor diagnose` of the checkpoint (every family, the command line);
  - the obvious alternative: torch.load(optimizer.pt, mmap=False, weights_only=True), warm page cache.
The files are written once to a temporary folder and deleted at the end.

    python benchmarks/bench_optimizer_state.py [--workdir DIR] [--layers 3]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

HIDDEN, INTERMEDIATE, VOCAB = 2048, 5632, 32000


def parameter_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """A Llama-like model in transformers' named_parameters() order."""
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{prefix}.self_attn.{name}.weight"] = (HIDDEN, HIDDEN)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
        shapes[f"{prefix}.input_layernorm.weight"] = (HIDDEN,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def write_weights(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A bf16 model.safetensors whose data is a sparse hole (diagnose reads only the header and the size)."""
    header, offset = {}, 0
    for name, shape in sorted(shapes.items()):
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + offset)


def write_optimizer(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """torch.save of an AdamW state dict as Trainer writes it: decay group, then no-decay group."""
    import torch

    names = list(shapes)
    decay = [i for i, name in enumerate(names) if "norm" not in name]
    no_decay = [i for i, name in enumerate(names) if "norm" in name]
    order = decay + no_decay
    state = {position: {"step": torch.tensor(100.0), "exp_avg": torch.zeros(shapes[names[index]]),
                        "exp_avg_sq": torch.zeros(shapes[names[index]])} for position, index in enumerate(order)}
    options = {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, "fused": True}
    groups = [{**options, "weight_decay": 0.01, "params": list(range(len(decay)))},
              {**options, "weight_decay": 0.0, "params": list(range(len(decay), len(order)))}]
    torch.save({"state": state, "param_groups": groups}, path)


def build_checkpoint(folder: Path, layers: int) -> Path:
    import torch

    folder.mkdir(parents=True)
    shapes = parameter_shapes(layers)
    write_weights(folder / "model.safetensors", shapes)
    write_optimizer(folder / "optimizer.pt", shapes)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 100, "log_history": [{"step": 100}]}))
    for name in ("scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.zeros(16)}, folder / name)
    return folder


# Each measurement runs in a fresh interpreter and prints {"seconds": ..., "peak_rss_mib": ...}. The peak is
# VmHWM (of this process's memory only; ru_maxrss would carry over the benchmark's own peak across exec),
# or for the command line the children's ru_maxrss (its parent is this small interpreter).
MEASURE = """
import json, re, resource, sys, time
path = sys.argv[1]
{imports}
started = time.perf_counter()
{work}
seconds = time.perf_counter() - started
with open("/proc/self/status") as status:
    peak = {peak} / 1024
print(json.dumps({{"seconds": seconds, "peak_rss_mib": peak}}))
"""
SELF_PEAK = 'int(re.search(r"VmHWM:\\s+(\\d+)", status.read()).group(1))'  # KiB
CHILDREN_PEAK = "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss"  # KiB on Linux
READER = MEASURE.format(peak=SELF_PEAK, imports="from resumedoctor.io.optimizer_state import read_optimizer_state",
                        work="state = read_optimizer_state(path); assert state.param_indices")
TORCH_LOAD = MEASURE.format(peak=SELF_PEAK, imports="import torch",
                            work="state = torch.load(path, mmap=False, weights_only=True); assert state['state']")
COMMAND = MEASURE.format(peak=CHILDREN_PEAK, imports="import subprocess",
                         work="subprocess.run(['resumedoctor', 'diagnose', path], stdout=subprocess.DEVNULL)")


def measure(script: str, path: Path, repeat: int = 3) -> dict:
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", script, str(path)], check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda run: run["seconds"])
    return {"best_s": best["seconds"], "peak_rss_mib": max(run["peak_rss_mib"] for run in runs), "runs": repeat}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.workdir, prefix="bench-optimizer-"))
    try:
        checkpoint = build_checkpoint(root / "checkpoint-100", args.layers)
        optimizer = checkpoint / "optimizer.pt"
        size = optimizer.stat().st_size
        findings = subprocess.run(["resumedoctor", "diagnose", str(checkpoint), "--format", "json"],
                                  capture_output=True, text=True).stdout
        report = json.loads(findings)
        opt_findings = [f["code"] for f in report["findings"] if f["code"].startswith("OPT")]
        opt_status = next(check["status"] for check in report["checks"] if check["prefix"] == "OPT")
        reader, diagnose, load = measure(READER, optimizer), measure(COMMAND, checkpoint), measure(TORCH_LOAD, optimizer)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "optimizer_bytes": size, "optimizer_gib": round(size / 2**30, 3), "opt_status": opt_status, "opt_findings": opt_findings,
        "read_optimizer_state": reader, "cli_diagnose": diagnose, "torch_load_mmap_false": load,
        "ratio_time_torch_load_over_reader": round(load["best_s"] / reader["best_s"], 1),
        "ratio_time_torch_load_over_cli_diagnose": round(load["best_s"] / diagnose["best_s"], 2),
        "ratio_peak_rss_torch_load_over_reader": round(load["peak_rss_mib"] / reader["peak_rss_mib"], 1),
    }
    print(json.dumps(result, indent=2))
    print(f"recorded in {record('optimizer_state', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

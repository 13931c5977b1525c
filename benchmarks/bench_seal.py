#!/usr/bin/env python
"""What sealing costs a save, and how fast --deep verifies a sealed checkpoint.

1. A ~1 GiB checkpoint (a Llama-style model of ~90M parameters: fp32 weights plus Adam's two
   moments) saved by transformers' Trainer several times, with and without SealCallback, in the same
   run. The save is `Trainer._save_checkpoint`; sealing is SealCallback.on_save, timed around it: what the save waits for (the seal is hashed in
   a background thread; on_save also waits for the previous seal if it were still running).
   Target: sealing adds under 2% to the save.
2. `--deep` verification of that checkpoint's seal against a plain read of the same files, both with
   the page cache dropped first (posix_fadvise DONTNEED: the disk's own speed).
   Target: --deep runs at 80% or more of the raw read speed.

    python benchmarks/bench_seal.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

SAVES = 4


def drop_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main() -> int:
    import torch
    from datasets import Dataset
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from resumedoctor.integrations.seal.callback import SealCallback
    from resumedoctor.integrations.seal.record import read_seal, verify

    config = LlamaConfig(vocab_size=320, hidden_size=1024, intermediate_size=2816, num_hidden_layers=7,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)
    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4] * 4] * 64, "labels": [[1, 2, 3, 4] * 4] * 64})
    results = {}
    workdir = Path(tempfile.mkdtemp(prefix="rd-seal-"))
    for sealed in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        timings = {"save": [], "seal": []}

        class TimeSeal(TrainerCallback):
            def __init__(self, inner):
                self.inner = inner

            def on_save(self, *args, **kwargs):
                # What the save waits for: starting the seal, and finishing the previous one if it still runs.
                started = time.perf_counter()
                self.inner.on_save(*args, **kwargs)
                timings["seal"].append(time.perf_counter() - started)

            def on_train_end(self, *args, **kwargs):
                self.inner.on_train_end(*args, **kwargs)

        class TimeForegroundSeal(TimeSeal):
            pass

        args = TrainingArguments(output_dir=str(workdir / f"sealed-{sealed}"), max_steps=SAVES, save_steps=1,
                                 per_device_train_batch_size=4, use_cpu=True, report_to="none",
                                 logging_steps=100, disable_tqdm=True, save_total_limit=2)
        trainer = Trainer(model=model, args=args, train_dataset=data,
                          callbacks=[TimeSeal(SealCallback())] if sealed else [])
        original = trainer._save_checkpoint

        def timed_save(*a, **k):
            started = time.perf_counter()
            original(*a, **k)
            timings["save"].append(time.perf_counter() - started)

        trainer._save_checkpoint = timed_save
        trainer.train()
        checkpoint = workdir / f"sealed-{sealed}" / f"checkpoint-{SAVES}"
        size = sum(p.stat().st_size for p in checkpoint.iterdir())
        results[f"sealed_{sealed}"] = {"checkpoint_gib": size / 2**30, "save_s": timings["save"],
                                       "seal_s": timings["seal"]}
        print(json.dumps(results[f"sealed_{sealed}"]))
    # Median over the saves after the first (the first includes one-time work).
    save_median = statistics.median(results["sealed_True"]["save_s"][1:])
    seal_median = statistics.median(results["sealed_True"]["seal_s"][1:])
    unsealed_median = statistics.median(results["sealed_False"]["save_s"][1:])

    checkpoint = workdir / "sealed-True" / f"checkpoint-{SAVES}"
    seal = read_seal(checkpoint)
    drop_cache(checkpoint)
    started = time.perf_counter()
    for path in checkpoint.iterdir():
        with open(path, "rb") as handle:
            while handle.read(16 << 20):
                pass
    raw = time.perf_counter() - started
    drop_cache(checkpoint)
    started = time.perf_counter()
    problems = verify(checkpoint, seal, deep=True)
    deep = time.perf_counter() - started
    assert problems == []
    size_gib = results["sealed_True"]["checkpoint_gib"]
    summary = {
        "checkpoint_gib": size_gib,
        "save_median_s": save_median,
        "save_without_seal_callback_median_s": unsealed_median,
        "seal_median_s": seal_median,
        "seal_over_save_percent": 100 * seal_median / save_median,
        "raw_cold_read_gib_per_s": size_gib / raw,
        "deep_verify_cold_gib_per_s": size_gib / deep,
        "deep_over_raw_percent": 100 * raw / deep,
    }
    print(json.dumps(summary, indent=2))
    record("seal", {**summary, "raw": results, "targets": "seal < 2% of save; deep >= 80% of raw read"})
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Measuring 100,000 prompts the way GRPOTrainer tokenizes them, fresh and from the cache.

A jsonl dataset of 100,000 conversational prompts (3-60 words) and the demo's real tokenizer with
its chat template. Measured in the same run:
  - `measure()` without a cache: load with `datasets`, render the chat template, batched fast tokenizer;
  - the same in-process (imports paid), against the obvious alternative in-process: load the dataset,
    `apply_chat_template(..., tokenize=True)` one prompt at a time (timed on 5,000, scaled up);
  - a second `measure()` in a new process: served from the cache keyed by the dataset's and
    tokenizer's fingerprints, without importing datasets or transformers.
Targets: 100,000 prompts in under 15 s; the cached second run in under 1 s.

    python benchmarks/bench_prompt_lengths.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

COUNT = 100_000
ALTERNATIVE_SAMPLE = 5_000  # the one-by-one loop is timed on a sample and scaled up


def main() -> int:
    from demo_run import WORDS, save_base_model

    workdir = Path(tempfile.mkdtemp(prefix="rd-prompts-"))
    os.environ["RESUMEDOCTOR_CACHE_DIR"] = str(workdir / "cache")
    try:
        model = save_base_model(workdir / "model")
        rng = random.Random(0)
        dataset = workdir / "prompts.jsonl"
        with open(dataset, "w") as handle:
            for index in range(COUNT):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
                handle.write(json.dumps({"id": index, "prompt": [{"role": "user", "content": text}]}) + "\n")

        fresh_script = ("import sys, time; from pathlib import Path; from resumedoctor.integrations.trl.prompt_lengths import measure\n"
                        "t = time.perf_counter(); m = measure(Path(sys.argv[1]), Path(sys.argv[2]))\n"
                        "print(time.perf_counter() - t, m.from_cache, len(m.lengths))\n")

        def run_measure() -> tuple[float, bool, int]:
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", fresh_script, str(dataset), str(model)],
                                 capture_output=True, text=True, check=True).stdout.split()
            return time.perf_counter() - started, out[1] == "True", int(out[2])

        fresh_wall, fresh_cached, count = run_measure()
        assert not fresh_cached and count == COUNT
        cached_wall, cached, _ = run_measure()
        assert cached

        from transformers import AutoTokenizer

        from resumedoctor.integrations.trl.prompt_lengths import (
            load_local_dataset,
            measure,
        )

        # Both ways in this process, imports already paid: load the dataset, then tokenize every prompt.
        started = time.perf_counter()
        measure(dataset, model, use_cache=False)
        in_process = time.perf_counter() - started
        started = time.perf_counter()
        loaded = load_local_dataset(dataset, "train")
        tokenizer = AutoTokenizer.from_pretrained(model)
        setup = time.perf_counter() - started
        started = time.perf_counter()
        for row in loaded.select(range(ALTERNATIVE_SAMPLE)):
            tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        one_by_one = setup + (time.perf_counter() - started) * COUNT / ALTERNATIVE_SAMPLE
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "prompts": COUNT,
        "measure_fresh_process_s": fresh_wall,
        "measure_cached_process_s": cached_wall,
        "measure_in_process_s": in_process,
        "one_by_one_apply_chat_template_in_process_s_estimated": one_by_one,
        "ratio_one_by_one_over_measure": one_by_one / in_process,
    }
    print(json.dumps(result, indent=2))
    path = record("prompt_lengths", {**result, "target": "fresh < 15 s, cached < 1 s"})
    print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

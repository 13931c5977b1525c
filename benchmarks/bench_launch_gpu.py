#!/usr/bin/env python
"""The launcher's end-to-end run on a GPU: kill after the save of step 4, `launch` resumes to step 8.

Records the resumed segment's step time and tokens/s (from the trainer's own `num_tokens`), and the
same on CPU in the same run for comparison. CI never has a GPU: run it on a machine that has one.

    python benchmarks/bench_launch_gpu.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

TESTS = Path(__file__).resolve().parent.parent / "tests"
RECIPE = """model_name_or_path: {model}
dataset_name: {dataset}
reward_funcs: [demo_run.length_reward]
output_dir: {out}
use_cpu: {use_cpu}
bf16: {bf16}
max_steps: {steps}
save_steps: 4
logging_steps: 1
per_device_train_batch_size: 8
num_generations: 8
max_completion_length: 32
learning_rate: 1.0e-4
report_to: none
resumedoctor:
  callbacks: [launch_helpers.KillAfterSave]
"""


def run(device: str, root: Path, steps: int) -> dict:
    from demo_run import build_prompt_rows, save_base_model

    model = save_base_model(root / "model")
    dataset = root / "prompts.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in build_prompt_rows(256)))
    recipe = root / "recipe.yaml"
    gpu = device == "cuda"
    recipe.write_text(RECIPE.format(model=model, dataset=dataset, out=root / "out", use_cpu=str(not gpu).lower(),
                                    bf16=str(gpu).lower(), steps=steps))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "KILL_AFTER_SAVE_STEP": "4"}
    first = subprocess.run([sys.executable, "-m", "resumedoctor", "launch", "--config", str(recipe)],
                           capture_output=True, text=True, env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    env.pop("KILL_AFTER_SAVE_STEP")
    second = subprocess.run([sys.executable, "-m", "resumedoctor", "launch", "--config", str(recipe)],
                            capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = next(line for line in second.stdout.splitlines() if line.startswith("resumedoctor launch:"))
    state = json.loads((root / "out" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    steps_logged = [e["step"] for e in state["log_history"] if "loss" in e]
    numbers = re.search(r"\(([\d.]+) s/step(?:, (\d+) tokens/s)?\)", summary)
    return {"device": device, "summary": summary, "every_step_once": steps_logged == list(range(1, steps + 1)),
            "step_time_s": float(numbers.group(1)), "tokens_per_s": int(numbers.group(2) or 0)}


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    results = []
    for device in devices:
        with tempfile.TemporaryDirectory() as folder:
            results.append(run(device, Path(folder), args.steps))
            print(json.dumps(results[-1]))
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    record("launch_gpu", {"gpu": name, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

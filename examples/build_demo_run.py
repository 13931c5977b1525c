#!/usr/bin/env python
"""Build a tiny but real GRPO run on CPU in a few seconds: nothing comes from a hub.

    python examples/build_demo_run.py demo-run/

writes demo-run/checkpoint-2, -4 and -6 with TRL's GRPOTrainer (a Llama-style model of about 40k
parameters made from a config, and a BPE tokenizer trained on the spot). Needs the `train` extra.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="where the run's checkpoint-N folders go")
    parser.add_argument("--steps", type=int, default=6, help="GRPO steps (default 6)")
    parser.add_argument("--save-steps", type=int, default=2, help="save every N steps (default 2)")
    parser.add_argument("--peft", action="store_true", help="train a LoRA adapter instead of the full model")
    args = parser.parse_args()
    if args.output_dir.exists() and any(args.output_dir.iterdir()):
        print(f"{args.output_dir} is not empty; choose a new folder", file=sys.stderr)
        return 2

    from demo_run import train_demo_run

    started = time.perf_counter()
    train_demo_run(args.output_dir, max_steps=args.steps, save_steps=args.save_steps, peft=args.peft)
    checkpoints = sorted(p.name for p in args.output_dir.glob("checkpoint-*"))
    print(f"built {args.output_dir} in {time.perf_counter() - started:.1f}s: {', '.join(checkpoints)}")
    print(f"next: resumedoctor diagnose {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

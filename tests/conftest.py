"""Shared fixtures: real runs written by TRL/transformers on CPU, built once per session.

Tests never damage the session's runs; they damage copies (`full_run`, `sharded_run`, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Nothing may reach a hub; W&B stays offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parent.parent
# The demo run builder lives in examples/ (it is not part of the installed package). Tests import it,
# and the CLI processes they start import its reward function by name, so both paths need it.
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES))
# Some test modules share helpers with a sibling folder's (test_fix.tree, test_length_budgets.write_prompts):
# every test folder is importable, so a file or folder run alone collects as it does in the whole suite.
for folder in sorted(Path(__file__).resolve().parent.iterdir()):
    if folder.is_dir() and not folder.name.startswith(("_", ".")) and str(folder) not in sys.path:
        sys.path.append(str(folder))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def built_runs(tmp_path_factory) -> dict[str, Path]:
    """Every kind of real checkpoint the CKPT checks must accept, built once."""
    from demo_run import reshard_checkpoint, train_demo_run

    root = tmp_path_factory.mktemp("runs")
    runs = {
        "full": train_demo_run(root / "full", max_steps=6, save_steps=2),
        "peft": train_demo_run(root / "peft", peft=True, max_steps=2, save_steps=2),
        "model_only": train_demo_run(root / "model_only", save_only_model=True, max_steps=2, save_steps=2),
    }
    sharded = root / "sharded"
    shutil.copytree(runs["full"], sharded)
    for checkpoint in sorted(sharded.glob("checkpoint-*")):
        reshard_checkpoint(checkpoint)
    runs["sharded"] = sharded
    return runs


def _copy(source: Path, tmp_path: Path) -> Path:
    destination = tmp_path / source.name
    shutil.copytree(source, destination)
    return destination


@pytest.fixture
def full_run(built_runs, tmp_path) -> Path:
    """A private copy of a 6-step GRPO run with checkpoint-2, -4 and -6 (full model)."""
    return _copy(built_runs["full"], tmp_path)


@pytest.fixture
def sharded_run(built_runs, tmp_path) -> Path:
    return _copy(built_runs["sharded"], tmp_path)


@pytest.fixture
def peft_run(built_runs, tmp_path) -> Path:
    return _copy(built_runs["peft"], tmp_path)


@pytest.fixture
def model_only_run(built_runs, tmp_path) -> Path:
    return _copy(built_runs["model_only"], tmp_path)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    command = [sys.executable, "-m", "resumedoctor", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


def codes(report) -> list[str]:
    return [finding.code for finding in report.findings]


PROJECT = "resumedoctor-tests"

# The tiny demo model's training arguments as recipe lines (max_steps left to fill in).
TRAINING_ARGS = """\
use_cpu: true
bf16: false
seed: 0
max_steps: {max_steps}
save_steps: 2
logging_steps: 1
per_device_train_batch_size: 4
num_generations: 4
max_completion_length: 8
learning_rate: 1.0e-3
"""

# A GRPO recipe on the tiny local model, as `trl grpo --config` and `resumedoctor launch` take it.
GRPO_RECIPE = """\
model_name_or_path: {model}
dataset_name: {dataset}
reward_funcs: [demo_run.length_reward]
output_dir: {output_dir}
""" + TRAINING_ARGS

# The demo run's own training arguments (demo_run.train_demo_run's defaults) as recipe lines:
# a recipe with exactly these resumes the session's runs without drift.
DEMO_RUN_ARGS = TRAINING_ARGS.replace("{max_steps}", "6") + "disable_tqdm: true\n"


@pytest.fixture(scope="session")
def launch_inputs(tmp_path_factory) -> dict[str, Path]:
    """What a GRPO_RECIPE names, built once: the tiny base model and a prompt dataset (64 rows)."""
    import json

    from demo_run import build_prompt_rows, save_base_model

    root = tmp_path_factory.mktemp("launch-inputs")
    model = save_base_model(root / "model")
    dataset = root / "prompts.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in build_prompt_rows(64)))
    return {"model": model, "dataset": dataset, "cache": root / "cache"}  # TRL's field table: read once


def _offline_env(root: Path) -> dict[str, str]:
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_PROJECT": PROJECT, "WANDB_SILENT": "true",
            "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}


OTHER_RUN = """
import sys, wandb
run = wandb.init(config={"output_dir": sys.argv[1]})
run.define_metric("train/global_step")
run.define_metric("*", step_metric="train/global_step", step_sync=True)
for step in range(1, 4):
    run.log({"train/loss": 1.0 / step, "train/global_step": step})
run.finish()
print(run.id)
"""


@pytest.fixture(scope="session")
def wandb_world(tmp_path_factory) -> dict:
    """One GRPO run logged to W&B offline (checkpoints 2, 4, 6), and an unrelated run beside it."""
    from demo_run import train_demo_run

    root = tmp_path_factory.mktemp("wandb-world")
    import wandb

    wandb.teardown()  # another fixture in this worker may have set wandb up with its own WANDB_DIR
    saved = dict(os.environ)
    os.environ.update(_offline_env(root))
    try:
        output_dir = train_demo_run(root / "grpo-demo-run", report_to="wandb", run_name="grpo-demo")
        import wandb

        wandb.finish()  # the Trainer leaves its run open; a job's process would end here
        wandb.teardown()  # wandb's settings singleton keeps WANDB_DIR: the next fixture needs its own
        other = subprocess.run([sys.executable, "-c", OTHER_RUN, str(root / "someone-elses-run")],
                               capture_output=True, text=True, check=True)
        other_id = other.stdout.strip().splitlines()[-1]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    logs = sorted((root / "wandb").glob("offline-run-*/run-*.wandb"))
    ours = next(log for log in logs if other_id not in log.name)
    return {"root": root, "output_dir": output_dir, "wandb_dir": root / "wandb", "log": ours,
            "run_id": ours.stem.removeprefix("run-"), "other_id": other_id}


CURRICULUM_RULE = dict(thresholds=[8e-4, 5e-4, 2e-4], metric="learning_rate", window=2, mode="min")


@pytest.fixture(scope="session")
def built_curriculum_run(tmp_path_factory) -> Path:
    """The 6-step GRPO run of `built_runs["full"]`, trained with resumedoctor's CurriculumCallback.

    The promotion metric is the logged learning rate (the same in every run): stage 1 from step 4, stage 2 at step 6.
    """
    from demo_run import train_demo_run

    from resumedoctor.integrations.curriculum.callback import CurriculumCallback

    root = tmp_path_factory.mktemp("curriculum-run")
    return train_demo_run(root / "curriculum", max_steps=6, save_steps=2,
                          callbacks=[CurriculumCallback(**CURRICULUM_RULE)])

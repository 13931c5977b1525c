"""`resumedoctor launch` end to end on CPU with the tiny local model, as users run it.

Phase 1 trains toward step 8 and is SIGKILLed right after the save of step 4; phase 2 is a plain
`resumedoctor launch` that must resume from checkpoint-4 and finish at step 8, logging every step once.
W&B runs offline (no server can exist here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resumedoctor.wandb_log import read_run_log

TESTS = Path(__file__).resolve().parent

RECIPE = """\
# GRPO on the tiny local model
model_name_or_path: {model}
dataset_name: {dataset}
reward_funcs: [resumedoctor.demo.length_reward]
output_dir: {output_dir}
use_cpu: true
bf16: false
max_steps: 8
save_steps: 2
logging_steps: 1
per_device_train_batch_size: 4
num_generations: 4
max_completion_length: 8
learning_rate: 1.0e-3
seed: 0
report_to: wandb
resumedoctor:
  callbacks: [launch_helpers.KillAfterSave]
{extra}"""


@pytest.fixture(scope="session")
def launch_inputs(tmp_path_factory) -> dict[str, Path]:
    from resumedoctor.demo import build_prompt_rows, save_base_model

    root = tmp_path_factory.mktemp("launch-inputs")
    model = save_base_model(root / "model")
    dataset = root / "prompts.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in build_prompt_rows(64)))
    return {"model": model, "dataset": dataset}


@pytest.fixture
def workspace(launch_inputs, tmp_path):
    def recipe(extra: str = "") -> Path:
        path = tmp_path / "recipe.yaml"
        path.write_text(RECIPE.format(model=launch_inputs["model"], dataset=launch_inputs["dataset"],
                                      output_dir=tmp_path / "out", extra=extra))
        return path

    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true", WANDB_PROJECT="launch-tests",
               WANDB_DISABLE_GIT="true", PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
               RESUMEDOCTOR_CACHE_DIR=str(tmp_path / "cache"))
    return {"root": tmp_path, "out": tmp_path / "out", "recipe": recipe, "env": env}


def launch(workspace, *args: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(workspace["env"])
    if kill_after is not None:
        env["KILL_AFTER_SAVE_STEP"] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "resumedoctor", "launch", *args], capture_output=True, text=True,
                          env=env, cwd=workspace["root"])


def trained_steps(checkpoint: Path) -> list[int]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry["step"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_killed_run_is_resumed_to_the_end_with_every_step_once(workspace):
    recipe = workspace["recipe"]()
    killed = launch(workspace, "--config", str(recipe), kill_after=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in workspace["out"].glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    resumed = launch(workspace, "--config", str(recipe))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resume from: " + str(workspace["out"] / "checkpoint-4") in resumed.stdout
    assert "resumedoctor launch: checkpoint-4 -> step 8" in resumed.stdout
    assert trained_steps(workspace["out"] / "checkpoint-8") == list(range(1, 9))

    # W&B: the resumed segment continues the same run id and logs each global step once, increasing.
    logs = sorted((workspace["root"] / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and logs[0].name == logs[1].name
    before, after = (read_run_log(log) for log in logs)
    steps_after = [g for _, g, has_train in after.history if has_train and g is not None]
    per_step = [g for g in steps_after if g < 8] + [8]  # the final summary log repeats step 8
    assert per_step == [5, 6, 7, 8]
    logged = [g for _, g, has_train in before.history + after.history if has_train and g is not None and g < 8]
    assert logged == sorted(set(logged))  # strictly increasing across the resume: nothing logged twice


@pytest.mark.slow
def test_broken_newest_checkpoint_is_refused_then_fixed(workspace):
    recipe = workspace["recipe"]()
    launch(workspace, "--config", str(recipe), kill_after=6)
    with open(workspace["out"] / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(100)

    refused = launch(workspace, "--config", str(recipe))
    assert refused.returncode == 1
    report = " ".join(refused.stdout.split())  # the text report wraps long lines
    assert "CKPT018" in report and "the newest usable checkpoint is checkpoint-4" in report
    assert "not starting" in refused.stderr
    assert not (workspace["out"] / "checkpoint-8").exists()

    safe_only = launch(workspace, "--config", str(recipe), "--fix")
    assert safe_only.returncode == 1  # quarantining is unsafe: --fix alone refuses still

    fixed = launch(workspace, "--config", str(recipe), "--fix", "--unsafe")
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    assert "quarantine checkpoint-6/" in fixed.stdout
    assert "resumedoctor launch: checkpoint-4 -> step 8" in fixed.stdout
    assert trained_steps(workspace["out"] / "checkpoint-8") == list(range(1, 9))


def test_refusal_happens_before_torch_is_imported(workspace):
    workspace["out"].mkdir()
    (workspace["out"] / "checkpoint-2").mkdir()  # an empty, cut-off save
    script = ("import sys\nfrom resumedoctor.cli import main\n"
              "try:\n    main(['launch', '--config', sys.argv[1]])\nexcept SystemExit as exc:\n    code = exc.code\n"
              "print('EXIT', code, 'TORCH', 'torch' in sys.modules, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", script, str(workspace["recipe"]())], capture_output=True, text=True,
                            env=workspace["env"], cwd=workspace["root"])
    assert "EXIT 1 TORCH False" in result.stderr, result.stderr[-2000:]


def test_dry_run_prints_the_plan_and_trains_nothing(workspace):
    result = launch(workspace, "--config", str(workspace["recipe"]()), "--dry-run", "--", "--learning_rate", "5e-4")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("resume from: nothing: training starts at step 0", "fixes:       none",
                 "callbacks:   SealCallback, launch_helpers.KillAfterSave", "learning_rate: 0.001 -> 0.0005"):
        assert line in result.stdout
    assert not list(workspace["out"].glob("checkpoint-*"))


def test_unknown_launcher_key_and_missing_recipe_are_exit_2(workspace):
    bad = launch(workspace, "--config", str(workspace["recipe"]("  currculum: {}\n")))
    assert bad.returncode == 2 and "unknown key(s) in `resumedoctor:`" in bad.stderr
    missing = launch(workspace, "--config", "/no/recipe.yaml")
    assert missing.returncode == 2 and "no such recipe file" in missing.stderr


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU (CI has none; run on the device machine)")
def test_killed_gpu_run_is_resumed(workspace):
    recipe = workspace["recipe"]().read_text().replace("use_cpu: true", "use_cpu: false").replace("bf16: false", "bf16: true")
    path = workspace["root"] / "gpu-recipe.yaml"
    path.write_text(recipe)
    assert launch(workspace, "--config", str(path), kill_after=4).returncode == -signal.SIGKILL
    resumed = launch(workspace, "--config", str(path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert trained_steps(workspace["out"] / "checkpoint-8") == list(range(1, 9))

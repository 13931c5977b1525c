"""The examples do what the README says they do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_build_demo_run_writes_real_checkpoints(tmp_path):
    out = tmp_path / "demo-run"
    result = subprocess.run([sys.executable, EXAMPLES / "build_demo_run.py", out], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert (out / "checkpoint-6" / "trainer_state.json").is_file()
    assert f"resumedoctor diagnose {out}" in result.stdout


def test_build_demo_run_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").write_text("keep me")
    result = subprocess.run([sys.executable, EXAMPLES / "build_demo_run.py", tmp_path], capture_output=True, text=True)
    assert result.returncode == 2 and (tmp_path / "x").read_text() == "keep me"


def _hook(output_dir: Path, marker: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", EXAMPLES / "pre_training_hook.sh", output_dir, "touch", marker],
                          capture_output=True, text=True, env=env)


def test_pre_training_hook_starts_a_clean_run(full_run, tmp_path):
    marker = tmp_path / "training-started"
    result = _hook(full_run, marker)
    assert result.returncode == 0, result.stderr
    assert marker.exists()


def test_pre_training_hook_starts_the_first_run_of_a_new_output_dir(tmp_path):
    """The hook is in front of every start, the first one included: OUT does not exist yet."""
    marker = tmp_path / "training-started"
    result = _hook(tmp_path / "new-run", marker)
    assert result.returncode == 0, result.stderr
    assert marker.exists() and "a first start" in result.stderr


def test_pre_training_hook_refuses_a_broken_run(full_run, tmp_path):
    (full_run / "checkpoint-6" / "trainer_state.json").unlink()
    marker = tmp_path / "training-started"
    result = _hook(full_run, marker)
    assert result.returncode == 1
    assert not marker.exists()
    assert "not starting" in result.stderr


def test_pre_training_hook_checks_the_training_commands_recipe(full_run, tmp_path):
    """`trl grpo --config recipe.yaml` with a recipe that does not resume would restart at step 0 (CFG006)."""
    from conftest import DEMO_RUN_ARGS

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {full_run}\n" + DEMO_RUN_ARGS)  # no resume_from_checkpoint
    marker = tmp_path / "training-started"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for config in (["--config", str(recipe)], [f"--config={recipe}"]):
        result = subprocess.run(["bash", EXAMPLES / "pre_training_hook.sh", full_run, "touch", marker, *config],
                                capture_output=True, text=True, env=env)
        assert result.returncode == 1 and not marker.exists(), result.stdout[-2000:]
        assert "CFG006" in result.stdout


def test_pre_training_hook_refuses_stale_wandb_variables(full_run, tmp_path):
    marker = tmp_path / "training-started"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "WANDB_RESUME": "must"}
    env.pop("WANDB_RUN_ID", None)
    result = subprocess.run(["bash", EXAMPLES / "pre_training_hook.sh", full_run, "touch", marker],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1 and not marker.exists()  # WANDB004: wandb.init would fail


def test_pre_training_hook_hands_the_fork_to_the_training_command(wandb_world, tmp_path):
    checkpoint = wandb_world["output_dir"] / "checkpoint-4"
    marker = tmp_path / "env-seen"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               WANDB_DIR=str(wandb_world["root"]), WANDB_RUN_ID=wandb_world["run_id"], WANDB_RESUME="allow")
    command = f'echo "$WANDB_FORK_FROM ${{WANDB_RUN_ID-unset}} ${{WANDB_RESUME-unset}}" > {marker}'
    result = subprocess.run(["bash", EXAMPLES / "pre_training_hook.sh", checkpoint, "bash", "-c", command],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    fork_from, run_id, resume = marker.read_text().split()
    assert fork_from.startswith(f"{wandb_world['run_id']}?_step=") and run_id == resume == "unset"


def test_ci_gate_workflow_uploads_sarif_and_gates():
    workflow = YAML(typ="safe").load((EXAMPLES / "github" / "resumedoctor-gate.yml").read_text())
    steps = workflow["jobs"]["diagnose"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "--format sarif -o resumedoctor.sarif" in runs
    assert "--format junit" in runs
    upload = next(step for step in steps if step.get("uses", "").startswith("github/codeql-action/upload-sarif"))
    assert upload["with"]["sarif_file"] == "resumedoctor.sarif"
    assert steps[-1]["run"].strip().endswith("--format github")
    assert workflow["permissions"]["security-events"] == "write"

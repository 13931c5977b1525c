"""`resumedoctor launch` end to end on CPU with the tiny local model, as users run it.

Phase 1 trains toward step 8 and is SIGKILLed right after the save of step 4; phase 2 is a plain
`resumedoctor launch` that must resume from checkpoint-4 and finish at step 8, logging every step once.
W&B runs offline (no server can exist here).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GRPO_RECIPE

from resumedoctor.integrations.wandb.log_reader import read_run_log

TESTS = Path(__file__).resolve().parents[1]  # launch_helpers.py lives in tests/

RECIPE = ("# GRPO on the tiny local model\n" + GRPO_RECIPE.replace("{max_steps}", "8")
          + "report_to: wandb\nresumedoctor:\n  callbacks: [launch_helpers.KillAfterSave]\n{extra}")


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
               RESUMEDOCTOR_CACHE_DIR=str(launch_inputs["cache"]))
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


GATE = ("import sys\nfrom resumedoctor.cli.app import main\n"
        "try:\n    main(['launch', '--config', *sys.argv[1:]])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('EXIT', code, 'TORCH', 'torch' in sys.modules, file=sys.stderr)\n")


def gate(workspace, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`resumedoctor launch` in a process that reports, on exit, whether torch was imported."""
    return subprocess.run([sys.executable, "-c", GATE, *args], capture_output=True, text=True,
                          env=env or workspace["env"], cwd=workspace["root"])


def test_refusal_happens_before_torch_is_imported(workspace):
    workspace["out"].mkdir()
    (workspace["out"] / "checkpoint-2").mkdir()  # an empty, cut-off save
    result = gate(workspace, str(workspace["recipe"]()))
    assert "EXIT 1 TORCH False" in result.stderr, result.stderr[-2000:]


MODULE_THAT_IMPORTS_TORCH = """\
import torch  # importing this module would import torch: the gate must not


def present(completions, **kwargs):
    return [0.0 for _ in completions]
"""


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("demo_run.length_reward", "nosuchmodule.reward", "no module named 'nosuchmodule'"),
    ("demo_run.length_reward", "mymodule.missing_name", "defines no 'missing_name'"),
    ("launch_helpers.KillAfterSave", "launch_helpers.NoSuchCallback", "defines no 'NoSuchCallback'"),
])
def test_a_reward_function_or_callback_that_is_not_there_is_refused_before_torch(workspace, old, new, expected):
    (workspace["root"] / "mymodule.py").write_text(MODULE_THAT_IMPORTS_TORCH)  # in the working folder, as TRL looks
    recipe = workspace["recipe"]()
    recipe.write_text(recipe.read_text().replace(old, new))
    result = gate(workspace, str(recipe))
    assert "EXIT 1 TORCH False" in result.stderr, result.stderr[-2000:]
    report = " ".join(result.stdout.split())  # the text report wraps long lines
    assert "LEN011" in report and new.rpartition(".")[0] in report and expected in report, report[-2000:]
    assert "not starting" in result.stderr
    assert not workspace["out"].exists()  # a refused launch creates nothing either


def test_the_module_the_gate_accepts_is_one_that_imports(workspace):
    """The oracle for the test above: TRL's own loading (import_module with the working folder first on sys.path)."""
    (workspace["root"] / "mymodule.py").write_text(MODULE_THAT_IMPORTS_TORCH)
    load = ("import importlib, os, sys\nsys.path.insert(0, os.getcwd())\n"
            "module, _, name = sys.argv[1].rpartition('.')\ngetattr(importlib.import_module(module), name)\n")
    for dotted, works in (("mymodule.present", True), ("mymodule.missing_name", False), ("nosuchmodule.reward", False)):
        result = subprocess.run([sys.executable, "-c", load, dotted], capture_output=True, text=True,
                                env=workspace["env"], cwd=workspace["root"])
        assert (result.returncode == 0) is works, (dotted, result.stderr[-500:])
    recipe = workspace["recipe"]()
    recipe.write_text(recipe.read_text().replace("demo_run.length_reward", "mymodule.present"))
    accepted = gate(workspace, str(recipe), "--dry-run")
    assert "EXIT 0 TORCH False" in accepted.stderr, accepted.stdout[-2000:] + accepted.stderr[-2000:]


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and folder under root with a hash of its content: what a run wrote shows as a difference."""
    entries = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in skip:
            continue
        entries[str(relative)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


CURRICULUM = "  curriculum: {thresholds: [0.5], metric: reward, window: 2, mode: max}\n"


@pytest.mark.parametrize(("args", "extra", "planned"), [
    ((), CURRICULUM, "fixes: none"),
    (("--fix", "--unsafe"), CURRICULUM + "max_prompt_length: 64\n", "(planned) rewrite RECIPE (LEN003"),  # outside the output_dir: shown absolute
])
def test_dry_run_on_a_fresh_recipe_writes_nothing(workspace, args, extra, planned):
    recipe = workspace["recipe"](extra)
    before = tree(workspace["root"])
    result = launch(workspace, "--config", str(recipe), *args, "--dry-run")
    assert "resume from: nothing: training starts at step 0" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert planned.replace("RECIPE", os.path.abspath(recipe)) in " ".join(result.stdout.split())
    assert result.returncode == (1 if "LEN003" in planned else 0)  # a dry run applies nothing: LEN003 stays
    assert not workspace["out"].exists()
    assert tree(workspace["root"]) == before


def test_dry_run_on_an_existing_output_dir_writes_nothing(workspace):
    """Debris of a cut-off save and a removed recipe key: --fix would move one and edit the other."""
    (workspace["out"] / "tmp-checkpoint-3").mkdir(parents=True)
    recipe = workspace["recipe"]("max_prompt_length: 64\n")
    before = tree(workspace["root"])
    result = launch(workspace, "--config", str(recipe), "--fix", "--dry-run")
    plan = " ".join(result.stdout.split())
    assert "(planned) quarantine tmp-checkpoint-3/" in plan and f"(planned) rewrite {os.path.abspath(recipe)}" in plan, plan[-3000:]
    assert tree(workspace["root"]) == before
    assert not (workspace["out"] / ".resumedoctor").exists()


def test_a_broken_trl_install_is_one_line_and_exit_2(workspace, tmp_path):
    """A real broken environment: a `trl` package that raises on import, first on PYTHONPATH."""
    broken = tmp_path / "broken-site"
    (broken / "trl").mkdir(parents=True)
    (broken / "trl" / "__init__.py").write_text('raise ImportError("this trl is broken (a stand-in for a bad install)")\n')
    env = {**workspace["env"], "PYTHONPATH": os.pathsep.join([str(broken), workspace["env"]["PYTHONPATH"]]),
           "RESUMEDOCTOR_CACHE_DIR": str(tmp_path / "cold-cache")}  # else TRL's field table comes from the cache
    result = subprocess.run([sys.executable, "-m", "resumedoctor", "launch", "--config", str(workspace["recipe"]()),
                             "--dry-run"], capture_output=True, text=True, env=env, cwd=workspace["root"])
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "TRL's arguments could not be read" in lines[0] and "this trl is broken" in lines[0]
    assert not workspace["out"].exists()


def test_a_helper_that_runs_out_of_time_is_one_line_and_exit_2(workspace):
    env = {**workspace["env"], "RESUMEDOCTOR_HELPER_TIMEOUT": "0.01",  # importing TRL takes seconds
           "RESUMEDOCTOR_CACHE_DIR": str(workspace["root"] / "cold-cache")}
    result = subprocess.run([sys.executable, "-m", "resumedoctor", "launch", "--config", str(workspace["recipe"]()),
                             "--dry-run"], capture_output=True, text=True, env=env, cwd=workspace["root"])
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "did not finish within 0.01 s" in result.stderr and "Traceback" not in result.stderr


def test_dry_run_prints_the_plan_and_trains_nothing(workspace):
    result = launch(workspace, "--config", str(workspace["recipe"]()), "--dry-run", "--", "--learning_rate", "5e-4")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("resume from: nothing: training starts at step 0", "fixes:       none",
                 "callbacks:   SealCallback, launch_helpers.KillAfterSave", "learning_rate: 0.001 -> 0.0005"):
        assert line in result.stdout
    assert not workspace["out"].exists()


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

"""DATA: where in the data the resume starts, on real TRL runs; a model-only resume is resumed for real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import GRPO_RECIPE, run_cli
from lifecycle_helpers import resume_for_real

from resumedoctor.engine.context import Options
from resumedoctor.engine.findings import Severity
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix

pytestmark = pytest.mark.slow

LORA = "use_peft: true\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0.0\nlora_target_modules: [q_proj, v_proj]\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data-position-cache")


@pytest.fixture
def world(built_runs, launch_inputs, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(cache))
    return {"built": built_runs, "tmp": tmp_path, **launch_inputs}


def copy_run(world, name: str) -> Path:
    return Path(shutil.copytree(world["built"][name], world["tmp"] / name))


def recipe(world, out: Path, extra: str = "", max_steps: int = 6) -> Path:
    path = world["tmp"] / "recipe.yaml"
    path.write_text(GRPO_RECIPE.format(model=world["model"], dataset=world["dataset"], output_dir=out,
                                       max_steps=max_steps) + "resume_from_checkpoint: true\n" + extra)
    return path


def data_findings(target: Path, path: Path | None = None):
    report = diagnose(target, options=Options(recipe=path), environ={}, settings=Settings(select=("DATA",)))
    return list(report.findings)


@pytest.mark.parametrize("layout", ["full", "sharded", "peft", "model_only"])
def test_clean_runs_without_a_recipe_get_no_data_finding(built_runs, layout):
    assert data_findings(built_runs[layout]) == []


@pytest.mark.parametrize(("layout", "extra"), [("full", ""), ("sharded", ""), ("peft", LORA)])
def test_clean_runs_with_their_recipe_get_no_error(world, layout, extra):
    out = copy_run(world, layout)
    report = diagnose(out, options=Options(recipe=recipe(world, out, extra)), environ={})
    assert not [f for f in report.findings if f.severity is Severity.ERROR and f.code.startswith(("DATA", "CFG01"))]
    assert [f.code for f in report.findings if f.code.startswith("DATA")] == []


def logged_rates(checkpoint: Path) -> dict[int, float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}


def test_model_only_resume_is_an_error_with_a_recipe_and_really_restarts_the_schedule(world):
    out = copy_run(world, "model_only")
    assert data_findings(out) == []  # diagnose alone: CKPT012 (warning) is the CKPT family's
    (finding,) = data_findings(out, recipe(world, out, max_steps=4))
    assert (finding.code, finding.severity) == ("DATA004", Severity.ERROR)
    assert "checkpoint-2" in finding.message and "restarts the optimizer" in finding.message
    assert "saved with save_only_model" in finding.message
    # The oracle: the real resume from checkpoint-2 logs step 3 at the schedule's first rate, where a resume
    # of the same run with its training state logs the rate the schedule has reached.
    full = copy_run(world, "full")
    for run in (out, full):
        shutil.rmtree(run / "checkpoint-4", ignore_errors=True), shutil.rmtree(run / "checkpoint-6", ignore_errors=True)
        assert resume_for_real(run, run / "checkpoint-2", max_steps=4) == [2, 3, 4]
    restarted, continued = logged_rates(out / "checkpoint-4"), logged_rates(full / "checkpoint-4")
    assert restarted[3] == pytest.approx(restarted[1]) and continued[3] < restarted[3]


def test_a_stripped_full_save_is_not_called_save_only_model(world):
    out = copy_run(world, "full")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (out / "checkpoint-6" / name).unlink()
    (finding,) = data_findings(out / "checkpoint-6", recipe(world, out, max_steps=8))
    assert finding.code == "DATA004" and "saved with save_only_model" not in finding.message
    assert "holds no optimizer/scheduler/RNG state" in finding.message and "save_only_model=False" in finding.message


def test_launch_refuses_a_model_only_resume(world):
    out = copy_run(world, "model_only")
    result = run_cli("launch", "--config", recipe(world, out, max_steps=4), env={"WANDB_MODE": "offline"})
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "DATA004" in result.stdout and not (out / "checkpoint-4").exists()


def test_ignore_data_skip_says_how_many_prompts_come_again(world):
    out = copy_run(world, "full")
    path = recipe(world, out, "ignore_data_skip: true\n")
    (finding,) = data_findings(out / "checkpoint-4", path)
    assert (finding.code, finding.severity) == ("DATA001", Severity.WARNING)
    # GRPO: 4 completions per step = 1 prompt x 4 generations; 4 steps trained in epoch 1 of 64 steps.
    assert "4 steps of epoch 1 (64 steps per epoch)" in finding.message and "the first 4 prompts" in finding.message
    fix(out / "checkpoint-4", unsafe=True, options=Options(recipe=path), environ={})
    assert "ignore_data_skip: false" in path.read_text() and data_findings(out / "checkpoint-4", path) == []


def test_ignore_data_skip_with_a_plan_grpo_refuses_gives_no_count(world):
    """per_device_train_batch_size 3 x num_generations 2: GRPOConfig refuses it, so no prompt count is made up."""
    from trl import GRPOConfig

    with pytest.raises(ValueError, match="divisible"):
        GRPOConfig(output_dir=str(world["tmp"] / "x"), use_cpu=True, per_device_train_batch_size=3,
                   num_generations=2)
    out = copy_run(world, "full")
    path = recipe(world, out, "ignore_data_skip: true\nper_device_train_batch_size: 3\nnum_generations: 2\n")
    finding = next(f for f in data_findings(out / "checkpoint-4", path) if f.code == "DATA001")
    assert "the first 0" not in finding.message and "not judged" in finding.message, finding.message


def test_ignore_data_skip_from_the_saved_arguments(tmp_path, world):
    from demo_run import train_demo_run

    out = train_demo_run(tmp_path / "ignoring", max_steps=2, save_steps=2, ignore_data_skip=True)
    (finding,) = data_findings(out)
    assert finding.code == "DATA001" and "(training_args.bin)" in finding.message and "first 2 prompts" in finding.message


def test_streaming_resume_says_what_it_reads_past(world):
    out = copy_run(world, "full")
    (finding,) = data_findings(out / "checkpoint-4", recipe(world, out, "dataset_streaming: true\n"))
    assert (finding.code, finding.severity) == ("DATA003", Severity.INFO)
    assert "discards 4 batches per process (4 prompts)" in finding.message


def test_epoch_boundary_is_info(world):
    # Crafted from a real checkpoint: trainer_state.json as the Trainer writes it at the end of epoch 1.
    out = copy_run(world, "full")
    state_path = out / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state.update(global_step=64, epoch=1.0, max_steps=128)
    state_path.write_text(json.dumps(state))
    (finding,) = data_findings(out / "checkpoint-4")
    assert (finding.code, finding.severity) == ("DATA002", Severity.INFO) and "begins epoch 2" in finding.message


@pytest.mark.parametrize("epoch", ['"x"', "1e308", "-1", "null", "true"])
def test_crafted_trainer_state_is_no_crash(world, epoch):
    out = copy_run(world, "full")
    state_path = out / "checkpoint-4" / "trainer_state.json"
    state_path.write_text(state_path.read_text().replace('"epoch": ', f'"epoch": {epoch}, "was": ', 1))
    assert all(f.severity is not Severity.ERROR for f in data_findings(out / "checkpoint-4"))

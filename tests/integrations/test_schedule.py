"""The learning-rate schedule of a resume (CFG002, CFG009, CFG010, CFG011, CFG012) against real resumed runs.

The oracle is the Trainer itself: a 4-step run is resumed from checkpoint-2 with another max_steps
(or learning_rate), and the learning rates it logged in trainer_state.json are what the findings
must have said.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TRAINING_ARGS

from resumedoctor.engine.context import Options
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix

RECIPE = ("# recipe of a 4-step demo run\noutput_dir: {output_dir}\n"
          + TRAINING_ARGS.replace("learning_rate: 1.0e-3", "learning_rate: {learning_rate}")
          + "disable_tqdm: true\nresume_from_checkpoint: true\n{extra}")


def _resumed(run: Path, destination: Path, **overrides) -> Path:
    """A copy of `run` resumed from its checkpoint-2 by the real Trainer with other arguments."""
    from demo_run import train_demo_run

    shutil.copytree(run, destination)
    for later in destination.glob("checkpoint-*"):
        if later.name != "checkpoint-2":
            shutil.rmtree(later)
    return train_demo_run(destination, save_steps=2, resume_from_checkpoint=str(destination / "checkpoint-2"),
                          **overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """4-step runs (linear, and constant_with_warmup past its 1-step warmup), each also resumed from step 2."""
    from demo_run import train_demo_run

    root = tmp_path_factory.mktemp("schedule")
    linear = train_demo_run(root / "linear", max_steps=4, save_steps=2)
    constant = train_demo_run(root / "constant", max_steps=4, save_steps=2,
                              lr_scheduler_type="constant_with_warmup", warmup_steps=1)
    return {
        "linear": linear,
        "linear-to-8": _resumed(linear, root / "linear-to-8", max_steps=8),
        "linear-lr-doubled": _resumed(linear, root / "linear-lr-doubled", max_steps=4, learning_rate=2e-3),
        "constant": constant,
        "constant-to-8": _resumed(constant, root / "constant-to-8", max_steps=8,
                                  lr_scheduler_type="constant_with_warmup", warmup_steps=1),
    }


def logged_rates(run: Path) -> dict[int, float]:
    """step -> learning_rate the Trainer logged, from the newest checkpoint's trainer_state.json."""
    newest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((newest / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(tmp_path / "cache"))

    def write(run: Path, max_steps: int = 4, learning_rate: str = "1.0e-3", extra: str = "") -> Path:
        path = tmp_path / "recipe.yaml"
        path.write_text(RECIPE.format(output_dir=run, max_steps=max_steps, learning_rate=learning_rate, extra=extra))
        return path

    return write


def cfg_findings(checkpoint: Path, recipe: Path):
    return diagnose(checkpoint, settings=Settings(select=("CFG",)), options=Options(recipe=recipe), environ={})


def test_raised_horizon_on_a_linear_schedule_states_the_rates_the_trainer_logs(runs, recipe):
    report = cfg_findings(runs["linear"] / "checkpoint-2", recipe(runs["linear"], max_steps=8))
    (finding,) = report.findings
    assert (finding.code, finding.severity.value, finding.fix) == ("CFG009", "warning", None)
    assert report.exit_code == 0
    original, resumed = logged_rates(runs["linear"]), logged_rates(runs["linear-to-8"])
    # The first resumed step still runs at the checkpoint's rate (optimizer.pt), in both runs.
    assert finding.extra["lr_kept"] == pytest.approx(resumed[3]) == pytest.approx(original[3])
    step = finding.extra["lr_step"]
    assert step == 4
    assert finding.extra["lr_new"] == pytest.approx(resumed[step])  # the real resumed run
    assert finding.extra["lr_old"] == pytest.approx(original[step])  # the run as it was planned
    assert resumed[step] != pytest.approx(original[step])
    assert f"step 4 runs at {resumed[4]:.4g} instead of {original[4]:.4g}" in finding.message
    assert f"the last step, 8, runs at {resumed[8]:.4g}" in finding.message
    assert "the resume trains 6 steps (to 8) instead of 2" in finding.message


def test_raised_horizon_on_a_constant_schedule_is_info(runs, recipe):
    extra = "lr_scheduler_type: constant_with_warmup\nwarmup_steps: 1\n"
    (finding,) = cfg_findings(runs["constant"] / "checkpoint-2", recipe(runs["constant"], 8, extra=extra)).findings
    assert (finding.code, finding.severity.value) == ("CFG010", "info")
    resumed = logged_rates(runs["constant-to-8"])
    assert {resumed[step] for step in range(3, 9)} == {1e-3}  # what "every step runs at ..." claims
    assert "0.001 at step 3, 0.001 at step 8" in finding.message


def test_finished_run_extended_is_a_warning_and_no_fix_writes_the_old_horizon_back(runs, recipe, tmp_path):
    """The reported bug: raising max_steps of a finished run was an error whose fix wrote 4 back."""
    run = tmp_path / "finished"
    shutil.copytree(runs["linear"], run)
    path = recipe(run, max_steps=10)
    (finding,) = cfg_findings(run, path).findings  # checkpoint-4: global_step 4 of 4
    assert (finding.code, finding.severity.value) == ("CFG009", "warning")
    assert "step 5 keeps 0 (restored from checkpoint-4's optimizer.pt)" in finding.message
    text = path.read_text()
    result = fix(run, unsafe=True, settings=Settings(select=("CFG",)), options=Options(recipe=path), environ={})
    assert path.read_text() == text and result.final.exit_code == 0


def test_finished_run_with_its_own_horizon_is_a_warning(runs, recipe):
    # Not a no-op: transformers trains one stray step past max_steps (tests/engine/test_target.py is the oracle).
    report = cfg_findings(runs["linear"], recipe(runs["linear"], max_steps=4))
    assert [(f.code, f.severity.value) for f in report.findings] == [("CFG011", "warning")]
    assert "still trains step 5 and saves checkpoint-5" in report.findings[0].message
    assert report.exit_code == 0


def test_horizon_at_global_step_is_an_error_and_its_fix_restores_a_horizon_beyond_it(runs, recipe, tmp_path):
    from trl import GRPOConfig, TrlParser

    run = tmp_path / "run"
    shutil.copytree(runs["linear"], run)
    path = recipe(run, max_steps=2)
    (finding,) = cfg_findings(run / "checkpoint-2", path).findings
    assert (finding.code, finding.severity.value) == ("CFG002", "error")
    assert "max_steps=2 is not beyond global_step 2" in finding.message
    fix(run / "checkpoint-2", unsafe=True, settings=Settings(select=("CFG",)), options=Options(recipe=path), environ={})
    (config,) = TrlParser((GRPOConfig,)).parse_args_and_config(["--config", str(path)])
    assert config.max_steps == 4  # the checkpoint's horizon, beyond its global_step 2
    assert cfg_findings(run / "checkpoint-2", path).findings == ()


def test_a_finished_run_lowered_is_an_error_with_nothing_to_write_back(runs, recipe, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["linear"], run)
    path = recipe(run, max_steps=3)
    (finding,) = cfg_findings(run, path).findings
    assert finding.code == "CFG002" and "raise max_steps above 4" in finding.hint
    text = path.read_text()
    fix(run, unsafe=True, settings=Settings(select=("CFG",)), options=Options(recipe=path), environ={})
    assert path.read_text() == text  # writing max_steps 4 back would still train nothing


def test_epoch_horizon_in_steps(runs, recipe):
    # 64 prompts, one prompt (4 completions) per step: 64 steps per epoch, as trainer_state's epoch says.
    state = json.loads((runs["linear"] / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] / state["epoch"] == 64
    checkpoint = runs["linear"] / "checkpoint-2"
    (finding,) = cfg_findings(checkpoint, recipe(runs["linear"], -1, extra="num_train_epochs: 0.03\n")).findings
    assert finding.code == "CFG002"  # ceil(0.03 x 64) = 2 steps: nothing beyond global_step 2
    assert "num_train_epochs=0.03 x 64 steps per epoch is not beyond global_step 2" in finding.message
    (finding,) = cfg_findings(checkpoint, recipe(runs["linear"], -1, extra="num_train_epochs: 1\n")).findings
    assert finding.code == "CFG009" and "the resume trains 62 steps (to 64)" in finding.message
    (finding,) = cfg_findings(checkpoint, recipe(runs["linear"], 4, extra="num_train_epochs: 1\n")).findings
    assert finding.code == "CFG004" and "max_steps=4 decides it" in finding.message


def test_learning_rate_in_the_recipe_is_not_what_a_real_resume_uses(runs, recipe):
    original, resumed = logged_rates(runs["linear"]), logged_rates(runs["linear-lr-doubled"])
    assert resumed == pytest.approx(original)  # learning_rate=2e-3 on resume changed nothing
    (finding,) = cfg_findings(runs["linear"] / "checkpoint-2", recipe(runs["linear"], learning_rate="2.0e-3")).findings
    assert (finding.code, finding.severity.value) == ("CFG012", "error")


def test_a_schedule_the_helper_cannot_compute_is_said_so(runs, recipe):
    extra = "lr_scheduler_type: reduce_lr_on_plateau\n"
    (finding,) = cfg_findings(runs["linear"] / "checkpoint-2", recipe(runs["linear"], extra=extra)).findings
    assert (finding.code, finding.severity.value) == ("CFG009", "warning")
    assert "the learning rates could not be computed (reduce_lr_on_plateau is not a per-step schedule" in finding.message


def test_helper_process_agrees_with_get_scheduler_and_has_a_time_limit(tmp_path, monkeypatch):
    from resumedoctor.integrations.trl.lr_schedule import (
        Schedule,
        ScheduleError,
        compute,
    )
    from resumedoctor.integrations.trl.lr_schedule import learning_rates as rates

    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(tmp_path / "cache"))
    schedules = [Schedule("cosine", 1e-3, 10, warmup_steps=0.2), Schedule("polynomial", 1e-3, 10, 2,
                                                                          lr_scheduler_kwargs={"power": 2.0})]
    steps = list(range(11))
    answer = rates(schedules, steps, in_process=False)
    for helper, here in zip(answer, compute(schedules, steps), strict=True):
        assert helper == pytest.approx(here)
    assert answer[0][:3] == pytest.approx([0.0, 5e-4, 1e-3])  # ceil(0.2 x 10) = 2 warmup steps
    assert rates(schedules, steps, in_process=False, timeout=0.001) == answer  # cached: no helper
    with pytest.raises(ScheduleError, match="did not finish within"):
        rates(schedules, steps, in_process=False, use_cache=False, timeout=0.001)


def test_the_diagnosing_process_does_not_import_torch(runs, recipe):
    script = (
        "import sys\n"
        "from resumedoctor.engine.context import Options\n"
        "from resumedoctor.engine.runner import diagnose\n"
        "from resumedoctor.engine.settings import Settings\n"
        f"report = diagnose({str(runs['linear'] / 'checkpoint-2')!r}, settings=Settings(select=('CFG',)), "
        f"options=Options(recipe={str(recipe(runs['linear'], 8))!r}), environ={{}})\n"
        "print([f.code for f in report.findings], 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "['CFG009'] False"


def test_the_compared_steps_of_a_long_run_are_a_bounded_sample():
    from resumedoctor.checks.config_drift import MAX_COMPARED_STEPS, compared_steps

    steps = compared_steps(1000, 50_000, 100_000)
    assert len(steps) <= MAX_COMPARED_STEPS + 4 and steps[0] == 1000
    assert {1001, 49_999, 50_000, 99_999} <= set(steps)
    assert math.isclose(max(b - a for a, b in zip(steps, steps[1:])), 99_000 / MAX_COMPARED_STEPS, rel_tol=0.01)

"""The curriculum callback and the CURR family on real TRL GRPO runs, one of them SIGKILLed mid-run.

The promotion metric is the logged learning rate (mode "min"): it is the same in every run of the
same schedule, so an interrupted-and-resumed run can be compared with an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GRPO_RECIPE, codes

from resumedoctor.engine.context import Options
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix

RULE = dict(thresholds=[8e-4, 5e-4, 2e-4], metric="learning_rate", window=2, mode="min")
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from transformers import TrainerCallback
from resumedoctor.integrations.curriculum.callback import CurriculumCallback
from demo_run import train_demo_run

out, kill_step, event, logging_steps = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

class Kill(TrainerCallback):  # a preemption right after step N was logged (or saved)
    def on_log(self, args, state, control, logs=None, **kwargs):
        if event == "log" and state.global_step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_save(self, args, state, control, **kwargs):
        if event == "save" and state.global_step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

rule = dict(thresholds=[8e-4, 5e-4, 2e-4], metric="learning_rate", window=2, mode="min")
train_demo_run(out, max_steps=8, save_steps=2, logging_steps=logging_steps,
               callbacks=[CurriculumCallback(**rule), Kill()])
"""


def kill_run(folder: Path, step: int, event: str = "log", logging_steps: int = 1) -> Path:
    result = subprocess.run([sys.executable, "-c", KILLED_RUN, str(folder), str(step), event, str(logging_steps)],
                            capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    return folder


def live(run: Path) -> dict:
    return json.loads((run / "curriculum_state.json").read_text())


def core(state: dict) -> tuple:
    return state["global_step"], state["stage"], state["history"]


@pytest.fixture(scope="session")
def curriculum_runs(tmp_path_factory) -> dict[str, Path]:
    from demo_run import train_demo_run

    from resumedoctor.integrations.curriculum.callback import CurriculumCallback

    root = tmp_path_factory.mktemp("curriculum")
    whole = train_demo_run(root / "whole", max_steps=8, save_steps=2, callbacks=[CurriculumCallback(**RULE)])
    killed = kill_run(root / "killed", 5)  # killed after logging step 5: the live state is ahead of checkpoint-4
    # Logging every 3 steps and saving every 2, killed right after the save of step 4: the live file was
    # last written at step 3's log, so it is behind checkpoint-4 although nothing went wrong.
    sparse = kill_run(root / "sparse", 4, "save", logging_steps=3)
    return {"whole": whole, "killed": killed, "sparse": sparse}


@pytest.fixture
def killed_run(curriculum_runs, tmp_path) -> Path:
    return Path(shutil.copytree(curriculum_runs["killed"], tmp_path / "killed"))


def forget_checkpoint_state(checkpoint: Path) -> None:
    """A checkpoint with neither a snapshot nor stateful_callbacks: only the live file knows the stage."""
    (checkpoint / "curriculum_state.json").unlink()
    trainer_state_path = checkpoint / "trainer_state.json"
    trainer_state = json.loads(trainer_state_path.read_text())
    del trainer_state["stateful_callbacks"]["CurriculumCallback"]
    trainer_state_path.write_text(json.dumps(trainer_state))


def curr(path: Path, **options):
    return diagnose(path, settings=Settings(select=("CURR",)), options=Options(**options), environ={})


def resume(run: Path, *, restore: bool) -> None:
    from demo_run import train_demo_run

    from resumedoctor.integrations.curriculum.callback import CurriculumCallback

    train_demo_run(run, max_steps=8, save_steps=2, resume_from_checkpoint=True,
                   callbacks=[CurriculumCallback(**RULE)], restore_callback_states_from_checkpoint=restore)


def test_uninterrupted_run_promotes_and_snapshots_every_checkpoint(curriculum_runs):
    whole = curriculum_runs["whole"]
    state = live(whole)
    assert state["global_step"] == 8 and state["stage"] == 3
    for step in (2, 4, 6, 8):
        snapshot = json.loads((whole / f"checkpoint-{step}" / "curriculum_state.json").read_text())
        stored = json.loads((whole / f"checkpoint-{step}" / "trainer_state.json").read_text())
        attributes = stored["stateful_callbacks"]["CurriculumCallback"]["attributes"]
        assert snapshot["global_step"] == step == attributes["global_step"]
        assert (snapshot["stage"], snapshot["history"]) == (attributes["stage"], attributes["history"])
    assert curr(whole).findings == ()


def severities(report) -> dict[str, str]:
    return {finding.code: finding.severity.value for finding in report.findings}


CURRICULUM_SECTION = "resumedoctor:\n  curriculum: {thresholds: [8.0e-4, 5.0e-4, 2.0e-4], metric: learning_rate, window: 2, mode: min}\n"
CALLBACKS_SECTION = "resumedoctor:\n  callbacks: [resumedoctor.integrations.curriculum.callback.CurriculumCallback]\n"


def write_recipe(folder: Path, extra: str = "") -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text("output_dir: out\nuse_cpu: true\nbf16: false\n" + extra)
    return recipe


def test_killed_run_leaves_live_state_ahead(killed_run):
    """The state every crashed run is in: without a recipe, how it resumes is unknown, so a warning."""
    assert sorted(p.name for p in killed_run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert live(killed_run)["global_step"] == 5
    report = curr(killed_run)
    assert severities(report) == {"CURR003": "warning", "CURR005": "warning"}
    assert "restored from checkpoint-4's snapshot if the run resumes with CurriculumCallback" in report.findings[0].message
    assert report.exit_code == 0


@pytest.mark.parametrize(
    ("section", "severity"),
    [(CURRICULUM_SECTION, "info"), (CALLBACKS_SECTION, "info"), ("", "error")],
    ids=["curriculum", "callbacks", "no-callback"],
)
def test_killed_run_severity_follows_how_the_recipe_resumes(killed_run, tmp_path, monkeypatch, section, severity):
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(tmp_path / "cache"))
    report = curr(killed_run, recipe=write_recipe(tmp_path, section))
    assert severities(report) == {"CURR003": severity, "CURR005": severity}  # no CURR008: the snapshot restores it
    if severity == "error":
        assert "the recipe adds no CurriculumCallback" in report.findings[0].message


def test_live_state_without_any_checkpoint_state_is_an_error(killed_run, tmp_path):
    forget_checkpoint_state(killed_run / "checkpoint-4")
    report = curr(killed_run, recipe=write_recipe(tmp_path, CURRICULUM_SECTION))
    assert severities(report) == {"CURR003": "error", "CURR005": "error"}  # the callback would start at stage 0
    assert "holds no curriculum state" in report.findings[0].message


def test_launch_accepts_the_crashed_run_when_it_adds_the_curriculum(killed_run, launch_inputs, tmp_path):
    """`resumedoctor launch --dry-run` is the gate: the crashed state must not stop it; without the callback it must."""
    from conftest import run_cli

    base = LAUNCH_RECIPE.format(model=killed_run / "checkpoint-4", dataset=launch_inputs["dataset"],
                                output_dir=killed_run)
    env = {"RESUMEDOCTOR_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "with.yaml").write_text(base + CURRICULUM_SECTION)
    accepted = run_cli("launch", "--config", tmp_path / "with.yaml", "--dry-run", env=env)
    assert accepted.returncode == 0, accepted.stdout[-3000:] + accepted.stderr[-2000:]
    assert "CURR003" in accepted.stdout and "not starting" not in accepted.stderr
    (tmp_path / "without.yaml").write_text(base)
    refused = run_cli("launch", "--config", tmp_path / "without.yaml", "--dry-run", env=env)
    assert refused.returncode == 1 and "not starting" in refused.stderr
    assert "the recipe adds no CurriculumCallback" in " ".join(refused.stdout.split())
    assert live(killed_run)["global_step"] == 5  # a dry run changes nothing


LAUNCH_RECIPE = GRPO_RECIPE.replace("{max_steps}", "8") + "disable_tqdm: true\n"


def test_sparse_logging_leaves_the_live_state_behind_and_that_is_no_error(curriculum_runs, tmp_path):
    sparse = Path(shutil.copytree(curriculum_runs["sparse"], tmp_path / "sparse"))
    assert live(sparse)["global_step"] == 3
    assert severities(curr(sparse)) == {"CURR004": "warning"}
    assert severities(curr(sparse, recipe=write_recipe(tmp_path, CURRICULUM_SECTION))) == {"CURR004": "info"}


@pytest.mark.slow
@pytest.mark.parametrize(("restore", "fixed"), [(True, True), (False, True), (True, False), (False, False)])
def test_fixed_and_resumed_run_equals_the_uninterrupted_one(curriculum_runs, killed_run, restore, fixed):
    """Fixed first, or resumed as the crash left it: CurriculumCallback takes the checkpoint's state either way
    (the oracle for CURR003/CURR005 being info when the resume runs it)."""
    if fixed:
        result = fix(killed_run, settings=Settings(select=("CURR",)), environ={})
        assert result.after.findings == ()
        assert core(live(killed_run)) == core(json.loads((killed_run / "checkpoint-4" / "curriculum_state.json").read_text()))
    resume(killed_run, restore=restore)  # with or without the Trainer's callback restore
    whole = curriculum_runs["whole"]
    assert core(live(killed_run)) == core(live(whole))
    for step in (6, 8):
        ours = json.loads((killed_run / f"checkpoint-{step}" / "curriculum_state.json").read_text())
        theirs = json.loads((whole / f"checkpoint-{step}" / "curriculum_state.json").read_text())
        assert core(ours) == core(theirs)


def test_missing_live_state(killed_run):
    (killed_run / "curriculum_state.json").unlink()
    assert codes(curr(killed_run)) == ["CURR001"]
    fix(killed_run, settings=Settings(select=("CURR",)), environ={})
    assert live(killed_run)["global_step"] == 4


def test_damaged_live_state(killed_run):
    (killed_run / "curriculum_state.json").write_text('{"global_step": 5, "stage"')
    assert codes(curr(killed_run)) == ["CURR002"]
    assert fix(killed_run, settings=Settings(select=("CURR",)), environ={}).after.findings == ()


def test_live_state_behind(killed_run):
    shutil.copy(killed_run / "checkpoint-2" / "curriculum_state.json", killed_run / "curriculum_state.json")
    assert severities(curr(killed_run)) == {"CURR004": "warning"}  # an earlier state of this run
    fix(killed_run, settings=Settings(select=("CURR",)), environ={})
    assert live(killed_run)["global_step"] == 4


def test_live_state_of_another_run_is_an_error(killed_run):
    state = live(killed_run)
    state["history"][0]["metric"] += 1.0  # not this run's history
    (killed_run / "curriculum_state.json").write_text(json.dumps(state))
    report = curr(killed_run)
    assert severities(report) == {"CURR003": "error", "CURR005": "error"}
    assert "not this run's state" in report.findings[0].message


def test_no_snapshot_and_no_callback_state_cuts_the_live_history(curriculum_runs, killed_run):
    forget_checkpoint_state(killed_run / "checkpoint-4")
    fix(killed_run, settings=Settings(select=("CURR",)), environ={})
    expected = json.loads((curriculum_runs["whole"] / "checkpoint-4" / "curriculum_state.json").read_text())
    # The promotion right after step 4 is kept: step 5's entry was logged in the promoted stage.
    assert core(live(killed_run)) == core(expected)  # the state the checkpoint had


def test_cut_without_later_entries_replays_the_rule_for_the_stage(curriculum_runs, killed_run):
    forget_checkpoint_state(killed_run / "checkpoint-4")
    state = live(killed_run)
    state["history"] = [e for e in state["history"] if e["step"] <= 4]  # nothing after the cut to read
    state["global_step"] = 5
    (killed_run / "curriculum_state.json").write_text(json.dumps(state))
    fix(killed_run, settings=Settings(select=("CURR",)), environ={})
    expected = json.loads((curriculum_runs["whole"] / "checkpoint-4" / "curriculum_state.json").read_text())
    assert core(live(killed_run)) == core(expected)


def test_snapshot_written_from_stateful_callbacks(killed_run):
    (killed_run / "checkpoint-4" / "curriculum_state.json").unlink()
    assert "CURR009" in codes(curr(killed_run))
    fix(killed_run, settings=Settings(select=("CURR",)), environ={})
    assert (killed_run / "checkpoint-4" / "curriculum_state.json").is_file()
    assert curr(killed_run).findings == ()


def test_create_fresh_replays_the_rule_over_log_history(curriculum_runs, killed_run):
    (killed_run / "checkpoint-4" / "curriculum_state.json").unlink()
    trainer_state_path = killed_run / "checkpoint-4" / "trainer_state.json"
    trainer_state = json.loads(trainer_state_path.read_text())
    trainer_state["stateful_callbacks"]["CurriculumCallback"]["attributes"] = {}  # only the rule is left
    trainer_state_path.write_text(json.dumps(trainer_state))
    (killed_run / "curriculum_state.json").write_text("garbage")
    safe = fix(killed_run, settings=Settings(select=("CURR",)), environ={})
    assert "CURR002" in codes(safe.final)  # nothing safe to restore from
    fix(killed_run, unsafe=True, settings=Settings(select=("CURR",)), options=Options(create_fresh=True), environ={})
    expected = json.loads((curriculum_runs["whole"] / "checkpoint-4" / "curriculum_state.json").read_text())
    assert core(live(killed_run)) == core(expected)


def test_snapshot_disagrees_with_trainer_state(killed_run):
    path = killed_run / "checkpoint-4" / "curriculum_state.json"
    snapshot = json.loads(path.read_text())
    snapshot["stage"] += 1
    path.write_text(json.dumps(snapshot))
    assert "CURR007" in codes(curr(killed_run))


def test_stage_inconsistent_with_history(killed_run):
    state = live(killed_run)
    state.update(global_step=4, stage=3, history=[e for e in state["history"] if e["step"] <= 4])
    (killed_run / "curriculum_state.json").write_text(json.dumps(state))
    assert codes(curr(killed_run)) == ["CURR006"]


def test_restore_flag_off_in_the_recipe_is_fixed(killed_run, tmp_path):
    from trl import GRPOConfig, TrlParser

    (killed_run / "checkpoint-4" / "curriculum_state.json").unlink()  # with it, the callback restores itself
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# recipe\noutput_dir: out  # where checkpoints go\nuse_cpu: true\nbf16: false\n")
    report = curr(killed_run, recipe=recipe)
    assert "CURR008" in codes(report)
    assert "CurriculumCallback" in next(f for f in report.findings if f.code == "CURR008").message
    fix(killed_run, settings=Settings(select=("CURR008",)), options=Options(recipe=recipe), environ={})
    (config,) = TrlParser((GRPOConfig,)).parse_args_and_config(["--config", str(recipe)])
    assert config.restore_callback_states_from_checkpoint is True
    assert "# where checkpoints go" in recipe.read_text()

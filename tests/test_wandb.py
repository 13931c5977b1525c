"""The WANDB family and `resumedoctor env` on runs that wandb really wrote (WANDB_MODE=offline).

A 6-step TRL GRPO run logs through transformers' WandbCallback; a second, unrelated run shares its
wandb folder. W&B's server cannot exist here, so nothing is synced: fork and resume are checked up
to the settings that wandb.init receives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT, run_cli

from resumedoctor.context import Options
from resumedoctor.diagnose import diagnose
from resumedoctor.fixing import fix, undo
from resumedoctor.settings import Settings
from resumedoctor.shell_env import shell_environment
from resumedoctor.wandb_log import read_run_log


def leet_records(log: Path) -> list[dict]:
    """wandb's own reader, as the reference for ours."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(log), "--json"],
                            capture_output=True, text=True, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def run_diagnosis(path: Path, world: dict, environ: dict | None = None):
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(environ or {})
    return diagnose(path, settings=Settings(select=("WANDB",)), options=Options(wandb_dir=world["wandb_dir"]),
                    environ=env)


def by_code(report, code):
    return [finding for finding in report.findings if finding.code == code]


def test_reader_agrees_with_wandb_leet_inspect(wandb_world):
    records = leet_records(wandb_world["log"])
    reference = [(r["history"]["item"]["_step"], r["history"]["item"].get("train/global_step"))
                 for r in records if r["type"] == "history"]
    log = read_run_log(wandb_world["log"])
    assert [(step, global_step) for step, global_step, _ in log.history] == reference
    run = next(r["run"] for r in records if r["type"] == "run")
    assert (log.run_id, log.project, log.display_name) == (run["run_id"], run["project"], run["display_name"])
    assert log.config["output_dir"] == str(wandb_world["output_dir"])
    assert log.complete and log.exit_code == 0 and log.offline
    # What the issue describes: W&B's _step counts log calls, far past the trainer's 6 steps.
    assert log.max_global_step == 6 and log.last_step > 6


def test_run_ahead_of_checkpoint_names_the_fork_step(wandb_world):
    checkpoint = wandb_world["output_dir"] / "checkpoint-4"
    report = run_diagnosis(checkpoint, wandb_world)
    finding = by_code(report, "WANDB001")[0]
    decision = finding.extra["decision"]
    # Independently from wandb's reader: the fork starts after the record of step 4's train metrics.
    history = [r["history"]["item"] for r in leet_records(wandb_world["log"]) if r["type"] == "history"]
    last_kept = max(item["_step"] for item in history
                    if item["train/global_step"] < 4
                    or (item["train/global_step"] == 4 and any(k.startswith("train/") and k != "train/global_step" for k in item)))
    assert decision.mode == "fork" and decision.step == last_kept + 1
    assert decision.run_id == wandb_world["run_id"]
    assert f"_step {last_kept}" in finding.message and "global step 6" in finding.message
    assert report.exit_code == 0  # a warning: `resumedoctor env` resolves it before training starts


def test_same_run_id_would_log_steps_twice(wandb_world):
    report = run_diagnosis(wandb_world["output_dir"] / "checkpoint-4", wandb_world,
                           {"WANDB_RUN_ID": wandb_world["run_id"], "WANDB_RESUME": "allow"})
    assert "logs global steps 5-6 a second time" in by_code(report, "WANDB001")[0].message


def test_stale_run_id_of_another_run_is_an_error(wandb_world):
    report = run_diagnosis(wandb_world["output_dir"], wandb_world,
                           {"WANDB_RUN_ID": wandb_world["other_id"], "WANDB_RESUME": "allow"})
    finding = by_code(report, "WANDB003")[0]
    assert wandb_world["other_id"] in finding.message and "someone-elses-run" in finding.message
    assert report.exit_code == 1


def test_only_the_right_run_of_a_shared_wandb_dir_matches(wandb_world):
    report = run_diagnosis(wandb_world["output_dir"], wandb_world)
    ids = {finding.extra["decision"].run_id for finding in report.findings if "decision" in finding.extra}
    assert ids == {wandb_world["run_id"]}


def test_clean_resume_has_no_finding(wandb_world):
    report = run_diagnosis(wandb_world["output_dir"], wandb_world,
                           {"WANDB_RUN_ID": wandb_world["run_id"], "WANDB_RESUME": "allow"})
    assert report.findings == ()


def test_fork_already_configured_has_no_finding(wandb_world):
    checkpoint = wandb_world["output_dir"] / "checkpoint-4"
    step = by_code(run_diagnosis(checkpoint, wandb_world), "WANDB001")[0].extra["decision"].step
    report = run_diagnosis(checkpoint, wandb_world, {"WANDB_FORK_FROM": f"{wandb_world['run_id']}?_step={step}"})
    assert [f.code for f in report.findings] == ["WANDB006"]  # only: the offline run must be synced to fork


def test_no_run_id_configured_splits_history(wandb_world):
    report = run_diagnosis(wandb_world["output_dir"], wandb_world)
    assert wandb_world["run_id"] in by_code(report, "WANDB002")[0].message


@pytest.mark.parametrize(
    ("environ", "code"),
    [
        ({"WANDB_RESUME": "must"}, "WANDB004"),
        ({"WANDB_RESUME": "allow", "WANDB_FORK_FROM": "abc?_step=3"}, "WANDB005"),
    ],
)
def test_environment_conflicts(wandb_world, environ, code):
    report = run_diagnosis(wandb_world["output_dir"], wandb_world, environ)
    assert code in [f.code for f in report.findings] and report.exit_code == 1


@pytest.mark.parametrize("damage", ["empty", "garbage", "cut"])
def test_damaged_or_empty_log_is_a_finding_not_a_crash(wandb_world, tmp_path, damage):
    wandb_dir = tmp_path / "wandb"
    shutil.copytree(wandb_world["wandb_dir"], wandb_dir, symlinks=True)
    log = next(wandb_dir.glob(f"offline-run-*/run-{wandb_world['run_id']}.wandb"))
    data = log.read_bytes()
    log.write_bytes({"empty": b"", "garbage": b"\x00" * 100, "cut": data[: len(data) // 2]}[damage])
    report = diagnose(wandb_world["output_dir"], settings=Settings(select=("WANDB",)),
                      options=Options(wandb_dir=wandb_dir), environ={})
    if damage == "cut":  # what a killed run leaves: the records before the cut still count
        assert by_code(report, "WANDB002") and not by_code(report, "WANDB007")
        assert not read_run_log(log).complete
    else:
        assert by_code(report, "WANDB007")[0].path == str(log)


def test_wandb_not_installed_skips_the_family(wandb_world):
    # Uninstalling wandb from the test environment is not possible; it is hidden from the import system.
    script = (
        "import sys\n"
        "sys.modules['wandb'] = None  # what an environment without wandb looks like to find_spec\n"
        "from resumedoctor.cli import main; main(sys.argv[1:])\n"
    )
    result = subprocess.run([sys.executable, "-c", script, "diagnose", str(wandb_world["output_dir"]),
                             "--wandb-dir", str(wandb_world["wandb_dir"])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "WANDB wandb-run-sync" in result.stdout and "skipped: wandb not installed" in result.stdout


def test_env_exports_a_fork_that_wandb_init_understands(wandb_world):
    checkpoint = wandb_world["output_dir"] / "checkpoint-4"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_RUN_ID=wandb_world["run_id"], WANDB_RESUME="allow", WANDB_DIR=str(wandb_world["root"]))
    script = (f'eval "$("{sys.executable}" -m resumedoctor env "{checkpoint}")" && '
              f'"{sys.executable}" -c "import os, wandb; s = wandb.Settings(); s.update_from_env_vars(dict(os.environ)); '
              f"print(s.fork_from.run, s.fork_from.value, s.run_id, s.resume)\"")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    step = by_code(run_diagnosis(checkpoint, wandb_world), "WANDB001")[0].extra["decision"].step
    assert result.stdout.split() == [wandb_world["run_id"], str(step), "None", "None"]


def test_env_for_a_run_that_ends_at_the_checkpoint_resumes_it(wandb_world):
    rendered = shell_environment(wandb_world["output_dir"], wandb_dir=wandb_world["wandb_dir"], environ={}).render()
    assert f"export WANDB_RUN_ID={wandb_world['run_id']}" in rendered
    assert "export WANDB_RESUME=allow" in rendered
    assert f"export WANDB_PROJECT={PROJECT}" in rendered
    assert all(line.startswith(("#", "export ", "unset ")) for line in rendered.splitlines())


def test_env_unsets_stale_variables(tmp_path):
    rendered = shell_environment(tmp_path, environ={"WANDB_RESUME": "must"}).render()
    assert "unset WANDB_RESUME  # stale" in rendered


def test_fix_records_the_decision_and_env_and_undo_follow(wandb_world, tmp_path):
    run = tmp_path / "grpo-demo-run"  # moved to another disk: matched by its folder name
    shutil.copytree(wandb_world["output_dir"], run)
    with open(run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    options = Options(wandb_dir=wandb_world["wandb_dir"])
    result = fix(run, unsafe=True, settings=Settings(), options=options, environ={})
    decision = json.loads((run / ".resumedoctor" / "wandb.json").read_text())
    assert decision["checkpoint"] == "checkpoint-4" and decision["mode"] == "fork"
    assert decision["run_id"] == wandb_world["run_id"]
    assert [f.code for f in result.after.findings] == ["WANDB006", "WANDB008"]
    assert result.after.exit_code == 0
    rendered = shell_environment(run, wandb_dir=wandb_world["wandb_dir"], environ={}).render()
    assert f"export WANDB_FORK_FROM='{wandb_world['run_id']}?_step={decision['step']}'" in rendered
    undo(run)
    assert not (run / ".resumedoctor").exists()
    assert (run / "checkpoint-6").is_dir()


def test_env_cli_is_eval_safe_and_exit_0(wandb_world):
    result = run_cli("env", wandb_world["output_dir"], "--wandb-dir", wandb_world["wandb_dir"])
    assert result.returncode == 0
    completed = subprocess.run(["bash", "-n", "-c", result.stdout], capture_output=True)
    assert completed.returncode == 0

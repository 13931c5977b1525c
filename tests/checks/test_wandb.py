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
from conftest import OTHER_RUN, PROJECT, run_cli

from resumedoctor.engine.context import Options
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix, undo
from resumedoctor.integrations.wandb.log_reader import read_run_log
from resumedoctor.integrations.wandb.shell_env import shell_environment


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
        "from resumedoctor.cli.app import main; main(sys.argv[1:])\n"
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


# ---- WANDB_RUN_ID: this run's, another output_dir's, or a new one; found from any working directory --------


def severities(report) -> dict[str, str]:
    return {finding.code: finding.severity.value for finding in report.findings}


def test_fresh_run_id_is_a_new_run_not_an_error(wandb_world):
    report = run_diagnosis(wandb_world["output_dir"], wandb_world, {"WANDB_RUN_ID": "fresh0run1", "WANDB_RESUME": "allow"})
    assert severities(report) == {"WANDB010": "info"}  # neither WANDB002 ("not set") nor WANDB003
    finding = by_code(report, "WANDB010")[0]
    assert "a new run with this id will be started" in finding.message and wandb_world["run_id"] in finding.message
    assert report.exit_code == 0


def test_fresh_run_id_before_a_run_that_is_ahead_still_names_the_fork(wandb_world):
    report = run_diagnosis(wandb_world["output_dir"] / "checkpoint-4", wandb_world, {"WANDB_RUN_ID": "fresh0run1"})
    assert severities(report) == {"WANDB001": "warning", "WANDB006": "info", "WANDB010": "info"}
    assert "the new run fresh0run1 logs global steps 5-6 again" in by_code(report, "WANDB001")[0].message


def test_fresh_run_id_with_resume_must_is_a_warning(wandb_world):
    report = run_diagnosis(wandb_world["output_dir"], wandb_world, {"WANDB_RUN_ID": "fresh0run1", "WANDB_RESUME": "must"})
    assert severities(report) == {"WANDB010": "warning"}
    assert "fails unless run fresh0run1 exists on the W&B server" in by_code(report, "WANDB010")[0].message


def test_another_output_dirs_run_id_is_an_error_even_for_a_fresh_start(wandb_world, tmp_path):
    fresh_output_dir = tmp_path / "new-run"
    fresh_output_dir.mkdir()
    report = run_diagnosis(fresh_output_dir, wandb_world, {"WANDB_RUN_ID": wandb_world["other_id"]})
    assert severities(report) == {"WANDB003": "error"}
    assert "someone-elses-run" in by_code(report, "WANDB003")[0].message
    assert run_diagnosis(fresh_output_dir, wandb_world, {"WANDB_RUN_ID": "fresh0run1"}).findings == ()


def test_env_keeps_a_fresh_run_id_and_wandb_init_uses_it(wandb_world):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_RUN_ID="fresh0run1", WANDB_RESUME="allow")
    read_settings = (f'"{sys.executable}" -c "import os, wandb; s = wandb.Settings(); '
                     f"s.update_from_env_vars(dict(os.environ)); print(s.run_id, s.resume, s.fork_from and s.fork_from.run)\"")
    for target, expected in ((wandb_world["output_dir"], ["fresh0run1", "allow", "None"]),
                             (wandb_world["output_dir"] / "checkpoint-4", ["fresh0run1", "None", wandb_world["run_id"]])):
        script = f'eval "$("{sys.executable}" -m resumedoctor env "{target}" --wandb-dir "{wandb_world["wandb_dir"]}")" && {read_settings}'
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == expected  # the new run keeps its id; a fork takes it as its own


@pytest.fixture
def older_run_world(wandb_world, tmp_path) -> dict:
    """The demo run's wandb folder plus a later run of the same output_dir started without WANDB_RUN_ID."""
    from conftest import _offline_env

    root = tmp_path / "world"
    shutil.copytree(wandb_world["wandb_dir"], root / "wandb", symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(_offline_env(root))
    later = subprocess.run([sys.executable, "-c", OTHER_RUN, str(wandb_world["output_dir"])], capture_output=True,
                           text=True, check=True, env=env)
    return {**wandb_world, "wandb_dir": root / "wandb", "later_id": later.stdout.strip().splitlines()[-1]}


def test_older_run_of_this_output_dir_is_a_warning(older_run_world):
    report = run_diagnosis(older_run_world["output_dir"], older_run_world, {"WANDB_RUN_ID": older_run_world["run_id"]})
    assert severities(report)["WANDB003"] == "warning" and "WANDB002" not in severities(report)
    assert f"its newest run is {older_run_world['later_id']}" in by_code(report, "WANDB003")[0].message


def test_verdict_does_not_depend_on_the_working_directory(built_runs, tmp_path):
    """Trained from `project/` with `output_dir: runs/grpo` and wandb's default `./wandb`, then diagnosed from
    the project, from inside the output_dir (`diagnose .`) and from an unrelated folder."""
    from conftest import _offline_env

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(built_runs["full"], project / "runs" / "grpo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    wandb_env = {k: v for k, v in _offline_env(project).items() if k != "WANDB_DIR"}  # wandb writes to ./wandb
    # A relative output_dir, as the Trainer logs it.
    run_id = subprocess.run([sys.executable, "-c", OTHER_RUN, "runs/grpo"], capture_output=True, text=True,
                            check=True, cwd=project, env={**env, **wandb_env}).stdout.strip().splitlines()[-1]
    assert (project / "wandb").is_dir()

    def verdict(cwd: Path, path: Path | str, **extra) -> list[tuple]:
        result = subprocess.run([sys.executable, "-m", "resumedoctor", "diagnose", str(path), "--select", "WANDB",
                                 "--format", "json"], capture_output=True, text=True, cwd=cwd, env={**env, **extra})
        assert result.returncode in (0, 1), result.stderr
        return [(f["code"], f["severity"], f["message"]) for f in json.loads(result.stdout)["findings"]]

    expected = verdict(project, "runs/grpo")
    assert [code for code, _, _ in expected] == ["WANDB002"] and run_id in expected[0][2]
    assert verdict(project / "runs" / "grpo", ".") == expected
    assert verdict(elsewhere, project / "runs" / "grpo") == expected
    fresh = verdict(elsewhere, project / "runs" / "grpo", WANDB_RUN_ID="fresh0run1")
    assert [(code, severity) for code, severity, _ in fresh] == [("WANDB010", "info")]
    assert verdict(project / "runs" / "grpo", ".", WANDB_RUN_ID="fresh0run1") == fresh


def test_recorded_decision_still_fits_from_another_working_directory(wandb_world, tmp_path):
    run = tmp_path / "grpo-demo-run"
    shutil.copytree(wandb_world["output_dir"], run)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    assert run_cli("fix", run, "--auto", "--wandb-dir", wandb_world["wandb_dir"], cwd=wandb_world["root"],
                   env=env).returncode == 0
    recorded = json.loads((run / ".resumedoctor" / "wandb.json").read_text())
    assert Path(recorded["wandb_dir"]).is_absolute()
    recorded["wandb_dir"] = "wandb-folder-as-found-by-an-older-version"
    (run / ".resumedoctor" / "wandb.json").write_text(json.dumps(recorded))
    report = diagnose(run, settings=Settings(select=("WANDB",)), options=Options(wandb_dir=wandb_world["wandb_dir"]),
                      environ={})
    assert [f.code for f in report.findings] == ["WANDB008"]


def _relative_run(cwd: Path) -> str:
    """A real offline run that logs the relative output_dir `out`, started in `cwd` (wandb writes cwd/wandb)."""
    from conftest import _offline_env

    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **_offline_env(cwd)}
    done = subprocess.run([sys.executable, "-c", OTHER_RUN, "out"], cwd=cwd, env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_a_relative_output_dir_in_a_shared_wandb_folder_is_not_guessed(full_run, tmp_path):
    ours, theirs = _relative_run(tmp_path / "ours"), _relative_run(tmp_path / "theirs")
    out = tmp_path / "ours" / "out"
    shutil.copytree(full_run, out)
    # Anchored: our run sits in the wandb folder of the folder that holds `out`, theirs elsewhere.
    shared = tmp_path / "shared" / "wandb"
    for source in (tmp_path / "ours" / "wandb", tmp_path / "theirs" / "wandb"):
        for run in source.glob("offline-run-*"):
            shutil.copytree(run, shared / run.name)
    environ = {"WANDB_DIR": str(tmp_path / "theirs")}  # their folder is searched too
    anchored = diagnose(out, settings=Settings(select=("WANDB",)), environ=environ)
    decisions = {f.extra["decision"].run_id for f in anchored.findings if f.extra.get("decision")}
    assert decisions == {ours}, [f.message for f in anchored.findings]
    # Only the shared folder: both runs logged `out` from somewhere else; choosing one would be a guess.
    moved = tmp_path / "elsewhere" / "out"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("wandb"))
    report = diagnose(moved, settings=Settings(select=("WANDB",)), options=Options(wandb_dir=shared),
                      environ={})
    assert [f.code for f in report.findings] == ["WANDB011"]
    assert ours in report.findings[0].message and theirs in report.findings[0].message
    rendered = shell_environment(moved, wandb_dir=shared, environ={}).render()
    exports = [line for line in rendered.splitlines() if not line.startswith("#")]
    assert not [line for line in exports if "WANDB_FORK_FROM" in line or "WANDB_RUN_ID" in line], rendered


def test_a_name_alone_does_not_match_a_run_that_stopped_logging_long_before(wandb_world, tmp_path):
    """Another experiment's folder, also named like the logged one, with checkpoints the run never logged."""
    other = tmp_path / "expB" / wandb_world["output_dir"].name
    shutil.copytree(wandb_world["output_dir"], other, ignore=shutil.ignore_patterns("wandb"))
    for step in (8, 10):
        shutil.copytree(other / "checkpoint-6", other / f"checkpoint-{step}")
        path = other / f"checkpoint-{step}" / "trainer_state.json"
        state = json.loads(path.read_text())
        state.update(global_step=step, max_steps=10)
        path.write_text(json.dumps(state))
    report = run_diagnosis(other, wandb_world)
    assert not [f for f in report.findings if f.extra.get("decision") is not None], [f.message for f in report.findings]
    # The same folder name with the run's own checkpoints is the moved run, and still matches.
    moved = tmp_path / "moved" / wandb_world["output_dir"].name
    shutil.copytree(wandb_world["output_dir"], moved, ignore=shutil.ignore_patterns("wandb"))
    shutil.rmtree(moved / "checkpoint-6")
    assert [f for f in run_diagnosis(moved, wandb_world).findings if f.extra.get("decision") is not None]


def test_wandb_family_says_it_could_not_judge_when_no_run_logged_the_output_dir(full_run, tmp_path, monkeypatch):
    """A wandb/ folder with only other runs' logs is no W&B check of this run: skipped with the reason, not "no problems"."""
    (tmp_path / "wandb").mkdir()
    monkeypatch.chdir(tmp_path)
    report = diagnose(full_run, settings=Settings(), environ={})
    family = next(result for result in report.families if result.prefix == "WANDB")
    assert family.status == "skipped" and "no local W&B run logged this output_dir" in family.reason

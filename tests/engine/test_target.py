"""What PATH means at every stage of a run's life, judged against what transformers itself picks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from resumedoctor.engine.findings import Severity
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.target import resolve_target


@pytest.fixture(scope="session")
def finished_run_source(tmp_path_factory) -> Path:
    """A 4-step run that ended as `trl grpo` ends: `save_model(output_dir)` beside checkpoint-2 and -4."""
    from demo_run import train_demo_run

    return train_demo_run(tmp_path_factory.mktemp("finished") / "out", max_steps=4, save_steps=2,
                          save_final_model=True)


@pytest.fixture
def finished_run(finished_run_source, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run_source, tmp_path / "out"))


def _errors(report) -> list[str]:
    return [f"{f.code} {f.path}" for f in report.findings if f.severity is Severity.ERROR]


def test_finished_output_dir_is_an_output_dir(finished_run):
    from transformers.trainer_utils import get_last_checkpoint

    # save_model really put the final model into the output_dir itself.
    assert (finished_run / "model.safetensors").is_file() and (finished_run / "training_args.bin").is_file()
    target = resolve_target(finished_run)
    assert target.is_output_dir and target.output_dir == finished_run
    assert target.finished and "model.safetensors" in target.final_model
    # The oracle: the checkpoint resume_from_checkpoint=True picks.
    assert target.checkpoint == Path(get_last_checkpoint(str(finished_run)))
    report = diagnose(finished_run)
    assert report.resume_from == str(finished_run / "checkpoint-4")
    assert _errors(report) == []


def test_every_command_agrees_on_a_finished_output_dir(finished_run):
    undo = run_cli("undo", finished_run)
    assert undo.returncode == 0 and undo.stdout.strip() == f"nothing to undo in {finished_run}"
    env = run_cli("env", finished_run)
    assert env.returncode == 0 and f"{finished_run} -> checkpoint-4" in env.stdout
    dry = run_cli("fix", finished_run, "--auto", "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    import json

    assert json.loads(dry.stdout)["output_dir"] == str(finished_run)
    sealed = run_cli("seal", finished_run)
    assert sealed.returncode == 0, sealed.stderr
    assert sorted(p.parent.name for p in finished_run.glob("*/resumedoctor.seal.json")) == ["checkpoint-2", "checkpoint-4"]
    assert not (finished_run.parent / ".resumedoctor").exists()  # nothing written beside the output_dir
    assert (finished_run / ".resumedoctor").is_dir()
    undone = run_cli("undo", finished_run)
    assert undone.returncode == 0 and "undid fix" in undone.stdout
    assert not list(finished_run.glob("*/resumedoctor.seal.json"))


def test_fresh_output_dir_has_nothing_to_resume(tmp_path):
    from transformers.trainer_utils import get_last_checkpoint

    fresh = tmp_path / "fresh"
    (fresh / "runs").mkdir(parents=True)  # TensorBoard's folder appears before the first save
    target = resolve_target(fresh)
    assert target.is_output_dir and target.checkpoint is None and not target.finished
    assert get_last_checkpoint(str(fresh)) is None
    result = run_cli("diagnose", fresh)
    assert result.returncode == 0, result.stdout
    assert "Nothing to resume" in result.stdout and "Safe to resume" not in result.stdout


def test_final_model_without_checkpoints_is_an_output_dir(finished_run):
    for checkpoint in finished_run.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    target = resolve_target(finished_run)
    assert target.is_output_dir and target.checkpoint is None and target.finished
    assert _errors(diagnose(finished_run)) == []


@pytest.mark.parametrize("name", ["best", "step-4-copy"])
def test_renamed_checkpoint_is_a_checkpoint(finished_run, tmp_path, name):
    renamed = tmp_path / name
    shutil.copytree(finished_run / "checkpoint-4", renamed)
    target = resolve_target(renamed)
    assert not target.is_output_dir and target.checkpoint == renamed and target.output_dir == tmp_path
    assert _errors(diagnose(renamed)) == []


def test_moved_output_dir_keeps_its_verdict(finished_run, tmp_path):
    moved = tmp_path / "elsewhere" / "run-copy"
    moved.parent.mkdir()
    finished_run.rename(moved)
    target = resolve_target(moved)
    assert target.is_output_dir and target.checkpoint == moved / "checkpoint-4"
    assert _errors(diagnose(moved)) == []


def test_finished_run_says_so_and_an_unfinished_one_does_not(finished_run):
    import json

    result = run_cli("diagnose", finished_run)
    assert result.returncode == 0
    verdict = " ".join(result.stdout.split())
    assert "the run finished there (global step 4 of max_steps 4)" in verdict and "one more step" in verdict
    document = json.loads(run_cli("diagnose", finished_run, "--format", "json").stdout)
    assert document["run"] == {"global_step": 4, "max_steps": 4, "finished": True}
    # The same run before its last save: checkpoint-2 is mid-run.
    for name in ("checkpoint-4", "model.safetensors"):
        path = finished_run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    document = json.loads(run_cli("diagnose", finished_run, "--format", "json").stdout)
    assert document["run"] == {"global_step": 2, "max_steps": 4, "finished": False}
    assert "the run finished" not in run_cli("diagnose", finished_run).stdout


def test_a_finished_run_resumed_as_it_is_runs_one_more_step(finished_run):
    """The oracle for the verdict's and CFG011's wording: transformers does not stop at once."""
    from demo_run import train_demo_run

    (finished_run / "model.safetensors").unlink()
    train_demo_run(finished_run, max_steps=4, save_steps=2, resume_from_checkpoint=True)
    import json

    state = json.loads((finished_run / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5 and state["max_steps"] == 4

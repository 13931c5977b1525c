"""RUN: two runs in one output_dir, and the mtime rotation, on runs TRL really wrote.

Oracles: transformers' own get_last_checkpoint (which checkpoint a resume picks), its
rotate_checkpoints on real folders (what the rotation deletes), and a real resumed run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import GRPO_RECIPE
from lifecycle_helpers import resume_for_real
from resumedoctor.checks.run_identity import rotated_away

from resumedoctor import api
from resumedoctor.engine.findings import Severity


def run_findings(path: Path) -> list:
    return [finding for finding in api.diagnose(path).findings if finding.code.startswith("RUN")]


def errors(path: Path) -> list:
    return [finding for finding in run_findings(path) if finding.severity is Severity.ERROR]


def last_checkpoint(out: Path) -> str:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(get_last_checkpoint(str(out))).name


@pytest.fixture(scope="session")
def two_runs_built(built_runs, tmp_path_factory) -> Path:
    """The 6-step demo run (seed 0, batch 4), then a fresh run with seed 1 and batch 8 to step 4 written
    into the same output_dir without resuming: it saves checkpoint-2 and -4 over the first run's."""
    from demo_run import train_demo_run

    out = tmp_path_factory.mktemp("reused") / "out"
    shutil.copytree(built_runs["full"], out)  # copytree keeps the first run's mtimes
    time.sleep(1.1)
    train_demo_run(out, max_steps=4, save_steps=2, seed=1, per_device_train_batch_size=8)
    return out


@pytest.fixture
def two_runs(two_runs_built, tmp_path) -> Path:
    return Path(shutil.copytree(two_runs_built, tmp_path / "out"))


@pytest.fixture(scope="session")
def extended_built(built_runs, tmp_path_factory) -> Path:
    """The 6-step demo run resumed for real (resume_from_checkpoint=True) and extended to step 8."""
    out = tmp_path_factory.mktemp("extended") / "out"
    shutil.copytree(built_runs["full"], out)
    assert resume_for_real(out, True, max_steps=8)[0] == 6
    return out


@pytest.fixture(scope="session")
def rotated_built(tmp_path_factory) -> Path:
    """A 6-step demo run with save_total_limit=3: checkpoint-2, -4 and -6 all kept."""
    from demo_run import train_demo_run

    return train_demo_run(tmp_path_factory.mktemp("rotated") / "out", max_steps=6, save_steps=2, save_total_limit=3)


# ------------------------------------------------------------------ two runs in one output_dir


def test_reused_output_dir_resume_picks_the_older_run(two_runs):
    # The oracle: transformers itself resumes from the first run's checkpoint-6.
    assert last_checkpoint(two_runs) == "checkpoint-6"
    state6 = json.loads((two_runs / "checkpoint-6" / "trainer_state.json").read_text())
    state4 = json.loads((two_runs / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state6["train_batch_size"], state4["train_batch_size"]) == (4, 8)

    found = run_findings(two_runs)
    assert [(f.code, f.severity) for f in found] == [("RUN001", Severity.ERROR)]
    message = found[0].message
    assert "checkpoint-6" in message and "checkpoint-4" in message and "seed 0" in message and "seed 1" in message
    assert "at step 1" in message  # the log_history evidence, with the values both runs logged
    assert found[0].fix is not None and found[0].fix.safety.value == "unsafe"


def _edit_step_one(out: Path, name: str, **values) -> None:
    """Set values in NAME's log_history entry of step 1, keeping trainer_state.json's mtime (which run was
    saved last)."""
    path = out / name / "trainer_state.json"
    saved_at, state = path.stat(), json.loads(path.read_text())
    next(e for e in state["log_history"] if e["step"] == 1).update(values)
    path.write_text(json.dumps(state))
    os.utime(path, ns=(saved_at.st_atime_ns, saved_at.st_mtime_ns))


def test_evidence_names_the_fields_that_differ(two_runs):
    # Runs that log the same loss and reward at step 1 (a GRPO loss of 0 is common) part in other fields;
    # the oracle: the two runs' own log_history entries at the step the message names.
    state4 = json.loads((two_runs / "checkpoint-4" / "trainer_state.json").read_text())
    first = next(e for e in state4["log_history"] if e["step"] == 1)
    _edit_step_one(two_runs, "checkpoint-6", loss=first["loss"], reward=first["reward"])
    message = run_findings(two_runs)[0].message
    entry = {name: next(e for e in json.loads((two_runs / name / "trainer_state.json").read_text())["log_history"]
                        if e["step"] == 1) for name in ("checkpoint-4", "checkpoint-6")}
    evidence = message[message.index("at step 1"):message.index("resume_from_checkpoint=True")]
    equal = [key for key in entry["checkpoint-4"] if key != "step" and entry["checkpoint-4"][key] == entry["checkpoint-6"].get(key)]
    differing = [key for key in entry["checkpoint-4"] if key not in equal and key != "step"]
    assert equal and differing
    assert not [key for key in equal if f"logged {key} " in evidence or f", {key} " in evidence]
    assert any(f"logged {key} " in evidence for key in differing)


def test_resume_point_refuses_the_other_runs_checkpoint(two_runs):
    # diagnose says RUN001 (error) about checkpoint-6; resume_point must not hand it out either.
    with pytest.raises(api.NoResumePoint) as raised:
        api.resume_point(two_runs)
    assert [f.code for f in raised.value.findings] == ["RUN001"]
    assert raised.value.checkpoint == two_runs / "checkpoint-6"
    assert "RUN001" in str(raised.value)
    api.fix(two_runs, unsafe=True)  # the other run aside: the resume point is this run's newest checkpoint
    assert api.resume_point(two_runs) == two_runs / "checkpoint-4"


def test_huge_logged_value_is_no_exception(two_runs):
    # A crafted 401-digit integer where the loss was: float formatting overflows, the message stays bounded.
    _edit_step_one(two_runs, "checkpoint-6", loss=10 ** 400, grad_norm=float("inf"))
    found = run_findings(two_runs)
    assert [(f.code, f.severity) for f in found] == [("RUN001", Severity.ERROR)]
    assert "loss an integer of about 401 digits" in found[0].message and "grad_norm inf" in found[0].message
    assert len(found[0].message) < 2000


def test_fix_moves_the_other_run_aside_and_undo_brings_it_back(two_runs):
    result = api.fix(two_runs, unsafe=True)
    assert not [f for f in result.final.findings if f.code.startswith("RUN")]
    assert not (two_runs / "checkpoint-6").exists()
    assert last_checkpoint(two_runs) == "checkpoint-4"  # the oracle: the resume now picks the new run
    assert api.diagnose(two_runs).resume_from == str(two_runs / "checkpoint-4")
    api.undo(two_runs)
    assert last_checkpoint(two_runs) == "checkpoint-6"


def test_fix_is_not_planned_without_unsafe(two_runs):
    api.fix(two_runs)  # safe fixes only
    assert (two_runs / "checkpoint-6").is_dir()


def test_recipe_describing_the_older_run_makes_it_the_run(two_runs, tmp_path):
    # The recipe sets the first run's seed and batch size: resuming checkpoint-6 is what it asks for; the new
    # run's checkpoint-2 and -4 are another run's leftovers (info: nothing rotates them).
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(GRPO_RECIPE.format(model="unused", dataset="unused", output_dir=two_runs, max_steps=8))
    found = [f for f in api.diagnose(two_runs, recipe).findings if f.code.startswith("RUN")]
    assert [(f.code, f.severity) for f in found] == [("RUN002", Severity.INFO)]
    assert "checkpoint-2, checkpoint-4" in found[0].message


def test_fix_with_the_newer_runs_recipe_only_moves_the_other_run(two_runs, tmp_path):
    # The recipe describes the newer run (seed 1, batch 8): CFG judged against checkpoint-6 (the older run's)
    # would restore seed 0 and batch 4; once checkpoint-6 is aside the recipe fits checkpoint-4 as it is.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(GRPO_RECIPE.format(model="unused", dataset="unused", output_dir=two_runs, max_steps=8)
                      .replace("seed: 0", "seed: 1").replace("per_device_train_batch_size: 4",
                                                             "per_device_train_batch_size: 8")
                      + "resume_from_checkpoint: true\n")
    text = recipe.read_text()
    assert "RUN001" in {f.code for f in api.diagnose(two_runs, recipe).findings}
    preview = api.fix(two_runs, recipe, unsafe=True, dry_run=True)
    assert [type(op).__name__ for op in preview.operations] == ["Quarantine"]
    result = api.fix(two_runs, recipe, unsafe=True)
    assert recipe.read_text() == text  # never written, not even written and written back
    assert result.final.resume_from == str(two_runs / "checkpoint-4") and result.final.exit_code == 0
    assert last_checkpoint(two_runs) == "checkpoint-4"  # the oracle: transformers resumes the newer run


def test_other_run_deleted_by_the_next_rotation_is_a_warning(two_runs, tmp_path):
    from demo_run import train_demo_run

    # The recipe resumes the first run with save_total_limit 2: the save of checkpoint-8 rotates by mtime.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(GRPO_RECIPE.format(model="unused", dataset="unused", output_dir=two_runs, max_steps=8)
                      + "save_total_limit: 2\n")
    found = [f for f in api.diagnose(two_runs, recipe).findings if f.code.startswith("RUN")]
    assert [(f.code, f.severity) for f in found] == [("RUN002", Severity.WARNING)]
    assert "(checkpoint-8, save_total_limit=2) deletes checkpoint-2" in found[0].message
    # The oracle: the real resume of the first run, and transformers' own rotation after its save.
    train_demo_run(two_runs, max_steps=8, save_steps=2, save_total_limit=2,
                   resume_from_checkpoint=str(two_runs / "checkpoint-6"))
    assert sorted(p.name for p in two_runs.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_only_arguments_differ_is_a_warning(two_runs):
    # Without log_history and train_batch_size only the saved arguments tell the runs apart, and a resume
    # with changed arguments would look the same: probable, so a warning.
    for state_file in two_runs.glob("checkpoint-*/trainer_state.json"):
        state = json.loads(state_file.read_text())
        state.update(log_history=[], train_batch_size=None)
        state_file.write_text(json.dumps(state))
    found = run_findings(two_runs)
    assert [(f.code, f.severity) for f in found] == [("RUN001", Severity.WARNING)]
    assert "probably" in found[0].message and "seed 0" in found[0].message


# ------------------------------------------------------------------ one run, at every stage: no finding


def test_real_resumed_and_extended_run_is_one_run(extended_built):
    assert last_checkpoint(extended_built) == "checkpoint-8"
    assert run_findings(extended_built) == []


def test_a_history_that_parts_is_another_run(extended_built, tmp_path):
    # The same files with one value of step 1 changed in the newest checkpoint: the others are not its past.
    out = Path(shutil.copytree(extended_built, tmp_path / "out"))
    state_file = out / "checkpoint-8" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["loss"] = 123.0
    state_file.write_text(json.dumps(state))
    assert [f.code for f in run_findings(out)] == ["RUN002"]


def test_cp_r_copy_of_a_clean_run_is_no_error(built_runs, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(built_runs["full"]), str(copy)], check=True)
    assert run_findings(copy) == []


@pytest.mark.parametrize("kind", ["full", "peft", "model_only", "sharded"])
def test_clean_layouts_get_no_run_finding(built_runs, kind):
    assert run_findings(built_runs[kind]) == []


def test_killed_mid_save_is_skipped(full_run):
    (full_run / "checkpoint-6" / "trainer_state.json").unlink()  # the last file of a save never written
    assert errors(full_run) == []


@pytest.mark.parametrize("history", [[1, 2], ["x"], [{"step": "one"}], [{"loss": 1.0}], [{"step": 1, "loss": "nan"}]])
def test_damaged_log_history_is_no_exception(full_run, history):
    state_file = full_run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state.update(log_history=history)
    state_file.write_text(json.dumps(state))
    assert errors(full_run) == []
    assert all(f.code in ("RUN002",) for f in run_findings(full_run))


@pytest.mark.parametrize("damage", [{"log_history": {"step": 1}}, {"train_batch_size": "four"}, {"global_step": None}])
def test_damaged_trainer_state_is_skipped(full_run, damage):
    state_file = full_run / "checkpoint-4" / "trainer_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), **damage}))
    assert run_findings(full_run) == []  # CKPT013 reports it


# ------------------------------------------------------------------ rotation


def _set_mtimes(out: Path, order: list[str]) -> None:
    """Folder mtimes oldest first in `order`, a second apart, in the past (as a copy made earlier)."""
    start = time.time() - 100
    for index, name in enumerate(order):
        os.utime(out / name, (start + index, start + index))


def test_rotation_in_step_order_is_no_finding(rotated_built, tmp_path):
    out = Path(shutil.copytree(rotated_built, tmp_path / "out"))
    _set_mtimes(out, ["checkpoint-2", "checkpoint-4", "checkpoint-6"])
    assert run_findings(out) == []


def test_rotation_after_a_copy_deletes_the_newest(rotated_built, tmp_path):
    from demo_run import train_demo_run

    out = Path(shutil.copytree(rotated_built, tmp_path / "out"))
    _set_mtimes(out, ["checkpoint-6", "checkpoint-2", "checkpoint-4"])  # a copy that reset them out of order
    found = run_findings(out)
    assert [(f.code, f.severity) for f in found] == [("RUN003", Severity.WARNING)]
    assert "deletes checkpoint-6 while it keeps checkpoint-2, checkpoint-4" in found[0].message
    # The oracle: the real resume's save of checkpoint-8 rotates checkpoint-6 away.
    train_demo_run(out, max_steps=8, save_steps=2, save_total_limit=3, resume_from_checkpoint=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-8"]


def test_future_mtimes_delete_the_checkpoint_just_saved(rotated_built, tmp_path):
    from demo_run import train_demo_run

    out = Path(shutil.copytree(rotated_built, tmp_path / "out"))
    future = time.time() + 3600  # copied from a machine whose clock runs an hour ahead
    for index, name in enumerate(["checkpoint-2", "checkpoint-4", "checkpoint-6"]):
        os.utime(out / name, (future + index, future + index))
    found = run_findings(out)
    assert [f.code for f in found] == ["RUN003"]
    assert "deletes checkpoint-8 while it keeps checkpoint-2, checkpoint-4, checkpoint-6" in found[0].message
    # The oracle: the real resume saves checkpoint-8, and its own rotation deletes it at once.
    train_demo_run(out, max_steps=8, save_steps=2, save_total_limit=3, resume_from_checkpoint=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


@pytest.mark.parametrize("mtimes, limit, best", [
    ({"checkpoint-2": 10, "checkpoint-4": 20, "checkpoint-6": 30, "checkpoint-8": 40}, 2, None),
    ({"checkpoint-6": 10, "checkpoint-2": 20, "checkpoint-4": 30, "checkpoint-8": 40}, 3, None),
    ({"checkpoint-6": 10, "checkpoint-2": 20, "checkpoint-4": 30, "checkpoint-8": 40}, 1, "checkpoint-2"),
    ({"checkpoint-2": 10.1, "checkpoint-4": 10.5, "checkpoint-6": 10.3, "checkpoint-10": 10.2}, 2, None),  # by step
    ({"checkpoint-2": 50, "checkpoint-4": 20, "checkpoint-best": 10, "checkpoint-8": 40}, 2, None),
    ({"checkpoint-2": 10, "checkpoint-4": 20}, 3, None),
])
def test_rotation_matches_transformers(tmp_path, mtimes, limit, best):
    # The oracle: transformers' rotate_checkpoints on real folders with these mtimes.
    from transformers.trainer_utils import rotate_checkpoints

    for name, mtime in mtimes.items():
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1e9 + mtime, 1e9 + mtime))
    rotate_checkpoints(str(tmp_path), save_total_limit=limit, use_mtime=True,
                       best_model_checkpoint=str(tmp_path / best) if best else None)
    deleted = sorted(set(mtimes) - {p.name for p in tmp_path.iterdir()})
    assert sorted(rotated_away({n: 1e9 + m for n, m in mtimes.items()}, limit, best)) == deleted

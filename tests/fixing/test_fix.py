"""`fix`, `--dry-run` and `undo` on real damaged runs: nothing lost, everything undoable, crash-safe."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fix_crash_helpers
import pytest
from conftest import codes, run_cli

from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.engine.target import STATE_DIR
from resumedoctor.fixing.planner import fix, undo


def tree(root: Path, *, skip_state: bool = False) -> dict[str, str]:
    """relative path -> sha256 for every file, and '<dir>' for every folder."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if skip_state and relative.split("/")[0] == STATE_DIR:
            continue
        snapshot[relative] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


def damage(run: Path) -> None:
    """What an interrupted week leaves behind: a cut-off save, debris, a stale best checkpoint."""
    with open(run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    (run / "tmp-checkpoint-8").mkdir()
    (run / "tmp-checkpoint-8" / "model.safetensors").write_bytes(b"partial")
    state_path = run / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["best_model_checkpoint"] = str(run / "checkpoint-1")
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def damaged_run(full_run) -> Path:
    damage(full_run)
    return full_run


def test_fix_auto_unsafe_makes_transformers_resume_from_the_newest_usable(damaged_run):
    from transformers.trainer_utils import get_last_checkpoint

    assert get_last_checkpoint(str(damaged_run)).endswith("checkpoint-6")
    before = tree(damaged_run)
    result = fix(damaged_run, unsafe=True, settings=Settings())
    assert get_last_checkpoint(str(damaged_run)) == str(damaged_run / "checkpoint-4")
    assert result.after.findings == ()
    # Every original file's bytes still exist somewhere under output_dir.
    after_hashes = set(tree(damaged_run).values())
    assert set(before.values()) - {"<dir>"} <= after_hashes
    state = json.loads((damaged_run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] is None


@pytest.mark.slow
def test_trainer_really_resumes_after_the_fix(damaged_run):
    from demo_run import train_demo_run

    fix(damaged_run, unsafe=True, settings=Settings())
    train_demo_run(damaged_run, max_steps=8, save_steps=2, resume_from_checkpoint=True)
    state = json.loads((damaged_run / "checkpoint-8" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == list(range(1, 9))  # steps 1-4 from checkpoint-4, 5-8 trained after the resume
    assert diagnose(damaged_run, settings=Settings()).findings == ()


def test_safe_only_leaves_unsafe_fixes_alone(damaged_run):
    result = fix(damaged_run, settings=Settings())
    assert (damaged_run / "checkpoint-6").is_dir()
    assert not (damaged_run / "tmp-checkpoint-8").exists()
    assert {finding.code for finding, _ in result.skipped_unsafe} == {"CKPT018"}
    assert set(codes(result.after)) == {"CKPT003", "CKPT018"}


def test_undo_gives_back_a_byte_identical_tree(damaged_run):
    before = tree(damaged_run)
    fix(damaged_run, settings=Settings())  # run 1: safe
    fix(damaged_run, unsafe=True, settings=Settings())  # run 2: unsafe, then the safe fix it uncovers
    assert tree(damaged_run) != before
    assert len(undo(damaged_run)) == 2  # run 2 had two rounds; one undo takes back the whole run
    assert len(undo(damaged_run)) == 1
    assert tree(damaged_run) == before
    assert undo(damaged_run) == []


def test_undo_all(damaged_run):
    before = tree(damaged_run)
    fix(damaged_run, settings=Settings())
    fix(damaged_run, unsafe=True, settings=Settings())
    undo(damaged_run, everything=True)
    assert tree(damaged_run) == before


def test_dry_run_changes_nothing_and_shows_the_diff(damaged_run):
    before = tree(damaged_run)
    result = run_cli("fix", damaged_run, "--auto", "--unsafe", "--dry-run")
    assert tree(damaged_run) == before
    assert result.returncode == 1
    assert "quarantine checkpoint-6/ -> .resumedoctor/quarantine/" in result.stdout
    assert "quarantine tmp-checkpoint-8/" in result.stdout
    assert "nothing was changed" in result.stdout


def test_fix_without_auto_only_shows_the_plan(damaged_run):
    before = tree(damaged_run)
    result = run_cli("fix", damaged_run)
    assert tree(damaged_run) == before
    assert "pass --auto to apply" in result.stdout


def test_second_fix_changes_nothing(damaged_run):
    fix(damaged_run, unsafe=True, settings=Settings())
    fixed = tree(damaged_run)
    again = fix(damaged_run, unsafe=True, settings=Settings())
    assert again.transactions == [] and again.operations == []
    assert tree(damaged_run) == fixed


def test_cli_fix_reports_each_change_and_the_backup(damaged_run):
    result = run_cli("fix", damaged_run, "--auto", "--unsafe")
    assert result.returncode == 0, result.stdout + result.stderr
    changes = [line for line in result.stdout.splitlines() if line.startswith("fixed: ")]
    assert len(changes) == 3
    assert "backup and journal:" in result.stdout and f"resumedoctor undo {damaged_run}" in result.stdout
    assert "✔ Safe to resume from" in result.stdout
    assert run_cli("undo", damaged_run).stdout.count("undid fix") == 3


def test_missing_index_is_rebuilt_as_transformers_wrote_it(sharded_run):
    index_path = sharded_run / "checkpoint-6" / "model.safetensors.index.json"
    original = json.loads(index_path.read_text())
    index_path.unlink()
    result = fix(sharded_run, settings=Settings())
    rebuilt = json.loads(index_path.read_text())
    assert rebuilt["weight_map"] == original["weight_map"]
    assert rebuilt["metadata"] == original["metadata"]
    assert result.after.findings == ()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(sharded_run / "checkpoint-6")  # loads through the new index


def test_summary_asks_only_for_what_is_needed(sharded_run):
    """CKPT018 on a checkpoint whose damage a safe fix repairs: `--auto` suffices, and the report says so."""
    (sharded_run / "checkpoint-6" / "model.safetensors.index.json").unlink()
    report = diagnose(sharded_run, settings=Settings())
    unusable = [f for f in report.findings if f.code == "CKPT018"]
    assert unusable and unusable[0].fix.safety.value == "safe"
    assert "CKPT007" in unusable[0].fix.description
    shown = run_cli("diagnose", sharded_run)
    assert shown.returncode == 1
    verdict = " ".join(shown.stdout.split("✖ Do not resume")[-1].split())
    assert verdict.endswith(f"resumedoctor fix {sharded_run} --auto).") and "--unsafe" not in verdict
    # The promise holds: the safe fixes alone make the run resumable, and nothing was quarantined.
    result = fix(sharded_run, settings=Settings())
    assert result.after.exit_code == 0
    assert (sharded_run / "checkpoint-6").is_dir() and not (sharded_run / STATE_DIR / "quarantine").exists()


def test_index_with_a_wrong_entry_is_rebuilt(sharded_run):
    index_path = sharded_run / "checkpoint-6" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = "model-00004-of-00004.safetensors" if index["weight_map"][first] != "model-00004-of-00004.safetensors" else "model-00001-of-00004.safetensors"
    index_path.write_text(json.dumps(index))
    assert "CKPT006" in codes(diagnose(sharded_run, settings=Settings()))
    assert fix(sharded_run, settings=Settings()).after.findings == ()


def test_missing_shard_quarantines_the_checkpoint(sharded_run):
    from transformers.trainer_utils import get_last_checkpoint

    (sharded_run / "checkpoint-6" / "model-00003-of-00004.safetensors").unlink()
    safe = fix(sharded_run, settings=Settings())
    assert safe.operations == []  # an index cannot bring back a shard
    result = fix(sharded_run, unsafe=True, settings=Settings())
    assert get_last_checkpoint(str(sharded_run)).endswith("checkpoint-4")
    assert result.after.findings == ()


def test_global_step_restored_instead_of_quarantined(full_run):
    path = full_run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["global_step"] = 5
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    result = fix(full_run, unsafe=True, settings=Settings())
    assert json.loads(path.read_text())["global_step"] == 6
    assert (full_run / "checkpoint-6").is_dir()  # the safe repair came first: nothing quarantined
    assert result.after.findings == ()


def test_a_private_file_stays_private_through_fix_and_undo(full_run):
    import stat

    path = full_run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["global_step"] = 5
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)
    before = path.read_bytes()
    fix(full_run, settings=Settings())
    assert json.loads(path.read_text())["global_step"] == 6
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the rewrite is not world-readable
    undo(full_run)
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_global_step_left_alone_when_log_history_disagrees(full_run):
    path = full_run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["global_step"] = 9
    state["log_history"] = [e for e in state["log_history"] if e.get("step", 0) <= 5]
    path.write_text(json.dumps(state))
    result = fix(full_run, settings=Settings())
    assert [fixer.name for _, fixer in result.not_applicable] == ["restore-global-step"]
    assert json.loads(path.read_text())["global_step"] == 9


def test_read_only_output_dir_is_a_clear_error_and_changes_nothing(damaged_run):
    before = tree(damaged_run)
    # A real read-only file system: a bind mount in a private mount namespace (chmod does not
    # stop root, and the tests run as root).
    script = (f'mount --bind -o ro "{damaged_run}" "{damaged_run}" && '
              f'"{sys.executable}" -m resumedoctor fix "{damaged_run}" --auto --unsafe')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not writable" in result.stderr and "Read-only file system" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert tree(damaged_run) == before


# `fix --auto --unsafe` on the damaged run is three transactions (safe: the tmp folder; unsafe: the
# broken checkpoint-6; safe again: what that uncovers in checkpoint-4); each can die at each step.
CRASH_POINTS = [f"t{n}-{step}" for n in range(3) for step in ("prepared", "backed-up", "applied-0", "committed")]


def _fix_killed_at(run: Path, point: str, *extra: str) -> int:
    """A real `fix` process, SIGKILLed at POINT (tests/fix_crash_helpers.py)."""
    return subprocess.run(fix_crash_helpers.command(point, "fix", str(run), "--auto", *extra),
                          capture_output=True).returncode


@pytest.mark.parametrize(("point", "status", "backed_up", "applied"), [
    ("t2-prepared", "prepared", False, False), ("t2-backed-up", "prepared", True, False),
    ("t2-applied-0", "applying", True, True), ("t2-committed", "committed", True, True)])
def test_each_kill_point_is_its_step_of_the_transaction(damaged_run, point, status, backed_up, applied):
    """The third transaction rewrites checkpoint-4's trainer_state.json: where the kill left it, read off the tree."""
    state = damaged_run / "checkpoint-4" / "trainer_state.json"
    old = hashlib.sha256(state.read_bytes()).hexdigest()
    assert _fix_killed_at(damaged_run, point, "--unsafe") == -signal.SIGKILL
    folder = sorted((damaged_run / STATE_DIR / "transactions").iterdir())[-1]
    journal = json.loads((folder / "journal.json").read_text())
    (entry,) = journal["operations"]
    assert (journal["status"], entry["path"], entry["old_sha256"]) == (status, "checkpoint-4/trainer_state.json", old)
    assert (folder / entry["backup"]).is_file() == backed_up
    assert hashlib.sha256(state.read_bytes()).hexdigest() == (entry["new_sha256"] if applied else old)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_every_step_then_undo_restores_the_original(damaged_run, point):
    before = tree(damaged_run)
    assert _fix_killed_at(damaged_run, point, "--unsafe") == -signal.SIGKILL
    undo(damaged_run, everything=True)
    assert tree(damaged_run) == before


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_every_step_then_fix_completes(damaged_run, tmp_path, point):
    reference = tmp_path / "reference"
    shutil.copytree(damaged_run, reference)
    fix(reference, unsafe=True, settings=Settings())
    assert _fix_killed_at(damaged_run, point, "--unsafe") == -signal.SIGKILL
    result = fix(damaged_run, unsafe=True, settings=Settings())
    assert result.final.findings == ()
    assert tree(damaged_run, skip_state=True) == tree(reference, skip_state=True)


def test_sigkill_at_random_moments(full_run, tmp_path):
    """Kill real `fix` processes after random delays; every outcome must be recoverable both ways."""
    import random

    rng = random.Random(1234)
    damage(full_run)
    pristine = tmp_path / "pristine"
    shutil.copytree(full_run, pristine)
    before = tree(pristine)
    for attempt in range(8):
        work = tmp_path / f"attempt-{attempt}"
        shutil.copytree(pristine, work)
        process = subprocess.Popen([sys.executable, "-m", "resumedoctor", "fix", str(work), "--auto", "--unsafe"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        twin = tmp_path / f"twin-{attempt}"
        shutil.copytree(work, twin)
        undo(work, everything=True)
        assert tree(work) == before, f"attempt {attempt}: undo did not restore the original"
        assert fix(twin, unsafe=True, settings=Settings()).final.findings == ()


@pytest.mark.parametrize("point", ["undo-started", "undo-0"])
def test_sigkill_during_undo_then_undo_again(damaged_run, point):
    before = tree(damaged_run)
    fix(damaged_run, settings=Settings())
    fix(damaged_run, unsafe=True, settings=Settings())
    killed = subprocess.run(fix_crash_helpers.command(point, "undo", str(damaged_run), "--all"))
    assert killed.returncode == -signal.SIGKILL
    undo(damaged_run, everything=True)
    assert tree(damaged_run) == before


def test_select_limits_what_is_fixed(damaged_run):
    result = run_cli("fix", damaged_run, "--auto", "--unsafe", "--select", "CKPT021", "--format", "json")
    document = json.loads(result.stdout)
    assert [change["code"] for change in document["changes"]] == ["CKPT021"]
    assert (damaged_run / "checkpoint-6").is_dir()
    assert document["report"]["findings"] == []  # only CKPT021 was selected, and it is fixed
    assert len(document["transactions"]) == 1


def test_a_wrong_global_step_is_repaired_by_auto_alone(full_run):
    """CKPT014 makes log_history look ahead (CKPT016) and the checkpoint unusable (CKPT018): all from one cause."""
    path = full_run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["global_step"] = 0
    path.write_text(json.dumps(state))
    report = diagnose(full_run, settings=Settings())
    assert {f.code: f.fix.safety.value for f in report.findings if f.severity.value == "error"} == {
        "CKPT014": "safe", "CKPT016": "safe", "CKPT018": "safe"}
    result = fix(full_run, settings=Settings())
    assert result.after.exit_code == 0 and (full_run / "checkpoint-6").is_dir()
    assert json.loads(path.read_text())["global_step"] == 6

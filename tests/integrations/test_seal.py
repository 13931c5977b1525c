"""Sealed checkpoints on real TRL runs: sealed saves, a save killed while sealing, a flipped byte,
sealing old runs after the fact, a run that stopped sealing, and a two-process run that must write one
whole seal per checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import codes, run_cli

from resumedoctor.engine.context import Options
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix, undo
from resumedoctor.integrations.seal.record import (
    SEAL_FILE,
    SEAL_TEMP_FILE,
    read_seal,
    verify,
)
from resumedoctor.integrations.wandb.log_reader import read_run_log

KILLED_WHILE_SEALING = """
import os, signal, sys
from pathlib import Path
from demo_run import train_demo_run
from resumedoctor.integrations.seal.callback import SealCallback

replace = os.replace

def replace_then_die(source, destination):
    # The seal of step 4 is written to its temp file and fsynced; the process dies before the rename.
    if Path(destination).name == "resumedoctor.seal.json" and Path(destination).parent.name == "checkpoint-4":
        os.kill(os.getpid(), signal.SIGKILL)
    replace(source, destination)

os.replace = replace_then_die
train_demo_run(Path(sys.argv[1]), max_steps=6, save_steps=2, callbacks=[SealCallback()])
"""

DIE_AFTER_SAVE = """
import os, signal, sys
from pathlib import Path
from transformers import TrainerCallback
from demo_run import train_demo_run
from resumedoctor.integrations.seal.callback import SealCallback

class DieAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)

train_demo_run(Path(sys.argv[1]), max_steps=6, save_steps=2, callbacks=[SealCallback(), DieAfterSave()])
"""

TWO_PROCESSES = """
import os, sys, time
from pathlib import Path
from transformers import Trainer
import resumedoctor.integrations.seal.callback as seal_callback
from demo_run import train_demo_run

save_rng_state = Trainer._save_rng_state

def late_rng_state(self, output_dir):
    # Rank 1 writes its rng_state_1.pth late: nothing in the Trainer waits for it before the main
    # process writes trainer_state.json and calls on_save.
    if self.args.process_index == 1:
        time.sleep(3)
    save_rng_state(self, output_dir)

Trainer._save_rng_state = late_rng_state

write = seal_callback.atomic_write

def counted_write(path, data):
    # One O_APPEND write per line: whole lines even with two processes (stdout lines can interleave).
    line = f"rank={os.environ.get('RANK')} {Path(path).parent.name}\\n".encode()
    descriptor = os.open(os.environ["SEAL_WRITE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(descriptor, line)
    os.close(descriptor)
    write(path, data)

seal_callback.atomic_write = counted_write
train_demo_run(Path(sys.argv[1]), max_steps=4, save_steps=2, callbacks=[seal_callback.SealCallback()])
"""


@pytest.fixture(scope="session")
def sealed_run(tmp_path_factory) -> dict:
    """A 6-step GRPO run with SealCallback, logging to W&B offline."""
    import wandb
    from demo_run import train_demo_run

    from resumedoctor.integrations.seal.callback import SealCallback

    root = tmp_path_factory.mktemp("sealed")
    wandb.teardown()  # another fixture in this worker may have set wandb up with its own WANDB_DIR
    saved = dict(os.environ)
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(root), WANDB_SILENT="true", WANDB_PROJECT="seal-tests")
    try:
        output_dir = train_demo_run(root / "run", report_to="wandb", callbacks=[SealCallback()])
        wandb.finish()
        wandb.teardown()  # wandb's settings singleton keeps WANDB_DIR: the next fixture needs its own
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"run": output_dir, "wandb_dir": root / "wandb", "log": next((root / "wandb").glob("offline-run-*/run-*.wandb"))}


@pytest.fixture
def sealed_copy(sealed_run, tmp_path) -> Path:
    return Path(shutil.copytree(sealed_run["run"], tmp_path / "run"))


def test_every_checkpoint_is_sealed_with_what_a_resume_needs(sealed_run):
    for step in (2, 4, 6):
        checkpoint = sealed_run["run"] / f"checkpoint-{step}"
        seal = read_seal(checkpoint)
        assert seal["global_step"] == step and seal["world_size"] == 1 and seal["rng_state_files"] == 1
        assert not seal["after_the_fact"] and seal["hash"] == "xxh3_128"
        on_disk = {p.name for p in checkpoint.iterdir() if p.name != SEAL_FILE}
        assert set(seal["files"]) == on_disk
        assert verify(checkpoint, seal, deep=True) == []
        assert seal["arguments"]["per_device_train_batch_size"] == 4 and seal["arguments"]["seed"] == 0
        assert {"torch", "transformers", "trl"} <= set(seal["versions"])
        assert seal["dataset_fingerprint"]
    assert diagnose(sealed_run["run"], settings=Settings(select=("CKPT",)), options=Options(deep=True)).findings == ()


def test_the_seal_holds_the_exact_wandb_fork_step(sealed_run):
    seal = read_seal(sealed_run["run"] / "checkpoint-4")
    log = read_run_log(sealed_run["log"])
    assert seal["wandb"]["run_id"] == log.run_id
    # W&B's own counter at the save is where a fork at checkpoint-4 starts; the log agrees.
    assert seal["wandb"]["next_step"] == log.first_step_after(4)
    report = diagnose(sealed_run["run"] / "checkpoint-4", settings=Settings(select=("WANDB001",)),
                      options=Options(wandb_dir=sealed_run["wandb_dir"]), environ={})
    decision = report.findings[0].extra["decision"]
    assert decision.step == seal["wandb"]["next_step"] and "(the seal's)" in decision.reason


def test_flipped_byte_is_caught_only_by_deep(sealed_copy):
    path = sealed_copy / "checkpoint-6" / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside a tensor: headers and sizes stay perfect
    path.write_bytes(bytes(raw))
    assert diagnose(sealed_copy, settings=Settings(select=("CKPT",))).findings == ()
    deep = diagnose(sealed_copy, settings=Settings(select=("CKPT",)), options=Options(deep=True))
    assert {"CKPT029", "CKPT018"} == set(codes(deep))
    assert "content differs from the seal" in next(f for f in deep.findings if f.code == "CKPT029").message
    # The summary's fix command judges the way the diagnosis did, and does what it promises.
    shown = run_cli("diagnose", sealed_copy, "--deep", "--select", "CKPT")
    verdict = " ".join(shown.stdout.split("✖ Do not resume")[-1].split())
    assert f"resumedoctor fix {sealed_copy} --auto --unsafe --deep)" in verdict
    fixed = run_cli("fix", sealed_copy, "--auto", "--unsafe", "--deep", "--select", "CKPT")
    assert fixed.returncode == 0, fixed.stdout[-2000:]
    assert not (sealed_copy / "checkpoint-6").exists()  # quarantined: the resume moves to checkpoint-4
    assert diagnose(sealed_copy, settings=Settings(select=("CKPT",)), options=Options(deep=True)).exit_code == 0


@pytest.fixture(scope="session")
def killed_while_sealing(tmp_path_factory) -> Path:
    """A sealing GRPO run SIGKILLed while writing the seal of checkpoint-4 (every trainer file written)."""
    run = tmp_path_factory.mktemp("killed") / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_SEALING, str(run)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    return run


@pytest.fixture
def killed_copy(killed_while_sealing, tmp_path) -> Path:
    return Path(shutil.copytree(killed_while_sealing, tmp_path / "run"))


def test_save_killed_while_sealing_is_a_warning_and_the_run_goes_on(killed_copy):
    from demo_run import train_demo_run

    from resumedoctor.integrations.seal.callback import SealCallback

    run, checkpoint = killed_copy, killed_copy / "checkpoint-4"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / SEAL_TEMP_FILE).is_file()
    assert not (checkpoint / SEAL_FILE).exists()
    report = diagnose(run, settings=Settings(select=("CKPT",)))
    assert codes(report) == ["CKPT034"] and report.exit_code == 0
    finding = report.findings[0]
    assert finding.severity.value == "warning" and finding.fix.safety.value == "safe"
    assert "half-written" in finding.message and report.resume_from == str(checkpoint)
    fix(run, settings=Settings(select=("CKPT",)))  # safe fixes only
    seal = read_seal(checkpoint)
    assert seal["after_the_fact"] and seal["after_the_fact_reason"] == "seal-interrupted"
    assert verify(checkpoint, seal, deep=True) == [] and not (checkpoint / SEAL_TEMP_FILE).exists()
    assert diagnose(run, settings=Settings(select=("CKPT",))).findings == ()
    # The oracle: transformers resumes from checkpoint-4 and the run goes on sealing its saves.
    train_demo_run(run, max_steps=6, save_steps=2, callbacks=[SealCallback()], resume_from_checkpoint=True)
    assert not read_seal(run / "checkpoint-6")["after_the_fact"]
    assert diagnose(run, settings=Settings(select=("CKPT",)), options=Options(deep=True)).findings == ()


def test_seal_command_accepts_a_save_killed_before_its_seal(killed_copy):
    checkpoint = killed_copy / "checkpoint-4"
    (checkpoint / SEAL_TEMP_FILE).unlink()  # what a kill just before the seal write leaves
    report = diagnose(killed_copy, settings=Settings(select=("CKPT",)))
    assert codes(report) == ["CKPT034"]
    message = report.findings[0].message
    assert "checkpoint-2 was sealed at save time: the process died before sealing this save" in message
    result = run_cli("seal", killed_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sealed {checkpoint}" in result.stdout and "already sealed" in result.stdout
    assert read_seal(checkpoint)["after_the_fact_reason"] == "seal-interrupted"
    assert diagnose(killed_copy, settings=Settings(select=("CKPT",))).findings == ()


@pytest.mark.parametrize("damage", ["lost-file", "cut-optimizer"])
def test_unsealed_save_that_is_not_whole_did_not_finish(killed_copy, damage):
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = killed_copy / "checkpoint-4"
    (checkpoint / SEAL_TEMP_FILE).unlink()
    if damage == "lost-file":
        (checkpoint / "tokenizer.json").unlink()  # no structure check needs it; checkpoint-2's save wrote it
    else:
        with open(checkpoint / "optimizer.pt", "r+b") as handle:
            handle.truncate(1000)
    report = diagnose(killed_copy, settings=Settings(select=("CKPT",)))
    unfinished = next(f for f in report.findings if f.code == "CKPT030")
    assert unfinished.severity.value == "error" and unfinished.fix.safety.value == "unsafe"
    if damage == "lost-file":
        assert "tokenizer.json, which the save of checkpoint-2 wrote, is missing" in unfinished.message
    else:
        assert "CKPT009 optimizer.pt" in unfinished.message
    assert "CKPT018" in codes(report) and report.exit_code == 1
    fix(killed_copy, unsafe=True, settings=Settings(select=("CKPT",)))
    assert get_last_checkpoint(str(killed_copy)) == str(killed_copy / "checkpoint-2")


def test_seal_after_the_fact_never_makes_later_plain_saves_unfinished(built_runs, tmp_path):
    """An old run sealed with `resumedoctor seal`, then saved on by plain TRL without SealCallback.

    checkpoint-6 is set aside while the old run is sealed and put back after: the same bytes as a
    later save by `trl grpo` without the callback (a seal is a separate last file)."""
    run = Path(shutil.copytree(built_runs["full"], tmp_path / "run"))
    (run / "checkpoint-6").rename(tmp_path / "checkpoint-6")
    assert run_cli("seal", run).returncode == 0
    (tmp_path / "checkpoint-6").rename(run / "checkpoint-6")
    report = diagnose(run, settings=Settings(select=("CKPT",)))
    assert report.findings == () and report.resume_from == str(run / "checkpoint-6")
    assert fix(run, unsafe=True, dry_run=True, settings=Settings(select=("CKPT",))).operations == []


def test_run_that_stopped_sealing_is_only_informed(sealed_copy):
    (sealed_copy / "checkpoint-6" / SEAL_FILE).unlink()
    # One save without a seal after a sealed one: as if killed while sealing.
    assert codes(diagnose(sealed_copy, settings=Settings(select=("CKPT",)))) == ["CKPT034"]
    (sealed_copy / "checkpoint-4" / SEAL_FILE).unlink()  # two saves in a row without a seal: the callback is gone
    report = diagnose(sealed_copy, settings=Settings(select=("CKPT",)))
    assert codes(report) == ["CKPT035"] and report.exit_code == 0
    assert "checkpoint-2 was sealed at save time, and 2 saves since have none" in report.findings[0].message


def test_unreadable_seal_is_replaced_after_the_fact_and_undo_puts_it_back(sealed_copy):
    path = sealed_copy / "checkpoint-6" / SEAL_FILE
    damaged = path.read_bytes()[:100]
    path.write_bytes(damaged)
    report = diagnose(sealed_copy, settings=Settings(select=("CKPT",)))
    assert codes(report) == ["CKPT031"] and report.findings[0].fix.safety.value == "safe"
    fix(sealed_copy, settings=Settings(select=("CKPT",)))
    seal = read_seal(sealed_copy / "checkpoint-6")
    assert seal["after_the_fact_reason"] == "seal-unreadable"
    assert diagnose(sealed_copy, settings=Settings(select=("CKPT",)), options=Options(deep=True)).findings == ()
    undo(sealed_copy)
    assert path.read_bytes() == damaged


def test_seal_command_seals_after_the_fact_and_undo_removes_it(built_runs, tmp_path):
    run = Path(shutil.copytree(built_runs["full"], tmp_path / "run"))
    with open(run / "checkpoint-2" / "optimizer.pt", "r+b") as handle:
        handle.truncate(100)  # a broken checkpoint is not sealed
    result = run_cli("seal", run)
    assert result.returncode == 1
    assert "not sealed, it is unusable" in result.stdout and "checkpoint-2" in result.stdout
    for step in (4, 6):
        seal = read_seal(run / f"checkpoint-{step}")
        assert seal["after_the_fact"] and seal["versions"]["transformers"]
        assert seal["after_the_fact_reason"] == "never-sealed"
    assert not (run / "checkpoint-2" / SEAL_FILE).exists()
    again = run_cli("seal", run)
    assert again.stdout.count("already sealed") == 2
    undo(run)
    assert not list(run.glob(f"checkpoint-*/{SEAL_FILE}"))


def test_two_processes_write_one_whole_seal_per_checkpoint(tmp_path):
    # A real two-process CPU run (torchrun, gloo): only the world's main process seals, after every
    # process has written its part of the save (rank 1 writes its RNG state late here).
    run = tmp_path / "run"
    script = tmp_path / "train_two.py"
    script.write_text(TWO_PROCESSES)
    write_log = tmp_path / "seal-writes.log"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # the venv may hold no torchrun script
    result = subprocess.run([*torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(run)],
                            capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "SEAL_WRITE_LOG": str(write_log)})
    assert result.returncode == 0, f"torchrun exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    writes = [line.split() for line in write_log.read_text().splitlines()]
    # Each save is sealed twice by the main process (sizes at once, then hashes), never by rank 1.
    assert {rank for rank, _ in writes} == {"rank=0"}
    assert sorted({folder for _, folder in writes}) == ["checkpoint-2", "checkpoint-4"]
    seal = read_seal(run / "checkpoint-4")
    assert seal["world_size"] == 2 and {"rng_state_0.pth", "rng_state_1.pth"} <= set(seal["files"])
    assert verify(run / "checkpoint-4", seal, deep=True) == []
    assert diagnose(run, settings=Settings(select=("CKPT",)), options=Options(deep=True)).findings == ()
    # The world size every family asks (CFG's data skip, the after-the-fact seal): the seal's, else the RNG files'.
    from resumedoctor.engine.checkpoint_facts import saved_world_size
    from resumedoctor.engine.runner import new_context
    from resumedoctor.engine.target import resolve_target

    assert saved_world_size(new_context(resolve_target(run), Settings(), Options()), run / "checkpoint-4") == 2
    (run / "checkpoint-4" / SEAL_FILE).unlink()
    assert saved_world_size(new_context(resolve_target(run), Settings(), Options()), run / "checkpoint-4") == 2


def test_seal_sizes_are_written_before_the_save_returns(tmp_path):
    """Killed right after a save, before the background hashes: the save still counts as finished."""
    script = DIE_AFTER_SAVE
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    seal = read_seal(run / "checkpoint-4")
    assert all("size" in entry for entry in seal["files"].values())
    assert diagnose(run, settings=Settings(select=("CKPT",))).findings == ()  # a finished save
    deep = diagnose(run, settings=Settings(select=("CKPT",)), options=Options(deep=True))
    if not seal["hashes_complete"]:  # the kill came before the background hashing finished
        assert codes(deep) == ["CKPT032"]
    else:
        assert deep.findings == ()


def test_a_safe_fix_of_a_sealed_file_keeps_the_seal_true(sealed_copy):
    """CKPT017's fix rewrites trainer_state.json of a sealed checkpoint: the seal follows, no CKPT029 appears."""
    folder = sealed_copy / "checkpoint-6"
    state = json.loads((folder / "trainer_state.json").read_text())
    state["best_model_checkpoint"] = str(sealed_copy / "checkpoint-99")  # saved so, and sealed so
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))
    (folder / SEAL_FILE).write_bytes(seal_with_size(folder, "trainer_state.json"))
    deep = Options(deep=True)
    assert codes(diagnose(sealed_copy, settings=Settings(select=("CKPT",)), options=deep)) == ["CKPT017"]
    before = {name: (folder / name).read_bytes() for name in ("trainer_state.json", SEAL_FILE)}

    fix(sealed_copy, settings=Settings(select=("CKPT",)))
    after = diagnose(sealed_copy, settings=Settings(select=("CKPT",)), options=deep)
    assert after.findings == (), [f.message for f in after.findings]
    assert read_seal(folder)["edited_by_fix"] == ["trainer_state.json"]
    assert verify(folder, read_seal(folder), deep=True) == []
    undo(sealed_copy)
    assert {name: (folder / name).read_bytes() for name in before} == before


def seal_with_size(folder, name: str) -> bytes:
    """The checkpoint's seal with one file's entry recomputed (as if the edit had been sealed)."""
    from resumedoctor.integrations.seal.record import seal_bytes
    from resumedoctor.io.hashing import new_hasher

    seal = read_seal(folder)
    hasher = new_hasher(seal["hash"])
    content = (folder / name).read_bytes()
    hasher.update(content)
    seal["files"][name] = {"size": len(content), seal["hash"]: hasher.hexdigest()}
    return seal_bytes(seal)

"""DIST (the coming launch's process count against the checkpoint's per-process state) and CKPT011's rank set,
on a real two-process DDP GRPO run (torchrun, gloo, CPU)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import codes

from resumedoctor.api import diagnose

DDP_TRAIN = """
import sys
from pathlib import Path
from demo_run import train_demo_run

train_demo_run(Path(sys.argv[1]), max_steps=2, save_steps=2, use_cpu=True)
"""


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory) -> Path:
    """A 2-step GRPO run of two DDP processes (torchrun --nproc_per_node 2, gloo), checkpoint-2."""
    root = tmp_path_factory.mktemp("ddp")
    script = root / "train_ddp.py"
    script.write_text(DDP_TRAIN)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(root / "run")], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return root / "run"


@pytest.fixture
def ddp_copy(ddp_run, tmp_path) -> Path:
    return Path(shutil.copytree(ddp_run, tmp_path / "run"))


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def fresh_rng_processes(checkpoint: Path, world_size: int) -> list[int]:
    """The oracle: transformers' own Trainer._load_rng_state, run for each process of a launch of `world_size`;
    the processes it leaves with fresh random state are the ones it logs "Didn't find an RNG file" for (at INFO)."""
    import random

    import numpy as np
    import torch
    from transformers import Trainer

    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    logger, handler = logging.getLogger("transformers.trainer"), Messages()
    level, fresh = logger.level, []
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for rank in range(world_size):
            handler.messages.clear()
            fake = SimpleNamespace(args=SimpleNamespace(world_size=world_size, process_index=rank, parallel_mode=None))
            Trainer._load_rng_state(fake, str(checkpoint))
            if any("Didn't find an RNG file" in message for message in handler.messages):
                fresh.append(rank)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
    return fresh


def test_clean_ddp_run_has_no_finding(ddp_run):
    assert sorted(p.name for p in (ddp_run / "checkpoint-2").glob("rng_state*")) == ["rng_state_0.pth",
                                                                                       "rng_state_1.pth"]
    assert diagnose(ddp_run, environ={}).findings == ()
    assert diagnose(ddp_run, environ={"WORLD_SIZE": "2"}).findings == ()


def test_without_world_size_dist_is_skipped_not_passed(ddp_run):
    report = diagnose(ddp_run, environ={})
    family = next(f for f in report.families if f.prefix == "DIST")
    assert family.status == "skipped" and "WORLD_SIZE is unset" in family.reason


@pytest.mark.parametrize("launch, fresh", [(4, [2, 3]), (3, [2]), (1, [0])])
def test_launch_with_another_process_count_warns_with_numbers(ddp_run, launch, fresh):
    checkpoint = ddp_run / "checkpoint-2"
    assert fresh_rng_processes(checkpoint, launch) == fresh
    report = diagnose(ddp_run, environ={"WORLD_SIZE": str(launch)})
    assert codes(report) == ["DIST001"] and report.exit_code == 0
    message = report.findings[0].message
    assert "saved by 2 processes" in message and f"the launch runs {launch}" in message
    if launch > 1:
        assert f"rank{'s' if len(fresh) > 1 else ''} {', '.join(map(str, fresh))})" in message
    else:
        assert "it looks for rng_state.pth" in message


def test_single_process_save_resumed_on_two_processes(full_run):
    assert fresh_rng_processes(full_run / "checkpoint-6", 2) == [0, 1]
    report = diagnose(full_run, environ={"WORLD_SIZE": "2"})
    assert codes(report) == ["DIST001"]
    assert "saved by 1 process (rng_state.pth)" in report.findings[0].message
    assert "all 2 processes find none" in report.findings[0].message
    assert diagnose(full_run, environ={"WORLD_SIZE": "1"}).findings == ()


@pytest.mark.parametrize("kind", ["full", "peft", "sharded", "model_only"])
def test_clean_single_process_runs_launched_as_saved(built_runs, kind):
    report = diagnose(built_runs[kind], environ={"WORLD_SIZE": "1"})
    assert report.exit_code == 0 and set(codes(report)) <= {"CKPT012"}


def test_model_only_checkpoint_is_not_dist001(model_only_run):
    assert codes(diagnose(model_only_run, environ={"WORLD_SIZE": "2"})) == ["CKPT012"]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_rng_file_missing_from_a_ddp_save(ddp_copy, rank):
    checkpoint = ddp_copy / "checkpoint-2"
    (checkpoint / f"rng_state_{rank}.pth").unlink()
    assert fresh_rng_processes(checkpoint, 2) == [rank]  # the oracle: that process restarts its RNG
    report = diagnose(ddp_copy, environ={"WORLD_SIZE": "2"})
    assert set(codes(report)) == {"CKPT011", "CKPT018"}
    assert f"missing rng_state_{rank}.pth of a save by 2 processes" in \
        next(f.message for f in report.findings if f.code == "CKPT011")


def test_a_rank_rng_file_cut_off(ddp_copy):
    path = ddp_copy / "checkpoint-2" / "rng_state_1.pth"
    path.write_bytes(path.read_bytes()[:-100])
    assert "CKPT009" in codes(diagnose(ddp_copy, environ={"WORLD_SIZE": "2"}))


def test_the_seal_names_the_rank_set(ddp_copy):
    from resumedoctor.api import seal

    seal(ddp_copy)
    checkpoint = ddp_copy / "checkpoint-2"
    assert diagnose(ddp_copy, environ={}).findings == ()
    for rank in (0, 1):
        (checkpoint / f"rng_state_{rank}.pth").unlink()
    (checkpoint / "rng_state.pth").write_bytes(b"")  # looks like a single-process save, but the seal says 2
    report = diagnose(ddp_copy, environ={})
    ckpt011 = [f.message for f in report.findings if f.code == "CKPT011"]
    assert ckpt011 and "the seal says 2 processes saved" in ckpt011[0]


def deepspeed_layout(checkpoint: Path, processes: int, universal: bool = False) -> None:
    """A ZeRO-2 tag folder as DeepSpeed 0.19.8's engine.save_checkpoint names it (tests/checks/
    test_checkpoint_integrity.py::test_real_deepspeed_save checks the names against a real save), over the
    real DDP checkpoint; with `universal`, the folder and `latest_universal` that ds_to_universal.py writes."""
    import torch

    tag = checkpoint / "global_step2"
    tag.mkdir()
    torch.save({"module": {}}, tag / "mp_rank_00_model_states.pt")
    for rank in range(processes):
        torch.save({"optimizer_state_dict": {}}, tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (checkpoint / "latest").write_text("global_step2")
    (checkpoint / "optimizer.pt").unlink()
    if universal:
        zero = checkpoint / "global_step2_universal" / "zero" / "model.embed_tokens.weight"
        zero.mkdir(parents=True)
        torch.save(torch.zeros(1), zero / "fp32.pt")
        (checkpoint / "latest_universal").write_text("global_step2_universal")


@pytest.mark.parametrize("universal", [False, True])
def test_deepspeed_world_size_change(ddp_copy, universal):
    deepspeed_layout(ddp_copy / "checkpoint-2", 2, universal)
    assert diagnose(ddp_copy, environ={"WORLD_SIZE": "2"}).findings == ()
    report = diagnose(ddp_copy, environ={"WORLD_SIZE": "4"})
    expected = "DIST003" if universal else "DIST002"
    assert set(codes(report)) == {"DIST001", expected}
    message = next(f.message for f in report.findings if f.code == expected)
    assert "partition" in message and "2" in message and "4" in message


def test_fsdp_rank_files_world_size_change(ddp_copy):
    import torch

    checkpoint = ddp_copy / "checkpoint-2"
    for rank in (0, 1):  # accelerate's LOCAL_STATE_DICT names (save_fsdp_model / save_fsdp_optimizer)
        torch.save({}, checkpoint / f"pytorch_model_fsdp_rank{rank}.bin")
        torch.save({}, checkpoint / f"optimizer_0_rank{rank}.bin")
    report = diagnose(ddp_copy, environ={"WORLD_SIZE": "2"})
    assert "DIST004" not in codes(report)
    report = diagnose(ddp_copy, environ={"WORLD_SIZE": "3"})
    assert "DIST004" in codes(report)
    assert "rank 2 finds no file" in next(f.message for f in report.findings if f.code == "DIST004")


@pytest.mark.parametrize("latest", [b"", b"global_step2\x00", b"../../etc", b"x" * 10000])
def test_crafted_latest_files_are_no_crash(ddp_copy, latest):
    deepspeed_layout(ddp_copy / "checkpoint-2", 2)
    (ddp_copy / "checkpoint-2" / "latest").write_bytes(latest)
    report = diagnose(ddp_copy, environ={"WORLD_SIZE": "4"})
    assert "DIST002" not in codes(report)  # the tag is not judged; CKPT024 says `latest` is broken


@pytest.mark.parametrize("world", ["abc", "²", "9" * 5000, "0", "-1", "2000000", "1e3"])
def test_a_world_size_that_is_no_process_count_is_not_judged(ddp_run, world):
    report = diagnose(ddp_run, environ={"WORLD_SIZE": world})
    assert report.exit_code == 0, [(f.code, f.message) for f in report.findings]
    family = next(f for f in report.families if f.prefix == "DIST")
    assert family.status == "skipped" and "is not a process count: not judged" in family.reason
    assert len(family.reason) < 200  # the value is shown cut, never whole


def test_a_world_size_with_spaces_is_a_process_count(ddp_run):
    assert diagnose(ddp_run, environ={"WORLD_SIZE": " 2 "}).findings == ()


def test_the_largest_world_size_is_described_without_listing_every_rank(ddp_run):
    import time

    start = time.monotonic()
    report = diagnose(ddp_run, environ={"WORLD_SIZE": "1000000"})
    assert codes(report) == ["DIST001"]
    assert "999998 of 1000000 processes (ranks 2, 3, 4, 5, 6, 7 and 999992 more)" in report.findings[0].message
    assert time.monotonic() - start < 10

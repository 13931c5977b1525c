"""The CKPT family against checkpoints that transformers and TRL really wrote, then damaged."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from conftest import codes

from resumedoctor.engine.context import Options, RunContext
from resumedoctor.engine.findings import Severity
from resumedoctor.engine.registry import load_registry
from resumedoctor.engine.runner import diagnose, run_checks
from resumedoctor.engine.settings import Settings
from resumedoctor.engine.target import resolve_target
from resumedoctor.io.safetensors_header import read_safetensors_header


def by_code(report, code):
    return [finding for finding in report.findings if finding.code == code]


def truncate(path: Path, drop: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - drop)


def edit_state(checkpoint: Path, **changes) -> None:
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    state.update(changes)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("kind", ["full", "sharded", "peft"])
def test_clean_checkpoints_have_no_finding(built_runs, kind):
    report = diagnose(built_runs[kind], settings=Settings())
    assert report.findings == (), [f.message for f in report.findings]
    assert report.exit_code == 0
    assert report.resume_from.endswith(("checkpoint-6", "checkpoint-2"))


def test_clean_checkpoint_folder_given_directly(built_runs):
    report = diagnose(built_runs["full"] / "checkpoint-4", settings=Settings())
    assert report.findings == ()
    assert report.resume_from == str(built_runs["full"] / "checkpoint-4")


def test_model_only_checkpoint_is_a_warning_not_an_error(built_runs):
    report = diagnose(built_runs["model_only"], settings=Settings())
    assert codes(report) == ["CKPT012"]
    assert report.exit_code == 0


def test_a_full_save_that_lost_all_its_training_state_is_an_error(full_run):
    """save_only_model=False in training_args.bin, yet no optimizer, scheduler or RNG file: not a model-only save."""
    checkpoint = full_run / "checkpoint-6"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).unlink()
    report = diagnose(full_run, settings=Settings())
    assert "CKPT012" not in codes(report) and "CKPT011" in codes(report)
    finding = next(f for f in report.findings if f.code == "CKPT011")
    assert finding.severity is Severity.ERROR and "save_only_model=False" in finding.message
    assert report.exit_code == 1


def test_truncated_weights_of_newest_checkpoint(full_run):
    from transformers.trainer_utils import get_last_checkpoint

    truncate(full_run / "checkpoint-6" / "model.safetensors", 1000)
    report = diagnose(full_run, settings=Settings())
    assert set(codes(report)) == {"CKPT003", "CKPT018"}
    assert "1000 bytes missing" in by_code(report, "CKPT003")[0].message
    unusable = by_code(report, "CKPT018")[0]
    # transformers itself would still pick the broken one; we name the fallback.
    assert get_last_checkpoint(str(full_run)).endswith("checkpoint-6")
    assert "checkpoint-4" in unusable.message
    assert unusable.extra["fallback"] == str(full_run / "checkpoint-4")
    assert report.exit_code == 1


def test_truncated_optimizer(full_run):
    truncate(full_run / "checkpoint-6" / "optimizer.pt", 5000)
    report = diagnose(full_run / "checkpoint-6", settings=Settings())
    assert codes(report) == ["CKPT009"]
    assert by_code(report, "CKPT009")[0].path.endswith("optimizer.pt")


def test_save_cut_off_before_trainer_state(full_run):
    # The save order is weights, optimizer, scheduler, RNG, trainer_state.json: cut after the optimizer.
    checkpoint = full_run / "checkpoint-6"
    for name in ("trainer_state.json", "rng_state.pth", "scheduler.pt"):
        (checkpoint / name).unlink()
    report = diagnose(full_run, settings=Settings())
    assert {"CKPT001", "CKPT011", "CKPT018"} <= set(codes(report))
    assert "step 6 was cut off" in by_code(report, "CKPT001")[0].message


def test_wrong_global_step(full_run):
    edit_state(full_run / "checkpoint-6", global_step=5)
    report = diagnose(full_run, settings=Settings())
    assert "CKPT014" in codes(report)
    assert "global_step 5" in by_code(report, "CKPT014")[0].message


def test_garbage_trainer_state(full_run):
    (full_run / "checkpoint-6" / "trainer_state.json").write_bytes(b"\x00\xffgarbage{{")
    report = diagnose(full_run, settings=Settings())
    assert {"CKPT013", "CKPT018"} == set(codes(report))


def test_header_length_2_pow_62(full_run):
    path = full_run / "checkpoint-6" / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[:8] = struct.pack("<Q", 2**62)
    path.write_bytes(bytes(raw))
    report = diagnose(full_run / "checkpoint-6", settings=Settings())
    assert codes(report) == ["CKPT004"]


def test_index_names_a_missing_shard(sharded_run):
    checkpoint = sharded_run / "checkpoint-6"
    (checkpoint / "model-00002-of-00004.safetensors").unlink()
    report = diagnose(sharded_run, settings=Settings())
    assert set(codes(report)) == {"CKPT005", "CKPT018"}
    assert by_code(report, "CKPT005")[0].path.endswith("model-00002-of-00004.safetensors")


def test_missing_shard_index(sharded_run):
    (sharded_run / "checkpoint-6" / "model.safetensors.index.json").unlink()
    report = diagnose(sharded_run / "checkpoint-6", settings=Settings())
    assert codes(report) == ["CKPT007"]


def test_index_missing_a_tensor(sharded_run):
    path = sharded_run / "checkpoint-6" / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    dropped = sorted(index["weight_map"])[0]
    shard = index["weight_map"].pop(dropped)
    path.write_text(json.dumps(index))
    report = diagnose(sharded_run / "checkpoint-6", settings=Settings())
    assert codes(report) == ["CKPT006"]
    assert shard in report.findings[0].message and dropped in report.findings[0].message


def test_truncated_shard(sharded_run):
    truncate(sharded_run / "checkpoint-6" / "model-00003-of-00004.safetensors", 7)
    report = diagnose(sharded_run / "checkpoint-6", settings=Settings())
    assert codes(report) == ["CKPT003"]


def test_unparsable_index(sharded_run):
    (sharded_run / "checkpoint-6" / "model.safetensors.index.json").write_text("{")
    assert codes(diagnose(sharded_run / "checkpoint-6", settings=Settings())) == ["CKPT008"]


class RunsACommand:
    """A pickle payload that would create a file if anything ever unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("deep", [False, True])
def test_malicious_training_args_never_runs(full_run, tmp_path, deep):
    import torch

    marker = tmp_path / "pwned"
    torch.save(RunsACommand(marker), full_run / "checkpoint-6" / "training_args.bin")
    report = diagnose(full_run, settings=Settings(), options=Options(deep=deep))
    assert not marker.exists(), "a pickle from the checkpoint was loaded"
    finding = by_code(report, "CKPT028")[0]
    assert "posix.system" in finding.message or "os.system" in finding.message
    assert report.exit_code == 1


def test_damaged_training_args_is_a_warning(full_run):
    truncate(full_run / "checkpoint-6" / "training_args.bin", 100)
    report = diagnose(full_run, settings=Settings())
    assert codes(report) == ["CKPT010"]
    assert report.exit_code == 0


def test_log_history_ahead_and_backwards(full_run):
    checkpoint = full_run / "checkpoint-4"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    history = state["log_history"]
    edit_state(checkpoint, log_history=history + [dict(history[-1], step=6)] + [dict(history[0], step=1)])
    report = diagnose(checkpoint, settings=Settings())
    assert set(codes(report)) == {"CKPT015", "CKPT016"}


def test_best_model_checkpoint_gone(full_run):
    edit_state(full_run / "checkpoint-6", best_model_checkpoint=str(full_run / "checkpoint-1"))
    report = diagnose(full_run, settings=Settings())
    assert codes(report) == ["CKPT017"]


def test_best_model_checkpoint_moved_with_the_run_is_fine(full_run):
    edit_state(full_run / "checkpoint-6", best_model_checkpoint="/elsewhere/output/checkpoint-4")
    assert diagnose(full_run, settings=Settings()).findings == ()


def test_tmp_checkpoint_debris_and_older_unusable_checkpoint(full_run):
    (full_run / "tmp-checkpoint-8").mkdir()
    truncate(full_run / "checkpoint-2" / "scheduler.pt", 50)
    report = diagnose(full_run, settings=Settings())
    assert sorted(codes(report)) == ["CKPT019", "CKPT021"]
    assert report.exit_code == 0
    assert "checkpoint-2" in by_code(report, "CKPT019")[0].message


def test_empty_output_dir_is_info(tmp_path):
    report = diagnose(tmp_path, settings=Settings())
    assert codes(report) == ["CKPT020"]
    assert report.resume_from is None and report.exit_code == 0


def test_no_usable_checkpoint_at_all(full_run):
    for step in (2, 4, 6):
        (full_run / f"checkpoint-{step}" / "trainer_state.json").unlink()
    finding = by_code(diagnose(full_run, settings=Settings()), "CKPT018")[0]
    assert "no checkpoint here is usable" in finding.message


def test_nan_weights_found_only_with_deep(full_run):
    path = full_run / "checkpoint-6" / "model.safetensors"
    header = read_safetensors_header(path)
    entry = next(e for e in header.tensors.values() if e.dtype == "F32")
    raw = bytearray(path.read_bytes())
    start = header.data_start + entry.begin
    raw[start : start + 4] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(raw))
    assert diagnose(full_run, settings=Settings()).findings == ()
    deep = diagnose(full_run, settings=Settings(), options=Options(deep=True))
    assert set(codes(deep)) == {"CKPT022", "CKPT018"}
    assert entry.name in by_code(deep, "CKPT022")[0].message


def test_peft_adapter_without_config(peft_run):
    (peft_run / "checkpoint-2" / "adapter_config.json").unlink()
    assert "CKPT023" in codes(diagnose(peft_run, settings=Settings()))


def test_full_weights_without_config_json(full_run):
    (full_run / "checkpoint-6" / "config.json").unlink()
    assert codes(diagnose(full_run, settings=Settings())) == ["CKPT026"]


def test_empty_checkpoint_folder(full_run):
    (full_run / "checkpoint-8").mkdir()
    report = diagnose(full_run, settings=Settings())
    assert {"CKPT001", "CKPT002", "CKPT018"} <= set(codes(report))
    assert report.resume_from.endswith("checkpoint-8")


def test_dangling_symlink_weights_are_a_finding(full_run):
    weights = full_run / "checkpoint-6" / "model.safetensors"
    weights.unlink()
    weights.symlink_to(full_run / "nowhere.safetensors")
    report = diagnose(full_run / "checkpoint-6", settings=Settings())
    assert codes(report) == ["CKPT027"]
    assert "cannot be read" in report.findings[0].message


def make_deepspeed_checkpoint(folder: Path, tag: str = "global_step6") -> Path:
    """DeepSpeed cannot run on these CPU machines, so its layout is written with real torch.save."""
    import torch

    (folder / tag).mkdir(parents=True)
    (folder / "latest").write_text(tag)
    torch.save({"module": {"w": torch.ones(2)}}, folder / tag / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, folder / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 6, "log_history": []}))
    (folder / "config.json").write_text("{}")
    return folder


def test_deepspeed_layout_whole_and_broken(tmp_path):
    checkpoint = make_deepspeed_checkpoint(tmp_path / "checkpoint-6")
    assert diagnose(checkpoint, settings=Settings()).findings == ()
    (checkpoint / "global_step6" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    truncate(checkpoint / "global_step6" / "mp_rank_00_model_states.pt", 20)
    report = diagnose(checkpoint, settings=Settings())
    assert sorted(codes(report)) == ["CKPT009", "CKPT024"]
    (checkpoint / "latest").write_text("global_step99")
    assert "global_step99" in by_code(diagnose(checkpoint, settings=Settings()), "CKPT024")[0].message


def test_each_artifact_is_loaded_once_per_run(sharded_run):
    target = resolve_target(sharded_run)
    ctx = RunContext(target, Settings(), Options())
    run_checks(ctx, load_registry())
    safetensors_files = list(sharded_run.glob("checkpoint-*/*.safetensors"))
    # Shard headers are read by the file check and again by the index check, but loaded once.
    assert ctx.loads["read_safetensors_header"] == len(safetensors_files)
    read_json = {"trainer_state.json", "config.json", "model.safetensors.index.json"}
    assert ctx.loads["read_json_file"] == sum(1 for p in sharded_run.glob("checkpoint-*/*.json") if p.name in read_json)


def test_ignored_code_does_not_make_a_checkpoint_unusable(full_run):
    edit_state(full_run / "checkpoint-6", global_step=5)
    report = diagnose(full_run, settings=Settings(ignore=("CKPT014", "CKPT016")))
    assert report.findings == ()


def test_unlistable_checkpoint_folder_is_a_finding(full_run, monkeypatch):
    # Tests run as root, where chmod cannot deny a read; the OS error is simulated for one folder.
    broken = full_run / "checkpoint-6"
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == broken:
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    report = diagnose(full_run, settings=Settings())
    assert set(codes(report)) == {"CKPT027", "CKPT018"}
    assert "Permission denied" in by_code(report, "CKPT027")[0].message


# ---- multi-process layouts: FSDP, DeepSpeed, one RNG file per process ---------------------------------

FSDP_SAVE = """
import random, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np
import torch
from accelerate import FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import load_fsdp_model, load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer
from torch.distributed.fsdp import fully_shard
from transformers import get_linear_schedule_with_warmup
from transformers.trainer_callback import TrainerState
from demo_run import build_model, build_tokenizer

state = PartialState(cpu=True)  # two CPU processes, gloo
rank, world = state.process_index, state.num_processes
checkpoint = Path(sys.argv[1])


def sharded_model():
    model = build_model(build_tokenizer())
    for layer in model.model.layers:
        fully_shard(layer)
    return fully_shard(model)


model = sharded_model()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scheduler = get_linear_schedule_with_warmup(optimizer, 1, 10)
ids = torch.randint(0, 100, (2, 8))
model(input_ids=ids, labels=ids).loss.backward()
optimizer.step()
scheduler.step()
# What Trainer._save_checkpoint writes with FSDP and SHARDED_STATE_DICT, in its order, with the same writers:
# accelerate's save_fsdp_model / save_fsdp_optimizer (no model.safetensors, config or training_args: save_model
# writes those only for FULL_STATE_DICT), scheduler.pt on the main process, one rng_state_<rank>.pth per process,
# then trainer_state.json.
plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
accelerator = SimpleNamespace(process_index=rank, num_processes=world)
save_fsdp_model(plugin, accelerator, model, str(checkpoint))
save_fsdp_optimizer(plugin, accelerator, optimizer, model, str(checkpoint))
if rank == 0:
    torch.save(scheduler.state_dict(), checkpoint / "scheduler.pt")
rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
torch.save(rng, checkpoint / f"rng_state_{rank}.pth")
state.wait_for_everyone()
if rank == 0:
    TrainerState(global_step=2, max_steps=10, save_steps=2).save_to_json(str(checkpoint / "trainer_state.json"))
state.wait_for_everyone()
# The resume side, as Trainer._load_from_checkpoint / _load_optimizer_and_scheduler run it: a fresh model loads both.
resumed = sharded_model()
resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
load_fsdp_model(plugin, state, resumed, str(checkpoint))
load_fsdp_optimizer(plugin, state, resumed_optimizer, resumed, str(checkpoint))
for (name, saved), loaded in zip(model.state_dict().items(), resumed.state_dict().values()):
    assert torch.equal(saved.full_tensor(), loaded.full_tensor()), name
assert resumed_optimizer.state_dict()["state"], "the optimizer state was not loaded"
Path(sys.argv[0]).with_name(f"verified-{rank}").touch()  # every save and load above succeeded on this rank
# gloo's threads must stop before the interpreter does: left to exit, a rank can abort at random
# ("terminate called without an active exception", SIGABRT) after all the work above succeeded.
state.wait_for_everyone()
torch.distributed.destroy_process_group()
"""


@pytest.fixture(scope="session")
def fsdp_checkpoint(tmp_path_factory) -> Path:
    """checkpoint-2 of a two-process FSDP2 save on CPU (gloo), written by accelerate's real FSDP savers
    and the real torch.distributed.checkpoint writer, then loaded back by accelerate's loaders."""
    import subprocess
    import sys

    # gloo can abort a rank at teardown (SIGABRT, "terminate called without an active exception"; seen on a
    # loaded CI machine). After every rank verified its save and load that is torch's exit, not the
    # checkpoint under test; before, the save is made again once in a fresh folder.
    for attempt in range(2):
        root = tmp_path_factory.mktemp("fsdp")
        script = root / "fsdp_save.py"
        script.write_text(FSDP_SAVE)
        checkpoint = root / "run" / "checkpoint-2"
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", str(script), str(checkpoint)], capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        torn_down = "SIGABRT" in result.stderr and all((root / f"verified-{rank}").exists() for rank in (0, 1))
        if result.returncode == 0 or torn_down or "SIGABRT" not in result.stderr:
            break
    assert result.returncode == 0 or torn_down, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return checkpoint


@pytest.fixture
def fsdp_run(fsdp_checkpoint, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(fsdp_checkpoint.parent, tmp_path / "run"))


def dcp_load_fails(folder: Path) -> bool:
    """The oracle: torch.distributed.checkpoint itself reads every tensor of the folder (one process)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
        state = {key: torch.empty(entry.size, dtype=entry.properties.dtype)
                 for key, entry in metadata.state_dict_metadata.items() if isinstance(entry, TensorStorageMetadata)}
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)))
    except (Exception, CheckpointException):  # noqa: BLE001 - any failure of the real loader, not an Exception only
        return True
    return False


def test_fsdp_sharded_checkpoint_is_whole(fsdp_run):
    checkpoint = fsdp_run / "checkpoint-2"
    assert {p.name for p in checkpoint.iterdir()} == {"pytorch_model_fsdp_0", "optimizer_0", "scheduler.pt",
                                                      "rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"}
    assert {p.name for p in (checkpoint / "optimizer_0").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    # No optimizer.pt, no rng_state.pth, no model.safetensors: nothing is missing for an FSDP resume.
    assert diagnose(fsdp_run, settings=Settings()).findings == ()
    assert not dcp_load_fails(checkpoint / "pytorch_model_fsdp_0")


def test_fsdp_sharded_checkpoint_on_another_world_size_is_no_error(fsdp_run):
    """torch.distributed.checkpoint reshards on load: the 2-process shards load in one process (the oracle, the
    real DCP reader), so a launch of another size is only DIST001 (the RNG files), never an error."""
    from resumedoctor.api import diagnose as api_diagnose

    assert api_diagnose(fsdp_run, environ={"WORLD_SIZE": "2"}).findings == ()
    assert not dcp_load_fails(fsdp_run / "checkpoint-2" / "optimizer_0")  # one process reads the 2-process save
    for launch in ("1", "4"):
        assert codes(api_diagnose(fsdp_run, environ={"WORLD_SIZE": launch})) == ["DIST001"]


@pytest.mark.parametrize("folder", ["pytorch_model_fsdp_0", "optimizer_0"])
def test_fsdp_shard_cut_off(fsdp_run, folder):
    shard = fsdp_run / "checkpoint-2" / folder / "__1_0.distcp"
    truncate(shard, 64)
    report = diagnose(fsdp_run / "checkpoint-2", settings=Settings())
    assert codes(report) == ["CKPT033"]
    assert "__1_0.distcp is" in report.findings[0].message and "cut off" in report.findings[0].message
    assert dcp_load_fails(shard.parent)


def test_fsdp_save_cut_off_before_metadata(fsdp_run):
    folder = fsdp_run / "checkpoint-2" / "optimizer_0"
    (folder / ".metadata").rename(folder / ".metadata.tmp")  # DCP writes .metadata.tmp, then renames it
    report = diagnose(fsdp_run, settings=Settings())
    assert set(codes(report)) == {"CKPT033", "CKPT018"}
    message = by_code(report, "CKPT033")[0].message
    assert "optimizer_0/ has no .metadata: the save was cut off while writing it" in message
    assert dcp_load_fails(folder)


def test_fsdp_metadata_cut_off(fsdp_run):
    truncate(fsdp_run / "checkpoint-2" / "pytorch_model_fsdp_0" / ".metadata", 200)
    report = diagnose(fsdp_run / "checkpoint-2", settings=Settings())
    assert codes(report) == ["CKPT033"]
    assert "pytorch_model_fsdp_0/`.metadata` is cut off or damaged" in report.findings[0].message
    assert dcp_load_fails(fsdp_run / "checkpoint-2" / "pytorch_model_fsdp_0")


def test_fsdp_lost_shard_file(fsdp_run):
    (fsdp_run / "checkpoint-2" / "pytorch_model_fsdp_0" / "__0_0.distcp").unlink()
    report = diagnose(fsdp_run / "checkpoint-2", settings=Settings())
    assert codes(report) == ["CKPT033"]
    assert "__0_0.distcp is missing" in report.findings[0].message
    assert dcp_load_fails(fsdp_run / "checkpoint-2" / "pytorch_model_fsdp_0")


@pytest.mark.parametrize("rank", [0, 1])
def test_fsdp_rng_file_of_one_process_missing(fsdp_run, rank):
    (fsdp_run / "checkpoint-2" / f"rng_state_{rank}.pth").unlink()
    report = diagnose(fsdp_run / "checkpoint-2", settings=Settings())
    assert codes(report) == ["CKPT011"]
    message = report.findings[0].message
    assert f"missing rng_state_{rank}.pth of a save by 2 processes" in message
    if rank == 1:  # rng_state_0.pth alone looks like a whole set; the shards say two processes saved
        assert "holds the files of 2 processes" in message


def test_fsdp_without_scheduler_loses_the_optimizer(fsdp_run):
    (fsdp_run / "checkpoint-2" / "scheduler.pt").unlink()
    report = diagnose(fsdp_run / "checkpoint-2", settings=Settings())
    assert codes(report) == ["CKPT011"]
    assert "missing scheduler.pt (transformers loads the optimizer only with scheduler.pt" in report.findings[0].message


def test_fsdp_metadata_that_would_run_code_is_never_run(fsdp_run, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    with open(fsdp_run / "checkpoint-2" / "optimizer_0" / ".metadata", "wb") as handle:
        pickle.dump(RunsACommand(marker), handle)
    report = diagnose(fsdp_run / "checkpoint-2", settings=Settings())
    assert not marker.exists(), "a pickle from the checkpoint was run"
    assert codes(report) == ["CKPT033"]
    assert "system: torch would run it" in report.findings[0].message


def test_fsdp_full_state_dict_layout(full_run):
    """FULL_STATE_DICT: save_model writes model.safetensors and the rest, accelerate adds pytorch_model_fsdp.bin
    and optimizer.bin (no optimizer.pt), and each of the two processes its rng_state_<rank>.pth."""
    import torch

    checkpoint = full_run / "checkpoint-6"
    (checkpoint / "optimizer.pt").rename(checkpoint / "optimizer.bin")  # the same torch.save of the state dict
    from safetensors.torch import load_file

    torch.save(load_file(checkpoint / "model.safetensors"), checkpoint / "pytorch_model_fsdp.bin")
    (checkpoint / "rng_state.pth").unlink()
    for rank in (0, 1):
        torch.manual_seed(rank)
        torch.save({"cpu": torch.random.get_rng_state()}, checkpoint / f"rng_state_{rank}.pth")
    assert diagnose(full_run, settings=Settings()).findings == ()
    (checkpoint / "rng_state_0.pth").unlink()
    report = diagnose(checkpoint, settings=Settings())
    assert codes(report) == ["CKPT011"]
    assert "missing rng_state_0.pth of a save by 2 processes (rng_state_1.pth is here)" in report.findings[0].message


def make_deepspeed_run_checkpoint(source: Path, processes: int = 2) -> Path:
    """A ZeRO-2 save of `processes` processes, laid out as DeepSpeed's engine.save_checkpoint writes it, over the
    files transformers writes beside it: the weights from save_model, no optimizer.pt (DeepSpeed keeps it), no
    scheduler.pt (with a scheduler in the DeepSpeed config, DeepSpeed keeps that too), one rng_state_<rank>.pth
    per process. Every .pt is a real torch.save. DeepSpeed is not in the project's extras (its setup.py needs
    torch at build time), so CI builds the layout from DeepSpeed's source; the names match a real DeepSpeed
    0.19.8 save (test_real_deepspeed_save, run where DeepSpeed is installed)."""
    import torch

    (source / "optimizer.pt").unlink()
    (source / "scheduler.pt").unlink()
    (source / "rng_state.pth").unlink()
    tag = source / "global_step6"
    tag.mkdir()
    torch.save({"module": {"w": torch.ones(2)}, "dp_world_size": processes}, tag / "mp_rank_00_model_states.pt")
    for rank in range(processes):
        torch.save({"optimizer_state_dict": {"rank": rank}}, tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        torch.save({"cpu": torch.random.get_rng_state()}, source / f"rng_state_{rank}.pth")
    (source / "latest").write_text("global_step6")
    (source / "zero_to_fp32.py").write_text("# DeepSpeed's recovery script\n")
    return source


def test_deepspeed_multi_process_layout(full_run):
    make_deepspeed_run_checkpoint(full_run / "checkpoint-6")
    assert diagnose(full_run, settings=Settings()).findings == ()  # no CKPT011 for the missing optimizer.pt


@pytest.mark.parametrize("rank", [0, 1])
def test_deepspeed_optimizer_states_of_one_rank_missing(full_run, rank):
    checkpoint = make_deepspeed_run_checkpoint(full_run / "checkpoint-6")
    (checkpoint / "global_step6" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").unlink()
    report = diagnose(checkpoint, settings=Settings())
    assert codes(report) == ["CKPT024"]
    assert f"but not {rank}" in report.findings[0].message
    if rank == 1:  # rank 0 alone looks whole; the RNG files say two processes saved
        assert "rng_state_1.pth says 2 processes saved" in report.findings[0].message


def test_deepspeed_rng_file_of_one_process_missing(full_run):
    checkpoint = make_deepspeed_run_checkpoint(full_run / "checkpoint-6")
    (checkpoint / "rng_state_1.pth").unlink()
    report = diagnose(checkpoint, settings=Settings())
    assert codes(report) == ["CKPT011"]
    assert "global_step6/ holds the optimizer states of 2 processes" in report.findings[0].message


DEEPSPEED_TRAIN = """
import sys
from pathlib import Path
from demo_run import train_demo_run

config = {"zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True,
          "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
          "gradient_clipping": "auto", "bf16": {"enabled": False}, "fp16": {"enabled": False}}
train_demo_run(Path(sys.argv[1]), max_steps=int(sys.argv[2]), save_steps=2, deepspeed=config, use_cpu=True,
               resume_from_checkpoint=sys.argv[2] != "2")
"""


def run_deepspeed(script: Path, run: Path, max_steps: int, processes: int = 2):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), str(script), str(run), str(max_steps)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="session")
def deepspeed_save(tmp_path_factory) -> dict:
    """A real two-process DeepSpeed ZeRO-2 GRPO run on CPU (gloo), saved at step 2."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed (not in the extras: its setup.py imports torch at build time); "
                    "pip install wheel && DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed")
    root = tmp_path_factory.mktemp("deepspeed")
    script = root / "train_deepspeed.py"
    script.write_text(DEEPSPEED_TRAIN)
    result = run_deepspeed(script, root / "run", 2)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"script": script, "run": root / "run"}


def test_real_deepspeed_save(deepspeed_save, tmp_path):
    import shutil

    run = deepspeed_save["run"]
    tag = run / "checkpoint-2" / "global_step2"
    assert (run / "checkpoint-2" / "latest").read_text() == "global_step2"
    assert {p.name for p in tag.iterdir()} == {"mp_rank_00_model_states.pt",
                                                "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                "zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert diagnose(run, settings=Settings()).findings == ()
    lost = Path(shutil.copytree(run, tmp_path / "lost"))
    (lost / "checkpoint-2" / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    report = diagnose(lost, settings=Settings())
    assert set(codes(report)) == {"CKPT024", "CKPT018"}
    assert "but not 1; rng_state_1.pth says 2 processes saved" in by_code(report, "CKPT024")[0].message
    # The oracle: DeepSpeed itself cannot resume from it.
    resumed = run_deepspeed(deepspeed_save["script"], lost, 4)
    assert resumed.returncode != 0 and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in resumed.stderr


def test_real_deepspeed_save_on_another_world_size(deepspeed_save, tmp_path):
    """DIST002: the ZeRO partitions of two processes, resumed by one. The oracle: DeepSpeed refuses it."""
    import shutil

    from resumedoctor.api import diagnose as api_diagnose

    run = Path(shutil.copytree(deepspeed_save["run"], tmp_path / "run"))
    assert api_diagnose(run, environ={"WORLD_SIZE": "2"}).findings == ()
    report = api_diagnose(run, environ={"WORLD_SIZE": "1"})
    assert set(codes(report)) == {"DIST001", "DIST002"}
    assert "DP world size of 2 but the current world size is 1" in by_code(report, "DIST002")[0].message
    resumed = run_deepspeed(deepspeed_save["script"], run, 4, processes=1)
    assert resumed.returncode != 0 and "used a DP world size of 2 but the current world size is 1" in resumed.stderr


def test_a_backup_named_like_a_checkpoint_is_warned_about_rotation(full_run):
    from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

    shutil.copytree(full_run / "checkpoint-2", full_run / "checkpoint-2.bak")
    # The oracle: rotation counts the backup (and would delete it), resume never picks it.
    assert str(full_run / "checkpoint-2.bak") in sort_checkpoints(str(full_run))
    assert get_last_checkpoint(str(full_run)) == str(full_run / "checkpoint-6")
    report = diagnose(full_run, settings=Settings())
    found = by_code(report, "CKPT036")
    assert len(found) == 1 and found[0].severity.value == "warning" and "checkpoint 2" in found[0].message
    assert report.exit_code == 0


def test_the_parent_of_an_output_dir_suggests_it(full_run):
    report = diagnose(full_run.parent, settings=Settings())
    assert codes(report) == ["CKPT020"] and f"did you mean {full_run}?" in report.findings[0].message


def test_a_just_written_unusable_checkpoint_says_a_save_may_be_in_progress(full_run):
    """A save in progress looks like a cut-off one; only fresh files get the "wait for the save" hint."""
    newest = full_run / "checkpoint-6"
    with open(newest / "model.safetensors", "r+b") as handle:
        handle.truncate(100)

    def hint() -> str:
        report = diagnose(full_run, settings=Settings(), environ={})
        return next(f.hint for f in report.findings if f.code == "CKPT018")

    assert "if a trainer is still saving, wait for the save to finish" in hint()
    an_hour_ago = os.path.getmtime(newest / "model.safetensors") - 3600
    for path in [newest, *newest.rglob("*")]:
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert "still saving" not in hint() and "fix --unsafe quarantines checkpoint-6" in hint()


def test_global_step_is_read_once_as_transformers_reads_it(full_run):
    """ctx.global_step, the one reader every family asks, against transformers' own TrainerState."""
    from transformers import TrainerState

    from resumedoctor.engine.runner import new_context

    ctx = new_context(resolve_target(full_run), Settings(), Options())
    for checkpoint in sorted(full_run.glob("checkpoint-*")):
        assert ctx.global_step(checkpoint) == TrainerState.load_from_json(checkpoint / "trainer_state.json").global_step
    assert ctx.progress(full_run / "checkpoint-4").global_step == 4
    edit_state(full_run / "checkpoint-4", global_step="4")  # transformers loads it, the resume's arithmetic fails
    assert new_context(resolve_target(full_run), Settings(), Options()).global_step(full_run / "checkpoint-4") is None


def test_the_resume_target_is_the_newest_usable_checkpoint_once_per_run(full_run):
    from resumedoctor.engine.runner import new_context

    truncate(full_run / "checkpoint-6" / "model.safetensors", 100)
    ctx = new_context(resolve_target(full_run), Settings(), Options())
    assert ctx.resume_point() == ctx.newest_usable_checkpoint() == full_run / "checkpoint-4"
    assert ctx.checkpoint_errors(full_run / "checkpoint-6") and not ctx.checkpoint_errors(full_run / "checkpoint-4")
    judged = dict(ctx.loads)
    assert ctx.resume_point() == full_run / "checkpoint-4" and ctx.loads == judged  # asked again: nothing recomputed
    # Without a family that judges checkpoints there is no verdict to give: every checkpoint counts as usable.
    assert RunContext(resolve_target(full_run), Settings(), Options()).resume_point() == full_run / "checkpoint-6"

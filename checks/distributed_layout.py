"""DIST: does the coming launch's process count fit the checkpoint's per-process state?

The checkpoint is the one the resume loads (ctx.resume_point()); the coming launch's process count is
WORLD_SIZE in the environment (torchrun, accelerate launch and deepspeed set it). Without it nothing is
judged. Whether the checkpoint itself is whole (every rank's file there) is CKPT011 / CKPT024 / CKPT033;
what a new world size does to the data skip and the batch is CFG001.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.engine.checkpoint_facts import readable_seal
from resumedoctor.engine.context import (
    RunContext,
    invalid_world_size,
    launch_world_size,
)
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.trl.save_files import (
    DEEPSPEED_OPTIM,
    DEEPSPEED_TAG,
    DEEPSPEED_UNIVERSAL_LATEST,
    DEEPSPEED_UNIVERSAL_ZERO,
    DEEPSPEED_ZERO3_MODEL,
    FSDP_RANK_FILE,
    RNG_NAME,
)
from resumedoctor.io.bounded_read import read_text_bounded

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
TAG_LIMIT = 4096  # `latest` holds one folder name
DATA_SKIP = "CFG001 says what the new world size does to the data skip when a recipe is given"

RNG_NOT_RESTORED = Rule(
    "DIST001", "launch-rng-state-not-restored", WARNING,
    "Processes of the coming launch find no RNG state of their own in the checkpoint and start with fresh random numbers.",
    "transformers' _load_rng_state restores each process from rng_state_<process_index>.pth when the launch runs "
    "more than one process, and from rng_state.pth when it runs one. A launch with more processes than the save "
    "had, a multi-process checkpoint resumed by one process, or a single-process checkpoint resumed by several "
    "leaves those processes with fresh random state (dropout, sampling of completions), which transformers logs "
    "at INFO only. Training continues; it is not the run you paused, bit for bit. Launch with the saved process "
    "count to keep it.",
)
DEEPSPEED_WORLD_CHANGED = Rule(
    "DIST002", "deepspeed-world-size-changed", ERROR,
    "The DeepSpeed ZeRO checkpoint was partitioned for another number of processes than the coming launch runs.",
    "DeepSpeed splits the optimizer state into one zero_pp_rank_<r> partition per data-parallel process and "
    "refuses to load it with another data-parallel world size (ZeRORuntimeException: \"The checkpoint being "
    "loaded used a DP world size of M but the current world size is N\") after the model is on the GPUs. "
    "Launch with the saved process count, or convert the checkpoint with DeepSpeed's ds_to_universal.py and "
    "resume with {\"checkpoint\": {\"load_universal\": true}} in the DeepSpeed config.",
)
DEEPSPEED_UNIVERSAL = Rule(
    "DIST003", "deepspeed-universal-reshard", INFO,
    "The process count changes, and the checkpoint has a DeepSpeed universal copy that loads on any count.",
    "ds_to_universal.py wrote <tag>_universal/ with the optimizer state per parameter (zero/) and "
    "`latest_universal`; DeepSpeed loads it on another world size, but only with {\"checkpoint\": "
    "{\"load_universal\": true}} in the DeepSpeed config (without it the partitioned tag in `latest` is loaded "
    "and fails).",
)
FSDP_RANK_FILES = Rule(
    "DIST004", "fsdp-rank-files-world-size-changed", ERROR,
    "The FSDP checkpoint holds one state file per process (LOCAL_STATE_DICT) for another process count than the launch.",
    "With LOCAL_STATE_DICT (or SHARDED_STATE_DICT saved with use_dcp=False) accelerate saves "
    "pytorch_model_fsdp_*_rank<r>.bin and optimizer_*_rank<r>.bin per process, and each process loads the file "
    "of its own index: a process without one fails the resume, and fewer processes load shards of the wrong "
    "size. (torch.distributed.checkpoint folders, pytorch_model_fsdp_0/ and optimizer_0/, reshard on load and "
    "resume on any process count.) Launch with the saved process count.",
)
RULES = (RNG_NOT_RESTORED, DEEPSPEED_WORLD_CHANGED, DEEPSPEED_UNIVERSAL, FSDP_RANK_FILES)


@dataclass(frozen=True)
class SavedRanks:
    """What the checkpoint's file names say about the processes that saved it."""

    rng_single: bool  # rng_state.pth
    rng_ranks: frozenset[int]  # rng_state_<rank>.pth
    sealed_world: int | None
    fsdp_ranks: frozenset[int]

    @property
    def world(self) -> int | None:
        """The process count of the save (the seal's, else the highest per-process file's); None without RNG files."""
        if self.sealed_world:
            return self.sealed_world
        if self.rng_ranks:
            return max(max(self.rng_ranks) + 1, 2)  # rng_state_0.pth alone is still a save by several
        return 1 if self.rng_single else None


def saved_ranks(ctx: RunContext, checkpoint: Path, names: list[str]) -> SavedRanks:
    rng = [RNG_NAME.match(name) for name in names]
    sealed = (readable_seal(ctx, checkpoint) or {}).get("world_size")
    sealed = sealed if isinstance(sealed, int) and not isinstance(sealed, bool) and 0 < sealed <= 1 << 20 else None
    return SavedRanks(any(m and m.group(1) is None for m in rng),
                      frozenset(int(m.group(1)) for m in rng if m and m.group(1) is not None), sealed,
                      frozenset(int(m.group(1)) for name in names if (m := FSDP_RANK_FILE.match(name))))


def check_rng(ranks: SavedRanks, launch: int, checkpoint: Path) -> Iterator[Finding]:
    """Exactly what Trainer._load_rng_state does on each process of the coming launch."""
    saved = ranks.world
    if saved is None or saved == launch:
        return  # model-only (CKPT012) or the same count (a rank's missing file is CKPT011)
    if launch > 1:
        fresh = _missing_ranks(launch, ranks.rng_ranks)
        looked = "rng_state_<process_index>.pth"
    else:
        fresh = (0, []) if ranks.rng_single else (1, [0])
        looked = "rng_state.pth"
    if not fresh[0]:
        return
    had = "rng_state.pth" if saved == 1 else f"rng_state_0.pth .. rng_state_{saved - 1}.pth"
    who = (f"all {launch} processes" if fresh[0] == launch and launch > 1 else
           "the one process" if launch == 1 else f"{fresh[0]} of {launch} processes ({_ranks(*fresh)})")
    yield _finding(RNG_NOT_RESTORED, checkpoint,
                   f"{checkpoint.name} was saved by {saved} process{'es' if saved > 1 else ''} ({had}); the launch "
                   f"runs {launch} (WORLD_SIZE) and {'each process looks' if launch > 1 else 'it looks'} for "
                   f"{looked}: {who} {'find' if launch > 1 else 'finds'} none and "
                   f"{'start' if launch > 1 else 'starts'} with fresh random state (transformers logs it at INFO only)",
                   hint=f"launch {saved} process{'es' if saved > 1 else ''} to restore every RNG state; {DATA_SKIP}")


def check_fsdp_rank_files(ranks: SavedRanks, launch: int, checkpoint: Path) -> Iterator[Finding]:
    if not ranks.fsdp_ranks:
        return
    saved = max(ranks.fsdp_ranks) + 1
    if saved != launch:
        yield _finding(FSDP_RANK_FILES, checkpoint,
                       f"{checkpoint.name} holds FSDP per-process files (*_rank0.bin .. *_rank{saved - 1}.bin) of "
                       f"{saved} processes; the launch runs {launch} (WORLD_SIZE): "
                       + (f"{_ranks(launch - saved, range(saved, min(launch, saved + 6)))} "
                          f"{'find' if launch - saved > 1 else 'finds'} no file of "
                          "its own and the load fails"
                          if launch > saved else f"{launch} processes load shards cut for {saved}: the load fails"),
                       hint=f"launch {saved} processes; {DATA_SKIP}")


def check_deepspeed(checkpoint: Path, names: list[str], launch: int) -> Iterator[Finding]:
    tag = _tag(checkpoint / "latest", names)
    if tag is None:
        return  # no DeepSpeed checkpoint, or a broken `latest` (CKPT024)
    try:
        in_tag = [entry.name for entry in (checkpoint / tag).iterdir()]
    except OSError:
        return  # CKPT027
    dp_ranks = _data_parallel_ranks(in_tag)
    if not dp_ranks:
        return  # model parallel, or no partition files (CKPT024): not judged
    saved = max(dp_ranks) + 1
    if saved == launch:
        return
    universal = _universal_tag(checkpoint, names)
    if universal is not None:
        yield _finding(DEEPSPEED_UNIVERSAL, checkpoint,
                       f"{tag}/ is partitioned for {saved} processes and the launch runs {launch}; {universal}/ is a "
                       "universal copy that DeepSpeed reshards on load",
                       hint="set {\"checkpoint\": {\"load_universal\": true}} in the DeepSpeed config for this resume")
        return
    yield _finding(DEEPSPEED_WORLD_CHANGED, checkpoint,
                   f"{tag}/ holds ZeRO optimizer partitions of {saved} data-parallel processes (zero_pp_rank_0 .. "
                   f"{saved - 1}); the launch runs {launch} (WORLD_SIZE): DeepSpeed refuses the load (\"used a DP "
                   f"world size of {saved} but the current world size is {launch}\")",
                   hint=f"launch {saved} processes, or convert with DeepSpeed's ds_to_universal.py and set "
                        "{\"checkpoint\": {\"load_universal\": true}}")


def _tag(latest: Path, names: list[str]) -> str | None:
    if "latest" not in names:
        return None
    try:
        tag = read_text_bounded(latest, TAG_LIMIT).strip()
    except ReasonError:
        return None
    return tag if DEEPSPEED_TAG.match(tag) and tag in names else None


def _data_parallel_ranks(names: list[str]) -> set[int]:
    """The data-parallel ranks of the ZeRO partitions, for a checkpoint without model parallelism (else empty)."""
    found = [m for name in names if (m := DEEPSPEED_OPTIM.match(name) or DEEPSPEED_ZERO3_MODEL.match(name))]
    if any(int(m.group(2)) != 0 for m in found) or any(n.startswith("layer_") for n in names):
        return set()
    return {int(m.group(1)) for m in found}


def _universal_tag(checkpoint: Path, names: list[str]) -> str | None:
    """The folder `latest_universal` names when it holds a universal checkpoint's zero/ folder."""
    if DEEPSPEED_UNIVERSAL_LATEST not in names:
        return None
    try:
        tag = read_text_bounded(checkpoint / DEEPSPEED_UNIVERSAL_LATEST, TAG_LIMIT).strip()
    except ReasonError:
        return None
    if not tag or "/" in tag or tag in (".", ".."):
        return None
    return tag if (checkpoint / tag / DEEPSPEED_UNIVERSAL_ZERO).is_dir() else None


def _missing_ranks(launch: int, saved: frozenset[int]) -> tuple[int, list[int]]:
    """(how many of ranks 0..launch-1 have no file, the first six of them), without listing every rank."""
    count = launch - sum(1 for rank in saved if rank < launch)
    first = []
    for rank in range(launch):  # at most len(saved) + 6 steps
        if len(first) == 6:
            break
        if rank not in saved:
            first.append(rank)
    return count, first


def _ranks(count: int, first) -> str:
    """`rank 2`, `ranks 2, 3`, `ranks 2, 3, 4, 5, 6, 7 and 9 more`: `first` holds the first (up to) six."""
    first = list(first)[:6]
    shown = ", ".join(map(str, first)) + (f" and {count - len(first)} more" if count > len(first) else "")
    return f"rank{'s' if count > 1 else ''} {shown}"


def _finding(rule: Rule, checkpoint: Path, message: str, hint: str) -> Finding:
    found = rule.finding(message, path=str(checkpoint), hint=hint)
    found.extra["checkpoint"] = str(checkpoint)
    return found


def run(ctx: RunContext) -> Iterator[Finding]:
    launch = launch_world_size(ctx.environ)
    checkpoint = ctx.resume_point()
    if not launch or checkpoint is None:
        return  # no coming launch known (WORLD_SIZE unset), or nothing to resume
    try:
        names = sorted(entry.name for entry in checkpoint.iterdir())
    except OSError:
        return  # CKPT027
    ranks = saved_ranks(ctx, checkpoint, names)
    yield from check_rng(ranks, launch, checkpoint)
    yield from check_fsdp_rank_files(ranks, launch, checkpoint)
    yield from check_deepspeed(checkpoint, names, launch)


def _not_applicable(ctx: RunContext) -> str | None:
    invalid = invalid_world_size(ctx.environ)
    if invalid is not None:
        return f"WORLD_SIZE={invalid} is not a process count: not judged"
    if not launch_world_size(ctx.environ):
        return "no coming launch known (WORLD_SIZE is unset: run under torchrun / accelerate launch, or set it)"
    if ctx.resume_point() is None:
        return "no checkpoint to resume"
    return None


FAMILY = CheckFamily(
    name="distributed-layout",
    prefix="DIST",
    title="Distributed layout: the coming launch's process count fits the checkpoint's per-process state",
    rules=RULES,
    run=run,
    not_applicable=_not_applicable,
)

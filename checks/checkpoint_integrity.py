"""CKPT: is the checkpoint that the resume will load whole, and consistent with itself?

Everything here reads file headers, zip directories and small JSON files; tensors are read only
with `--deep`, and no pickle is ever loaded (pickles are scanned against an allow-list, see safe_pickle).
"""

from __future__ import annotations

import bisect
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.engine.checkpoint_facts import readable_seal, seal_of
from resumedoctor.engine.context import (
    CHECKPOINT_FINDINGS,
    RunContext,
    trainer_state_problem,
)
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.live_save import recently_written
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.engine.target import (
    CHECKPOINT_NAME,
    TMP_CHECKPOINT_NAME,
    checkpoint_step,
)
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.seal.record import (
    SEAL_FILE,
    SEAL_TEMP_FILE,
    TMP_SUFFIX,
    sealing_was_on,
    verify,
)
from resumedoctor.integrations.trl.save_files import (
    DEEPSPEED_OPTIM,
    DEEPSPEED_ZERO3_MODEL,
    ENTROPY_KEYS,
    ENTROPY_STATE,
    RNG_NAME,
    SCALER_FILE,
    TORCH_INITIAL_SCALE,
)
from resumedoctor.integrations.trl.save_files import DEEPSPEED_TAG as TAG_DIR
from resumedoctor.io.bounded_read import JsonFileError, file_kind, read_text_bounded
from resumedoctor.io.dcp_metadata import (
    METADATA_FILE,
    DcpIndex,
    DcpMetadataError,
    read_dcp_index,
)
from resumedoctor.io.printable import printable
from resumedoctor.io.safe_pickle import (
    UNLISTED_KEY,
    PickleReadError,
    UnsafePickleError,
    check_legacy_pickle,
    check_state_pickle,
)
from resumedoctor.io.safetensors_header import SafetensorsError, count_non_finite

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
# transformers.trainer_utils.sort_checkpoints: `checkpoint-*` folders, ordered by the number after the prefix.
ROTATION_NAME = re.compile(r"^checkpoint-([0-9]+)")

TRAINER_STATE_MISSING = Rule(
    "CKPT001", "trainer-state-missing", ERROR,
    "trainer_state.json is missing: the save was cut off.",
    "transformers writes trainer_state.json as the last file of every save, after the weights, the "
    "optimizer, the scheduler and the RNG state. A checkpoint without it was interrupted mid-save "
    "(OOM, preemption, full disk), but `get_last_checkpoint` still picks it because it only looks at "
    "the folder name. Resume from the previous checkpoint instead.",
)
WEIGHTS_MISSING = Rule(
    "CKPT002", "weights-missing", ERROR,
    "No model or adapter weights in the checkpoint.",
    "A checkpoint needs model.safetensors, a sharded index with its shards, a PEFT adapter, a "
    "DeepSpeed global_step folder or FSDP weights. Without any of them the Trainer stops with "
    "\"Can't find a valid checkpoint\" after the GPUs are already allocated.",
)
SAFETENSORS_SIZE = Rule(
    "CKPT003", "safetensors-size-mismatch", ERROR,
    "A safetensors file is not exactly 8 + header + data bytes long (truncated copy or save).",
    "The header of a safetensors file lists every tensor with its byte offsets, so the exact file "
    "size is known from the header alone. A shorter file was cut off while being written or copied "
    "and fails to load (or loads garbage through a memory map); a longer one has stray bytes that "
    "safetensors rejects.",
)
SAFETENSORS_HEADER = Rule(
    "CKPT004", "safetensors-header-invalid", ERROR,
    "A safetensors header is unreadable or inconsistent.",
    "The header length must be sane, the header valid UTF-8 JSON, every dtype known, every shape "
    "match its byte span, and the tensors must tile the data area with no gap or overlap. Anything "
    "else means the file is corrupt or not a safetensors file at all.",
)
SHARD_MISSING = Rule(
    "CKPT005", "shard-index-names-missing-shard", ERROR,
    "model.safetensors.index.json names a shard that does not exist.",
    "Loading a sharded checkpoint opens every shard the index names; a missing one fails the load. "
    "It happens when a save is cut off between shards or a copy skipped a file.",
)
SHARD_INDEX_INCOMPLETE = Rule(
    "CKPT006", "shard-index-incomplete", ERROR,
    "The shard index and the shards disagree about which tensor lives where.",
    "Every tensor of every shard must be in the index's weight_map under that shard, and every "
    "tensor the index maps to a shard must be in that shard's header. A mismatch loads some weights "
    "from nowhere: they stay randomly initialised, and training silently starts from a broken model.",
)
SHARD_INDEX_MISSING = Rule(
    "CKPT007", "shard-index-missing", ERROR,
    "Sharded weights without model.safetensors.index.json.",
    "transformers finds shards only through the index. Without it the shards are ignored and the "
    "resume fails. The index can be rebuilt exactly from the shard headers.",
)
SHARD_INDEX_INVALID = Rule(
    "CKPT008", "shard-index-invalid", ERROR,
    "model.safetensors.index.json is not valid JSON with a weight_map.",
    "The index is a small JSON file {\"metadata\": ..., \"weight_map\": {tensor: shard}}. If it "
    "cannot be parsed, the sharded weights cannot be loaded.",
)
ARCHIVE_DAMAGED = Rule(
    "CKPT009", "torch-archive-damaged", ERROR,
    "A torch archive (optimizer, scheduler, RNG, scaler, weights) is not a whole zip archive.",
    "torch.save writes a zip archive whose central directory comes last, so a cut-off file has "
    "none. The resume calls torch.load on optimizer.pt, scheduler.pt and rng_state*.pth and dies "
    "with a zip error. Checked with zipfile only: nothing is unpickled. With --deep the CRC of "
    "every member is verified too.",
)
TRAINING_ARGS_DAMAGED = Rule(
    "CKPT010", "training-args-damaged", WARNING,
    "training_args.bin is not a whole zip archive.",
    "The Trainer does not load training_args.bin on resume, so the run can continue, but the record "
    "of the arguments that produced the checkpoint (batch sizes, seed, schedule) is lost and config "
    "drift against it can no longer be checked.",
)
RESUME_STATE_INCOMPLETE = Rule(
    "CKPT011", "resume-state-incomplete", ERROR,
    "Part of the resume state is missing: the optimizer, scheduler.pt, or a process's RNG state file.",
    "A full checkpoint holds the optimizer (optimizer.pt; with FSDP optimizer.bin or an optimizer_0/ "
    "folder; with DeepSpeed its global_step folder), the LR scheduler (scheduler.pt) and the RNG state "
    "(rng_state.pth, or one rng_state_<rank>.pth per process of a multi-process run), all written before "
    "trainer_state.json. transformers loads the optimizer only when scheduler.pt is there too, and "
    "restores each process's RNG only from that process's own file. With part of them missing the "
    "optimizer or the schedule restarts silently, or a process draws other random numbers than the run "
    "it continues.",
)
MODEL_ONLY = Rule(
    "CKPT012", "model-only-checkpoint", WARNING,
    "The checkpoint holds no optimizer, scheduler or RNG state (save_only_model).",
    "A resume from it starts a fresh optimizer (Adam moments at zero), restarts the learning-rate "
    "schedule at its first step (the full learning rate again) and draws fresh random numbers (dropout, "
    "sampling); the data position still follows global_step. The loss curve jumps and the run is not the "
    "one you paused.",
)
TRAINER_STATE_INVALID = Rule(
    "CKPT013", "trainer-state-invalid", ERROR,
    "trainer_state.json cannot be parsed, or a field has a type the Trainer cannot use.",
    "The Trainer reads global_step, the log history and callback states from trainer_state.json on "
    "resume; garbage there fails the resume with a JSON error, and a field of the wrong type (a "
    "log_history that is not a list, stateful_callbacks that are not an object, a global_step that is "
    "not an integer) fails it as soon as the Trainer uses it.",
)
GLOBAL_STEP_MISMATCH = Rule(
    "CKPT014", "global-step-mismatch", ERROR,
    "trainer_state.json's global_step differs from N of checkpoint-N.",
    "The Trainer resumes at trainer_state.json's global_step and skips that many batches of data, "
    "while every tool that picks checkpoints goes by the folder name. When they disagree the data "
    "skip, the LR schedule and the logging all continue from the wrong step.",
)
LOG_HISTORY_ORDER = Rule(
    "CKPT015", "log-history-not-monotonic", WARNING,
    "log_history steps go backwards.",
    "Each log entry carries the step it was logged at; in one run they only go up. Steps going back "
    "mean two runs were merged into this state (a restart from step 0 into the same output_dir), so "
    "metrics and the best-model bookkeeping mix runs.",
)
LOG_HISTORY_AHEAD = Rule(
    "CKPT016", "log-history-ahead", ERROR,
    "log_history records steps after global_step.",
    "A checkpoint's state cannot have logged the future: the file was copied from a later save or "
    "edited. The resume would continue from a state that is not the one the weights belong to.",
)
BEST_MODEL_MISSING = Rule(
    "CKPT017", "best-model-checkpoint-missing", WARNING,
    "best_model_checkpoint points at a folder that does not exist.",
    "With load_best_model_at_end the Trainer loads that folder at the end of training (a crash after "
    "days of work), and checkpoint rotation protects a folder that is gone.",
)
RESUME_TARGET_UNUSABLE = Rule(
    "CKPT018", "resume-target-unusable", ERROR,
    "The checkpoint that resume_from_checkpoint=True would pick is unusable.",
    "transformers' get_last_checkpoint takes the checkpoint-N with the largest N without looking "
    "inside. If that one is broken the resume fails, or worse, trains from a damaged state. Resume "
    "from the newest usable checkpoint instead (fix --unsafe quarantines the broken one by renaming, "
    "so that transformers no longer picks it).",
)
OLDER_CHECKPOINT_UNUSABLE = Rule(
    "CKPT019", "older-checkpoint-unusable", WARNING,
    "A checkpoint other than the resume target is unusable.",
    "It does not block this resume, but it is no fallback: if the newest checkpoint turns out bad "
    "you cannot go back to this one. Diagnose it directly for details.",
)
NO_CHECKPOINT = Rule(
    "CKPT020", "no-checkpoint", INFO,
    "The output_dir has no checkpoint-N folder: training would start from step 0.",
    "resume_from_checkpoint=True finds nothing to resume and the Trainer raises, while a plain start "
    "begins from scratch. Check that this is the output_dir you meant.",
)
TMP_CHECKPOINT_DEBRIS = Rule(
    "CKPT021", "tmp-checkpoint-debris", WARNING,
    "A tmp-checkpoint-N folder is left over from an interrupted save.",
    "Some transformers versions save into tmp-checkpoint-N and rename it when the save is complete. "
    "A leftover one is a save that never finished; it holds disk space and confuses tools that list "
    "checkpoints by prefix.",
)
NON_FINITE_WEIGHTS = Rule(
    "CKPT022", "weights-non-finite", ERROR,
    "NaN or Inf values in the weights (--deep).",
    "A model whose weights hold NaN or Inf produces NaN losses from the first resumed step; the run "
    "diverged before this save. Resume from an earlier checkpoint.",
)
ADAPTER_CONFIG_INVALID = Rule(
    "CKPT023", "adapter-config-invalid", ERROR,
    "PEFT adapter weights without a readable adapter_config.json.",
    "PEFT needs adapter_config.json (rank, alpha, target modules) to rebuild the adapter before "
    "loading its weights; without it the adapter cannot be resumed.",
)
DEEPSPEED_INCOMPLETE = Rule(
    "CKPT024", "deepspeed-state-incomplete", ERROR,
    "The DeepSpeed checkpoint is incomplete (latest tag, model or optimizer states).",
    "DeepSpeed resumes from the folder named in `latest`; that folder must hold the model states "
    "(mp_rank_*_model_states.pt) and the optimizer states (*_optim_states.pt).",
)
LEGACY_PICKLE = Rule(
    "CKPT025", "legacy-pickle-file", WARNING,
    "A torch file in the pre-1.6 pickle format that cannot be verified safely.",
    "Old torch.save files are a bare pickle, not a zip archive. Their structure can only be checked "
    "by unpickling them, which the doctor never does for a checkpoint that may come from anyone.",
)
MODEL_CONFIG_INVALID = Rule(
    "CKPT026", "model-config-invalid", WARNING,
    "config.json is missing or unreadable next to full model weights.",
    "from_pretrained needs config.json to build the model, and the Trainer compares it with the "
    "running model on resume. Without it the checkpoint can only be loaded into a model built by hand.",
)

FILE_UNREADABLE = Rule(
    "CKPT027", "file-unreadable", ERROR,
    "A file of the checkpoint cannot be read (permissions, dangling link, I/O error, a FIFO or device).",
    "The resume has to read every file of the checkpoint. A file that cannot even be opened (a "
    "dangling symlink into a cleaned-up scratch disk, missing permissions, a failing disk) stops the "
    "resume after the GPUs are allocated. A FIFO, device or socket in place of a file (or a link to one, "
    "such as /dev/zero) blocks or never ends when read: resumedoctor never reads it, the resume would hang.",
)

TRAINING_ARGS_UNSAFE = Rule(
    "CKPT028", "training-args-unsafe-pickle", ERROR,
    "A pickle of the checkpoint (training_args.bin, optimizer, scheduler, RNG, scaler) would run code, "
    "exhausts a reader, or is not the one torch.load reads.",
    "These files should pickle nothing but argument classes, tensors and containers: the globals "
    "transformers, TRL and torch really write, an explicit allow-list. This one names another global "
    "(os.system, eval, torch.hub.load, ...), uses a data class in a way that runs its code, is built to "
    "exhaust memory or time, or holds a second pickle that differs from the data.pkl torch.load reads. "
    "Loading it with torch.load(weights_only=False), as some tools and notebooks do, can run that code; "
    "the resume itself loads optimizer, scheduler, RNG and scaler states with torch.load, and "
    "torch.load(weights_only=True) refuses such a global. resumedoctor read it with a restricted scanner "
    "that ran nothing. Treat the whole checkpoint as untrusted.",
)
TRAINING_ARGS_CUSTOM_CLASS = Rule(
    "CKPT037", "training-args-custom-class", WARNING,
    "training_args.bin holds the arguments as an instance of the run's own class (a TrainingArguments subclass).",
    "A training script that subclasses TrainingArguments or a TRL config (`__main__.MyArgs`, "
    "`my_pkg.config.MyGRPOConfig`) saves its arguments as that class. resumedoctor read the file without "
    "importing the class: it accepts a class outside its allow-list only as the class of an object rebuilt "
    "without running code (no __init__, no call with arguments) whose state is a TrainingArguments', so the "
    "saved arguments are still compared with the recipe. A resume does not load training_args.bin, so the "
    "checkpoint stays usable. torch.load(weights_only=False) on this file would import the class's module "
    "(and run what it runs on import); torch.load(weights_only=True) refuses it. Any other global outside the "
    "allow-list is CKPT028.",
)

SEAL_MISMATCH = Rule(
    "CKPT029", "seal-mismatch", ERROR,
    "A file disagrees with the checkpoint's seal (missing, another size, or with --deep another content).",
    f"{SEAL_FILE} was written as the last act of the save, with every file's size and "
    "content hash. A difference means the checkpoint changed since: a truncated copy, a lost file, or "
    "a flipped byte that no size or header check can see.",
)
UNSEALED_SAVE = Rule(
    "CKPT030", "unsealed-save", ERROR,
    "No seal while the run sealed its saves, and the save is not whole: it did not finish.",
    "With SealCallback every save ends with its seal. A newer checkpoint without one whose files are "
    "damaged, or lack files that the earlier sealed save wrote (another process's file, a callback's "
    "state), was cut off during its save. A checkpoint whose files are all whole and only lacks the seal "
    "is CKPT034 instead. `fix --unsafe` quarantines it.",
)
SEAL_INVALID = Rule(
    "CKPT031", "seal-invalid", WARNING,
    f"{SEAL_FILE} cannot be read.",
    "The seal is JSON written atomically; an unreadable one was damaged after the save. The checkpoint "
    "is checked as if it had no seal. `fix --auto` replaces it with a seal made after the fact (marked "
    "so) when the checkpoint has no error.",
)

SEAL_WITHOUT_HASHES = Rule(
    "CKPT032", "seal-without-hashes", INFO,
    "The seal has file sizes but no content hashes: --deep could not compare contents.",
    "SealCallback writes the sizes as the save ends and the hashes a moment later in the background. "
    "A process that died in between left a finished, size-checked save whose contents cannot be "
    "compared with the seal; `resumedoctor seal` does not re-hash it (it could bless a changed file).",
)

SHARDED_STATE_INCOMPLETE = Rule(
    "CKPT033", "sharded-state-incomplete", ERROR,
    "An FSDP sharded-state folder (pytorch_model_fsdp_N/ or optimizer_N/) is incomplete or damaged.",
    "With SHARDED_STATE_DICT, accelerate saves the model and the optimizer through "
    "torch.distributed.checkpoint: every process writes its __<rank>_<n>.distcp files, then the main "
    "process writes .metadata (temp file, then rename), which says where every tensor's bytes are. "
    "Without .metadata the save was cut off and the load fails; a .distcp file that is missing or "
    "shorter than .metadata says loses a process's shard. torch loads .metadata with pickle: resumedoctor "
    "reads it with a reader that runs nothing, and reports one that names code to run.",
)
SEAL_INTERRUPTED = Rule(
    "CKPT034", "seal-interrupted", WARNING,
    "The save finished but its seal was not written: the process died while sealing.",
    "SealCallback writes the seal right after the Trainer's last file. A checkpoint of a sealing run "
    "whose files are all present and whole, but that has no seal (a half-written seal temp file, or "
    "none while the previous save was sealed), was saved completely and the process died before the "
    "seal was in place. Resuming from it is fine; without a seal later diagnoses cannot compare its "
    "files with what was saved. `fix --auto` seals it after the fact (marked so in the seal).",
)
SEALING_STOPPED = Rule(
    "CKPT035", "sealing-stopped", INFO,
    "Later checkpoints have no seal: the run stopped sealing its saves.",
    "An earlier checkpoint was sealed at save time and more than one save since has none, so the saves "
    "went on without SealCallback (removed from the script, or a resume without it). These checkpoints "
    "are checked like any unsealed one; `resumedoctor seal` seals them after the fact.",
)

ROTATED_LOOKALIKE = Rule(
    "CKPT036", "rotation-deletes-lookalike", WARNING,
    "A folder such as checkpoint-6.bak is a checkpoint to transformers' rotation.",
    "transformers' rotation (save_total_limit) lists `checkpoint-*` folders and orders them by the first "
    "number after `checkpoint-`: a backup named checkpoint-6.bak or checkpoint-6-old is counted and "
    "deleted like any old checkpoint, while resume_from_checkpoint=True never picks it. Move backups "
    "out of the output_dir, or name them without the `checkpoint-` prefix.",
)

ENTROPY_STATE_MISSING = Rule(
    "CKPT038", "entropy-state-missing", ERROR,
    "GRPO's adaptive entropy state (entropy_ctrl_state.json) is missing: the save was cut off after trainer_state.json.",
    "With use_adaptive_entropy, GRPOTrainer writes entropy_ctrl_state.json after trainer_state.json, as the last "
    "file of the save, and reads it back on resume. Without it the save did not finish, and a resume from it "
    "restarts the adaptive entropy coefficient at the recipe's entropy_coef without a word: the entropy bonus "
    "trains with another coefficient than the run had reached. Resume from the previous checkpoint.",
)
ENTROPY_STATE_INVALID = Rule(
    "CKPT039", "entropy-state-invalid", ERROR,
    "entropy_ctrl_state.json is not a JSON object with numeric entropy_coef and last_world_entropy.",
    "GRPOTrainer writes the file with a plain open()/json.dump (not atomically) and on resume reads "
    "state[\"entropy_coef\"] and state[\"last_world_entropy\"]: a cut-off or edited file fails the resume with a "
    "JSON or key error, and a non-number fails the first training step. NaN or Infinity (which json reads) "
    "resumes with a non-finite coefficient or gate: GRPO writes them only from a diverged run or an edit.",
)
SCALER_MISSING = Rule(
    "CKPT040", "scaler-state-missing", WARNING,
    "The run trained in fp16 with a GradScaler but the checkpoint has no scaler.pt.",
    "transformers saves accelerate's GradScaler as scaler.pt (fp16 on an accelerator, without DeepSpeed) and "
    "loads it only when the file is there. Without it the loss scale restarts at torch's initial 65536: the "
    "first resumed steps overflow and are skipped (the optimizer does not step) until the scale has come "
    "down again. The run continues, a few steps go to waste.",
)

RULES = (
    TRAINER_STATE_MISSING, WEIGHTS_MISSING, SAFETENSORS_SIZE, SAFETENSORS_HEADER, SHARD_MISSING,
    SHARD_INDEX_INCOMPLETE, SHARD_INDEX_MISSING, SHARD_INDEX_INVALID, ARCHIVE_DAMAGED,
    TRAINING_ARGS_DAMAGED, RESUME_STATE_INCOMPLETE, MODEL_ONLY, TRAINER_STATE_INVALID,
    GLOBAL_STEP_MISMATCH, LOG_HISTORY_ORDER, LOG_HISTORY_AHEAD, BEST_MODEL_MISSING,
    RESUME_TARGET_UNUSABLE, OLDER_CHECKPOINT_UNUSABLE, NO_CHECKPOINT, TMP_CHECKPOINT_DEBRIS,
    NON_FINITE_WEIGHTS, ADAPTER_CONFIG_INVALID, DEEPSPEED_INCOMPLETE, LEGACY_PICKLE,
    MODEL_CONFIG_INVALID, FILE_UNREADABLE, TRAINING_ARGS_UNSAFE, SEAL_MISMATCH, UNSEALED_SAVE, SEAL_INVALID,
    SEAL_WITHOUT_HASHES, SHARDED_STATE_INCOMPLETE, SEAL_INTERRUPTED, SEALING_STOPPED, ROTATED_LOOKALIKE,
    TRAINING_ARGS_CUSTOM_CLASS, ENTROPY_STATE_MISSING, ENTROPY_STATE_INVALID, SCALER_MISSING,
)
# Findings that mean a file of the save is missing or damaged (not merely inconsistent state).
WHOLENESS_CODES = frozenset({
    TRAINER_STATE_MISSING.code, WEIGHTS_MISSING.code, SAFETENSORS_SIZE.code, SAFETENSORS_HEADER.code,
    SHARD_MISSING.code, SHARD_INDEX_INCOMPLETE.code, SHARD_INDEX_MISSING.code, SHARD_INDEX_INVALID.code,
    ARCHIVE_DAMAGED.code, RESUME_STATE_INCOMPLETE.code, TRAINER_STATE_INVALID.code, ADAPTER_CONFIG_INVALID.code,
    DEEPSPEED_INCOMPLETE.code, FILE_UNREADABLE.code, SHARDED_STATE_INCOMPLETE.code, ENTROPY_STATE_MISSING.code,
    ENTROPY_STATE_INVALID.code,
})

MAX_SEALED_WORLD = 1 << 20  # a seal's world_size above this is not believed (it would list a million files)
LATEST_LIMIT = 4096  # DeepSpeed's `latest` holds one tag folder name
SHARD_NAME = re.compile(r"^(model|adapter_model)-\d+-of-\d+\.safetensors$")
SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHT_FILES = (
    "model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json",
    "adapter_model.safetensors", "adapter_model.bin",
)
ARCHIVE_SUFFIXES = (".pt", ".pth", ".bin")
# The Trainer's own state archives, whose pickles are checked against the allow-list (DeepSpeed's and FSDP's
# files are loaded by those libraries, with globals of their own, and are only checked for structure).
STATE_PICKLES = frozenset({"optimizer.pt", "scheduler.pt", "scaler.pt"})
# accelerate's save_fsdp_model / save_fsdp_optimizer with SHARDED_STATE_DICT: torch.distributed.checkpoint folders.
DCP_DIR = re.compile(r"^(pytorch_model_fsdp|optimizer)_\d+$")
XLA_OPTIMIZER = re.compile(r"^rank\d+-of-\d+-optimizer\.pt$")


@dataclass(frozen=True)
class CheckpointLayout:
    """What kind of checkpoint a folder is, from file names alone."""

    folder: Path
    files: frozenset[str]
    deepspeed_tag_dirs: tuple[str, ...]
    fsdp: bool
    dirs: frozenset[str] = frozenset()
    special: tuple[tuple[str, str], ...] = ()  # (name, what it is): FIFOs, devices, sockets where files belong

    @property
    def shards(self) -> list[str]:
        return sorted(name for name in self.files if SHARD_NAME.match(name) and name.startswith("model-"))

    @property
    def is_peft(self) -> bool:
        return bool({"adapter_model.safetensors", "adapter_model.bin"} & self.files)

    @property
    def is_deepspeed(self) -> bool:
        return "latest" in self.files or bool(self.deepspeed_tag_dirs)

    @property
    def has_weights(self) -> bool:
        return bool(set(WEIGHT_FILES) & self.files) or bool(self.shards) or self.is_deepspeed or self.fsdp

    @property
    def rng_files(self) -> list[str]:
        return sorted(name for name in self.files if RNG_NAME.match(name))

    @property
    def rng_ranks(self) -> list[int]:
        """The ranks of the per-process rng_state_<rank>.pth files (a multi-process save)."""
        return sorted(int(m.group(1)) for name in self.files if (m := RNG_NAME.match(name)) and m.group(1))

    @property
    def dcp_dirs(self) -> list[str]:
        return sorted(name for name in self.dirs if DCP_DIR.match(name))

    @property
    def optimizer_state(self) -> list[str]:
        """Where the optimizer is, found as transformers' _load_optimizer_and_scheduler looks for it."""
        found = [name for name in ("optimizer.pt", "optimizer.bin") if name in self.files]
        found += sorted(name for name in self.dirs if "optimizer" in name)
        return found + sorted(name for name in self.files if XLA_OPTIMIZER.match(name))


def detect_layout(folder: Path) -> CheckpointLayout:
    files, dirs, tag_dirs, fsdp, special = set(), set(), [], False, []
    for entry in sorted(folder.iterdir()):
        kind = _special_kind(entry)
        if kind is not None:
            special.append((entry.name, kind))
        if entry.is_dir():
            dirs.add(entry.name)
            if TAG_DIR.match(entry.name):
                tag_dirs.append(entry.name)
            if entry.name.startswith("pytorch_model_fsdp"):
                fsdp = True
        else:
            files.add(entry.name)
            if entry.name.startswith("pytorch_model_fsdp"):
                fsdp = True
    return CheckpointLayout(folder, frozenset(files), tuple(tag_dirs), fsdp, frozenset(dirs), tuple(special))


def _special_kind(entry: Path) -> str | None:
    """What a FIFO, device or socket is (a link followed: a link to /dev/zero is a device); None otherwise."""
    try:
        mode = entry.stat().st_mode
    except OSError:
        return None  # a dangling link: the readers report it unreadable
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else file_kind(mode)


def _json_rule(error: JsonFileError, rule: Rule) -> Rule:
    return FILE_UNREADABLE if error.unreadable else rule


class CheckpointInspector:
    """Every per-checkpoint check for one folder; findings carry the checkpoint they concern."""

    def __init__(self, ctx: RunContext, folder: Path):
        self.ctx = ctx
        self.folder = folder
        self.unreadable: str | None = None
        try:
            self.layout = detect_layout(folder)
        except OSError as exc:
            self.unreadable = exc.strerror or str(exc)
            self.layout = CheckpointLayout(folder, frozenset(), (), False)
        self.headers: dict[str, object] = {}

    def finding(self, rule: Rule, message: str, path: Path | None = None, hint: str | None = None) -> Finding:
        found = rule.finding(message, path=str(path if path is not None else self.folder), hint=hint)
        found.extra["checkpoint"] = str(self.folder)
        return found

    def run(self) -> Iterator[Finding]:
        if self.unreadable:
            yield self.finding(FILE_UNREADABLE, f"the folder cannot be listed: {self.unreadable}")
            return
        found: list[Finding] = []
        for check in (self.check_special_files, self.check_save_completed, self.check_weights_present, self.check_safetensors_files,
                      self.check_shard_index, self.check_adapter_and_config, self.check_torch_archives,
                      self.check_sharded_state, self.check_resume_state, self.check_deepspeed,
                      self.check_trainer_state, self.check_after_trainer_state, self.check_scaler):
            found += check()
        found = _once_per_file(found)
        yield from found
        yield from self.check_seal(found)

    def check_special_files(self) -> Iterator[Finding]:
        """A FIFO, device or socket where a file belongs: reading it blocks or never ends (every reader here
        refuses it, the resume would hang or fail on it)."""
        for name, kind in self.layout.special:
            yield self.finding(FILE_UNREADABLE, f"{name} is {kind}, not a regular file: the resume would block "
                               "or fail reading it", self.folder / name,
                               hint="replace it with the real file from a good copy, or resume from an earlier checkpoint")

    def check_seal(self, found: list[Finding]) -> Iterator[Finding]:
        """The seal against the files; for an unsealed save of a sealing run, whether the save finished."""
        if SEAL_FILE in self.layout.files:
            yield from self.check_sealed()
            return
        step = checkpoint_step(self.folder)
        interrupted = SEAL_TEMP_FILE in self.layout.files
        ledger = seal_ledger(self.ctx, self.folder.parent)
        reference = ledger.reference(step) if step is not None else None
        if reference is None and not interrupted:
            return  # this run never sealed at save time (seals after the fact prove nothing about later saves)
        broken = [f for f in found if f.code in WHOLENESS_CODES]
        if reference is not None and not interrupted:
            count, since = ledger.unsealed_since(checkpoint_step(reference[0]))
            if count > 1:  # the run went on saving without sealing: the callback was gone, not cut off
                if not broken:  # a broken one is reported by its own findings
                    yield self.finding(SEALING_STOPPED, f"no seal: {reference[0].name} was sealed at save time, and "
                                       f"{count} saves since have none ({_names(f.name for f in since[:4])}"
                                       f"{f' and {count - 4} more' if count > 4 else ''})",
                                       hint=f"resumedoctor seal {self.folder.parent} seals them after the fact")
                return
        yield self.unsealed_save(step, broken, reference, interrupted)

    def unsealed_save(self, step: int | None, broken: list[Finding], reference: tuple[Path, dict] | None,
                      interrupted: bool) -> Finding:
        """A save of a sealing run without its seal: unfinished (CKPT030) unless every file is whole (CKPT034)."""
        lost = self.files_lost_since(*reference) if reference is not None else []
        if broken or lost:
            verb = "is" if len(lost) == 1 else "are"
            evidence = _error_summary(broken) if broken else (
                f"{_names(lost)}, which the save of {reference[0].name} wrote, {verb} missing")
            why = (f"its seal write was cut off: {SEAL_TEMP_FILE} is left" if interrupted
                   else f"{reference[0].name} was sealed at save time")
            return self.finding(UNSEALED_SAVE, f"no {SEAL_FILE} ({why}) and the save is not whole ({evidence}): "
                                f"the save{f' of step {step}' if step is not None else ''} did not finish",
                                self.folder / lost[0] if lost else self.folder,
                                hint="resume from the previous checkpoint (fix --unsafe quarantines this one)")
        how = (f"only the half-written {SEAL_TEMP_FILE}: the process died while writing the seal" if interrupted
               else f"while {reference[0].name} was sealed at save time: the process died before sealing this save")
        finding = self.finding(SEAL_INTERRUPTED, f"no {SEAL_FILE}, {how}; every file of the save is whole",
                               self.folder / SEAL_FILE, hint="safe to resume from; fix --auto seals it after the fact")
        finding.extra["seal_reason"] = "seal-interrupted"
        return finding

    def check_sealed(self) -> Iterator[Finding]:
        seal_path = self.folder / SEAL_FILE
        try:
            seal = seal_of(self.ctx, self.folder)
        except ValueError as exc:
            finding = self.finding(SEAL_INVALID, str(exc), seal_path,
                                   hint="fix --auto replaces it with a seal made after the fact "
                                        "if the checkpoint is usable")
            finding.extra["seal_reason"] = "seal-unreadable"
            yield finding
            return
        problems = verify(self.folder, seal, deep=self.ctx.options.deep)
        if self.ctx.options.deep and not seal.get("hashes_complete", True) and not problems:
            yield self.finding(SEAL_WITHOUT_HASHES, "the seal has sizes but no content hashes (the process ended "
                               "before hashing finished): contents not verified", seal_path)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            yield self.finding(SEAL_MISMATCH, f"{problems[0]}{more}", seal_path,
                               hint="the checkpoint changed after its save; use an earlier one or a good copy")

    def files_lost_since(self, reference: Path, seal: dict) -> list[str]:
        """Top-level files and folders the reference save wrote that this one lacks (per-process RNG
        files aside: a resume on fewer processes writes fewer of them)."""
        wrote = {_top_level(name) for name in seal["files"]}
        here = {_top_level(name) for name in self.layout.files | self.layout.dirs}
        return sorted(name for name in wrote - here if not RNG_NAME.match(name) and name != SEAL_FILE
                      and not name.endswith(TMP_SUFFIX))

    def check_save_completed(self) -> Iterator[Finding]:
        if "trainer_state.json" not in self.layout.files:
            step = checkpoint_step(self.folder)
            at = f" of step {step}" if step is not None else ""
            yield self.finding(
                TRAINER_STATE_MISSING,
                f"trainer_state.json is missing: the save{at} was cut off before it finished",
                self.folder / "trainer_state.json",
                hint="resume from the previous checkpoint (fix --unsafe quarantines this one)",
            )

    def check_weights_present(self) -> Iterator[Finding]:
        if not self.layout.has_weights:
            yield self.finding(
                WEIGHTS_MISSING,
                "no model weights (model.safetensors, shards with an index, adapter, DeepSpeed or FSDP state)",
                hint="the save was cut off before the weights were written; resume from an earlier checkpoint",
            )

    def check_safetensors_files(self) -> Iterator[Finding]:
        for name in sorted(self.layout.files):
            if not name.endswith(".safetensors"):
                continue
            path = self.folder / name
            try:
                header = self.ctx.safetensors_header(path)
            except SafetensorsError as exc:
                rule = FILE_UNREADABLE if exc.unreadable else SAFETENSORS_SIZE if exc.truncated else SAFETENSORS_HEADER
                yield self.finding(rule, f"{name}: {exc.reason}", path, hint="this file is damaged; use an earlier checkpoint or a good copy")
                continue
            self.headers[name] = header
            problem = header.size_problem()
            if problem:
                yield self.finding(SAFETENSORS_SIZE, f"{name}: {problem}", path, hint="copy the file again from a good source, or resume from an earlier checkpoint")
            elif self.ctx.options.deep:
                bad = count_non_finite(header)
                if bad:
                    worst = ", ".join(f"{tensor} ({count})" for tensor, count in sorted(bad.items(), key=lambda kv: -kv[1])[:5])
                    yield self.finding(
                        NON_FINITE_WEIGHTS,
                        f"{name}: {sum(bad.values())} NaN/Inf values in {len(bad)} tensors: {worst}",
                        path,
                        hint="the run diverged before this save; resume from an earlier checkpoint",
                    )

    def check_shard_index(self) -> Iterator[Finding]:
        shards = self.layout.shards
        index_path = self.folder / SAFETENSORS_INDEX
        if SAFETENSORS_INDEX not in self.layout.files:
            if shards:
                yield self.finding(
                    SHARD_INDEX_MISSING,
                    f"{len(shards)} safetensors shards but no {SAFETENSORS_INDEX}",
                    index_path,
                    hint="fix --auto rebuilds the index from the shard headers",
                )
            return
        try:
            index = self.ctx.read_json(index_path)
        except JsonFileError as exc:
            yield self.finding(_json_rule(exc, SHARD_INDEX_INVALID), f"{SAFETENSORS_INDEX}: {exc.reason}", index_path)
            return
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            yield self.finding(SHARD_INDEX_INVALID, f"{SAFETENSORS_INDEX}: no weight_map of tensor name to shard file", index_path)
            return
        named = sorted(set(weight_map.values()))
        for shard in named:
            if shard not in self.layout.files:
                count = sum(1 for value in weight_map.values() if value == shard)
                yield self.finding(
                    SHARD_MISSING,
                    f"{SAFETENSORS_INDEX} maps {count} tensors to {shard}, which does not exist",
                    self.folder / shard,
                    hint="restore the shard from a good copy, or resume from an earlier checkpoint",
                )
        for shard in sorted(set(named) | set(shards)):
            header = self.headers.get(shard)
            if header is None:
                continue  # missing or unreadable: reported above
            in_shard = set(header.tensors)
            mapped_here = {tensor for tensor, target in weight_map.items() if target == shard}
            unindexed = sorted(in_shard - set(weight_map))
            elsewhere = sorted(t for t in in_shard & set(weight_map) if weight_map[t] != shard)
            absent = sorted(mapped_here - in_shard)
            parts = []
            if unindexed:
                parts.append(f"{len(unindexed)} tensors not in the index (e.g. {unindexed[0]})")
            if elsewhere:
                parts.append(f"{len(elsewhere)} tensors mapped to another shard (e.g. {elsewhere[0]})")
            if absent:
                parts.append(f"{len(absent)} indexed tensors absent from the shard (e.g. {absent[0]})")
            if parts:
                yield self.finding(SHARD_INDEX_INCOMPLETE, f"{shard}: " + "; ".join(parts), self.folder / shard,
                                   hint="rebuild the index from the shard headers (fix --auto) if the shards are whole")

    def check_adapter_and_config(self) -> Iterator[Finding]:
        if self.layout.is_peft:
            path = self.folder / "adapter_config.json"
            reason = None
            if "adapter_config.json" not in self.layout.files:
                reason = "adapter_config.json is missing"
            else:
                try:
                    config = self.ctx.read_json(path)
                    if not isinstance(config, dict):
                        reason = "adapter_config.json is not a JSON object"
                except JsonFileError as exc:
                    reason = f"adapter_config.json: {exc.reason}"
            if reason:
                yield self.finding(ADAPTER_CONFIG_INVALID, reason, path)
        full_weights = {"model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin"} & self.layout.files
        if full_weights and not self.layout.is_peft:
            path = self.folder / "config.json"
            if "config.json" not in self.layout.files:
                yield self.finding(MODEL_CONFIG_INVALID, "config.json is missing next to the model weights", path)
            else:
                try:
                    if not isinstance(self.ctx.read_json(path), dict):
                        yield self.finding(MODEL_CONFIG_INVALID, "config.json is not a JSON object", path)
                except JsonFileError as exc:
                    yield self.finding(_json_rule(exc, MODEL_CONFIG_INVALID), f"config.json: {exc.reason}", path)

    def _archive_findings(self, path: Path, label: str) -> Iterator[Finding]:
        report = self.ctx.torch_archive(path)
        if report.legacy_pickle:
            try:
                self.ctx.load(check_legacy_pickle, path)
            except UnsafePickleError as exc:
                yield self._unsafe(path, exc.reason)
                return
            except (PickleReadError, ReasonError):
                pass  # its first pickle cannot be judged either: the warning below says "not verified"
            yield self.finding(LEGACY_PICKLE, f"{label}: legacy pickle format, not verified (never unpickled)", path)
        elif report.unreadable:
            yield self.finding(FILE_UNREADABLE, f"{label}: {report.problems[0]}", path)
        elif report.suspicious:
            yield self._unsafe(path, report.suspicious[0])
        elif report.problems:
            rule = TRAINING_ARGS_DAMAGED if path.name == "training_args.bin" else ARCHIVE_DAMAGED
            more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
            yield self.finding(rule, f"{label}: {report.problems[0]}{more}", path,
                               hint="this file is damaged; resume from an earlier checkpoint" if rule is ARCHIVE_DAMAGED else None)

    def check_torch_archives(self) -> Iterator[Finding]:
        for name in sorted(self.layout.files):
            if name.endswith(ARCHIVE_SUFFIXES):
                yield from self._archive_findings(self.folder / name, name)
        for name in sorted(self.layout.files):
            if name in STATE_PICKLES or RNG_NAME.match(name):
                yield from self.check_state_pickle(self.folder / name)
        if "training_args.bin" in self.layout.files and self.ctx.torch_archive(self.folder / "training_args.bin").ok:
            yield from self.check_training_args_pickle(self.folder / "training_args.bin")

    def _unsafe(self, path: Path, reason: str) -> Finding:
        return self.finding(TRAINING_ARGS_UNSAFE, f"{path.name} {reason}; nothing was run", path,
                            hint="do not torch.load this checkpoint; find out where it came from")

    def check_state_pickle(self, path: Path) -> Iterator[Finding]:
        """The pickle of optimizer.pt, scheduler.pt, rng_state*.pth, scaler.pt: only allowed globals (scanned, not loaded)."""
        if not self.ctx.torch_archive(path).ok:
            return  # damaged or crafted: _archive_findings reports it
        try:
            self.ctx.load(check_state_pickle, path)
        except UnsafePickleError as exc:
            yield self._unsafe(path, exc.reason)
        except PickleReadError as exc:
            yield self.finding(ARCHIVE_DAMAGED, f"{path.name}: {exc.reason}", path,
                               hint="this file is damaged; resume from an earlier checkpoint")

    def check_training_args_pickle(self, path: Path) -> Iterator[Finding]:
        try:
            arguments = self.ctx.training_args(path)
            for qualname in arguments.get(UNLISTED_KEY, ()):
                module = qualname.rpartition(".")[0]
                yield self.finding(
                    TRAINING_ARGS_CUSTOM_CLASS,
                    f"training_args.bin was saved from {printable(qualname, limit=200)}, a class of the run's own; "
                    f"read without importing it. A resume does not load this file",
                    path, hint=f"nothing to do for the resume; torch.load(weights_only=False) on this file would "
                               f"import {printable(module, limit=200)}")
        except UnsafePickleError as exc:
            yield self._unsafe(path, exc.reason)
        except PickleReadError as exc:
            yield self.finding(TRAINING_ARGS_DAMAGED, f"training_args.bin: {exc.reason}", path)

    def check_resume_state(self) -> Iterator[Finding]:
        layout = self.layout
        if not layout.is_deepspeed:  # DeepSpeed keeps the optimizer (and often the schedule) in its folder
            optimizer = "the FSDP optimizer (optimizer.bin or optimizer_0/)" if layout.fsdp else "optimizer.pt"
            present = {optimizer: bool(layout.optimizer_state), "scheduler.pt": "scheduler.pt" in layout.files,
                       "rng_state*.pth": bool(layout.rng_files)}
            if not any(present.values()):
                if self.lost_training_state():
                    yield self.finding(RESUME_STATE_INCOMPLETE, "missing optimizer.pt, scheduler.pt and "
                                       "rng_state.pth, while training_args.bin says save_only_model=False: the save "
                                       "lost its training state, and a resume restarts the optimizer, the LR "
                                       "schedule and the random state", hint="resume from the previous checkpoint")
                    return
                yield self.finding(
                    MODEL_ONLY,
                    "no optimizer.pt, scheduler.pt or rng_state.pth: a resume restarts the optimizer, the LR schedule and the random state",
                    hint="expected with save_only_model=True; otherwise the save lost its training state",
                )
                return
            if not all(present.values()):
                missing = ", ".join(name for name, ok in present.items() if not ok)
                also = (" (transformers loads the optimizer only with scheduler.pt: both restart)"
                        if present[optimizer] and not present["scheduler.pt"] else "")
                yield self.finding(RESUME_STATE_INCOMPLETE, f"missing {missing}{also}",
                                   hint="resume from the previous checkpoint")
        if layout.rng_files:
            yield from self.check_rank_files()

    def check_rank_files(self) -> Iterator[Finding]:
        """One rng_state_<rank>.pth per process: none may be missing between 0 and the last process."""
        ranks = self.layout.rng_ranks
        expected, why = (max(ranks) + 1, f"rng_state_{max(ranks)}.pth is here") if ranks else (0, "")
        if ranks == [0]:  # transformers names the file by rank only when more than one process saves
            expected, why = 2, "rng_state_0.pth is a per-process name: one process alone writes rng_state.pth"
        counted = self.process_count()
        if counted is not None and (counted[0] > max(expected, 1) or (ranks == [0] and counted[0] >= expected)):
            expected, why = counted
        missing = [rank for rank in range(expected) if rank not in ranks]
        if missing:
            names = _names([f"rng_state_{rank}.pth" for rank in missing])
            yield self.finding(RESUME_STATE_INCOMPLETE, f"missing {names} of a save by {expected} processes ({why})",
                               self.folder / f"rng_state_{missing[0]}.pth",
                               hint="that process's RNG is not restored on resume; resume from the previous checkpoint")

    def process_count(self) -> tuple[int, str] | None:
        """How many processes at least wrote this save: the seal's world size, the per-process files of FSDP or DeepSpeed."""
        counts = []
        sealed = (readable_seal(self.ctx, self.folder) or {}).get("world_size")
        if isinstance(sealed, int) and not isinstance(sealed, bool) and 1 < sealed <= MAX_SEALED_WORLD:
            counts.append((sealed, f"the seal says {sealed} processes saved"))
        for name in self.layout.dcp_dirs:
            try:
                ranks = self.ctx.load(read_dcp_index, self.folder / name).ranks
            except DcpMetadataError:
                continue  # reported by check_sharded_state
            if ranks:
                counts.append((max(ranks) + 1, f"{name}/ holds the files of {max(ranks) + 1} processes"))
        for tag in self.deepspeed_tags():
            ranks = _deepspeed_ranks(self.folder / tag, DEEPSPEED_OPTIM)
            if ranks:
                dp = max(max(values) for values in ranks.values()) + 1
                counts.append((dp, f"{tag}/ holds the optimizer states of {dp} processes"))
        return max(counts) if counts else None

    def deepspeed_tags(self) -> tuple[str, ...]:
        """The tag folder `latest` names (what DeepSpeed resumes from), or every one when it names none here."""
        try:
            tag = read_text_bounded(self.folder / "latest", LATEST_LIMIT).strip()
        except ReasonError:
            return self.layout.deepspeed_tag_dirs
        return (tag,) if tag in self.layout.deepspeed_tag_dirs else self.layout.deepspeed_tag_dirs

    def check_sharded_state(self) -> Iterator[Finding]:
        """FSDP's torch.distributed.checkpoint folders: .metadata written, every byte it names present."""
        for name in self.layout.dcp_dirs:
            folder = self.folder / name
            if not (folder / METADATA_FILE).is_file():
                when = ("while writing it" if (folder / f"{METADATA_FILE}.tmp").exists()
                        else "before torch.distributed.checkpoint finished it")
                yield self.finding(SHARDED_STATE_INCOMPLETE, f"{name}/ has no {METADATA_FILE}: the save was cut off {when}",
                                   folder, hint="resume from the previous checkpoint")
                continue
            try:
                index = self.ctx.load(read_dcp_index, folder)
            except DcpMetadataError as exc:
                if exc.unfamiliar:
                    continue  # a torch this reader does not know: the shards cannot be judged, nor blamed
                yield self.finding(SHARDED_STATE_INCOMPLETE, f"{name}/{exc.reason}", folder / METADATA_FILE,
                                   hint="do not load this checkpoint; find out where it came from" if exc.unsafe
                                   else "resume from the previous checkpoint")
                continue
            problems = _dcp_problems(folder, index)
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                yield self.finding(SHARDED_STATE_INCOMPLETE, f"{name}/{problems[0]}{more}", folder,
                                   hint="a process's shard is lost or cut off; resume from the previous checkpoint")

    def check_deepspeed(self) -> Iterator[Finding]:
        if not self.layout.is_deepspeed:
            return
        latest_path = self.folder / "latest"
        if "latest" not in self.layout.files:
            yield self.finding(DEEPSPEED_INCOMPLETE, "no `latest` file naming the DeepSpeed tag folder", latest_path)
            return
        try:
            tag = read_text_bounded(latest_path, LATEST_LIMIT).strip()
        except ReasonError as exc:
            yield self.finding(DEEPSPEED_INCOMPLETE, f"`latest` {exc.reason}", latest_path)
            return
        tag_dir = self.folder / tag
        if not tag or "/" in tag or not tag_dir.is_dir():
            yield self.finding(DEEPSPEED_INCOMPLETE, f"`latest` names {tag!r}, which is not a folder here", latest_path)
            return
        try:
            names = sorted(entry.name for entry in tag_dir.iterdir() if entry.is_file())
        except OSError as exc:
            yield self.finding(FILE_UNREADABLE, f"{tag}/ cannot be listed: {exc.strerror or exc}", tag_dir)
            return
        if not any(name.endswith("model_states.pt") for name in names):
            yield self.finding(DEEPSPEED_INCOMPLETE, f"{tag}/ holds no *model_states.pt", tag_dir)
        if not any(name.endswith("optim_states.pt") for name in names):
            yield self.finding(DEEPSPEED_INCOMPLETE, f"{tag}/ holds no *optim_states.pt", tag_dir)
        yield from self.check_deepspeed_ranks(tag, names)
        for name in names:
            if name.endswith(ARCHIVE_SUFFIXES):
                yield from self._archive_findings(tag_dir / name, f"{tag}/{name}")

    def check_deepspeed_ranks(self, tag: str, names: list[str]) -> Iterator[Finding]:
        """Every data-parallel rank's optimizer (and ZeRO-3 model) file: DeepSpeed loads all of them."""
        # Without tensor or pipeline parallelism every process is a data-parallel rank with its own RNG file.
        pure_data_parallel = not any(name.startswith("layer_") for name in names)
        rng = self.layout.rng_ranks
        for pattern, what in ((DEEPSPEED_OPTIM, "optimizer states"), (DEEPSPEED_ZERO3_MODEL, "ZeRO-3 model states")):
            by_mp = _deepspeed_ranks(self.folder / tag, pattern, names)
            for mp_rank, dp_ranks in sorted(by_mp.items()):
                count, why = max(dp_ranks) + 1, ""
                if pure_data_parallel and list(by_mp) == [0] and rng and max(rng) + 1 > count:
                    count, why = max(rng) + 1, f"; rng_state_{max(rng)}.pth says {max(rng) + 1} processes saved"
                missing = [rank for rank in range(count) if rank not in dp_ranks]
                if missing:
                    yield self.finding(DEEPSPEED_INCOMPLETE, f"{tag}/ holds the {what} of data-parallel ranks "
                                       f"{_names(map(str, sorted(dp_ranks)))} (model-parallel rank {mp_rank}) but not "
                                       f"{_names(map(str, missing))}{why}: DeepSpeed loads every rank's file",
                                       self.folder / tag)

    def lost_training_state(self) -> bool:
        """A completed save (trainer_state.json written) whose saved arguments say it is not model-only."""
        if "trainer_state.json" not in self.layout.files:
            return False  # cut off mid-save: check_save_completed says so
        return (self.saved_arguments() or {}).get("save_only_model") is False

    def saved_arguments(self) -> dict | None:
        """The checkpoint's saved arguments (restricted unpickler), or None when they cannot be read (reported)."""
        if "training_args.bin" not in self.layout.files:
            return None
        try:
            return self.ctx.training_args(self.folder / "training_args.bin")
        except (UnsafePickleError, PickleReadError, ReasonError, OSError):
            return None  # CKPT010 / CKPT028 / CKPT027

    def check_after_trainer_state(self) -> Iterator[Finding]:
        """What GRPO writes after trainer_state.json and reads back on resume: the adaptive entropy state."""
        path = self.folder / ENTROPY_STATE
        if ENTROPY_STATE in self.layout.files:
            yield from self.check_entropy_state(path)
            return
        if "trainer_state.json" not in self.layout.files:
            return  # cut off earlier: CKPT001
        arguments = self.saved_arguments()
        if not arguments or arguments.get("use_adaptive_entropy") is not True:
            return  # not a run with adaptive entropy (or no way to tell: nothing is claimed)
        coef = arguments.get("entropy_coef")
        restart = f" at entropy_coef {coef}" if isinstance(coef, (int, float)) else ""
        yield self.finding(ENTROPY_STATE_MISSING, f"{ENTROPY_STATE} is missing while training_args.bin sets "
                           "use_adaptive_entropy: GRPO writes it after trainer_state.json, so the save was cut off "
                           f"at its last file; a resume from it restarts the entropy coefficient{restart}", path,
                           hint="resume from the previous checkpoint (fix --unsafe quarantines this one)")

    def check_entropy_state(self, path: Path) -> Iterator[Finding]:
        try:
            state = self.ctx.read_json(path)
        except JsonFileError as exc:
            yield self.finding(_json_rule(exc, ENTROPY_STATE_INVALID), f"{ENTROPY_STATE}: {exc.reason}", path,
                               hint="GRPO's resume fails reading it; resume from the previous checkpoint")
            return
        bad = ([key for key in ENTROPY_KEYS if not _is_number(state.get(key))] if isinstance(state, dict)
               else list(ENTROPY_KEYS))
        if bad:
            what = "is not a JSON object" if not isinstance(state, dict) else f"has no number for {', '.join(bad)}"
            yield self.finding(ENTROPY_STATE_INVALID, f"{ENTROPY_STATE} {what}: GRPO's resume reads "
                               f"{' and '.join(ENTROPY_KEYS)} from it and fails", path,
                               hint="resume from the previous checkpoint")
            return
        infinite = [f"{key}={state[key]!r}" for key in ENTROPY_KEYS
                    if isinstance(state[key], float) and not math.isfinite(state[key])]
        if infinite:  # json reads NaN / Infinity; GRPO saves them only from a diverged run or an edit
            yield self.finding(ENTROPY_STATE_INVALID, f"{ENTROPY_STATE} holds {', '.join(infinite)}: GRPO's resume "
                               "takes it as it is and trains with a non-finite entropy coefficient or gate (the "
                               "loss turns NaN, or the entropy bonus is never applied)", path,
                               hint="resume from the previous checkpoint")

    def check_scaler(self) -> Iterator[Finding]:
        """fp16 on an accelerator without DeepSpeed: accelerate's GradScaler, saved as scaler.pt."""
        if SCALER_FILE in self.layout.files or self.layout.is_deepspeed or "trainer_state.json" not in self.layout.files:
            return
        if not ({"scheduler.pt", "optimizer.pt"} & self.layout.files or self.layout.fsdp):
            return  # model-only: CKPT012 says every state restarts
        arguments = self.saved_arguments()
        if not arguments or arguments.get("fp16") is not True or arguments.get("use_cpu") is True \
                or arguments.get("deepspeed"):
            return  # no GradScaler in that run (bf16, fp32, CPU, DeepSpeed's own)
        yield self.finding(SCALER_MISSING, f"training_args.bin says fp16, and there is no {SCALER_FILE}: the "
                           f"GradScaler restarts at {TORCH_INITIAL_SCALE:.0f}, so the first resumed steps overflow "
                           "and are skipped until the scale comes down", self.folder / SCALER_FILE,
                           hint="resume from a checkpoint that has scaler.pt if one exists; otherwise expect a few "
                                "skipped steps after the resume")

    def check_trainer_state(self) -> Iterator[Finding]:
        path = self.folder / "trainer_state.json"
        if "trainer_state.json" not in self.layout.files:
            return
        try:
            state = self.ctx.read_json(path)
        except JsonFileError as exc:
            yield self.finding(_json_rule(exc, TRAINER_STATE_INVALID), f"trainer_state.json: {exc.reason}", path,
                               hint="resume from the previous checkpoint")
            return
        problem = trainer_state_problem(state)
        if problem is not None:
            yield self.finding(TRAINER_STATE_INVALID, f"trainer_state.json: {problem}", path,
                               hint="the Trainer fails on it when resuming; resume from the previous checkpoint")
            return
        global_step = self.ctx.global_step(self.folder)
        step = checkpoint_step(self.folder)
        mismatch = None
        if step is not None and global_step != step:
            mismatch = self.finding(
                GLOBAL_STEP_MISMATCH,
                f"trainer_state.json says global_step {global_step}, the folder says {step}",
                path,
                hint="fix --auto restores global_step when log_history agrees with the folder name",
            )
            yield mismatch
        history = state.get("log_history") or []
        steps = [entry["step"] for entry in history if isinstance(entry, dict) and isinstance(entry.get("step"), int)]
        backwards = [(a, b) for a, b in zip(steps, steps[1:]) if b < a]
        if backwards:
            a, b = backwards[0]
            yield self.finding(LOG_HISTORY_ORDER, f"log_history goes back from step {a} to step {b} ({len(backwards)} times)", path)
        ahead = [s for s in steps if s > global_step]
        if ahead:
            finding = self.finding(LOG_HISTORY_AHEAD, f"log_history has {len(ahead)} entries after global_step "
                                   f"{global_step} (up to step {max(ahead)})", path)
            if mismatch is not None and max(ahead) <= (step or 0):  # a wrong global_step, not a wrong history
                finding.extra["caused_by"] = [mismatch]
            yield finding
        best = state.get("best_model_checkpoint")
        if isinstance(best, str) and best:
            best_path = Path(best)
            in_output_dir = self.ctx.target.output_dir / best_path.name
            if not best_path.exists() and not in_output_dir.exists():
                yield self.finding(
                    BEST_MODEL_MISSING,
                    f"best_model_checkpoint is {best}, which does not exist",
                    path,
                    hint="fix --auto sets it to null",
                )


def _once_per_file(findings: list[Finding]) -> list[Finding]:
    """One CKPT027 per file: the generic "not a regular file" finding, not each reader's echo of it."""
    seen: set[str | None] = set()
    kept = []
    for finding in findings:
        if finding.code == FILE_UNREADABLE.code:
            if finding.path in seen:
                continue
            seen.add(finding.path)
        kept.append(finding)
    return kept


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names(names) -> str:
    names = list(names)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _top_level(relative: str) -> str:
    """A seal's path reduced to what comparing two saves needs: its top-level name, any tag folder alike."""
    first = relative.split("/", 1)[0]
    return "global_step*" if TAG_DIR.match(first) else first


def _deepspeed_ranks(tag_dir: Path, pattern: re.Pattern, names: list[str] | None = None) -> dict[int, set[int]]:
    """Per model-parallel rank, the data-parallel ranks that wrote a file of this kind."""
    if names is None:
        try:
            names = [entry.name for entry in tag_dir.iterdir()]
        except OSError:
            return {}
    ranks: dict[int, set[int]] = {}
    for name in names:
        if match := pattern.match(name):
            ranks.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    return ranks


def _dcp_problems(folder: Path, index: DcpIndex) -> list[str]:
    """The files .metadata names that are missing, outside the folder, or shorter than it says."""
    problems = []
    for relative, needed in sorted(index.needed_bytes.items()):
        if Path(relative).name != relative or relative in ("", ".", ".."):
            problems.append(f"{METADATA_FILE} names {relative!r}, which is not a file of this folder")
            continue
        try:
            size = (folder / relative).stat().st_size
        except OSError:
            problems.append(f"{relative} is missing ({METADATA_FILE} names it)")
            continue
        if size < needed:
            problems.append(f"{relative} is {size} bytes, {METADATA_FILE} needs {needed}: cut off")
    return problems


class SealLedger:
    """The checkpoints of one output_dir and their seals, listed and read once per run.

    Every unsealed checkpoint asks for the newest older save-time seal and for the unsealed saves
    after it; answered from one listing, with each answer remembered, so the cost is linear in the
    number of checkpoints (a scan per checkpoint took 35 s for 1,000 of them).
    """

    def __init__(self, ctx: RunContext, checkpoints: list[Path]):
        self.ctx = ctx
        self.checkpoints = checkpoints
        self.steps = [checkpoint_step(folder) or 0 for folder in checkpoints]
        self._sealing_before: dict[int, int | None] = {}  # i -> newest j < i sealed while sealing
        self._unsealed: list[int] | None = None  # indices saved while nothing was sealing
        self._unsealed_steps: list[int] = []

    def _sealing(self, index: int) -> bool:
        folder = self.checkpoints[index]
        seal = readable_seal(self.ctx, folder)
        return seal is not None and sealing_was_on(seal)

    def reference(self, step: int) -> tuple[Path, dict] | None:
        """The newest checkpoint older than `step` sealed while the run was sealing, with its seal."""
        found = self._newest_sealing_before(bisect.bisect_left(self.steps, step))
        return None if found is None else (self.checkpoints[found], seal_of(self.ctx, self.checkpoints[found]))

    def _newest_sealing_before(self, end: int) -> int | None:
        pending, index = [], end
        while index > 0 and index not in self._sealing_before:
            if self._sealing(index - 1):
                self._sealing_before[index] = index - 1
                break
            pending.append(index)
            index -= 1
        found = self._sealing_before.get(index) if index > 0 else None
        for seen in pending:  # every index walked past has the same answer
            self._sealing_before[seen] = found
        return found

    def unsealed_since(self, step: int, shown: int = 5) -> tuple[int, list[Path]]:
        """How many checkpoints after `step` were saved while nothing was sealing (no seal, or one made
        after the fact), and the first `shown` of them."""
        if self._unsealed is None:
            self._unsealed = [i for i, folder in enumerate(self.checkpoints) if not _sealed_while_sealing(self.ctx, folder)]
            self._unsealed_steps = [self.steps[i] for i in self._unsealed]
        first = bisect.bisect_right(self._unsealed_steps, step)
        return len(self._unsealed) - first, [self.checkpoints[i] for i in self._unsealed[first:first + shown]]


def seal_ledger(ctx: RunContext, output_dir: Path) -> SealLedger:
    return ctx.memo(("seal-ledger", output_dir), lambda: SealLedger(ctx, ctx.checkpoints_in(output_dir)))


def _sealed_while_sealing(ctx: RunContext, folder: Path) -> bool:
    """Saved while SealCallback was sealing: a seal made then (an unreadable seal was too)."""
    if not (folder / SEAL_FILE).is_file():
        return False
    seal = readable_seal(ctx, folder)
    return seal is None or sealing_was_on(seal)


def inspect_checkpoint(ctx: RunContext, folder: Path) -> list[Finding]:
    """Every CKPT finding of one checkpoint folder, computed once per run."""
    return ctx.memo(("checkpoint-integrity", folder), lambda: list(CheckpointInspector(ctx, folder).run()))


def _error_summary(errors: list[Finding]) -> str:
    """`CKPT003 model.safetensors, CKPT009 optimizer.pt`: which rule, which file."""
    return ", ".join(sorted({f"{e.code} {Path(e.path).name}" if e.path else e.code for e in errors}))


def check_output_dir(ctx: RunContext) -> Iterator[Finding]:
    target = ctx.target
    if not target.output_dir.exists():  # `launch` before the first start: the Trainer creates it
        yield NO_CHECKPOINT.finding(f"{target.output_dir} does not exist yet (the Trainer creates it)",
                                    path=str(target.output_dir))
        return
    yield from _leftover_folders(ctx)
    if not target.checkpoints:
        final = f" (only the final model: {', '.join(target.final_model)})" if target.finished else ""
        nested = _runs_inside(target.output_dir)
        meant = f"; did you mean {' or '.join(str(run) for run in nested)}?" if nested else ""
        yield NO_CHECKPOINT.finding(f"{target.output_dir} holds no checkpoint-N folder{final}{meant}",
                                    path=str(target.output_dir))
        return
    per_checkpoint = {folder: inspect_checkpoint(ctx, folder) for folder in target.checkpoints}
    judged = _pinned_by_recipe(ctx)
    if judged is None:  # no usable checkpoint pinned by the recipe: resume_from_checkpoint=True picks the newest
        judged = target.checkpoint
        yield from per_checkpoint[judged]
        unusable = _newest_unusable(ctx, per_checkpoint, judged)
        if unusable is not None:
            yield unusable
    else:  # the recipe resumes this (usable) checkpoint: the others are no resume target
        yield from per_checkpoint[judged]
    yield from _unusable_others(ctx, per_checkpoint, judged)


def _leftover_folders(ctx: RunContext) -> Iterator[Finding]:
    """Debris of an interrupted save, and backups that transformers' rotation counts as checkpoints."""
    target = ctx.target
    for entry in (target.output_dir / name for name in target.subfolders):  # listed once, in resolve_target
        if TMP_CHECKPOINT_NAME.match(entry.name):
            debris = TMP_CHECKPOINT_DEBRIS.finding(
                f"{entry.name} is left over from an interrupted save", path=str(entry),
                hint="fix --auto moves it into quarantine",
            )
            debris.extra["checkpoint"] = str(entry)
            yield debris
        elif ROTATION_NAME.match(entry.name) and not CHECKPOINT_NAME.match(entry.name):
            yield ROTATED_LOOKALIKE.finding(
                f"{entry.name} counts as checkpoint {ROTATION_NAME.match(entry.name).group(1)} to transformers' rotation: "
                "with save_total_limit it is deleted like an old checkpoint", path=str(entry),
                hint=f"move {entry.name} out of {target.output_dir}")


def _newest_unusable(ctx: RunContext, per_checkpoint: dict[Path, list[Finding]], newest: Path) -> Finding | None:
    """CKPT018 when the checkpoint resume_from_checkpoint=True picks has an error; None when it is usable."""
    newest_errors = ctx.blocking_errors(per_checkpoint[newest])
    if not newest_errors:
        return None
    usable = [folder for folder in per_checkpoint if not ctx.blocking_errors(per_checkpoint[folder])]
    fallback = usable[-1] if usable else None
    instead = f"the newest usable checkpoint is {fallback.name}" if fallback else "no checkpoint here is usable"
    hint = (f"repair {newest.name} (its findings above), or resume from {fallback} (fix --unsafe quarantines "
            f"{newest.name})" if fallback else "repair it, start from scratch or restore a good copy")
    age = recently_written(newest)
    if age is not None:  # a save in progress looks exactly like a cut-off one, for a moment
        hint = (f"files in {newest.name} were written {age:.0f} s ago: if a trainer is still saving, wait for "
                f"the save to finish and check again (fix will not quarantine a save in progress); otherwise {hint}")
    finding = RESUME_TARGET_UNUSABLE.finding(
        f"resume_from_checkpoint=True would pick {newest.name}, which is unusable "
        f"({_error_summary(newest_errors)}); {instead}",
        path=str(newest), hint=hint,
    )
    finding.extra.update(checkpoint=str(newest), fallback=str(fallback) if fallback else None,
                         caused_by=newest_errors)
    return finding


def _runs_inside(folder: Path, most: int = 3) -> list[Path]:
    """Subfolders that hold checkpoint-N folders: the output_dir one level down that PATH probably meant."""
    found = []
    for entry in sorted(folder.iterdir()):
        try:
            if entry.is_dir() and not entry.is_symlink() and any(CHECKPOINT_NAME.match(n) for n in os.listdir(entry)):
                found.append(entry)
        except OSError:
            continue
        if len(found) == most:
            break
    return found


def _pinned_by_recipe(ctx: RunContext) -> Path | None:
    """The checkpoint of this output_dir that the recipe's resume_from_checkpoint names, when it is usable."""
    explicit, point = ctx.explicit_resume_path(), ctx.resume_point()
    if explicit is None or point is None or os.path.realpath(explicit) != os.path.realpath(point):
        return None  # no pin, or the named checkpoint is unusable: judged as resume_from_checkpoint=True
    by_path = {os.path.realpath(folder): folder for folder in ctx.target.checkpoints}
    return by_path.get(os.path.realpath(point))


def _unusable_others(ctx: RunContext, per_checkpoint: dict[Path, list[Finding]], judged: Path) -> Iterator[Finding]:
    """CKPT019 for every checkpoint but the judged one that has an error."""
    for folder, findings in per_checkpoint.items():
        errors = ctx.blocking_errors(findings)
        if folder != judged and errors:
            finding = OLDER_CHECKPOINT_UNUSABLE.finding(
                f"{folder.name} is unusable ({_error_summary(errors)})", path=str(folder),
                hint=f"resumedoctor diagnose {folder} for details",
            )
            finding.extra["checkpoint"] = str(folder)
            yield finding


def run(ctx: RunContext) -> Iterator[Finding]:
    if ctx.target.is_output_dir:
        yield from check_output_dir(ctx)
    elif ctx.target.checkpoint is not None:
        yield from inspect_checkpoint(ctx, ctx.target.checkpoint)


FAMILY = CheckFamily(
    name="checkpoint-integrity",
    prefix="CKPT",
    title="Checkpoint integrity: files whole, headers and archives consistent, state written",
    rules=RULES,
    run=run,
    services={CHECKPOINT_FINDINGS: inspect_checkpoint},
)

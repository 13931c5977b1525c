"""CKPT: is the checkpoint that the resume will load whole, and consistent with itself?

Everything here reads file headers, zip directories and small JSON files; tensors are read only
with `--deep`, and no pickle is ever loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.context import JsonFileError, RunContext
from resumedoctor.findings import Finding, Rule, Severity
from resumedoctor.registry import CheckFamily
from resumedoctor.safe_pickle import PickleReadError, UnsafePickleError
from resumedoctor.safetensors_header import SafetensorsError, count_non_finite
from resumedoctor.seal import SEAL_FILE, read_seal, verify
from resumedoctor.target import TMP_CHECKPOINT_NAME, checkpoint_step, list_checkpoints

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

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
    "Some but not all of optimizer.pt, scheduler.pt and rng_state*.pth are present.",
    "A full checkpoint holds the optimizer, the LR scheduler and the RNG state, written in that "
    "order before trainer_state.json. When only part of them is there the save was interrupted or "
    "files were lost; the resume fails or restarts the optimizer or the schedule silently.",
)
MODEL_ONLY = Rule(
    "CKPT012", "model-only-checkpoint", WARNING,
    "The checkpoint holds no optimizer, scheduler or RNG state (save_only_model).",
    "A resume from it starts a fresh optimizer (Adam moments at zero), restarts the learning-rate "
    "warmup and reseeds the data order: the loss curve jumps and the run is not the one you paused.",
)
TRAINER_STATE_INVALID = Rule(
    "CKPT013", "trainer-state-invalid", ERROR,
    "trainer_state.json cannot be parsed or is not a JSON object.",
    "The Trainer reads global_step, the log history and callback states from trainer_state.json on "
    "resume; garbage there fails the resume with a JSON error.",
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
    "A file of the checkpoint cannot be read (permissions, dangling link, I/O error).",
    "The resume has to read every file of the checkpoint. A file that cannot even be opened (a "
    "dangling symlink into a cleaned-up scratch disk, missing permissions, a failing disk) stops the "
    "resume after the GPUs are allocated.",
)

TRAINING_ARGS_UNSAFE = Rule(
    "CKPT028", "training-args-unsafe-pickle", ERROR,
    "training_args.bin holds a pickle that would run code when loaded.",
    "training_args.bin should pickle nothing but the argument classes of transformers, TRL and "
    "accelerate. This one names another global (os.system, eval, subprocess, ...): loading it with "
    "torch.load(weights_only=False), as some tools and notebooks do, runs that code. resumedoctor read "
    "it with a restricted unpickler that ran nothing. Treat the whole checkpoint as untrusted.",
)

SEAL_MISMATCH = Rule(
    "CKPT029", "seal-mismatch", ERROR,
    "A file disagrees with the checkpoint's seal (missing, another size, or with --deep another content).",
    "resumedoctor.seal.json was written as the last act of the save, with every file's size and "
    "content hash. A difference means the checkpoint changed since: a truncated copy, a lost file, or "
    "a flipped byte that no size or header check can see.",
)
UNSEALED_SAVE = Rule(
    "CKPT030", "unsealed-save", ERROR,
    "The checkpoint has no seal while an older checkpoint of the run has one: its save did not finish.",
    "With SealCallback the seal is the last file of every save. A newer checkpoint without one was cut "
    "off during its save, even if every file it has looks whole. `fix --unsafe` quarantines it.",
)
SEAL_INVALID = Rule(
    "CKPT031", "seal-invalid", WARNING,
    "resumedoctor.seal.json cannot be read.",
    "The seal is JSON written atomically; an unreadable one was damaged after the save. The checkpoint "
    "is checked as if it had no seal.",
)

SEAL_WITHOUT_HASHES = Rule(
    "CKPT032", "seal-without-hashes", INFO,
    "The seal has file sizes but no content hashes: --deep could not compare contents.",
    "SealCallback writes the sizes as the save ends and the hashes a moment later in the background. "
    "A process that died in between left a finished, size-checked save whose contents cannot be "
    "compared with the seal; `resumedoctor seal` does not re-hash it (it could bless a changed file).",
)

RULES = (
    TRAINER_STATE_MISSING, WEIGHTS_MISSING, SAFETENSORS_SIZE, SAFETENSORS_HEADER, SHARD_MISSING,
    SHARD_INDEX_INCOMPLETE, SHARD_INDEX_MISSING, SHARD_INDEX_INVALID, ARCHIVE_DAMAGED,
    TRAINING_ARGS_DAMAGED, RESUME_STATE_INCOMPLETE, MODEL_ONLY, TRAINER_STATE_INVALID,
    GLOBAL_STEP_MISMATCH, LOG_HISTORY_ORDER, LOG_HISTORY_AHEAD, BEST_MODEL_MISSING,
    RESUME_TARGET_UNUSABLE, OLDER_CHECKPOINT_UNUSABLE, NO_CHECKPOINT, TMP_CHECKPOINT_DEBRIS,
    NON_FINITE_WEIGHTS, ADAPTER_CONFIG_INVALID, DEEPSPEED_INCOMPLETE, LEGACY_PICKLE,
    MODEL_CONFIG_INVALID, FILE_UNREADABLE, TRAINING_ARGS_UNSAFE, SEAL_MISMATCH, UNSEALED_SAVE, SEAL_INVALID,
    SEAL_WITHOUT_HASHES,
)

SHARD_NAME = re.compile(r"^(model|adapter_model)-\d+-of-\d+\.safetensors$")
SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHT_FILES = (
    "model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json",
    "adapter_model.safetensors", "adapter_model.bin",
)
ARCHIVE_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass(frozen=True)
class CheckpointLayout:
    """What kind of checkpoint a folder is, from file names alone."""

    folder: Path
    files: frozenset[str]
    deepspeed_tag_dirs: tuple[str, ...]
    fsdp: bool

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
        return sorted(name for name in self.files if re.match(r"^rng_state(_\d+)?\.pth$", name))


def detect_layout(folder: Path) -> CheckpointLayout:
    files, tag_dirs, fsdp = set(), [], False
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            if re.match(r"^global_step\d+$", entry.name):
                tag_dirs.append(entry.name)
            if entry.name.startswith("pytorch_model_fsdp"):
                fsdp = True
        else:
            files.add(entry.name)
            if entry.name.startswith("pytorch_model_fsdp"):
                fsdp = True
    return CheckpointLayout(folder, frozenset(files), tuple(tag_dirs), fsdp)


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
        yield from self.check_save_completed()
        yield from self.check_weights_present()
        yield from self.check_safetensors_files()
        yield from self.check_shard_index()
        yield from self.check_adapter_and_config()
        yield from self.check_torch_archives()
        yield from self.check_resume_state()
        yield from self.check_deepspeed()
        yield from self.check_trainer_state()
        yield from self.check_seal()

    def check_seal(self) -> Iterator[Finding]:
        seal_path = self.folder / SEAL_FILE
        if SEAL_FILE in self.layout.files:
            try:
                seal = read_seal(self.folder)
            except ValueError as exc:
                yield self.finding(SEAL_INVALID, str(exc), seal_path)
                return
            problems = verify(self.folder, seal, deep=self.ctx.options.deep)
            if self.ctx.options.deep and not seal.get("hashes_complete", True) and not problems:
                yield self.finding(SEAL_WITHOUT_HASHES, "the seal has sizes but no content hashes (the process ended "
                                   "before hashing finished): contents not verified", seal_path)
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                yield self.finding(SEAL_MISMATCH, f"{problems[0]}{more}", seal_path,
                                   hint="the checkpoint changed after its save; use an earlier one or a good copy")
            return
        step = checkpoint_step(self.folder)
        if step is None:
            return
        older_sealed = [c for c in list_checkpoints(self.folder.parent)
                        if (checkpoint_step(c) or 0) < step and (c / SEAL_FILE).is_file()]
        if older_sealed:
            yield self.finding(UNSEALED_SAVE, f"no {SEAL_FILE}, while {older_sealed[-1].name} has one: the save of "
                               f"step {step} did not finish", seal_path,
                               hint="resume from the previous checkpoint (fix --unsafe quarantines this one)")

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
            yield self.finding(LEGACY_PICKLE, f"{label}: legacy pickle format, not verified (never unpickled)", path)
        elif report.unreadable:
            yield self.finding(FILE_UNREADABLE, f"{label}: {report.problems[0]}", path)
        elif report.problems:
            rule = TRAINING_ARGS_DAMAGED if path.name == "training_args.bin" else ARCHIVE_DAMAGED
            more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
            yield self.finding(rule, f"{label}: {report.problems[0]}{more}", path,
                               hint="this file is damaged; resume from an earlier checkpoint" if rule is ARCHIVE_DAMAGED else None)

    def check_torch_archives(self) -> Iterator[Finding]:
        for name in sorted(self.layout.files):
            if name.endswith(ARCHIVE_SUFFIXES):
                yield from self._archive_findings(self.folder / name, name)
        if "training_args.bin" in self.layout.files and self.ctx.torch_archive(self.folder / "training_args.bin").ok:
            yield from self.check_training_args_pickle(self.folder / "training_args.bin")

    def check_training_args_pickle(self, path: Path) -> Iterator[Finding]:
        try:
            self.ctx.training_args(path)
        except UnsafePickleError as exc:
            yield self.finding(TRAINING_ARGS_UNSAFE, f"training_args.bin names {exc.global_name}; it was not run", path,
                               hint="do not torch.load this checkpoint; find out where it came from")
        except PickleReadError as exc:
            yield self.finding(TRAINING_ARGS_DAMAGED, f"training_args.bin: {exc.reason}", path)

    def check_resume_state(self) -> Iterator[Finding]:
        if self.layout.is_deepspeed:
            return  # DeepSpeed keeps the optimizer in its own folder: check_deepspeed
        present = {
            "optimizer.pt": "optimizer.pt" in self.layout.files,
            "scheduler.pt": "scheduler.pt" in self.layout.files,
            "rng_state*.pth": bool(self.layout.rng_files),
        }
        if not any(present.values()):
            yield self.finding(
                MODEL_ONLY,
                "no optimizer.pt, scheduler.pt or rng_state.pth: a resume restarts the optimizer, the LR schedule and the data order",
                hint="expected with save_only_model=True; otherwise the save lost its training state",
            )
        elif not all(present.values()):
            missing = ", ".join(name for name, ok in present.items() if not ok)
            yield self.finding(RESUME_STATE_INCOMPLETE, f"missing {missing}", hint="resume from the previous checkpoint")

    def check_deepspeed(self) -> Iterator[Finding]:
        if not self.layout.is_deepspeed:
            return
        latest_path = self.folder / "latest"
        if "latest" not in self.layout.files:
            yield self.finding(DEEPSPEED_INCOMPLETE, "no `latest` file naming the DeepSpeed tag folder", latest_path)
            return
        try:
            tag = latest_path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            yield self.finding(DEEPSPEED_INCOMPLETE, f"`latest` cannot be read: {exc}", latest_path)
            return
        tag_dir = self.folder / tag
        if not tag or not tag_dir.is_dir():
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
        for name in names:
            if name.endswith(ARCHIVE_SUFFIXES):
                yield from self._archive_findings(tag_dir / name, f"{tag}/{name}")

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
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            yield self.finding(TRAINER_STATE_INVALID, "trainer_state.json is not an object with an integer global_step", path)
            return
        global_step = state["global_step"]
        step = checkpoint_step(self.folder)
        if step is not None and global_step != step:
            yield self.finding(
                GLOBAL_STEP_MISMATCH,
                f"trainer_state.json says global_step {global_step}, the folder says {step}",
                path,
                hint="fix --auto restores global_step when log_history agrees with the folder name",
            )
        history = state.get("log_history") or []
        steps = [entry["step"] for entry in history if isinstance(entry, dict) and isinstance(entry.get("step"), int)]
        backwards = [(a, b) for a, b in zip(steps, steps[1:]) if b < a]
        if backwards:
            a, b = backwards[0]
            yield self.finding(LOG_HISTORY_ORDER, f"log_history goes back from step {a} to step {b} ({len(backwards)} times)", path)
        ahead = [s for s in steps if s > global_step]
        if ahead:
            yield self.finding(LOG_HISTORY_AHEAD, f"log_history has {len(ahead)} entries after global_step {global_step} (up to step {max(ahead)})", path)
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


def inspect_checkpoint(ctx: RunContext, folder: Path) -> list[Finding]:
    """Every CKPT finding of one checkpoint folder, computed once per run."""
    return ctx.memo(("checkpoint-integrity", folder), lambda: list(CheckpointInspector(ctx, folder).run()))


def newest_usable_checkpoint(ctx: RunContext) -> Path | None:
    """The newest checkpoint-N of the output_dir without an error finding (what a fixed resume uses)."""
    for folder in reversed(list_checkpoints(ctx.target.output_dir)):
        if not _errors(ctx, inspect_checkpoint(ctx, folder)):
            return folder
    return None


def _error_summary(errors: list[Finding]) -> str:
    """`CKPT003 model.safetensors, CKPT009 optimizer.pt`: which rule, which file."""
    return ", ".join(sorted({f"{e.code} {Path(e.path).name}" if e.path else e.code for e in errors}))


def _errors(ctx: RunContext, findings: list[Finding]) -> list[Finding]:
    """The findings that make a checkpoint unusable: errors the user did not ignore (select does not count)."""
    return [f for f in findings if not ctx.settings.is_ignored(f.code) and ctx.severity_of(f) is Severity.ERROR]


def check_output_dir(ctx: RunContext) -> Iterator[Finding]:
    target = ctx.target
    if not target.output_dir.exists():  # `launch` before the first start: the Trainer creates it
        yield NO_CHECKPOINT.finding(f"{target.output_dir} does not exist yet (the Trainer creates it)",
                                    path=str(target.output_dir))
        return
    for entry in sorted(target.output_dir.iterdir()):
        if entry.is_dir() and TMP_CHECKPOINT_NAME.match(entry.name):
            debris = TMP_CHECKPOINT_DEBRIS.finding(
                f"{entry.name} is left over from an interrupted save", path=str(entry),
                hint="fix --auto moves it into quarantine",
            )
            debris.extra["checkpoint"] = str(entry)
            yield debris
    if not target.checkpoints:
        yield NO_CHECKPOINT.finding(f"{target.output_dir} holds no checkpoint-N folder", path=str(target.output_dir))
        return
    per_checkpoint = {folder: inspect_checkpoint(ctx, folder) for folder in target.checkpoints}
    newest = target.checkpoint
    yield from per_checkpoint[newest]
    usable = [folder for folder in target.checkpoints if not _errors(ctx, per_checkpoint[folder])]
    newest_errors = _errors(ctx, per_checkpoint[newest])
    if newest_errors:
        fallback = usable[-1] if usable else None
        instead = f"the newest usable checkpoint is {fallback.name}" if fallback else "no checkpoint here is usable"
        finding = RESUME_TARGET_UNUSABLE.finding(
            f"resume_from_checkpoint=True would pick {newest.name}, which is unusable "
            f"({_error_summary(newest_errors)}); {instead}",
            path=str(newest),
            hint=f"resume from {fallback} (fix --unsafe quarantines {newest.name})" if fallback else "start from scratch or restore a good copy",
        )
        finding.extra.update(checkpoint=str(newest), fallback=str(fallback) if fallback else None)
        yield finding
    for folder in target.checkpoints[:-1]:
        errors = _errors(ctx, per_checkpoint[folder])
        if errors:
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
)

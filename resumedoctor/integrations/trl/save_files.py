"""Every file a checkpoint save writes, in the order it is written, who writes it, and what a resume does with it.

Read from the save code of transformers 5.24 (`Trainer._save_checkpoint`, `save_model`, `_save`,
`_save_optimizer_and_scheduler`, `_save_scaler`, `_save_rng_state`), TRL 1.16 (every trainer's
`_save_checkpoint` writes the model card first; GRPO writes `entropy_ctrl_state.json` after
`trainer_state.json`) and accelerate 1.15 (`Accelerator.save_state`, `save_fsdp_model`,
`save_fsdp_optimizer`), and confirmed by the modification times of a real save
(tests/checks/test_save_files.py). docs/checkpoint-files.md is generated from this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAIN = "main process"
EVERY = "every process"

ENTROPY_STATE = "entropy_ctrl_state.json"
ENTROPY_KEYS = ("entropy_coef", "last_world_entropy")  # GRPOTrainer._load_optimizer_and_scheduler reads both
SCALER_FILE = "scaler.pt"
TORCH_INITIAL_SCALE = 2.0 ** 16  # torch.amp.GradScaler(init_scale=65536.0): where a scaler without its state restarts


@dataclass(frozen=True)
class SavedFile:
    """One file (or folder, or family of files) of a save."""

    shown: str  # the name as docs and messages show it
    pattern: str  # regex on the top-level name inside checkpoint-N
    writer: str  # MAIN or EVERY
    when: str  # when it is written at all
    on_resume: str  # what the resume does with it
    if_missing: str  # what a resume does when it is missing

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


MODEL_CARD = SavedFile(
    "../README.md (model card)", r"(?!)", MAIN, "TRL trainers, before anything else (create_model_card)",
    "not read", "nothing: it is the output_dir's model card, not part of the checkpoint")
TRAINER_FILES = (
    SavedFile("config.json, generation_config.json", r"config\.json|generation_config\.json", MAIN,
              "full weights (save_pretrained writes the config before the weights)",
              "from_pretrained builds the model from it; the Trainer compares it with the running model",
              "the weights cannot be loaded into a model built from the checkpoint"),
    SavedFile("model.safetensors, or model-*-of-*.safetensors then model.safetensors.index.json",
              r"model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin(\.index\.json)?",
              MAIN, "full weights (FSDP only with FULL_STATE_DICT)", "loaded into the model",
              "the resume fails (\"Can't find a valid checkpoint\")"),
    SavedFile("adapter_model.safetensors, README.md, adapter_config.json",
              r"adapter_model\.(safetensors|bin)|adapter_config\.json|README\.md", MAIN, "PEFT",
              "the adapter is loaded into the PEFT model", "the resume fails"),
    SavedFile("tokenizer files (tokenizer_config.json, chat_template.jinja, tokenizer.json, ...)",
              r"tokenizer.*|chat_template\.jinja|special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt"
              r"|.*\.model|preprocessor_config\.json|processor_config\.json",
              MAIN, "a processing_class is set", "not read by the resume (the script builds its own)", "nothing"),
    SavedFile("training_args.bin", r"training_args\.bin", MAIN, "always (last file of save_model)",
              "not read by the resume", "nothing for the resume; the record of the arguments is lost"),
    SavedFile("optimizer.pt", r"optimizer\.pt", MAIN, "not save_only_model; no DeepSpeed or FSDP",
              "loaded, but only when scheduler.pt is there too",
              "the optimizer restarts silently (Adam moments at zero)"),
    SavedFile("pytorch_model_fsdp_0/, optimizer_0/ (FSDP SHARDED_STATE_DICT; torch.distributed.checkpoint: "
              "__<rank>_0.distcp per process, then .metadata)",
              r"pytorch_model_fsdp_\d+(_rank\d+\.bin|\.bin)?|optimizer_\d+(_rank\d+)?(\.bin)?|optimizer\.bin", EVERY,
              "FSDP (FULL_STATE_DICT: optimizer.bin from the main process; LOCAL_STATE_DICT or use_dcp=False: "
              "one *_rank<r>.bin per process)", "loaded by accelerate's load_fsdp_model / load_fsdp_optimizer",
              "the resume fails"),
    SavedFile("global_step<N>/ (mp_rank_00_model_states.pt, zero_pp_rank_<r>_mp_rank_00_optim_states.pt per "
              "process), latest, zero_to_fp32.py",
              r"global_step\d+|latest|zero_to_fp32\.py", EVERY, "DeepSpeed (engine.save_checkpoint)",
              "DeepSpeed loads the tag `latest` names, every rank's optimizer partition; the data-parallel world "
              "size must be the saved one unless the checkpoint is universal",
              "the resume fails (\"Can't find a valid checkpoint\" / a missing partition)"),
    SavedFile("scheduler.pt", r"scheduler\.pt", MAIN, "not save_only_model; with DeepSpeed only for a scheduler "
              "DeepSpeed does not own", "loaded with the optimizer",
              "optimizer and schedule both restart silently (the LR starts over)"),
    SavedFile(SCALER_FILE, r"scaler\.pt", MAIN, "fp16 mixed precision on an accelerator without DeepSpeed "
              "(accelerate's GradScaler); never on CPU or with bf16", "the GradScaler's state is loaded",
              "the loss scale restarts at 65536: the first resumed steps overflow and are skipped"),
    SavedFile("rng_state.pth (one process) or rng_state_<rank>.pth (one per process)", r"rng_state(_\d+)?\.pth",
              EVERY, "not save_only_model",
              "each process loads its own file: rng_state_<process_index>.pth when world_size > 1, else "
              "rng_state.pth", "that process draws fresh random numbers; transformers logs it at INFO only"),
    SavedFile("trainer_state.json", r"trainer_state\.json", MAIN,
              "always; the Trainer's last file (rotation of old checkpoints follows)",
              "global_step, log history, callback states: where the resume continues", "the resume fails"),
)
GRPO_FILES = (
    SavedFile(ENTROPY_STATE, re.escape(ENTROPY_STATE), MAIN,
              "GRPO with use_adaptive_entropy, after trainer_state.json (and after rotation)",
              "GRPOTrainer._load_optimizer_and_scheduler sets entropy_coef and last_world_entropy from it "
              "(json.load, then both keys: a cut-off or edited file fails the resume)",
              "the adaptive entropy coefficient restarts silently at the recipe's entropy_coef"),
)
SEAL_FILES = (
    SavedFile(".resumedoctor-seal.json", r"\.resumedoctor-seal\.json(\.tmp)?", MAIN,
              "with resumedoctor's SealCallback: on_save, after every file above", "read by resumedoctor only",
              "nothing for the resume"),
)
ACCELERATE_SAVE_STATE = (
    SavedFile("pytorch_model_fsdp_<i>/ or model.safetensors (model_<i>.safetensors)", r"(?!)", EVERY,
              "per prepared model (FSDP: every process; otherwise the main process)", "load_state", "load fails"),
    SavedFile("optimizer_<i>/ or optimizer.bin (optimizer_<i>.bin)", r"(?!)", MAIN,
              "per prepared optimizer (FSDP: every process)", "load_state", "load fails"),
    SavedFile("scheduler.bin, sampler.bin, dl_state_dict.bin", r"(?!)", MAIN,
              "per scheduler / seedable sampler / stateful dataloader", "load_state", "that state restarts"),
    SavedFile("scaler.pt", r"(?!)", MAIN, "fp16 with a GradScaler", "load_state", "the loss scale restarts"),
    SavedFile("random_states_<process_index>.pkl", r"(?!)", EVERY, "always", "load_state",
              "that process draws fresh random numbers"),
    SavedFile("custom_checkpoint_<i>.pkl", r"(?!)", MAIN, "per register_for_checkpointing object",
              "load_state", "load fails"),
)

# Trainers and the order of their files. TRL's SFT, DPO, RLOO, KTO, Reward and Distillation trainers override
# _save_checkpoint only to write the model card first; GRPO also writes its entropy state last.
SAVES: dict[str, tuple[SavedFile, ...]] = {
    "transformers Trainer": TRAINER_FILES,
    "TRL SFTTrainer, DPOTrainer, RLOOTrainer, KTOTrainer, RewardTrainer, DistillationTrainer":
        (MODEL_CARD, *TRAINER_FILES),
    "TRL GRPOTrainer": (MODEL_CARD, *TRAINER_FILES, *GRPO_FILES),
    "accelerate Accelerator.save_state (not a Trainer checkpoint)": ACCELERATE_SAVE_STATE,
}


def write_position(name: str, order: tuple[SavedFile, ...] = (*TRAINER_FILES, *GRPO_FILES, *SEAL_FILES)) -> int | None:
    """Where a top-level file of checkpoint-N comes in the write order; None for a file no save writes."""
    for position, entry in enumerate(order):
        if entry.matches(name):
            return position
    return None


def markdown() -> str:
    """The tables of docs/checkpoint-files.md."""
    lines = []
    for trainer, files in SAVES.items():
        lines += [f"### {trainer}", "", "| # | file | written by | when | on resume | if missing |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {n} | `{f.shown}` | {f.writer} | {f.when} | {f.on_resume} | {f.if_missing} |"
                  for n, f in enumerate(files, 1)]
        lines.append("")
    return "\n".join(lines)


# ---- the per-process names, as the savers spell them (read by CKPT and DIST alike) -----------------------------
# rng_state.pth: one process; rng_state_<rank>.pth: each of many. A rank has at most 6 digits (the launch
# counts up to 1,000,000 processes): a crafted 200-digit "rank" is no rank file, not a range to walk.
RNG_NAME = re.compile(r"^rng_state(?:_(\d{1,6}))?\.pth$")
DEEPSPEED_TAG = re.compile(r"^global_step\d+$")
DEEPSPEED_OPTIM = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
DEEPSPEED_ZERO3_MODEL = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
# DeepSpeed's ds_to_universal writes <tag>_universal/ (mp_rank_*_model_states.pt and zero/<param>/fp32.pt,
# exp_avg.pt, ...) and a `latest_universal` file beside `latest`; engine.load_checkpoint reads that tag instead
# of `latest` only with {"checkpoint": {"load_universal": true}} in the DeepSpeed config.
DEEPSPEED_UNIVERSAL_LATEST = "latest_universal"
DEEPSPEED_UNIVERSAL_ZERO = "zero"
# accelerate's FSDP savers with LOCAL_STATE_DICT (or SHARDED_STATE_DICT with use_dcp=False): one file per process,
# each loaded back by the process of the same index.
FSDP_RANK_FILE = re.compile(r"^(?:pytorch_model_fsdp|optimizer)(?:_\d+)?_rank(\d+)\.bin$")

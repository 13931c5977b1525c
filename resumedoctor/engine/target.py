"""What PATH means: one checkpoint folder, or a training `output_dir` at any stage of its life.

transformers writes two kinds of folder, and the difference decides everything downstream:
- a checkpoint (`Trainer._save_checkpoint`): weights, `trainer_state.json` and, unless
  `save_only_model`, the training state (optimizer, scheduler, RNG per rank);
- an output_dir: the `checkpoint-N` folders, and once training finished, the final model that
  `trainer.save_model(output_dir)` writes beside them (weights, config, tokenizer,
  `training_args.bin`, model card) — never a training state.
A finished output_dir therefore holds model files and is still an output_dir.

The jobs around training (generation, batch inference) leave a third kind of PATH: a result ledger, one
results file (JSONL, JSON, CSV, Parquet, an inference `checkpoint.json`) or a folder of worker shards
and their state files (integrations/ledger/layout.py). Only the GEN family judges a ledger.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.integrations.ledger.layout import (
    LEDGER_SUFFIXES,
    is_ledger_file_name,
    looks_like_worker_folder,
)

# transformers.trainer_utils._re_checkpoint: only these names are resume candidates.
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TMP_CHECKPOINT_NAME = re.compile(r"^tmp-checkpoint-(\d+)$")
# Written only by a checkpoint save (never by `save_model`): their presence makes a folder a checkpoint
# whatever its name (a renamed or copied checkpoint).
TRAINING_STATE_FILES = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state.pth")
TRAINING_STATE_PATTERNS = (
    re.compile(r"^rng_state_\d+\.pth$"),  # one per process of a multi-process save
    re.compile(r"^rank\d+-of-\d+-optimizer\.pt$"),
    re.compile(r"^optimizer_\d+$"),  # accelerate FSDP sharded optimizer
    re.compile(r"^pytorch_model_fsdp_\d+$"),
    re.compile(r"^global_step\d+$"),  # DeepSpeed
)
# What `save_model` puts into the output_dir at the end of a run.
FINAL_MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# What a target is: a training run (a checkpoint or an output_dir), or a result ledger.
TRAINING = "training"
LEDGER = "ledger"

# Where resumedoctor keeps its own state inside an output_dir (journal, quarantine, decisions).
STATE_DIR = ".resumedoctor"


def state_dir(output_dir: Path) -> Path:
    return output_dir / STATE_DIR


class TargetError(Exception):
    """PATH does not exist, is not a folder, or cannot be read."""


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Target:
    path: Path
    output_dir: Path
    # The checkpoint `resume_from_checkpoint=True` would pick, or the folder given; None: no checkpoint.
    checkpoint: Path | None
    # Every checkpoint to check, oldest first.
    checkpoints: tuple[Path, ...]
    is_output_dir: bool
    # The final model files `save_model` left in the output_dir: the run reached its end at least once.
    final_model: tuple[str, ...] = ()
    # The output_dir's entries (name -> is a folder) from the one listing of the run; None: not listed.
    listing: dict[str, bool] | None = field(default=None, compare=False, hash=False)
    # TRAINING, or LEDGER: `path` is a results file or a folder of worker shards; `output_dir` is the
    # folder that holds it, where fixes keep their journal and write their files.
    kind: str = TRAINING

    @property
    def is_ledger(self) -> bool:
        return self.kind == LEDGER

    @property
    def subfolders(self) -> list[str]:
        """The output_dir's subfolders by name, sorted."""
        return sorted(name for name, is_dir in (self.listing or {}).items() if is_dir)

    @property
    def display(self) -> str:
        return str(self.path)

    @property
    def finished(self) -> bool:
        return bool(self.final_model)


def scan(folder: Path) -> dict[str, bool]:
    """Every entry of a folder, listed once: name -> whether it is a folder (links followed, as
    `os.path.isdir` in `get_last_checkpoint`). `scandir` knows the type without a stat per entry."""
    try:
        return _scan(folder)
    except OSError as exc:
        raise TargetError(f"cannot list {folder}: {exc.strerror or exc}") from None


def _scan(folder: Path) -> dict[str, bool]:
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                found[entry.name] = entry.is_dir()
            except OSError:
                found[entry.name] = False
    return found


def list_checkpoints(output_dir: Path, listing: dict[str, bool] | None = None) -> list[Path]:
    """`checkpoint-N` folders, oldest first, as `get_last_checkpoint` sees them (`listing`: a `scan` done)."""
    if listing is None:
        try:
            listing = _scan(output_dir)
        except FileNotFoundError:
            return []  # an output_dir not created yet (`launch` before the first start) holds none
        except OSError as exc:
            raise TargetError(f"cannot list {output_dir}: {exc.strerror or exc}") from None
    found = [(int(match.group(1)), name) for name, is_dir in listing.items()
             if is_dir and (match := CHECKPOINT_NAME.match(name))]
    return [output_dir / name for _, name in sorted(found, key=lambda pair: pair[0])]


def holds_training_state(names: list[str]) -> bool:
    """Does a folder with these entries hold what only a checkpoint save writes?"""
    return any(name in TRAINING_STATE_FILES or any(p.match(name) for p in TRAINING_STATE_PATTERNS)
               for name in names)


def looks_like_checkpoint(folder: Path, listing: dict[str, bool] | None = None) -> bool:
    """A `checkpoint-N` folder, or a folder holding a training state or trainer_state.json but no checkpoints."""
    if CHECKPOINT_NAME.match(folder.name):
        return True
    names = list(scan(folder) if listing is None else listing)
    if any(CHECKPOINT_NAME.match(name) or TMP_CHECKPOINT_NAME.match(name) for name in names):
        return False  # checkpoints inside: an output_dir, finished or not
    # trainer_state.json alone also marks a model-only checkpoint (save_only_model) that was renamed.
    return holds_training_state(names) or "trainer_state.json" in names


def resolve_target(path: str | os.PathLike, *, ledger: bool = False) -> Target:
    """Resolve PATH; raises TargetError with a one-line reason for unusable input.

    `ledger`: the user said PATH is a result ledger (a ledger option was given), so a folder is one
    even without worker files in it.
    """
    given = Path(path)
    if not given.exists():
        raise TargetError(f"{given}: no such file or directory")
    if not given.is_dir():
        return _ledger_file(given, ledger)
    if not os.access(given, os.R_OK | os.X_OK):
        raise TargetError(f"{given}: permission denied")
    if CHECKPOINT_NAME.match(given.name) or looks_like_checkpoint(given, listing := scan(given)):
        return Target(path=given, output_dir=given.parent, checkpoint=given, checkpoints=(given,),
                      is_output_dir=False)
    checkpoints = list_checkpoints(given, listing)
    if not checkpoints and (ledger or looks_like_worker_folder(list(listing))):
        return Target(path=given, output_dir=given, checkpoint=None, checkpoints=(), is_output_dir=False,
                      listing=listing, kind=LEDGER)
    return Target(
        path=given,
        output_dir=given,
        checkpoint=checkpoints[-1] if checkpoints else None,
        checkpoints=tuple(checkpoints),
        is_output_dir=True,
        final_model=tuple(name for name in FINAL_MODEL_FILES if name in listing),
        listing=listing,
    )


def _is_checkpoint_folder(folder: Path) -> bool:
    try:
        return looks_like_checkpoint(folder)
    except TargetError:
        return False


def _ledger_file(given: Path, ledger: bool) -> Target:
    if not given.is_file():
        raise TargetError(f"{given}: not a regular file or a directory")
    if not (ledger or is_ledger_file_name(given.name)):
        raise TargetError(f"{given}: not a directory (give a checkpoint-N folder, an output_dir, or a results "
                          f"file: {', '.join(LEDGER_SUFFIXES)})")
    if not os.access(given, os.R_OK):
        raise TargetError(f"{given}: permission denied")
    parent = given.parent if given.parent.name else Path(os.path.realpath(given)).parent
    if CHECKPOINT_NAME.match(parent.name) or (not ledger and _is_checkpoint_folder(parent)):
        raise TargetError(f"{given}: a file of the checkpoint {parent}; give the checkpoint folder or its output_dir")
    return Target(path=given, output_dir=given.parent, checkpoint=None, checkpoints=(), is_output_dir=False,
                  kind=LEDGER)

"""What PATH means: one `checkpoint-N` folder, or a training `output_dir` holding several."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# transformers.trainer_utils._re_checkpoint: only these names are resume candidates.
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TMP_CHECKPOINT_NAME = re.compile(r"^tmp-checkpoint-(\d+)$")
# A folder holding any of these is a checkpoint even when its name is not checkpoint-N.
CHECKPOINT_MARKERS = (
    "trainer_state.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "optimizer.pt",
    "training_args.bin",
)


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

    @property
    def display(self) -> str:
        return str(self.path)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-N` folders, oldest first, as `get_last_checkpoint` sees them."""
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return []  # an output_dir not created yet (`launch` before the first start) holds none
    except OSError as exc:
        raise TargetError(f"cannot list {output_dir}: {exc.strerror or exc}") from None
    found = [
        output_dir / name
        for name in names
        if CHECKPOINT_NAME.match(name) and (output_dir / name).is_dir()
    ]
    return sorted(found, key=lambda path: checkpoint_step(path) or 0)


def looks_like_checkpoint(folder: Path) -> bool:
    if CHECKPOINT_NAME.match(folder.name):
        return True
    return any((folder / marker).exists() for marker in CHECKPOINT_MARKERS)


def resolve_target(path: str | os.PathLike) -> Target:
    """Resolve PATH; raises TargetError with a one-line reason for unusable input."""
    given = Path(path)
    if not given.exists():
        raise TargetError(f"{given}: no such file or directory")
    if not given.is_dir():
        raise TargetError(f"{given}: not a directory (give a checkpoint-N folder or an output_dir)")
    if not os.access(given, os.R_OK | os.X_OK):
        raise TargetError(f"{given}: permission denied")
    if looks_like_checkpoint(given):
        return Target(
            path=given,
            output_dir=given.parent,
            checkpoint=given,
            checkpoints=(given,),
            is_output_dir=False,
        )
    checkpoints = list_checkpoints(given)
    return Target(
        path=given,
        output_dir=given,
        checkpoint=checkpoints[-1] if checkpoints else None,
        checkpoints=tuple(checkpoints),
        is_output_dir=True,
    )

"""SealCallback: seal every checkpoint as the last act of its save (needs transformers)."""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import TrainerCallback

from resumedoctor.journal import atomic_write
from resumedoctor.seal import SEAL_FILE, build_seal, seal_bytes


class SealCallback(TrainerCallback):
    """Seal every checkpoint as the last act of its save (on the main process only, atomically).

        trainer = GRPOTrainer(..., callbacks=[SealCallback()])

    The Trainer calls on_save after it wrote trainer_state.json, its last file: a checkpoint whose
    save was cut off has no seal.
    """

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        dataloader = kwargs.get("train_dataloader")
        dataset = getattr(dataloader, "dataset", None)
        seal = build_seal(folder, global_step=state.global_step, world_size=getattr(args, "world_size", 1),
                          arguments=args.to_dict(), dataset_fingerprint=getattr(dataset, "_fingerprint", None),
                          wandb=wandb_position())
        atomic_write(folder / SEAL_FILE, seal_bytes(seal))


def wandb_position() -> dict | None:
    """The active W&B run and the _step its next log will get: where a fork at this save starts."""
    wandb = sys.modules.get("wandb")  # only if the run already imported it
    run = getattr(wandb, "run", None) if wandb else None
    if run is None:
        return None
    return {"run_id": run.id, "project": run.project, "next_step": run.step, "offline": bool(run.offline)}

"""SealCallback: seal every checkpoint as the last act of its save (needs transformers)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from transformers import TrainerCallback

from resumedoctor.integrations.seal.record import SEAL_FILE, build_seal, seal_bytes
from resumedoctor.integrations.trl.dataset_rows import write_manifest
from resumedoctor.io.atomic_write import atomic_write


class SealCallback(TrainerCallback):
    """Seal every checkpoint as the last act of its save (on the main process only, atomically).

        trainer = GRPOTrainer(..., callbacks=[SealCallback()])

    The Trainer calls on_save after it wrote trainer_state.json, its last file: a checkpoint whose
    save was cut off has no seal. In a multi-process run every process first waits here for the
    others: each writes its own rng_state_<rank>.pth and nothing in the Trainer waits for it before
    the main process writes trainer_state.json, so sealing at once could miss or cut that file.
    With `background=True` the seal is written in two steps: the sizes of every file at once
    (milliseconds: the save counts as finished), then the same seal with content hashes from a
    background thread (the next save and the end of training wait for it). A crash between the two
    leaves a size-checked seal without hashes, which --deep says it cannot check.
    """

    def __init__(self, background: bool = True):
        self.background = background
        self._pending: threading.Thread | None = None
        self._rows: dict[str, dict | None] = {}  # dataset fingerprint -> its seal record, one manifest each

    def on_save(self, args, state, control, **kwargs):
        wait_for_every_process(args)
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        self.wait()
        dataloader = kwargs.get("train_dataloader")
        dataset = getattr(dataloader, "dataset", None)
        # Everything that describes the moment of the save is taken now; only hashing waits.
        inputs = dict(global_step=state.global_step, world_size=getattr(args, "world_size", 1),
                      arguments=args.to_dict(), dataset_fingerprint=getattr(dataset, "_fingerprint", None),
                      dataset_rows=self.dataset_rows(dataset, Path(args.output_dir)), wandb=wandb_position())
        if self.background:
            # Sizes now (milliseconds): the save is marked finished before training goes on.
            atomic_write(folder / SEAL_FILE, seal_bytes(build_seal(folder, with_hashes=False, **inputs)))
            self._pending = threading.Thread(target=seal_checkpoint, args=(folder, inputs),
                                             name=f"seal-{folder.name}")
            self._pending.start()
        else:
            seal_checkpoint(folder, inputs, pipelined=True)

    def dataset_rows(self, dataset, output_dir: Path) -> dict | None:
        """The row manifest of the dataset, written into output_dir once per distinct dataset."""
        fingerprint = getattr(dataset, "_fingerprint", None)
        if not isinstance(fingerprint, str):
            return None
        if fingerprint not in self._rows:
            try:
                self._rows[fingerprint] = write_manifest(dataset, output_dir)
            except Exception as exc:  # noqa: BLE001 - a manifest must never stop a save; the seal says none
                print(f"resumedoctor: no row manifest for the dataset: {type(exc).__name__}: {exc}", file=sys.stderr)
                self._rows[fingerprint] = None
        return self._rows[fingerprint]

    def on_train_end(self, args, state, control, **kwargs):
        self.wait()

    def wait(self) -> None:
        """Block until the pending seal is written."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None


def wait_for_every_process(args) -> None:
    """Barrier over the run's processes (every process calls on_save after its part of the save)."""
    distributed = getattr(args, "distributed_state", None)
    if distributed is not None and getattr(args, "world_size", 1) > 1:
        distributed.wait_for_everyone()


def seal_checkpoint(folder: Path, inputs: dict, pipelined: bool = False) -> None:
    # In the background one thread is enough: training keeps the other cores busy.
    atomic_write(folder / SEAL_FILE, seal_bytes(build_seal(folder, pipelined=pipelined, **inputs)))


def wandb_position() -> dict | None:
    """The active W&B run and the _step its next log will get: where a fork at this save starts."""
    wandb = sys.modules.get("wandb")  # only if the run already imported it
    run = getattr(wandb, "run", None) if wandb else None
    if run is None:
        return None
    return {"run_id": run.id, "project": run.project, "next_step": run.step, "offline": bool(run.offline)}

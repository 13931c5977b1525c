"""A stage-based curriculum as a TrainerCallback whose state cannot drift from the weights.

The state follows the contract of docs/architecture.md, "Curriculum state contract": `{"global_step",
"stage", "history": [{"step", "stage", "metric"}], ...}`. It is written three ways:
  - `checkpoint-N/curriculum_state.json`, from `state()`, which the Trainer calls while saving the
    checkpoint and before it writes trainer_state.json (its last file): a checkpoint whose save
    completed always has its snapshot;
  - `trainer_state.json`'s `stateful_callbacks` (transformers' ExportableState), restored by the
    Trainer only with `restore_callback_states_from_checkpoint=True`;
  - `<output_dir>/curriculum_state.json`, the live state, after every promotion and log.
On a resume the callback takes its state from the resumed checkpoint: the Trainer's restore when
enabled, else the checkpoint's snapshot. A live file that ran ahead never leaks into training.

Promotion rule: stage s moves to s + 1 when the mean of the last `window` values of `metric` logged
in stage s reaches `thresholds[s]` (`mode="max"`: at least; `"min"`: at most).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from resumedoctor.integrations.curriculum.state import STATE_FILE, promotion_due
from resumedoctor.io.atomic_write import atomic_write


class CurriculumCallback(TrainerCallback, ExportableState):
    """Runs the curriculum; read `.stage` from your reward function or data sampler."""

    def __init__(self, thresholds: list[float] | None = None, metric: str = "reward", window: int = 3,
                 mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError("mode is 'max' (promote when the metric is at least the threshold) or 'min'")
        self.thresholds = list(thresholds or [])
        self.metric = metric
        self.window = window
        self.mode = mode
        self.global_step = 0
        self.stage = 0
        self.history: list[dict] = []
        self._output_dir: str | None = None
        self._main_process = True  # the Trainer's state.is_world_process_zero, from on_train_begin

    # ---- ExportableState ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"global_step": self.global_step, "stage": self.stage, "history": list(self.history),
                "metric": self.metric, "thresholds": self.thresholds, "window": self.window, "mode": self.mode}

    def state(self) -> dict:
        # Called inside Trainer._save_checkpoint, after the weights and before trainer_state.json.
        self._write_snapshot()
        return {
            "args": {"thresholds": self.thresholds, "metric": self.metric, "window": self.window, "mode": self.mode},
            "attributes": {"global_step": self.global_step, "stage": self.stage, "history": list(self.history)},
        }

    # ---- files -----------------------------------------------------------------------------------
    def _checkpoint_folder(self, step: int) -> Path | None:
        return Path(self._output_dir) / f"checkpoint-{step}" if self._output_dir else None

    def _write_snapshot(self) -> None:
        folder = self._checkpoint_folder(self.global_step)
        if folder is not None and folder.is_dir() and self._main_process:
            atomic_write(folder / STATE_FILE, (json.dumps(self.snapshot(), indent=2) + "\n").encode())

    def _write_live(self) -> None:
        if self._output_dir and self._main_process:
            Path(self._output_dir).mkdir(parents=True, exist_ok=True)
            atomic_write(Path(self._output_dir) / STATE_FILE, (json.dumps(self.snapshot(), indent=2) + "\n").encode())

    # ---- TrainerCallback -------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._output_dir = args.output_dir
        self._main_process = state.is_world_process_zero
        if state.global_step > 0 and self.global_step != state.global_step:
            # Resuming and the Trainer did not restore us: take the resumed checkpoint's snapshot.
            snapshot = self._checkpoint_folder(state.global_step) / STATE_FILE
            if snapshot.is_file():
                saved = json.loads(snapshot.read_text(encoding="utf-8"))
                self.global_step, self.stage, self.history = saved["global_step"], saved["stage"], saved["history"]
            else:
                self.global_step, self.stage, self.history = state.global_step, 0, []
        self._write_live()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.global_step = state.global_step
        value = (logs or {}).get(self.metric)
        if isinstance(value, (int, float)):
            self.history.append({"step": state.global_step, "stage": self.stage, "metric": float(value)})
            if promotion_due(self.history, self.stage, self.thresholds, self.window, self.mode):
                self.stage += 1
        self._write_live()

    def on_step_end(self, args, state, control, **kwargs):
        self.global_step = state.global_step

    def on_save(self, args, state, control, **kwargs):
        self._write_snapshot()  # already written from state(); kept for trainers that skip ExportableState

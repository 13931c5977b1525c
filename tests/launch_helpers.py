"""Callbacks the launcher tests name in a recipe's `resumedoctor: callbacks:` section."""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback


class KillAfterSave(TrainerCallback):
    """SIGKILL the training process right after the save of step $KILL_AFTER_SAVE_STEP (a preemption)."""

    def on_save(self, args, state, control, **kwargs):
        if str(state.global_step) == os.environ.get("KILL_AFTER_SAVE_STEP"):
            os.kill(os.getpid(), signal.SIGKILL)

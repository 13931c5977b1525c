"""The kill harness of tests/test_lifecycle.py: a training child that stops itself at every kill point.

The child (`python tests/lifecycle_helpers.py OUT [--seal]`) trains a tiny GRPO run with TRL on CPU
(4 steps, a save every 2) and SIGSTOPs itself

* during step 1, before anything is saved (`fresh`),
* during step 3, between the saves (`mid-step`: after the gradients, before the optimizer step),
* right after each file of the save of checkpoint-4 appears, one stop per file, in the order the
  Trainer writes them (and once when the empty folder appears),
* after training ends.

Files are seen to appear by listing checkpoint-4 at every point where the save can have finished a file:
before and after each writer that runs outside Python's `open` (torch.save, safetensors' save_file, the
tokenizers library), and on every `open`/`os.replace` audit event of the main thread (Python-level
writers: JSON files, the chat template, the seal's atomic rename). The save is sequential, so each stop
shows exactly one new file, fully written and closed.

The parent (`run_to_each_kill_point`) waits for each stop, copies the output_dir as it is (the disk state
a SIGKILL at that instant leaves: a stopped process, all threads included, writes nothing more), lets the
child go on, and SIGKILLs it for real at its last stop. Nothing here sleeps to find a moment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

SAVE_STEP = 4  # the save the child is stopped in, file by file; checkpoint-2 before it is whole
MAX_STEPS = 4
SAVE_STEPS = 2
MID_STEP = 3  # killed inside this step: after checkpoint-2, before checkpoint-4


@dataclass(frozen=True)
class KillPoint:
    """One stop of the child and the copy of its output_dir taken there."""

    index: int
    label: str  # "fresh", "mid-step", "save", "end"
    new: tuple[str, ...]  # files of checkpoint-4 that appeared since the previous stop
    changed: tuple[str, ...]  # files of checkpoint-4 rewritten since the previous stop
    where: str  # the event that saw them
    snapshot: Path  # the output_dir as a SIGKILL here leaves it

    @property
    def name(self) -> str:
        if self.label != "save":
            return self.label
        if not self.new and not self.changed:
            return f"checkpoint-{SAVE_STEP}/ created"
        return "after " + ", ".join(self.new or [f"{name} rewritten" for name in self.changed])


def run_to_each_kill_point(output_dir: Path, snapshots: Path, *, seal: bool, env: dict | None = None,
                           timeout: float = 300) -> tuple[list[KillPoint], int]:
    """Run the child, copy the output_dir at each stop, SIGKILL the child at its last stop.

    Returns the kill points and the child's end status (-SIGKILL when the kill was real)."""
    snapshots.mkdir(parents=True, exist_ok=True)
    stop_log = snapshots / "stops.jsonl"
    command = [sys.executable, str(Path(__file__).resolve()), str(output_dir)] + (["--seal"] if seal else [])
    child_env = {**os.environ, **(env or {}), "LIFECYCLE_STOP_LOG": str(stop_log), "OMP_NUM_THREADS": "1"}
    with open(snapshots / "child.log", "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
    points: list[KillPoint] = []
    watchdog = threading.Timer(timeout, lambda: os.kill(child.pid, signal.SIGKILL))  # a hung child fails the run
    watchdog.start()
    try:
        while True:
            _, status = os.waitpid(child.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):
                child.returncode = os.waitstatus_to_exitcode(status)
                raise RuntimeError(f"the training child ended before its last stop (exit {child.returncode}); "
                                   f"see {snapshots / 'child.log'}:\n{_tail(snapshots / 'child.log')}")
            stop = json.loads(stop_log.read_text().splitlines()[-1])
            snapshot = snapshots / f"{len(points):02d}" / output_dir.name
            if output_dir.exists():
                shutil.copytree(output_dir, snapshot, symlinks=True)
            else:
                snapshot.parent.mkdir(parents=True)
            points.append(KillPoint(len(points), stop["label"], tuple(stop.get("new", ())),
                                    tuple(stop.get("changed", ())), stop.get("where", ""), snapshot))
            if stop["label"] == "end":
                os.kill(child.pid, signal.SIGKILL)  # the real kill, at the last stop
                os.kill(child.pid, signal.SIGCONT)
                _, status = os.waitpid(child.pid, 0)
                child.returncode = os.waitstatus_to_exitcode(status)
                return points, child.returncode
            os.kill(child.pid, signal.SIGCONT)
    finally:
        watchdog.cancel()
        if child.returncode is None:
            child.kill()
            child.wait()


def resume_for_real(output_dir: Path, checkpoint: Path | str | bool | None, *, max_steps: int) -> list[int]:
    """Resume the demo run with TRL's GRPOTrainer from `checkpoint` (a path, True: transformers picks, or
    None: start at step 0), as a user's own training script does.

    Returns the global_step the Trainer starts at, then the one after each step it trains."""
    from demo_run import train_demo_run
    from transformers import TrainerCallback

    steps: list[int] = []

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            steps.append(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    resume = checkpoint if checkpoint is None or isinstance(checkpoint, bool) else str(checkpoint)
    train_demo_run(output_dir, max_steps=max_steps, save_steps=SAVE_STEPS, resume_from_checkpoint=resume,
                   callbacks=[Record()])
    return steps


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:]


# ---------------------------------------------------------------- the child


def _child(output_dir: Path, seal: bool) -> None:
    import torch
    import transformers.modeling_utils as modeling_utils
    import transformers.tokenization_utils_tokenizers as tokenization_utils_tokenizers
    from demo_run import train_demo_run
    from transformers import TrainerCallback

    stop_log = os.environ["LIFECYCLE_STOP_LOG"]
    watched = output_dir / f"checkpoint-{SAVE_STEP}"
    state = {"saving": False, "seen": None, "busy": False}

    def stop(label: str, **info) -> None:
        state["busy"] = True  # the log write below is an `open` event too
        try:
            descriptor = os.open(stop_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(descriptor, (json.dumps({"label": label, **info}) + "\n").encode())
            os.close(descriptor)
        finally:
            state["busy"] = False
        os.kill(os.getpid(), signal.SIGSTOP)  # the parent copies the output_dir, then SIGCONTs

    def listing() -> dict | None:
        try:
            with os.scandir(watched) as entries:
                return {e.name: (e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file()}
        except FileNotFoundError:
            return None

    def detect(where: str) -> None:
        if not state["saving"] or state["busy"] or threading.current_thread() is not threading.main_thread():
            return  # the seal's background hashing thread never decides a stop
        state["busy"] = True
        try:
            now, seen = listing(), state["seen"]
        finally:
            state["busy"] = False
        if now == seen:
            return
        state["seen"] = now
        new = sorted(set(now or {}) - set(seen or {}))
        changed = sorted(name for name in now or {} if seen and name in seen and now[name] != seen[name])
        stop("save", new=new, changed=changed, where=where)

    def audit(event: str, args) -> None:
        if event in ("open", "os.rename", "os.replace", "os.mkdir") and state["saving"]:
            detect(event)

    def around(function, name: str):
        def wrapper(*args, **kwargs):
            detect(f"before {name}")
            result = function(*args, **kwargs)
            detect(f"after {name}")
            return result

        return wrapper

    torch.save = around(torch.save, "torch.save")
    modeling_utils.safe_save_file = around(modeling_utils.safe_save_file, "safetensors save_file")
    backend = tokenization_utils_tokenizers.TokenizersBackend
    backend._save_pretrained = around(backend._save_pretrained, "tokenizers save")
    sys.addaudithook(audit)

    class Stops(TrainerCallback):
        def on_pre_optimizer_step(self, args, state_, control, **kwargs):
            # global_step counts finished steps: 0 is inside step 1, 2 inside step 3.
            if state_.global_step == 0:
                stop("fresh")
            elif state_.global_step == MID_STEP - 1:
                stop("mid-step")

        def on_step_end(self, args, state_, control, **kwargs):
            if state_.global_step == SAVE_STEP:
                state["saving"] = True  # the Trainer saves right after this callback

        def on_save(self, args, state_, control, **kwargs):
            detect("after the on_save callbacks")  # the seal's rename has happened by now

        def on_train_end(self, args, state_, control, **kwargs):
            detect("after training")  # the seal with its content hashes, written in the background
            state["saving"] = False
            stop("end")

    callbacks = []
    if seal:
        from resumedoctor.integrations.seal.callback import SealCallback

        callbacks.append(SealCallback())
    callbacks.append(Stops())  # after SealCallback: its on_save and on_train_end run first
    train_demo_run(output_dir, max_steps=MAX_STEPS, save_steps=SAVE_STEPS, callbacks=callbacks)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), "--seal" in sys.argv[2:])

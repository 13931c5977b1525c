"""ENV: will this machine resume the run: library versions, disk space, a writable output_dir, GPUs?

Nothing heavy is imported: versions come from package metadata, GPUs from NVML when it is installed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.engine.checkpoint_facts import recorded_versions
from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.engine.settings import diagnosed_folders, shipped_settings
from resumedoctor.engine.target import checkpoint_step
from resumedoctor.integrations.trl.recipe import RecipeError, installed_version
from resumedoctor.io.safe_pickle import PickleReadError, UnsafePickleError

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
DISK_MARGIN = 1.10  # 10% above what the next saves need

LIBRARY_OLDER = Rule(
    "ENV001", "library-older-than-checkpoint", WARNING,
    "An installed library is older than the one that wrote the checkpoint.",
    "transformers records its version in config.json, TRL its framework versions in the model card. "
    "An older library may not read what a newer one wrote (new config keys, new state files) or may "
    "train differently (fixed bugs come back).",
)
TORCH_TOO_OLD = Rule(
    "ENV002", "torch-too-old", ERROR,
    "torch is older than 2.6: transformers refuses to load rng_state.pth.",
    "Since the torch.load vulnerability (CVE-2025-32434) transformers loads checkpoint files with "
    "weights_only and requires torch >= 2.6; an older torch fails the resume.",
)
LIBRARY_CHANGED = Rule(
    "ENV003", "library-version-changed", INFO,
    "An installed library differs from the one that wrote the checkpoint.",
    "Newer versions are usually fine; the report keeps the record for when a resumed run behaves "
    "differently.",
)
DISK_LOW = Rule(
    "ENV004", "disk-space-low", ERROR,
    "Free disk space is below what the remaining checkpoint saves need.",
    "Each save writes a full checkpoint (weights, optimizer, scheduler, RNG). A save that runs out "
    "of disk leaves a cut-off checkpoint, exactly the damage this tool exists to catch. The saves "
    "still to come are counted as transformers counts them: every save_steps steps up to max_steps "
    "plus the final one (a save_steps below 1 is ceil(max_steps * save_steps)), or one per remaining "
    "epoch. With save_total_limit L, transformers saves first and then deletes the oldest beyond L "
    "(keeping the newest and best_model_checkpoint), so at most max(L, kept) + 1 checkpoints exist at "
    "once: the disk must hold that many minus those that exist now, each the size of the resumed "
    "one, plus 10%. The values come from the recipe when one is given, else from the checkpoint's "
    "trainer_state.json and training_args.bin.",
)
NOT_WRITABLE = Rule(
    "ENV005", "output-dir-not-writable", ERROR,
    "The output_dir is on a read-only file system or not writable.",
    "The first save of the resumed run fails, after the GPUs spent their time up to it.",
)
NO_GPU = Rule(
    "ENV006", "no-gpu-visible", INFO,
    "No GPU is visible here, or GPUs cannot be checked (no NVML).",
    "Diagnosing on a login node is fine; a job that trains here runs on the CPU.",
)
GPU_MEMORY_LOW = Rule(
    "ENV007", "gpu-memory-low", WARNING,
    "A GPU has less free memory than the model's training state needs.",
    "Weights, gradients and Adam's two moments take about four times the fp32 weights before any "
    "activation or generation buffer: with less free memory than that the resume dies with CUDA OOM.",
)

SHIPPED_SETTINGS = Rule(
    "ENV008", "settings-inside-output-dir", INFO,
    "The diagnosed folder holds resumedoctor settings (pyproject.toml / resumedoctor.toml): not applied.",
    "An output_dir or checkpoint comes from whoever trained it and may have been shared; settings that "
    "switch checks off or lower severities are the user's to choose. resumedoctor reads its settings from "
    "the working directory upwards (or --settings FILE), never from inside the folder it diagnoses: these "
    "were ignored. Copy them to your own pyproject.toml if you want them.",
)

RULES = (LIBRARY_OLDER, TORCH_TOO_OLD, LIBRARY_CHANGED, DISK_LOW, NOT_WRITABLE, NO_GPU, GPU_MEMORY_LOW,
         SHIPPED_SETTINGS)


def version_tuple(text: str | None) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", (text or "").split("+")[0])[:3]
    return tuple(int(n) for n in numbers)


def folder_size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass
class SaveSettings:
    """How the resumed run saves: what transformers reads from its arguments, and where each came from."""

    global_step: int
    max_steps: int | None
    save_steps: float | None  # as given: below 1 is a fraction of max_steps
    strategy: str
    limit: int | None
    best_kept: bool  # a best_model_checkpoint exists or may (metric_for_best_model): rotation keeps it too
    epoch: float | None
    num_train_epochs: float | None
    source: str  # "recipe" or "checkpoint"
    later_checkpoints: tuple[int, ...] = ()  # steps of the checkpoint-N folders after global_step


def save_settings(ctx: RunContext, checkpoint: Path, state: dict) -> SaveSettings:
    """How the resumed run saves, as transformers decides it.

    The arguments of the resumed run (the recipe's when one is given, else the checkpoint's own
    training_args.bin) set save_strategy, save_total_limit and max_steps. The cadence does not come
    from them: a resume replaces the TrainerState with trainer_state.json, whose save_steps was made
    absolute when the run first started, so a save_steps changed in the recipe has no effect.
    """
    try:
        saved = ctx.training_args(checkpoint / "training_args.bin")
    except (UnsafePickleError, PickleReadError, OSError):
        saved = {}  # CKPT010 / CKPT028 report it
    keys = ("save_strategy", "save_steps", "save_total_limit", "max_steps", "metric_for_best_model")
    values = {key: saved.get(key) for key in keys}
    values["max_steps"] = _int(state.get("max_steps")) or values["max_steps"]  # the real one, epochs counted
    source = "checkpoint"
    if ctx.options.recipe is not None:
        try:
            recipe = ctx.recipe()
            values.update({key: recipe.get(key) for key in keys if key != "max_steps"})
            max_steps = recipe.get("max_steps")
            if _int(max_steps) and max_steps > 0:  # -1: epochs decide, as they did for the checkpoint's run
                values["max_steps"] = max_steps
            source = "recipe"
        except (RecipeError, ImportError):
            pass
    save_steps = state.get("save_steps")
    if not isinstance(save_steps, (int, float)) or save_steps <= 0:
        save_steps = values["save_steps"]  # a trainer_state.json without it: the arguments decide
    strategy = str(values["save_strategy"] or "steps").lower().rsplit(".", 1)[-1]
    limit = _int(values["save_total_limit"])
    return SaveSettings(
        global_step=ctx.global_step(checkpoint) or 0,
        max_steps=_int(values["max_steps"]),
        save_steps=save_steps if isinstance(save_steps, (int, float)) and not isinstance(save_steps, bool) else None,
        strategy=strategy,
        limit=limit if limit and limit > 0 else None,
        best_kept=bool(state.get("best_model_checkpoint") or values["metric_for_best_model"]),
        epoch=state.get("epoch") if isinstance(state.get("epoch"), (int, float)) else None,
        num_train_epochs=state.get("num_train_epochs") if isinstance(state.get("num_train_epochs"), (int, float)) else None,
        source=source,
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def absolute_save_steps(save_steps: float, max_steps: int) -> int:
    """transformers' TrainerState.compute_steps: a value below 1 is a fraction of max_steps."""
    return math.ceil(max_steps * save_steps) if save_steps < 1 else int(save_steps)


def saves_to_come(settings: SaveSettings) -> tuple[int | None, str]:
    """How many checkpoints the rest of the run saves (None: unknown), and how that was worked out."""
    if settings.strategy == "no":
        return 0, "save_strategy no"
    if settings.strategy == "epoch":
        if settings.num_train_epochs is None or settings.epoch is None:
            return None, "one save per epoch"
        remaining = max(0, math.ceil(settings.num_train_epochs) - math.floor(settings.epoch + 1e-9))
        return remaining, f"one save per epoch, {remaining} epoch(s) to go"
    if settings.strategy != "steps":
        return None, f"save_strategy {settings.strategy}"
    max_steps, step = settings.max_steps, settings.global_step
    if max_steps is None or max_steps <= 0 or settings.save_steps is None or settings.save_steps <= 0:
        return None, "max_steps or save_steps unknown"
    every = absolute_save_steps(settings.save_steps, max_steps)
    if max_steps <= step:
        return 0, f"step {step} is already max_steps {max_steps}"
    # DefaultFlowCallback: a save at every multiple of save_steps, and one at max_steps.
    remaining = max_steps // every - step // every + (1 if max_steps % every else 0)
    # A save into a checkpoint-N that exists (a resume from an older one) overwrites it: no new space.
    again = sum(1 for n in settings.later_checkpoints if n <= max_steps and (n % every == 0 or n == max_steps))
    fraction = f" (save_steps {settings.save_steps:g} of max_steps {max_steps})" if settings.save_steps < 1 else ""
    how = f"{remaining} save(s) from step {step} to {max_steps} every {every} steps{fraction}"
    if again:
        how += f", {again} of them over an existing checkpoint"
    return remaining - again, how


@dataclass
class DiskNeed:
    checkpoints: int  # checkpoints the disk must hold beyond those that exist now
    explanation: str


def disk_need(settings: SaveSettings, existing: int) -> DiskNeed:
    """Extra checkpoints the disk must hold: the saves to come, bounded by save_total_limit rotation."""
    remaining, how = saves_to_come(settings)
    if settings.limit is None:
        if remaining is None:
            return DiskNeed(1, f"at least the next save ({how})")
        return DiskNeed(remaining, how)
    # rotate_checkpoints runs after each save and keeps max(limit, newest + best) checkpoints.
    kept = max(settings.limit, 2 if settings.best_kept else 1)
    at_once = max(existing, kept) + 1
    bound = at_once - existing
    extra = bound if remaining is None else min(remaining, bound)
    best = " and best_model_checkpoint" if settings.best_kept and kept > settings.limit else ""
    return DiskNeed(extra, f"{how}; save_total_limit {settings.limit}{best}: at most {at_once} checkpoints at once "
                           f"while a save is written, {existing} exist now")


def run(ctx: RunContext) -> Iterator[Finding]:
    checkpoint = ctx.resume_point()
    yield from check_shipped_settings(ctx)
    yield from check_writable(ctx)
    yield from check_gpus(ctx, checkpoint)
    if checkpoint is None:
        return
    torch_version = installed_version("torch")
    if torch_version and version_tuple(torch_version) < (2, 6):
        yield TORCH_TOO_OLD.finding(f"torch {torch_version} is installed; transformers needs >= 2.6 to load rng_state.pth",
                                    hint="pip install 'torch>=2.6'")
    # Flat and ordered (older or newer): DeepDiff says neither, and importing it (numpy, pandas) costs start-up.
    for package, written in sorted(recorded_versions(ctx, checkpoint).items()):
        installed = installed_version(package)
        if installed is None or version_tuple(installed) == version_tuple(written):
            continue
        if version_tuple(installed) < version_tuple(written):
            yield LIBRARY_OLDER.finding(f"{package} {installed} is installed; the run was written with {written}",
                                        path=str(checkpoint), hint=f"pip install '{package}>={written}'")
        else:
            yield LIBRARY_CHANGED.finding(f"{package} {installed} is installed; the run was written with {written}",
                                          path=str(checkpoint))
    yield from check_disk(ctx, checkpoint)


def check_shipped_settings(ctx: RunContext) -> Iterator[Finding]:
    """Settings files inside the output_dir or the diagnosed checkpoint: reported, never applied."""
    for folder in diagnosed_folders(ctx.target.path):
        if not folder.is_dir():
            continue
        for shipped in shipped_settings(folder):
            yield SHIPPED_SETTINGS.finding(
                f"{shipped.source.name} inside {folder} sets {shipped.describe()}: not applied (settings come from "
                "the working directory upwards or --settings, never from the folder being diagnosed)",
                path=str(shipped.source),
                hint="if you trust them, copy them into your own pyproject.toml or pass --settings FILE")


def check_writable(ctx: RunContext) -> Iterator[Finding]:
    output_dir = ctx.target.output_dir
    while not output_dir.exists() and output_dir.parent != output_dir:
        output_dir = output_dir.parent  # not created yet: the folder it will be created in must be writable
    try:
        read_only = bool(os.statvfs(output_dir).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only or not os.access(output_dir, os.W_OK):
        reason = "is on a read-only file system" if read_only else "is not writable by this user"
        yield NOT_WRITABLE.finding(f"{output_dir} {reason}", path=str(output_dir))


def check_disk(ctx: RunContext, checkpoint: Path) -> Iterator[Finding]:
    state = ctx.trainer_state(checkpoint) or {}  # a broken one is CKPT013
    size = folder_size(checkpoint)
    if size == 0:
        return
    settings = save_settings(ctx, checkpoint, state)
    settings.later_checkpoints = tuple(step for step in map(checkpoint_step, ctx.checkpoints_in(ctx.target.output_dir))
                                       if step is not None and step > settings.global_step)
    need = disk_need(settings, existing_checkpoints(ctx))
    if need.checkpoints <= 0:
        return
    needed = int(size * need.checkpoints * DISK_MARGIN)
    free = disk_free(ctx.target.output_dir)
    if free < needed:
        yield DISK_LOW.finding(
            f"{_bytes(free)} free on the disk of {ctx.target.output_dir}; {need.checkpoints} more checkpoint(s) of "
            f"{_bytes(size)} need {_bytes(needed)} with 10% margin ({need.explanation}; save settings from the "
            f"{settings.source})", path=str(ctx.target.output_dir),
            hint="free space, lower save_total_limit, or save less often" if settings.limit else
            "free space, set save_total_limit (rotation deletes the oldest checkpoints), or save less often")


def existing_checkpoints(ctx: RunContext) -> int:
    """What rotate_checkpoints counts: every `checkpoint-*` folder (from the run's one listing)."""
    listing = ctx.listing(ctx.target.output_dir)
    return sum(1 for name, is_dir in listing.items() if is_dir and name.startswith("checkpoint-"))


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def gpu_free_memory() -> list[int] | None:
    """Free bytes per visible GPU through NVML; None when NVML (nvidia-ml-py) is not available."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free
                    for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML without a driver raises its own error types
        return []


def weights_bytes(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    return sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))


def wants_gpu(ctx: RunContext) -> bool:
    """Only a recipe says where training will run; without one, GPUs are not this diagnosis's business."""
    if ctx.options.recipe is None:
        return False
    try:
        return not ctx.recipe().get("use_cpu")
    except (RecipeError, ImportError):
        return False


def check_gpus(ctx: RunContext, checkpoint: Path | None) -> Iterator[Finding]:
    if not wants_gpu(ctx):
        return
    free = gpu_free_memory()
    if free is None:
        yield NO_GPU.finding("NVML is not installed (pip install nvidia-ml-py): GPUs not checked")
        return
    if not free:
        yield NO_GPU.finding("no GPU is visible here: training on this machine runs on the CPU")
        return
    # bf16/fp32 weights on disk; training keeps fp32 master weights, gradients and two Adam moments.
    need = weights_bytes(checkpoint) * 4
    short = [(index, amount) for index, amount in enumerate(free) if amount < need]
    for index, amount in short:
        yield GPU_MEMORY_LOW.finding(f"GPU {index} has {_bytes(amount)} free; weights, gradients and Adam state need "
                                     f"about {_bytes(need)}", hint="free the GPU, shard the model, or use a smaller batch")


FAMILY = CheckFamily(
    name="environment",
    prefix="ENV",
    title="Environment: library versions, disk space, writable output_dir, GPUs",
    rules=RULES,
    run=run,
)

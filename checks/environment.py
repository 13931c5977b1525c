"""ENV: will this machine resume the run: library versions, disk space, a writable output_dir, GPUs?

Nothing heavy is imported: versions come from package metadata, GPUs from NVML when it is installed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from resumedoctor.context import JsonFileError, RunContext
from resumedoctor.findings import Finding, Rule, Severity
from resumedoctor.recipe import RecipeError, installed_version
from resumedoctor.registry import CheckFamily

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
    "of disk leaves a cut-off checkpoint, exactly the damage this tool exists to catch. The need is "
    "the checkpoint's size times the saves still to come (or save_total_limit), plus 10%.",
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

RULES = (LIBRARY_OLDER, TORCH_TOO_OLD, LIBRARY_CHANGED, DISK_LOW, NOT_WRITABLE, NO_GPU, GPU_MEMORY_LOW)


def version_tuple(text: str | None) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", (text or "").split("+")[0])[:3]
    return tuple(int(n) for n in numbers)


def recorded_versions(ctx: RunContext, checkpoint: Path) -> dict[str, str]:
    """Library versions the run recorded: config.json's transformers_version, the model card's list."""
    versions = {}
    try:
        from resumedoctor.seal import read_seal

        versions.update((read_seal(checkpoint).get("versions") or {}) if (checkpoint / "resumedoctor.seal.json").is_file() else {})
    except ValueError:
        pass
    try:
        config = ctx.read_json(checkpoint / "config.json")
        if isinstance(config, dict) and config.get("transformers_version"):
            versions.setdefault("transformers", str(config["transformers_version"]))
    except JsonFileError:
        pass
    card = ctx.target.output_dir / "README.md"
    try:
        text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    except OSError:
        text = ""
    for name, package in (("TRL", "trl"), ("Transformers", "transformers"), ("Pytorch", "torch"),
                          ("Datasets", "datasets"), ("Tokenizers", "tokenizers")):
        match = re.search(rf"^- {name}: (\S+)", text, re.MULTILINE)
        if match:
            versions.setdefault(package, match.group(1))
    return versions


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


def saves_to_come(ctx: RunContext, state: dict) -> tuple[int, str]:
    """How many more checkpoints the run will write, and how that was worked out."""
    max_steps, save_steps, limit = state.get("max_steps"), state.get("save_steps"), None
    if ctx.options.recipe is not None:
        try:
            recipe = ctx.recipe()
            max_steps = recipe.get("max_steps") if recipe.resolve("max_steps").source != "default" else max_steps
            save_steps = recipe.get("save_steps") if recipe.resolve("save_steps").source != "default" else save_steps
            limit = recipe.get("save_total_limit")
        except (RecipeError, ImportError):
            pass
    global_step = state.get("global_step", 0)
    if not isinstance(max_steps, int) or max_steps <= 0 or not isinstance(save_steps, (int, float)) or save_steps <= 0:
        return 1, "at least the next save"
    remaining = max(0, math.ceil((max_steps - global_step) / save_steps))
    if isinstance(limit, int) and limit > 0:
        # Rotation deletes the oldest after each save: at most `limit` exist, plus the one being written.
        existing = len(ctx.target.checkpoints)
        return max(1, min(remaining, limit + 1 - min(existing, limit))), f"save_total_limit {limit}"
    return max(remaining, 1), f"{remaining} saves from step {global_step} to {max_steps} every {save_steps}"


def run(ctx: RunContext) -> Iterator[Finding]:
    checkpoint = ctx.target.checkpoint
    yield from check_writable(ctx)
    yield from check_gpus(ctx, checkpoint)
    if checkpoint is None:
        return
    torch_version = installed_version("torch")
    if torch_version and version_tuple(torch_version) < (2, 6):
        yield TORCH_TOO_OLD.finding(f"torch {torch_version} is installed; transformers needs >= 2.6 to load rng_state.pth",
                                    hint="pip install 'torch>=2.6'")
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
    try:
        state = ctx.read_json(checkpoint / "trainer_state.json")
    except JsonFileError:
        state = {}
    size = folder_size(checkpoint)
    if size == 0:
        return
    saves, how = saves_to_come(ctx, state if isinstance(state, dict) else {})
    needed = int(size * saves * DISK_MARGIN)
    free = disk_free(ctx.target.output_dir)
    if free < needed:
        yield DISK_LOW.finding(
            f"{_bytes(free)} free on the disk of {ctx.target.output_dir}; {saves} more checkpoint(s) of "
            f"{_bytes(size)} need {_bytes(needed)} ({how}, +10%)", path=str(ctx.target.output_dir),
            hint="free space, lower save_total_limit, or save less often")


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

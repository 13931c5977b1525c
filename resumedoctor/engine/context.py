"""The run context: what the user asked for, plus every artifact loaded at most once per run."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from resumedoctor.engine.findings import Finding, Severity
from resumedoctor.engine.settings import Settings
from resumedoctor.engine.target import Target, TargetError, list_checkpoints, scan
from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import (
    JsonFileError,
    open_regular,
    read_json_file,
)
from resumedoctor.io.printable import printable
from resumedoctor.io.safetensors_header import (
    SafetensorsHeader,
    read_safetensors_header,
)
from resumedoctor.io.torch_archive import ArchiveReport, inspect_torch_archive

T = TypeVar("T")

# Names of the shared verdicts a family can offer (CheckFamily.services).
# (ctx) -> the work left in a result ledger as plain data (a dict: the per-task table and the totals)
LEDGER_SUMMARY = "ledger_summary"
CHECKPOINT_FINDINGS = "checkpoint_findings"  # (ctx, folder) -> every finding about one checkpoint folder
# Fields only GRPOConfig-like arguments hold: how a run's own subclass (training-args-custom-class) is known as GRPO.
GRPO_FIELDS = ("num_generations", "max_completion_length", "beta")


# trainer_state.json fields that TrainerState.load_from_json takes as they are and the resume then uses:
# a wrong type there fails the resume (log_history.append, stateful_callbacks.items(), step arithmetic).
_NUMBER = (int, float)
_STATE_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "max_steps": ((int,), "an integer"),
    "log_history": ((list,), "a list"),
    "stateful_callbacks": ((dict,), "an object"),
    "best_model_checkpoint": ((str, type(None)), "a path or null"),
    "best_metric": ((*_NUMBER, type(None)), "a number or null"),
    "best_global_step": ((int, type(None)), "an integer or null"),
    "epoch": ((*_NUMBER, type(None)), "a number or null"),
    "num_train_epochs": (_NUMBER, "a number"),
    "num_input_tokens_seen": (_NUMBER, "a number"),
    "total_flos": (_NUMBER, "a number"),
    "logging_steps": (_NUMBER, "a number"),
    "eval_steps": (_NUMBER, "a number"),
    "save_steps": (_NUMBER, "a number"),
    "train_batch_size": ((int, type(None)), "an integer or null"),
}


def trainer_state_problem(state: Any) -> str | None:
    """Why a parsed trainer_state.json cannot be resumed from (a wrong type the Trainer fails on), or None."""
    if not isinstance(state, dict):
        return f"the file holds {_json_kind(state)}, not an object"
    step = state.get("global_step")
    if type(step) is not int or step < 0:
        return f"global_step is {_json_kind(step)}, not a non-negative integer"
    for key, (types, wanted) in _STATE_FIELD_TYPES.items():
        value = state.get(key)
        if key in state and (not isinstance(value, types) or isinstance(value, bool)):
            return f"{key} is {_json_kind(value)}, not {wanted}"
    callbacks = state.get("stateful_callbacks") or {}
    for name, stored in callbacks.items():
        entries = stored if isinstance(stored, list) else [stored]
        if not all(isinstance(entry, dict) for entry in entries):
            return f"stateful_callbacks[{name!r}] is not an object (or a list of objects)"
    return None


LARGEST_WORLD_SIZE = 1_000_000  # far beyond any launch; a larger WORLD_SIZE is no process count


def launch_world_size(environ: Mapping[str, str]) -> int | None:
    """The number of processes the coming launch runs (torchrun/accelerate set WORLD_SIZE).

    None when unset or not a process count (see `invalid_world_size`): callers then judge as if not given."""
    world = environ.get("WORLD_SIZE", "").strip()
    if not world or not world.isascii() or not world.isdigit() or len(world) > len(str(LARGEST_WORLD_SIZE)):
        return None
    count = int(world)
    return count if 0 < count <= LARGEST_WORLD_SIZE else None


def invalid_world_size(environ: Mapping[str, str]) -> str | None:
    """WORLD_SIZE's value, printable and short, when it is set but is no process count; None otherwise."""
    world = environ.get("WORLD_SIZE")
    if world is None or launch_world_size(environ) is not None or not world.strip():
        return None
    return printable(world, limit=40)


def _json_kind(value: Any) -> str:
    """`a list`, `a string`, `null`, `NaN`: what a JSON value is, in words (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, float) and value != value:
        return "NaN"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _file_identity(path: Path) -> tuple:
    """The file behind a path (device, inode, size, mtime): a hard link in every checkpoint is one file."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return ("path", path)
    return ("file", info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _read_training_args(path: Path) -> dict:
    """The restricted unpickler's reading, for a regular file only (a FIFO would block zipfile)."""
    from resumedoctor.io.safe_pickle import PickleReadError, read_training_args

    try:
        open_regular(path).close()
    except ReasonError as exc:
        raise PickleReadError(exc.reason) from None
    return read_training_args(path)


@dataclass(frozen=True)
class Progress:
    """Where a checkpoint stands in its run."""

    global_step: int
    max_steps: int | None  # None when the state does not say

    @property
    def finished(self) -> bool:
        """The run reached its horizon (a resume with the same max_steps still runs one stray step: CFG011)."""
        return self.max_steps is not None and self.global_step >= self.max_steps


@dataclass(frozen=True)
class Options:
    deep: bool = False
    recipe: Path | None = None
    wandb_dir: Path | None = None
    recipe_args: tuple[str, ...] = ()  # TRL command-line overrides of the recipe (after `--`)
    strategy: str | None = None  # how `fix` re-allocates a length budget
    create_fresh: bool = False  # `fix --create-fresh`: rebuild curriculum state by replaying log_history
    launching: bool = False  # the checks gate `resumedoctor launch` (which loads local dataset files itself)
    # How to read a result ledger (integrations/ledger/config.py LedgerConfig); None: the defaults.
    ledger: Any = None
    # A ledger option was given on the command line: PATH is a ledger even when it is a plain folder.
    ledger_asked: bool = False


class RunContext:
    """Shared by every check of one run; checks read artifacts only through it."""

    def __init__(
        self,
        target: Target,
        settings: Settings | None = None,
        options: Options | None = None,
        environ: Mapping[str, str] | None = None,
    ):
        self.target = target
        self.settings = settings or Settings()
        self.options = options or Options()
        self.environ = dict(os.environ if environ is None else environ)
        self._cache: dict[tuple, tuple[bool, Any]] = {}
        self.loads: dict[str, int] = {}  # reader name -> how many files it really read
        # Shared verdicts, offered by the family that owns them (CheckFamily.services).
        self.services: dict[str, Callable[..., Any]] = {}

    def memo(self, key: tuple, compute: Callable[[], T], name: str = "memo") -> T:
        """compute(), once per run for this key; a raised error is cached and re-raised."""
        if key not in self._cache:
            self.loads[name] = self.loads.get(name, 0) + 1
            try:
                self._cache[key] = (True, compute())
            except Exception as exc:  # noqa: BLE001 - cached and re-raised to every caller
                # Kept for the whole run: its frames' locals go (the lines stay for --debug), or every
                # cached error would hold what its computation had in hand.
                traceback.clear_frames(exc.__traceback__)
                self._cache[key] = (False, exc)
        ok, value = self._cache[key]
        if not ok:
            raise value
        return value

    def drop_loaded(self) -> None:
        """Forget everything read so far (after a MemoryError, so that reporting it has room)."""
        self._cache.clear()

    def load(self, reader: Callable[..., T], path: Path, **kwargs: Any) -> T:
        """reader(path, **kwargs), computed once per run."""
        key = (reader, Path(path), tuple(sorted(kwargs.items())))
        return self.memo(key, lambda: reader(Path(path), **kwargs), reader.__name__)

    def recipe(self):
        """The recipe given with --config, read once (RecipeError when it cannot be)."""
        from resumedoctor.integrations.trl.recipe import load_recipe

        return self.memo(("recipe", self.options.recipe, self.options.recipe_args),
                         lambda: load_recipe(self.options.recipe, list(self.options.recipe_args), self.environ),
                         "load_recipe")

    def read_json(self, path: Path) -> Any:
        """A JSON file, parsed once per run: once per file, so hard links (same content) share one parse."""
        return self.memo(("json", _file_identity(Path(path))), lambda: read_json_file(Path(path)), "read_json_file")

    def trainer_state(self, checkpoint: Path) -> dict | None:
        """checkpoint/trainer_state.json when it is readable and well-typed; None otherwise (CKPT013 says why)."""
        try:
            state = self.read_json(Path(checkpoint) / "trainer_state.json")
        except JsonFileError:
            return None
        return state if trainer_state_problem(state) is None else None

    def safetensors_header(self, path: Path) -> SafetensorsHeader:
        return self.load(read_safetensors_header, path)

    def torch_archive(self, path: Path) -> ArchiveReport:
        return self.load(inspect_torch_archive, path, deep=self.options.deep)

    def training_args(self, path: Path) -> dict:
        """The checkpoint's saved arguments, through the restricted unpickler (never runs the pickle)."""
        return self.load(_read_training_args, path)

    def severity_of(self, finding: Finding) -> Severity:
        return self.settings.severity_for(finding.code, finding.severity)

    # --- shared verdicts: computed once per run, asked for by every family and the core -------------

    def checkpoint_findings(self, folder: Path) -> list[Finding] | None:
        """Every finding about one checkpoint folder; None when no installed family can judge checkpoints."""
        provider = self.services.get(CHECKPOINT_FINDINGS)
        if provider is None:
            return None
        return self.memo(("checkpoint-findings", Path(folder)), lambda: list(provider(self, Path(folder))))

    def blocking_errors(self, findings: list[Finding]) -> list[Finding]:
        """The findings that make a checkpoint unusable: errors the user did not ignore (select does not count)."""
        return [f for f in findings if not self.settings.is_ignored(f.code) and self.severity_of(f) is Severity.ERROR]

    def checkpoint_errors(self, folder: Path) -> list[Finding] | None:
        """The error findings that make a checkpoint unusable; None when no installed family can judge it."""
        findings = self.checkpoint_findings(folder)
        return None if findings is None else self.blocking_errors(findings)

    def usable_checkpoints(self) -> list[Path]:
        """The target's checkpoints with no error finding, oldest first (all of them when none can judge)."""
        return [folder for folder in self.target.checkpoints if not self.checkpoint_errors(folder)]

    def listing(self, folder: Path) -> dict[str, bool]:
        """A folder's entries (name -> is a folder), listed once per run; {} when it cannot be listed."""
        target = self.target
        if target.is_output_dir and Path(folder) == target.output_dir and target.listing is not None:
            return target.listing  # listed by resolve_target

        def listed() -> dict[str, bool]:
            try:
                return scan(Path(folder))
            except TargetError:
                return {}
        return self.memo(("listing", Path(folder)), listed, "scan")

    def checkpoints_in(self, output_dir: Path) -> list[Path]:
        """The checkpoint-N folders of an output_dir, oldest first, from its one listing of the run."""
        if self.target.is_output_dir and Path(output_dir) == self.target.output_dir:
            return list(self.target.checkpoints)
        return list_checkpoints(Path(output_dir), self.listing(output_dir))

    def newest_usable_checkpoint(self) -> Path | None:
        """The newest of the target's checkpoints without an error finding (where `fix` moves a resume to)."""
        def newest() -> Path | None:
            usable = self.usable_checkpoints()
            return usable[-1] if usable else None
        return self.memo(("newest-usable", self._judge()), newest)

    def _judge(self) -> Callable[..., Any] | None:
        """Who judges checkpoints: part of the key of every verdict built on that judgement."""
        return self.services.get(CHECKPOINT_FINDINGS)

    def global_step(self, checkpoint: Path | None) -> int | None:
        """The checkpoint's global_step as trainer_state.json records it; None when it cannot be read (CKPT013).

        The one reader of global_step: trainer_state() has checked it is a non-negative integer."""
        if checkpoint is None:
            return None
        state = self.trainer_state(Path(checkpoint))
        return None if state is None else state["global_step"]

    def progress(self, checkpoint: Path | None) -> Progress | None:
        """global_step and max_steps as the checkpoint's trainer_state.json records them; None if unreadable."""
        step = self.global_step(checkpoint)
        if step is None:
            return None
        horizon = self.trainer_state(Path(checkpoint)).get("max_steps")
        return Progress(step, horizon if type(horizon) is int and horizon > 0 else None)

    def trainer_config_class(self) -> str | None:
        """The arguments class the resume checkpoint was trained with (`trl...GRPOConfig`); None if unknown."""
        checkpoint = self.resume_point() or self.target.checkpoint
        if checkpoint is None or not (Path(checkpoint) / "training_args.bin").is_file():
            return None
        from resumedoctor.io.safe_pickle import (
            UNLISTED_KEY,
            PickleReadError,
            UnsafePickleError,
        )

        try:
            saved = self.training_args(Path(checkpoint) / "training_args.bin")
        except (PickleReadError, UnsafePickleError, OSError):  # CKPT010/CKPT028 report them
            return None
        name = saved.get("__class__")
        if name in saved.get(UNLISTED_KEY, ()) and all(key in saved for key in GRPO_FIELDS):
            return "GRPOConfig"  # the run's own subclass (CKPT037) of GRPOConfig, known by GRPOConfig's fields
        return name if isinstance(name, str) else None

    def recipe_not_judged(self) -> str | None:
        """Why the recipe families cannot judge this run's recipe, or None (they read GRPO recipes only)."""
        if self.options.recipe is None:
            return "no recipe (--config RECIPE)"
        trained_with = self.trainer_config_class()
        if trained_with is not None and trained_with.rsplit(".", 1)[-1] != "GRPOConfig":
            return (f"the run was trained with {trained_with.rsplit('.', 1)[-1]}: recipe checks read GRPO recipes "
                    "only, so the recipe was not checked")
        return None

    def resume_point(self) -> Path | None:
        """The checkpoint the resume will really start from once the fixes that move it are applied.

        One answer for every family, so that the W&B decision, the recipe edit and the curriculum restore
        form one plan: a recipe's explicit `resume_from_checkpoint` when that checkpoint is usable,
        otherwise the newest usable checkpoint (where `fix` moves the resume to).
        """
        def point() -> Path | None:
            explicit = self.explicit_resume_path()
            if explicit is not None and explicit.is_dir() and not self.checkpoint_errors(explicit):
                return explicit
            if not self.target.is_output_dir:
                return self.target.checkpoint
            return self.newest_usable_checkpoint()
        return self.memo(("resume-point", self._judge()), point)

    def explicit_resume_path(self) -> Path | None:
        if self.options.recipe is None:
            return None
        try:
            value = self.recipe().resolve("resume_from_checkpoint").value
        except ReasonError:  # an unreadable recipe is the LEN family's finding, not a verdict here
            return None
        return Path(value).expanduser() if isinstance(value, str) and value else None


"""The Python API: what every `resumedoctor` command does, callable from your own code.

The CLI is built on these functions (it parses, calls one of them, and renders what it returns):

    import resumedoctor

    report = resumedoctor.diagnose("out/")        # the report `resumedoctor diagnose out/` renders
    trainer.train(resume_from_checkpoint=resumedoctor.resume_point("out/"))

Everything heavy is imported inside the function that needs it: `import resumedoctor` stays light.
A request that cannot be carried out (an unreadable folder, a missing recipe, an unknown code, a plugin
that fails to load, a fix refused) raises `ResumeDoctorError` with one line for a person; findings are
never exceptions, they are in the report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: importing the API costs the CLI's start-up nothing
    from collections.abc import Iterable, Mapping

    from resumedoctor.engine.context import Options, RunContext
    from resumedoctor.engine.findings import Finding, Severity
    from resumedoctor.engine.registry import Registry
    from resumedoctor.engine.runner import Report
    from resumedoctor.engine.settings import Settings
    from resumedoctor.fixing.journal import Transaction
    from resumedoctor.fixing.planner import FixResult
    from resumedoctor.integrations.seal.existing import SealResult
    from resumedoctor.integrations.trl.launcher import LaunchPlan, TrainingSummary
    from resumedoctor.integrations.wandb.shell_env import ShellEnvironment
    from resumedoctor.report.config_format import ConfigRow

    PathLike = str | os.PathLike
    Codes = str | Iterable[str] | None  # "CKPT,WANDB001" or ["CKPT", "WANDB001"]


class ResumeDoctorError(Exception):
    """The request cannot be carried out; `str(exc)` is one line (the CLI prints it and exits 2)."""


class NoResumePoint(ResumeDoctorError):
    """The output_dir holds checkpoints, but none can be resumed as it is.

    `findings` are the blocking ones (the message lists them, one line each); `checkpoint` is the newest
    usable checkpoint when there is one (its resume is blocked by the findings), else None.
    """

    def __init__(self, output_dir: Path, findings: tuple[Finding, ...], checkpoint: Path | None = None):
        self.output_dir = output_dir
        self.findings = findings
        self.checkpoint = checkpoint
        super().__init__(_no_resume_message(output_dir, findings, checkpoint))


def _no_resume_message(output_dir: Path, findings: tuple[Finding, ...], checkpoint: Path | None) -> str:
    from resumedoctor.io.printable import printable

    head = (f"cannot resume {output_dir} from {checkpoint.name}" if checkpoint is not None
            else f"no checkpoint of {output_dir} can be resumed")
    lines = [f"{head}: {len(findings)} blocking finding{'s' if len(findings) != 1 else ''}"]
    lines += [printable(f"  {f.code} {f.path or output_dir}: {' '.join(f.message.split())}") for f in findings]
    lines.append(f"(resumedoctor diagnose {output_dir} says more)")
    return "\n".join(lines)


# ------------------------------------------------------------------ inputs, settings, registry


def load_registry(*, fixers_now: bool = False) -> Registry:
    """Every installed check family (built-ins and plugins); a plugin that fails to load is one line."""
    from resumedoctor.engine.registry import PluginError
    from resumedoctor.engine.registry import load_registry as load

    try:
        return load(fixers_now=fixers_now)
    except PluginError as exc:
        raise ResumeDoctorError(str(exc)) from None


def check_codes(select: Codes, ignore: Codes, registry: Registry) -> None:
    """`select` and `ignore` must name registered codes or prefixes (a typo says "did you mean")."""
    from resumedoctor.engine.catalog import known_codes
    from resumedoctor.engine.settings import SettingsError, check_known, parse_codes

    try:
        for option, text in (("--select", select), ("--ignore", ignore)):
            check_known(parse_codes(text), known_codes(registry), option)
    except SettingsError as exc:
        raise ResumeDoctorError(str(exc)) from None


def settings_for(path: PathLike, settings_file: PathLike | None = None, select: Codes = None, ignore: Codes = None,
                 registry: Registry | None = None) -> Settings:
    """The settings for judging PATH (`settings_file`, else the nearest one) with `select`/`ignore` on top.

    Every code they name is checked against the registry (plugins add codes), loaded only when needed.
    """
    from resumedoctor.engine.settings import SettingsError

    try:
        settings = _settings_file(Path(path), None if settings_file is None else Path(settings_file))
        if settings.select or settings.ignore or settings.severity or select or ignore:
            from resumedoctor.engine.catalog import known_codes

            registry = registry if registry is not None else load_registry()
            check_codes(select, ignore, registry)
            settings.check_known(known_codes(registry))
        return settings.with_cli(select, ignore)
    except SettingsError as exc:
        raise ResumeDoctorError(str(exc)) from None


def _settings_file(path: Path, settings_file: Path | None) -> Settings:
    from resumedoctor.engine.settings import (
        SettingsError,
        read_settings_file,
        user_settings,
    )

    if settings_file is None:
        return user_settings(path)
    if not settings_file.is_file():
        raise SettingsError(f"{settings_file}: no such settings file")
    settings = read_settings_file(settings_file)
    if settings is None:
        raise SettingsError(f"{settings_file} has no [tool.resumedoctor] table")
    return settings


def check_inputs(path: PathLike, recipe: PathLike | None = None, *, ledger: bool = False,
                 training_only: str | None = None) -> None:
    """PATH must be a readable folder (or a results file) and a named recipe must exist.

    `training_only`: the command needs a training run (`env`, `seal`...), so a result ledger is refused.
    """
    import os

    from resumedoctor.engine.target import TargetError, resolve_target

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")

    try:
        target = resolve_target(path, ledger=ledger)
    except TargetError as exc:
        raise ResumeDoctorError(str(exc)) from None
    if training_only and target.is_ledger:
        raise ResumeDoctorError(f"{path} is a result ledger, not a training run: {training_only} works on a "
                                "checkpoint-N folder or an output_dir (`resumedoctor diagnose` and `fix` read ledgers)")
    if recipe is not None:
        check_recipe(recipe)


def check_recipe(recipe: PathLike) -> None:
    if not Path(recipe).is_file():
        raise ResumeDoctorError(f"{recipe}: no such recipe file")


def _options(recipe: PathLike | None, recipe_args: Iterable[str], wandb_dir: PathLike | None, **more) -> Options:
    from resumedoctor.engine.context import Options

    if isinstance(recipe_args, (str, bytes)):  # a string would be read letter by letter
        raise TypeError("recipe_args is a sequence of arguments, e.g. ['--max_steps', '8'], not one string")
    return Options(recipe=None if recipe is None else Path(recipe), recipe_args=tuple(recipe_args),
                   wandb_dir=None if wandb_dir is None else Path(wandb_dir), **more)


def _ledger_options(flags: Mapping[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """Options.ledger / ledger_asked from the ledger flags over the settings' ledger table."""
    from resumedoctor.integrations.ledger.config import LedgerConfigError, ledger_config

    if flags is None and not settings.ledger:
        return {}
    try:
        config = ledger_config(flags, settings.ledger, settings.source)
    except LedgerConfigError as exc:
        raise ResumeDoctorError(str(exc)) from None
    for key in ("inputs", "tokenizer"):  # named by the user: a typo is a usage error, not a finding
        named = getattr(config, key)
        if named is not None and not os.path.lexists(named):
            raise ResumeDoctorError(f"{config.sources.get(key, key)}: {key} {named}: no such file or directory")
    return {"ledger": config, "ledger_asked": flags is not None}


# ------------------------------------------------------------------ diagnose, resume_point


def diagnose(path: PathLike, recipe: PathLike | None = None, *, recipe_args: Iterable[str] = (),
             wandb_dir: PathLike | None = None, deep: bool = False, select: Codes = None, ignore: Codes = None,
             settings_file: PathLike | None = None, environ: Mapping[str, str] | None = None,
             ledger: Mapping[str, Any] | None = None) -> Report:
    """Judge a `checkpoint-N` folder or an output_dir before a resume: `resumedoctor diagnose PATH`.

    `recipe` is the run's TRL recipe (YAML) and `recipe_args` its `trl grpo` command-line overrides.
    PATH may also be a result ledger (a results file, a folder of worker shards): `ledger` holds how to
    read it (`id_field`, `task_field`, `inputs`, `quota`, `success`, `token_budget`, `tokenizer`,
    `text_field`) over `[tool.resumedoctor.ledger]`; any of them makes a plain folder a ledger.
    The report holds the findings, `resume_from` (the checkpoint the resume loads) and `exit_code`
    (1 when a finding is an error); `verdict(report)` is the verdict as one word.
    """
    return _judge(path, recipe, recipe_args=recipe_args, wandb_dir=wandb_dir, deep=deep, select=select,
                  ignore=ignore, settings_file=settings_file, environ=environ, ledger=ledger)[1]


def _judge(path: PathLike, recipe: PathLike | None, *, recipe_args: Iterable[str], wandb_dir: PathLike | None,
           deep: bool, select: Codes, ignore: Codes, settings_file: PathLike | None,
           environ: Mapping[str, str] | None, ledger: Mapping[str, Any] | None = None) -> tuple[RunContext, Report]:
    from resumedoctor.engine.registry import PluginError
    from resumedoctor.engine.runner import diagnose_with_context

    check_inputs(path, recipe, ledger=ledger is not None)
    registry = load_registry()
    settings = settings_for(path, settings_file, select, ignore, registry)
    options = _options(recipe, recipe_args, wandb_dir, deep=deep, **_ledger_options(ledger, settings))
    try:
        return diagnose_with_context(path, settings=settings, options=options, registry=registry, environ=environ)
    except PluginError as exc:  # a fixer plugin that fails to load when a finding needs it
        raise ResumeDoctorError(str(exc)) from None


def verdict(report: Report) -> str:
    """The report's verdict as one word, as `--format json` writes it: `safe_to_resume`, `do_not_resume`,
    `read_warnings`, `nothing_to_resume`, `nothing_checked` or `target_not_checked`."""
    from resumedoctor.report.verdict import judge

    return judge(report).kind


def resume_point(output_dir: PathLike, recipe: PathLike | None = None, *, recipe_args: Iterable[str] = (),
                 wandb_dir: PathLike | None = None, deep: bool = False, settings_file: PathLike | None = None,
                 environ: Mapping[str, str] | None = None) -> Path | None:
    """The checkpoint to pass to `trainer.train(resume_from_checkpoint=...)`, judged like `diagnose`.

    - the newest usable checkpoint (a usable `resume_from_checkpoint` the recipe names comes first),
      when resuming from it explicitly raises no error finding; a newest checkpoint cut off mid-save is
      passed over, as `resumedoctor diagnose` advises;
    - None when output_dir does not exist yet or holds no `checkpoint-N` folder: the first run, which
      `resume_from_checkpoint=None` starts at step 0;
    - `NoResumePoint` when the folder holds checkpoints and none of them can be resumed, or when the
      resume is blocked by error findings (a W&B run id of another run, a recipe that breaks the
      resume...): its message lists them, one line each. An unusable folder never starts over silently.
    """
    from resumedoctor.engine.findings import Severity

    path = Path(output_dir)
    if not path.exists() and not path.is_symlink():
        return None
    check_inputs(path, training_only="`resume_point`")
    options = dict(recipe_args=tuple(recipe_args), wandb_dir=wandb_dir, deep=deep, select=None, ignore=None,
                   settings_file=settings_file, environ=environ)  # judged twice below: not an iterator
    ctx, report = _judge(path, recipe, **options)
    point = ctx.resume_point()
    if point is None and ctx.target.checkpoints:  # every checkpoint is unusable: each one says why
        raise NoResumePoint(path, _at_least(report, Severity.WARNING))
    blocking = _at_least(report, Severity.ERROR)
    if point is not None and blocking:
        # Judged as the explicit resume the caller makes: errors about the checkpoint a plain
        # resume_from_checkpoint=True would pick (cut off mid-save, say) do not concern this one.
        alone = _judge(point, recipe, **options)[1]
        blocking = _at_least(alone, Severity.ERROR) + _output_dir_errors(report, alone, point)
    if blocking:
        raise NoResumePoint(path, blocking, point)
    _warn_if_passed_over(path, point, report)
    return point


def _output_dir_errors(report: Report, alone: Report, point: Path) -> tuple[Finding, ...]:
    """The output_dir's errors about POINT from families that judge only an output_dir (another run's
    checkpoint, RUN001): judged alone, the checkpoint skips them, and they still block its resume."""
    from resumedoctor.engine.findings import Severity

    skipped = {family.name for family in alone.families if family.status == "skipped"}
    return tuple(finding for finding in _at_least(report, Severity.ERROR)
                 if finding.check in skipped and _concerns(finding, point))


def _concerns(finding: Finding, point: Path) -> bool:
    """Whether the finding is about POINT or a file inside it."""
    named = finding.extra.get("checkpoint") or finding.path
    if not named:
        return False
    named_path, point = Path(named).absolute(), point.absolute()
    return named_path == point or point in named_path.parents


class PassedOverCheckpoints(UserWarning):
    """resume_point returned an older checkpoint than the newest: the steps after it are trained again."""


def _warn_if_passed_over(output_dir: Path, point: Path | None, report: Report) -> None:
    from resumedoctor.engine.findings import Severity
    from resumedoctor.engine.target import checkpoint_step, list_checkpoints

    newer = [c for c in list_checkpoints(output_dir) if point is not None and checkpoint_step(c) > checkpoint_step(point)]
    if not newer:
        return
    import warnings

    inside = tuple(str(c) for c in newer)
    why = sorted({f.code for f in _at_least(report, Severity.WARNING) if str(f.path or "").startswith(inside)})
    warnings.warn(f"resuming from {point.name}, not from the newer {', '.join(c.name for c in newer)} "
                  f"({', '.join(why) or 'not usable'}): steps {checkpoint_step(point) + 1}-{checkpoint_step(newer[-1])} "
                  f"are trained again; `resumedoctor diagnose {output_dir}` says why",
                  PassedOverCheckpoints, stacklevel=3)


def _at_least(report: Report, severity: Severity) -> tuple[Finding, ...]:
    return tuple(finding for finding in report.findings if finding.severity.rank >= severity.rank)


# ------------------------------------------------------------------ fix, undo, seal


def fix(path: PathLike, recipe: PathLike | None = None, *, unsafe: bool = False, dry_run: bool = False,
        recipe_args: Iterable[str] = (), wandb_dir: PathLike | None = None, select: Codes = None, ignore: Codes = None,
        settings_file: PathLike | None = None, strategy: str | None = None, create_fresh: bool = False,
        deep: bool = False, environ: Mapping[str, str] | None = None,
        ledger: Mapping[str, Any] | None = None) -> FixResult:
    """Apply the safe fixes, then judge again: `resumedoctor fix PATH --auto`.

    `unsafe=True` adds the fixes that change what training computes (quarantine a broken checkpoint,
    so the resume goes back to an older one); `dry_run=True` plans and changes nothing. Every change
    is journaled (`undo` takes it back). The result's `final` is the report after the fixes.
    """
    from resumedoctor.fixing.planner import FixError
    from resumedoctor.fixing.planner import fix as run_fix

    check_inputs(path, recipe, ledger=ledger is not None)
    registry = load_registry(fixers_now=True)
    settings = settings_for(path, settings_file, select, ignore, registry)
    options = _options(recipe, recipe_args, wandb_dir, strategy=strategy, create_fresh=create_fresh, deep=deep,
                       **_ledger_options(ledger, settings))
    try:
        return run_fix(path, unsafe=unsafe, dry_run=dry_run, settings=settings, options=options, registry=registry,
                       environ=environ)
    except FixError as exc:
        raise ResumeDoctorError(str(exc)) from None


def undo(path: PathLike, *, everything: bool = False) -> list[Transaction]:
    """Put back exactly what the newest `fix` run changed (`everything`: every run, newest first)."""
    from resumedoctor.engine.target import TargetError
    from resumedoctor.fixing.planner import FixError
    from resumedoctor.fixing.planner import undo as run_undo

    try:
        return run_undo(path, everything=everything)
    except (TargetError, FixError) as exc:
        raise ResumeDoctorError(str(exc)) from None


def seal(path: PathLike) -> SealResult:
    """Seal the usable checkpoints saved without SealCallback (after the fact; `undo` removes the seals)."""
    from resumedoctor.errors import ReasonError
    from resumedoctor.fixing.journal import JournalError
    from resumedoctor.integrations.seal.existing import seal_existing

    check_inputs(path, training_only="`seal`")
    try:
        return seal_existing(path, settings=settings_for(path))
    except OSError as exc:
        raise ResumeDoctorError(f"cannot write seals under {path}: {exc.strerror or exc}") from None
    except ReasonError as exc:  # a `.resumedoctor/` that is a link or not yours, another writer busy
        raise ResumeDoctorError(f"not sealing {path}: {exc.reason}") from None
    except JournalError as exc:
        raise ResumeDoctorError(f"not sealing {path}: {exc}") from None


# ------------------------------------------------------------------ env, launch


def shell_environment(path: PathLike, recipe: PathLike | None = None, *, wandb_dir: PathLike | None = None,
                      environ: Mapping[str, str] | None = None) -> ShellEnvironment:
    """The W&B run the next start logs to, as shell lines (`.render()`): `resumedoctor env PATH`."""
    from resumedoctor.integrations.wandb.shell_env import shell_environment as decide

    check_inputs(path, recipe, training_only="`env`")
    return decide(path, wandb_dir=None if wandb_dir is None else Path(wandb_dir), environ=environ,
                  recipe=None if recipe is None else Path(recipe))


def prepare_launch(recipe: PathLike, recipe_args: Iterable[str] = (), *, fix: bool = False, unsafe: bool = False,
                   dry_run: bool = False, wandb_dir: PathLike | None = None, select: Codes = None,
                   ignore: Codes = None, settings_file: PathLike | None = None, deep: bool = False,
                   environ: Mapping[str, str] | None = None) -> tuple[LaunchPlan, Report]:
    """`resumedoctor launch` up to the start: fixes (`fix`), the checkpoint, every check, the W&B decision.

    Imports no torch. Start only when `report.exit_code` is 0: `launch_training(plan)`.
    """
    from resumedoctor.integrations.trl.launcher import LaunchError, prepare

    check_recipe(recipe)
    registry = load_registry()
    check_codes(select, ignore, registry)  # before the launcher creates output_dir

    def settings_of(output_dir: Path) -> Settings:
        return settings_for(output_dir, settings_file, select, ignore, registry)

    try:
        return prepare(Path(recipe), tuple(recipe_args), fix=fix, unsafe=unsafe, dry_run=dry_run,
                       wandb_dir=None if wandb_dir is None else Path(wandb_dir), deep=deep, environ=environ,
                       settings_for=settings_of)
    except LaunchError as exc:
        raise ResumeDoctorError(exc.reason) from None


def launch_training(plan: LaunchPlan, *, progress: bool | None = None) -> TrainingSummary:
    """Export the plan's W&B decision into this process and train with TRL's GRPOTrainer from its checkpoint.

    The training's own failures (OOM, a reward function's bug) propagate as they are.
    """
    from resumedoctor.integrations.trl.launcher import (
        LaunchError,
        apply_environment,
        run_training,
    )

    apply_environment(plan)
    try:
        return run_training(plan, progress=progress)
    except LaunchError as exc:
        raise ResumeDoctorError(exc.reason) from None


# ------------------------------------------------------------------ config, checks, explain


class ResolvedConfig:
    """The recipe as TRL resolves it (`resumedoctor config RECIPE [PATH]`)."""

    def __init__(self, rows: list[ConfigRow], notes: list[str], checkpoint: str | None):
        self.rows = rows
        self.notes = notes  # what could not be read for the rows (said, never hidden)
        self.checkpoint = checkpoint  # the name of the checkpoint whose saved values are beside the recipe's


def resolved_config(recipe: PathLike, path: PathLike | None = None, recipe_args: Iterable[str] = ()) -> ResolvedConfig:
    """Every value of the recipe with its source, and the checkpoint's saved value beside it."""
    from resumedoctor.engine.target import resolve_target
    from resumedoctor.integrations.trl.recipe import RecipeError
    from resumedoctor.report.config_format import config_rows

    check_recipe(recipe)
    if path is not None:
        check_inputs(path, training_only="`config`")
    notes: list[str] = []
    try:
        rows = config_rows(Path(recipe), None if path is None else Path(path), tuple(recipe_args), notes=notes)
    except RecipeError as exc:
        raise ResumeDoctorError(exc.reason) from None
    checkpoint = resolve_target(path).checkpoint if path is not None else None
    return ResolvedConfig(rows, notes, checkpoint.name if checkpoint else None)


def check_catalog() -> list[dict]:
    """Every check family, its codes and severities, and the fixers with their safety."""
    from resumedoctor.engine.catalog import catalog

    return catalog(load_registry(fixers_now=True))


def explain(code: str) -> str:
    """What a finding code means, why it matters, how it is fixed (an unknown code: "did you mean")."""
    import difflib

    from resumedoctor.engine.catalog import explain_code

    registry = load_registry(fixers_now=True)
    text = explain_code(registry, code)
    if text is None:
        close = difflib.get_close_matches(code.upper(), [rule.code for _, rule in registry.rules()], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "resumedoctor checks lists every code"
        raise ResumeDoctorError(f"unknown code {code!r} ({hint})")
    return text

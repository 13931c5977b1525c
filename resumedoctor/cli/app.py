"""The `resumedoctor` command: parse, call one core function, render.

Exit codes (docs/architecture.md, "Exit codes"): 0 no error-severity finding, 1 at least one, 2 usage
error, unreadable target or internal error, always as one line on stderr (a traceback only with --debug).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from resumedoctor import __version__
from resumedoctor.io.printable import printable

EXIT_USAGE = 2


class UserFacingError(click.ClickException):
    """One line on stderr, exit 2."""

    exit_code = EXIT_USAGE


def _codes_option(name: str, help_text: str):
    return click.option(name, metavar="CODES", default=None, help=help_text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="resumedoctor", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diagnose and fix a training run before you resume it."""
    # As click parsed it: a `--debug` after `--` is TRL's (TrainingArguments.debug), not ours.
    ctx.ensure_object(dict)["debug"] = debug


def _load_registry(*, fixers_now: bool = True):
    from resumedoctor.engine.registry import PluginError, load_registry

    try:
        return load_registry(fixers_now=fixers_now)
    except PluginError as exc:
        raise UserFacingError(str(exc)) from None


def _option_codes(select: str | None, ignore: str | None, registry) -> None:
    """--select and --ignore must name registered codes or prefixes: else one line and exit 2."""
    from resumedoctor.engine.catalog import known_codes
    from resumedoctor.engine.settings import SettingsError, check_known, parse_codes

    try:
        for option, text in (("--select", select), ("--ignore", ignore)):
            check_known(parse_codes(text), known_codes(registry), option)
    except SettingsError as exc:
        raise UserFacingError(str(exc)) from None


def _settings_for(path: Path, settings_file: Path | None, select: str | None, ignore: str | None,
                  registry=None):
    """The settings for PATH with the command line's codes on top; an unknown code or prefix is exit 2.

    Codes are checked against the loaded registry (plugins add codes), loaded here only when needed.
    """
    from resumedoctor.engine.settings import (
        SettingsError,
        read_settings_file,
        user_settings,
    )

    try:
        if settings_file is not None:
            if not settings_file.is_file():
                raise SettingsError(f"{settings_file}: no such settings file")
            settings = read_settings_file(settings_file)
            if settings is None:
                raise SettingsError(f"{settings_file} has no [tool.resumedoctor] table")
        else:
            settings = user_settings(path)
        if settings.select or settings.ignore or settings.severity or select or ignore:
            from resumedoctor.engine.catalog import known_codes

            registry = registry if registry is not None else _load_registry(fixers_now=False)
            _option_codes(select, ignore, registry)
            settings.check_known(known_codes(registry))
        return settings.with_cli(select, ignore)
    except SettingsError as exc:
        raise UserFacingError(str(exc)) from None


def _check_inputs(path: Path, recipe: Path | None) -> None:
    """PATH must be a readable folder and a named recipe must exist: else one line and exit 2."""
    from resumedoctor.engine.target import TargetError, resolve_target

    try:
        resolve_target(path)
    except TargetError as exc:
        raise UserFacingError(str(exc)) from None
    if recipe is not None and not recipe.is_file():
        raise UserFacingError(f"{recipe}: no such recipe file")


def _write_output(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserFacingError(f"cannot write {output}: {exc.strerror or exc}") from None


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--config", "recipe", type=click.Path(path_type=Path), help="TRL recipe (YAML) of the run.")
@click.option("--wandb-dir", type=click.Path(path_type=Path), help="Where the run's wandb/ folder is.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "junit", "github"]), default="text",
              show_default=True, help="Report format.")
@_codes_option("--select", "Only these codes or prefixes (comma-separated), e.g. CKPT,WANDB001.")
@_codes_option("--ignore", "Skip these codes or prefixes.")
@click.option("--deep", is_flag=True, help="Also read tensor data (NaN/Inf) and verify zip CRCs.")
@click.option("--settings", "settings_file", type=click.Path(path_type=Path),
              help="Settings file (default: nearest resumedoctor.toml or pyproject.toml).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the report to a file.")
@click.argument("recipe_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRL OVERRIDES]")
def diagnose(path: Path, recipe: Path | None, wandb_dir: Path | None, fmt: str, select: str | None,
             ignore: str | None, deep: bool, settings_file: Path | None, output: Path | None,
             recipe_args: tuple[str, ...]) -> int:
    """Check a checkpoint-N folder or an output_dir before resuming it.

    Recipe overrides go after `--`, as `trl grpo` takes them: -- --max_completion_length 256
    """
    from resumedoctor.engine.context import Options
    from resumedoctor.engine.runner import diagnose as run_diagnosis
    from resumedoctor.report import render

    _check_inputs(path, recipe)
    registry = _load_registry(fixers_now=False)
    settings = _settings_for(path, settings_file, select, ignore, registry)
    from resumedoctor.engine.registry import PluginError

    options = Options(deep=deep, recipe=recipe, wandb_dir=wandb_dir, recipe_args=recipe_args)
    try:
        report = run_diagnosis(path, settings=settings, options=options, registry=registry)
    except PluginError as exc:  # a fixer plugin that fails to load when a finding needs it
        raise UserFacingError(str(exc)) from None
    color = fmt == "text" and output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    _write_output(render(report, fmt, color=color), output)
    return report.exit_code


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--auto", is_flag=True, help="Apply the safe fixes (without it, only show the plan).")
@click.option("--unsafe", is_flag=True, help="Also apply fixes that change what training computes.")
@click.option("--dry-run", is_flag=True, help="Show the diff and the moves; change nothing.")
@click.option("--config", "recipe", type=click.Path(path_type=Path), help="TRL recipe (YAML) of the run.")
@click.option("--wandb-dir", type=click.Path(path_type=Path), help="Where the run's wandb/ folder is.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_codes_option("--select", "Only fix findings with these codes or prefixes.")
@_codes_option("--ignore", "Leave findings with these codes or prefixes alone.")
@click.option("--settings", "settings_file", type=click.Path(path_type=Path), help="Settings file.")
@click.option("--strategy", type=click.Choice(["balanced", "completion_heavy", "prompt_heavy", "data"]),
              help="How an unsafe fix re-allocates the window (default: data when the prompts were measured).")
@click.option("--create-fresh", is_flag=True,
              help="With --unsafe: rebuild curriculum state by replaying its rule over log_history.")
@click.option("--deep", is_flag=True, help="Judge with the --deep checks (tensor data, zip CRCs, seal hashes).")
@click.argument("recipe_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRL OVERRIDES]")
def fix(path: Path, auto: bool, unsafe: bool, dry_run: bool, recipe: Path | None, wandb_dir: Path | None,
        fmt: str, select: str | None, ignore: str | None, settings_file: Path | None, strategy: str | None,
        create_fresh: bool, deep: bool, recipe_args: tuple[str, ...]) -> int:
    """Fix what can be fixed without losing a byte; every change is backed up and undoable."""
    from resumedoctor.engine.context import Options
    from resumedoctor.fix.planner import FixError
    from resumedoctor.fix.planner import fix as run_fix
    from resumedoctor.report.fix_format import render_fix

    _check_inputs(path, recipe)
    registry = _load_registry()
    settings = _settings_for(path, settings_file, select, ignore, registry)
    preview_only = dry_run or not auto
    try:
        result = run_fix(path, unsafe=unsafe, dry_run=preview_only, settings=settings,
                         options=Options(recipe=recipe, wandb_dir=wandb_dir, recipe_args=recipe_args,
                                         strategy=strategy, create_fresh=create_fresh, deep=deep),
                         registry=registry)
    except FixError as exc:
        raise UserFacingError(str(exc)) from None
    color = fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(render_fix(result, fmt, color=color, asked_to_apply=auto), nl=False)
    return result.final.exit_code


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--all", "everything", is_flag=True, help="Undo every fix run, newest first.")
def undo(path: Path, everything: bool) -> int:
    """Put back exactly what the newest `fix` run changed."""
    from resumedoctor.engine.target import TargetError
    from resumedoctor.fix.planner import FixError
    from resumedoctor.fix.planner import undo as run_undo

    try:
        undone = run_undo(path, everything=everything)
    except (TargetError, FixError) as exc:
        raise UserFacingError(str(exc)) from None
    if not undone:
        click.echo(f"nothing to undo in {path}")
    for transaction in undone:
        changes = len(transaction.journal["operations"])
        click.echo(f"undid fix {transaction.id} ({changes} change{'s' if changes != 1 else ''}: "
                   f"{transaction.journal['description']})")
    return 0


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--wandb-dir", type=click.Path(path_type=Path), help="Where the run's wandb/ folder is.")
@click.option("--config", "recipe", type=click.Path(path_type=Path),
              help="TRL recipe of the next start: its resume_from_checkpoint decides the checkpoint.")
def env(path: Path, wandb_dir: Path | None, recipe: Path | None) -> int:
    """Print shell lines for `eval "$(resumedoctor env OUT)"`: the W&B run to log to, stale variables unset."""
    from resumedoctor.integrations.wandb.shell_env import shell_environment

    _check_inputs(path, recipe)
    click.echo(shell_environment(path, wandb_dir=wandb_dir, recipe=recipe).render(), nl=False)
    return 0


@cli.command()
@click.option("--config", "recipe", required=True, type=click.Path(path_type=Path), help="TRL recipe (YAML).")
@click.option("--fix", "apply_fixes", is_flag=True, help="Apply the safe fixes first, then check again.")
@click.option("--unsafe", is_flag=True, help="With --fix: also the unsafe fixes (e.g. resume from an older checkpoint).")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop: change nothing, train nothing.")
@click.option("--wandb-dir", type=click.Path(path_type=Path), help="Where the run's wandb/ folder is.")
@_codes_option("--select", "Only these codes or prefixes gate the launch (as diagnose --select).")
@_codes_option("--ignore", "Skip these codes or prefixes.")
@click.option("--settings", "settings_file", type=click.Path(path_type=Path), help="Settings file.")
@click.option("--deep", is_flag=True, help="Gate with the --deep checks too (tensor data, zip CRCs, seal hashes).")
@click.argument("recipe_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRL OVERRIDES]")
def launch(recipe: Path, apply_fixes: bool, unsafe: bool, dry_run: bool, wandb_dir: Path | None,
           select: str | None, ignore: str | None, settings_file: Path | None, deep: bool,
           recipe_args: tuple[str, ...]) -> int:
    """Run every check, then GRPO training through TRL from the right checkpoint and W&B step."""
    from resumedoctor.integrations.trl.launcher import (
        LaunchError,
        apply_environment,
        prepare,
        run_training,
    )
    from resumedoctor.report import render

    if not recipe.is_file():
        raise UserFacingError(f"{recipe}: no such recipe file")
    registry = _load_registry(fixers_now=False)
    _option_codes(select, ignore, registry)  # before the launcher creates output_dir
    try:
        plan, report = prepare(recipe, recipe_args, fix=apply_fixes, unsafe=unsafe, dry_run=dry_run, wandb_dir=wandb_dir,
                               deep=deep,
                               settings_for=lambda output_dir: _settings_for(output_dir, settings_file, select, ignore, registry))
    except LaunchError as exc:
        raise UserFacingError(exc.reason) from None
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(render(report, "text", color=color), nl=False)
    click.echo(plan.render(), nl=False)
    if report.exit_code:
        click.echo("resumedoctor launch: not starting: fix the errors above "
                   "(resumedoctor fix, or launch --fix [--unsafe])", err=True)
        return 1
    if dry_run:
        return 0
    apply_environment(plan)
    try:
        summary = run_training(plan)
    except LaunchError as exc:
        raise UserFacingError(exc.reason) from None
    except Exception as exc:  # the training's own failure: its traceback is what the user needs
        raise TrainingFailed(exc) from exc
    click.echo(summary.line(plan))
    return 0


class TrainingFailed(Exception):
    """Training itself raised (OOM, NaN, a bug in a reward function): shown with its traceback, exit 1."""


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
def seal(path: Path) -> int:
    """Seal existing checkpoints (saved without SealCallback) so later diagnoses are exact."""
    from resumedoctor.errors import ReasonError
    from resumedoctor.fix.journal import JournalError
    from resumedoctor.integrations.seal.existing import seal_existing

    _check_inputs(path, None)
    try:
        result = seal_existing(path, settings=_settings_for(path, None, None, None))
    except OSError as exc:
        raise UserFacingError(f"cannot write seals under {path}: {exc.strerror or exc}") from None
    except ReasonError as exc:  # a `.resumedoctor/` that is a link or not yours, another writer busy
        raise UserFacingError(f"not sealing {path}: {exc.reason}") from None
    except JournalError as exc:
        raise UserFacingError(f"not sealing {path}: {exc}") from None
    for checkpoint in result.sealed:
        click.echo(f"sealed {checkpoint} (after the fact)")
    for checkpoint in result.already:
        click.echo(f"already sealed: {checkpoint}")
    for checkpoint, reason in result.refused:
        click.echo(f"not sealed, it is unusable: {checkpoint} ({reason})")
    if result.transaction is not None:
        click.echo(f"journal: {result.transaction.folder} (resumedoctor undo {path} removes the seals)")
    if not (result.sealed or result.already or result.refused):
        click.echo(f"nothing to seal: {path} holds no checkpoint-N folder")
    return 1 if result.refused else 0


@cli.command("config")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.argument("recipe_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRL OVERRIDES]")
def config_command(recipe: Path, path: Path | None, fmt: str, recipe_args: tuple[str, ...]) -> int:
    """Print the recipe as TRL resolves it, the source of each value, and the checkpoint's saved values."""
    from resumedoctor.integrations.trl.recipe import RecipeError
    from resumedoctor.report.config_format import config_rows, render_config

    if not recipe.is_file():
        raise UserFacingError(f"{recipe}: no such recipe file")
    if path is not None:
        _check_inputs(path, None)
    notes: list[str] = []
    try:
        rows = config_rows(recipe, path, recipe_args, notes=notes)
    except RecipeError as exc:
        raise UserFacingError(exc.reason) from None
    for note in notes:
        click.echo(printable(f"resumedoctor config: {note}"), err=True)
    from resumedoctor.engine.target import resolve_target

    checkpoint = resolve_target(path).checkpoint if path is not None else None
    click.echo(render_config(rows, fmt, checkpoint=checkpoint.name if checkpoint else None), nl=False)
    return 0


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def checks(fmt: str) -> int:
    """List every check family, its codes, and the fixers with their safety."""
    from resumedoctor.engine.catalog import catalog, render_catalog_text

    entries = catalog(_load_registry())
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
    else:
        click.echo(render_catalog_text(entries, color=sys.stdout.isatty()), nl=False)
    return 0


@cli.command()
@click.argument("code")
def explain(code: str) -> int:
    """Explain one finding code: what it means, why it matters, how it is fixed."""
    import difflib

    from resumedoctor.engine.catalog import explain_code

    registry = _load_registry()
    text = explain_code(registry, code)
    if text is None:
        close = difflib.get_close_matches(code.upper(), [rule.code for _, rule in registry.rules()], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "resumedoctor checks lists every code"
        raise UserFacingError(f"unknown code {code!r} ({hint})")
    click.echo(text, nl=False)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    state: dict = {"debug": False}
    try:
        result = cli.main(args=args, prog_name="resumedoctor", standalone_mode=False, obj=state)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            click.echo(exc.ctx.get_help())
            sys.exit(EXIT_USAGE)
        command = exc.ctx.command_path if exc.ctx else "resumedoctor"
        click.echo(printable(f"{command}: {exc.format_message()} (see --help)"), err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(printable(f"resumedoctor: {exc.format_message()}"), err=True)  # may quote a crafted name
        sys.exit(EXIT_USAGE)
    except click.Abort:
        click.echo("resumedoctor: aborted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except MemoryError as exc:  # diagnose.OutOfMemory names the folder and family; a bare one says what it can
        message = str(exc) if getattr(exc, "judged_path", False) else f"ran out of memory{': ' if str(exc) else ''}{exc}"
        click.echo(printable(f"resumedoctor: {message}"), err=True)
        sys.exit(EXIT_USAGE)
    except TrainingFailed as exc:
        import traceback

        cause = exc.__cause__ or exc
        traceback.print_exception(type(cause), cause, cause.__traceback__)
        click.echo(f"resumedoctor launch: training failed: {type(cause).__name__}: {cause}", err=True)
        sys.exit(1)
    except Exception as exc:  # the one place an unexpected error becomes one line
        if state["debug"]:
            raise
        click.echo(printable(f"resumedoctor: internal error: {type(exc).__name__}: {exc} "
                             "(run with --debug for the traceback)"), err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(result if isinstance(result, int) else 0)

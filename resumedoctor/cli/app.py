"""The `resumedoctor` command: parse, call one function of the Python API (resumedoctor.api), render.

How outcomes become exit codes (docs/architecture.md, "Exit codes") and one-line errors:
resumedoctor.cli.exits. Each command imports the API when it runs, so that `resumedoctor --version` and `--help` load nothing they do not show.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from resumedoctor import __version__
from resumedoctor.cli.exits import (
    EXIT_USAGE,
    TrainingFailed,
    UserFacingError,
    one_line_errors,
    run,
)
from resumedoctor.io.printable import printable

__all__ = ["EXIT_USAGE", "TrainingFailed", "UserFacingError", "cli", "main"]


def _codes_option(name: str, help_text: str):
    return click.option(name, metavar="CODES", default=None, help=help_text)


def _ledger_options(command):
    """How to read a result ledger (PATH a results file or a folder of worker shards); over
    `[tool.resumedoctor.ledger]`. Collected into one `ledger` dict for the API."""
    options = [
        click.option("--ledger", "ledger_folder", is_flag=True, help="PATH is a result ledger (a folder of shards)."),
        click.option("--id-field", help="Ledger: the field naming one result / input (default: id)."),
        click.option("--task-field", help="Ledger: the field naming a result's task (quota per task)."),
        click.option("--inputs", type=click.Path(path_type=Path), help="Ledger: the whole work list (a file)."),
        click.option("--quota", type=int, help="Ledger: successes each task needs (default 1)."),
        click.option("--success", metavar="JMESPATH", help="Ledger: when a record is a success, e.g. "
                     "\"!starts_with(prediction, '[ERROR]')\"."),
        click.option("--token-budget", type=int, help="Ledger: report inputs longer than this many tokens."),
        click.option("--tokenizer", type=click.Path(path_type=Path), help="Ledger: local tokenizer folder."),
        click.option("--text-field", help="Ledger: the input field whose tokens count (default: prompt)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _ledger_flags(kwargs: dict) -> dict | None:
    """Pop the ledger options out of a command's arguments: None when none was given."""
    keys = ("id_field", "task_field", "inputs", "quota", "success", "token_budget", "tokenizer", "text_field")
    flags = {key: kwargs.pop(key) for key in keys}
    folder = kwargs.pop("ledger_folder")
    return flags if folder or any(value is not None for value in flags.values()) else None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="resumedoctor", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diagnose and fix a training run before you resume it."""
    # As click parsed it: a `--debug` after `--` is TRL's (TrainingArguments.debug), not ours.
    ctx.ensure_object(dict)["debug"] = debug


def _write_output(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserFacingError(f"cannot write {output}: {exc.strerror or exc}") from None


def _color(fmt: str = "text", output: Path | None = None) -> bool:
    return fmt == "text" and output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ


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
@_ledger_options
@click.argument("recipe_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRL OVERRIDES]")
@one_line_errors
def diagnose(path: Path, recipe: Path | None, wandb_dir: Path | None, fmt: str, select: str | None,
             ignore: str | None, deep: bool, settings_file: Path | None, output: Path | None,
             recipe_args: tuple[str, ...], **ledger_options) -> int:
    """Check a checkpoint-N folder or an output_dir before resuming it, or a result ledger
    (a results file or a folder of worker shards) before resuming the job that writes it.

    Recipe overrides go after `--`, as `trl grpo` takes them: -- --max_completion_length 256
    """
    from resumedoctor import api
    from resumedoctor.report import render

    report = api.diagnose(path, recipe, recipe_args=recipe_args, wandb_dir=wandb_dir, deep=deep, select=select,
                          ignore=ignore, settings_file=settings_file, ledger=_ledger_flags(ledger_options))
    _write_output(render(report, fmt, color=_color(fmt, output)), output)
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
@_ledger_options
@click.argument("recipe_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRL OVERRIDES]")
@one_line_errors
def fix(path: Path, auto: bool, unsafe: bool, dry_run: bool, recipe: Path | None, wandb_dir: Path | None,
        fmt: str, select: str | None, ignore: str | None, settings_file: Path | None, strategy: str | None,
        create_fresh: bool, deep: bool, recipe_args: tuple[str, ...], **ledger_options) -> int:
    """Fix what can be fixed without losing a byte; every change is backed up and undoable."""
    from resumedoctor import api
    from resumedoctor.report.fix_format import render_fix

    result = api.fix(path, recipe, unsafe=unsafe, dry_run=dry_run or not auto, recipe_args=recipe_args,
                     wandb_dir=wandb_dir, select=select, ignore=ignore, settings_file=settings_file,
                     strategy=strategy, create_fresh=create_fresh, deep=deep, ledger=_ledger_flags(ledger_options))
    click.echo(render_fix(result, fmt, color=_color(fmt), asked_to_apply=auto), nl=False)
    return result.final.exit_code


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--all", "everything", is_flag=True, help="Undo every fix run, newest first.")
@one_line_errors
def undo(path: Path, everything: bool) -> int:
    """Put back exactly what the newest `fix` run changed."""
    from resumedoctor import api

    undone = api.undo(path, everything=everything)
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
@one_line_errors
def env(path: Path, wandb_dir: Path | None, recipe: Path | None) -> int:
    """Print shell lines for `eval "$(resumedoctor env OUT)"`: the W&B run to log to, stale variables unset."""
    from resumedoctor import api

    click.echo(api.shell_environment(path, recipe, wandb_dir=wandb_dir).render(), nl=False)
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
@one_line_errors
def launch(recipe: Path, apply_fixes: bool, unsafe: bool, dry_run: bool, wandb_dir: Path | None,
           select: str | None, ignore: str | None, settings_file: Path | None, deep: bool,
           recipe_args: tuple[str, ...]) -> int:
    """Run every check, then GRPO training through TRL from the right checkpoint and W&B step."""
    from resumedoctor import api
    from resumedoctor.report import render

    plan, report = api.prepare_launch(recipe, recipe_args, fix=apply_fixes, unsafe=unsafe, dry_run=dry_run,
                                      wandb_dir=wandb_dir, select=select, ignore=ignore,
                                      settings_file=settings_file, deep=deep)
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(render(report, "text", color=color), nl=False)
    click.echo(plan.render(), nl=False)
    if report.exit_code:
        click.echo("resumedoctor launch: not starting: fix the errors above "
                   "(resumedoctor fix, or launch --fix [--unsafe])", err=True)
        return 1
    if dry_run:
        return 0
    try:
        summary = api.launch_training(plan)
    except api.ResumeDoctorError:
        raise
    except Exception as exc:  # the training's own failure: its traceback is what the user needs
        raise TrainingFailed(exc) from exc
    click.echo(summary.line(plan))
    return 0


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@one_line_errors
def seal(path: Path) -> int:
    """Seal existing checkpoints (saved without SealCallback) so later diagnoses are exact."""
    from resumedoctor import api

    result = api.seal(path)
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
@one_line_errors
def config_command(recipe: Path, path: Path | None, fmt: str, recipe_args: tuple[str, ...]) -> int:
    """Print the recipe as TRL resolves it, the source of each value, and the checkpoint's saved values."""
    from resumedoctor import api
    from resumedoctor.report.config_format import render_config

    resolved = api.resolved_config(recipe, path, recipe_args)
    for note in resolved.notes:
        click.echo(printable(f"resumedoctor config: {note}"), err=True)
    click.echo(render_config(resolved.rows, fmt, checkpoint=resolved.checkpoint), nl=False)
    return 0


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@one_line_errors
def checks(fmt: str) -> int:
    """List every check family, its codes, and the fixers with their safety."""
    from resumedoctor import api
    from resumedoctor.engine.catalog import render_catalog_text

    entries = api.check_catalog()
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
    else:
        click.echo(render_catalog_text(entries, color=sys.stdout.isatty()), nl=False)
    return 0


@cli.command()
@click.argument("code")
@one_line_errors
def explain(code: str) -> int:
    """Explain one finding code: what it means, why it matters, how it is fixed."""
    from resumedoctor import api

    click.echo(api.explain(code), nl=False)
    return 0


def main(argv: list[str] | None = None) -> None:
    run(cli, sys.argv[1:] if argv is None else argv, {"debug": False})

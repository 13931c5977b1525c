"""How an outcome becomes an exit code: the one place an error turns into one line on stderr.

Exit codes (docs/architecture.md): 0 no error-severity finding, 1 at least one, 2 usage error, unreadable
target or internal error, always as one line on stderr (a traceback only with --debug).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from resumedoctor.io.printable import printable

EXIT_USAGE = 2

F = TypeVar("F", bound=Callable)


class UserFacingError(click.ClickException):
    """One line on stderr, exit 2."""

    exit_code = EXIT_USAGE


class TrainingFailed(Exception):
    """Training itself raised (OOM, NaN, a bug in a reward function): shown with its traceback, exit 1."""


def one_line_errors(command: F) -> F:
    """The API's `ResumeDoctorError` (a request that cannot be carried out) becomes one line, exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from resumedoctor.api import ResumeDoctorError

        try:
            return command(*args, **kwargs)
        except ResumeDoctorError as exc:
            raise UserFacingError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def run(cli: click.Group, args: list[str], state: dict) -> None:
    """Run the command line; every way out is an exit code (`state["debug"]`: let internal errors out)."""
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
    except MemoryError as exc:  # runner.OutOfMemory names the folder and family; a bare one says what it can
        message = str(exc) if getattr(exc, "judged_path", False) else f"ran out of memory{': ' if str(exc) else ''}{exc}"
        click.echo(printable(f"resumedoctor: {message}"), err=True)
        sys.exit(EXIT_USAGE)
    except TrainingFailed as exc:
        _training_failed(exc)
    except Exception as exc:  # the one place an unexpected error becomes one line
        if state["debug"]:
            raise
        click.echo(printable(f"resumedoctor: internal error: {type(exc).__name__}: {exc} "
                             "(run with --debug for the traceback)"), err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(result if isinstance(result, int) else 0)


def _training_failed(exc: TrainingFailed) -> None:
    import traceback

    cause = exc.__cause__ or exc
    traceback.print_exception(type(cause), cause, cause.__traceback__)
    click.echo(f"resumedoctor launch: training failed: {type(cause).__name__}: {cause}", err=True)
    sys.exit(1)

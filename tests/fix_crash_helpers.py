"""Run the real `resumedoctor` CLI in this process and SIGKILL it at one step of a fix transaction.

    python tests/fix_crash_helpers.py POINT fix RUN --auto --unsafe
    python tests/fix_crash_helpers.py POINT undo RUN --all

POINT is `t<N>-<step>` (a step of the N-th transaction this process prepares, from 0) or a bare `<step>`
(the first time any transaction reaches it). Each step is the moment the journal's own method that
ends it returns:
  prepared      Transaction.prepare: new/ and the journal ("prepared") are written and fsynced;
  backed-up     Transaction._back_up: every backup is copied and fsynced;
  applied-<i>   Transaction._apply of operation i: its new state is in place;
  committed     Transaction.complete: "committed" is saved;
  undo-started  Transaction._begin_undo: every path checked, "undoing" saved;
  undo-<i>      Transaction._revert of operation i: its old state is back.
Nothing in resumedoctor knows about this: the methods are wrapped here, in the child process only, and
the kill is a real SIGKILL that this process sends itself.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path


def command(point: str, *arguments: str) -> list[str]:
    """The command line that runs `resumedoctor ARGUMENTS` and kills it at POINT."""
    return [sys.executable, str(Path(__file__).resolve()), point, *arguments]


def install(wanted: str) -> None:
    """Wrap the Transaction methods so that the process SIGKILLs itself at WANTED."""
    from resumedoctor.fixing.journal import Transaction

    prepared = 0  # transactions this process prepared

    def stop(step: str) -> None:
        if wanted in (step, f"t{prepared - 1}-{step}"):
            os.kill(os.getpid(), signal.SIGKILL)

    prepare = Transaction.prepare.__func__

    @functools.wraps(prepare)
    def counted_prepare(cls, *args, **kwargs):
        nonlocal prepared
        prepared += 1
        transaction = prepare(cls, *args, **kwargs)
        stop("prepared")
        return transaction

    def then_stop(name: str, step) -> None:
        method = getattr(Transaction, name)

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            result = method(self, *args, **kwargs)
            stop(step(self, *args))
            return result

        setattr(Transaction, name, wrapper)

    Transaction.prepare = classmethod(counted_prepare)
    then_stop("_back_up", lambda self: "backed-up")
    then_stop("complete", lambda self: "committed")
    then_stop("_begin_undo", lambda self: "undo-started")
    then_stop("_apply", lambda self, entry: f"applied-{_index(self, entry)}")
    then_stop("_revert", lambda self, entry: f"undo-{_index(self, entry)}")


def _index(transaction, entry: dict) -> int:
    return next(i for i, candidate in enumerate(transaction.journal["operations"]) if candidate is entry)


if __name__ == "__main__":
    install(sys.argv[1])
    from resumedoctor.cli.app import main

    main(sys.argv[2:])

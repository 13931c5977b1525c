"""Text read from an output_dir, made safe to show: one visible line per value, no terminal or shell tricks.

Folder names, run ids and values in a checkpoint's files are untrusted. Printed as they are, an escape
sequence would rewrite the terminal, a newline would forge a report line (or, under `eval`, start a
command), and a bidi override would show another text than the one read.
"""

from __future__ import annotations

import unicodedata

# Characters that must not reach a terminal or a shell as they are: controls (newline, escape), format
# characters (bidi overrides, zero width), surrogates, private use, unassigned, line/paragraph separators.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escaped(ch: str) -> str:
    return ch.encode("unicode_escape", "backslashreplace").decode("ascii")


def unprintable(text: str) -> str | None:
    """The first character of `text` that must not be printed as it is, or None."""
    return next((ch for ch in text if unicodedata.category(ch) in UNPRINTABLE_CATEGORIES), None)


def printable(text: str, *, keep_newlines: bool = False, limit: int | None = None) -> str:
    """`text` with every unprintable character written as its escape (`\\n`, `\\u202e`).

    `keep_newlines` keeps the line breaks of a multi-line message the tool wrote itself; `limit` cuts a
    crafted huge value to that many characters (marked with "...").
    """
    if limit is not None and len(text) > limit:
        return printable(text[:limit], keep_newlines=keep_newlines) + "..."
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(_escaped(ch) if unicodedata.category(ch) in UNPRINTABLE_CATEGORIES
                   and not (keep_newlines and ch == "\n") else ch for ch in text)

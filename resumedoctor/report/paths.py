"""Paths as CI systems want them: relative to the working directory when inside it."""

from __future__ import annotations

import os
from pathlib import Path


def relative_to_cwd(path: str) -> str | None:
    """POSIX path relative to the cwd, or None when the path lies outside it."""
    absolute = Path(os.path.abspath(path))
    cwd = Path(os.getcwd())
    try:
        return absolute.relative_to(cwd).as_posix()
    except ValueError:
        return None

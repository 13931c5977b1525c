"""Where resumedoctor caches what is expensive to recompute (never anything a diagnosis depends on)."""

from __future__ import annotations

import os
from pathlib import Path

from resumedoctor.io.atomic_write import atomic_write


def cache_dir() -> Path:
    root = os.environ.get("RESUMEDOCTOR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "resumedoctor")
    return Path(root)


def write_entry(path: Path, text: str) -> None:
    """Store a cache entry, best effort: a read-only home is no reason to fail.

    Not fsynced (a lost entry is recomputed); a temporary per process, as several may fill the cache at once.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"), durable=False, unique=True)
    except OSError:
        pass

"""The live-trainer guard: a checkpoint that is being written right now is never quarantined.

`fix --unsafe` moves a broken newest checkpoint away; while a trainer is still saving it, the save only
looks broken, and moving it would break the trainer. A save is taken as live when a `checkpoint-*` or
`tmp-checkpoint-*` folder of the output_dir holds files written in the last LIVE_WINDOW_S seconds and
something in it changes (a file grows, appears, or is rewritten) within LOOK_GAP_S. Fresh files alone
are not enough: a checkpoint copied or repaired a moment ago is fresh and still. While any save of the
output_dir is live, no folder of it is quarantined, and the fix says why.

The second look costs LOOK_GAP_S, paid only when a quarantine is planned and something is fresh.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.target import CHECKPOINT_NAME, TMP_CHECKPOINT_NAME

LIVE_WINDOW_S = 120.0
LOOK_GAP_S = 0.5
MAX_ENTRIES = 20_000  # a checkpoint holds tens of files; enough to notice, bounded for a crafted one

Snapshot = dict[str, tuple[int, int]]


def _snapshot(folder: Path) -> Snapshot:
    """relative name -> (size, mtime_ns) of the folder and everything under it; links not followed."""
    found: Snapshot = {}
    for root, folders, files in os.walk(folder):
        for name in [".", *folders, *files]:
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            found[os.path.relpath(path, folder)] = (info.st_size, info.st_mtime_ns)
            if len(found) >= MAX_ENTRIES:
                return found
    return found


def _save_folders(output_dir: Path) -> list[Path]:
    try:
        names = os.listdir(output_dir)
    except OSError:
        return []
    return [output_dir / name for name in sorted(names)
            if (CHECKPOINT_NAME.match(name) or TMP_CHECKPOINT_NAME.match(name))
            and os.path.isdir(output_dir / name) and not os.path.islink(output_dir / name)]


def recently_written(folder: Path) -> float | None:
    """Seconds since the newest write in FOLDER when that is within the live window, else None (one look, no wait)."""
    newest = max((mtime for _, mtime in _snapshot(folder).values()), default=0)
    age = (time.time_ns() - newest) / 1e9
    return age if 0 <= age < LIVE_WINDOW_S else None


def _find_live_saves(output_dir: Path) -> dict[Path, str]:
    now = time.time_ns()
    fresh = {}
    for folder in _save_folders(output_dir):
        snapshot = _snapshot(folder)
        newest = max((mtime for _, mtime in snapshot.values()), default=0)
        if now - newest < LIVE_WINDOW_S * 1e9:
            fresh[folder] = snapshot
    if not fresh:
        return {}
    time.sleep(LOOK_GAP_S)
    live = {}
    for folder, before in fresh.items():
        after = _snapshot(folder)
        changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
        if changed:
            shown = ", ".join(name for name in changed[:3] if name != ".") or "its file list"
            live[folder] = f"{shown} changed while resumedoctor looked"
    return live


def live_saves(ctx: RunContext) -> dict[Path, str]:
    """The save folders of the output_dir being written right now, with what changed; once per run."""
    return ctx.memo(("live-saves",), lambda: _find_live_saves(ctx.target.output_dir), name="live-saves")


def held_back(ctx: RunContext, folder: Path) -> bool:
    """True (and remembered for the fix report) when FOLDER must not be quarantined: a trainer is writing."""
    if not live_saves(ctx):
        return False
    ctx.memo(("live-saves-held",), dict)[Path(folder).name] = True
    return True


def held_back_note(ctx: RunContext) -> str | None:
    """One line for the fix report: what was not quarantined, and what the user should do."""
    held = ctx.memo(("live-saves-held",), dict)
    if not held:
        return None
    live = live_saves(ctx)
    why = "; ".join(f"{folder.name}: {what}" for folder, what in live.items())
    return (f"not quarantined: {', '.join(sorted(held))}. A trainer seems to be writing this output_dir ({why}). "
            "Stop the trainer or wait for its save to finish, then run fix again")

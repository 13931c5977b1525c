"""`resumedoctor config RECIPE [PATH]`: the resolved recipe, the source of every value, and the checkpoint's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from resumedoctor.engine.context import Options, RunContext
from resumedoctor.engine.settings import Settings
from resumedoctor.engine.target import resolve_target
from resumedoctor.io.safe_pickle import PickleReadError, UnsafePickleError


@dataclass
class ConfigRow:
    key: str
    value: object
    source: str  # cli, env, file, default
    checkpoint: object = None
    in_checkpoint: bool = False
    drift: str = ""  # what the key decides when it differs: data-skip, schedule, optimizer-state, training, cosmetic


def config_rows(recipe_path: Path, path: Path | None = None, recipe_args: tuple[str, ...] = (),
                environ: dict | None = None, notes: list[str] | None = None) -> list[ConfigRow]:
    """The recipe's rows; what could not be read for them is appended to `notes` (said, never hidden)."""
    from resumedoctor.checks import config_drift

    # What a key decides; `diagnose` judges each difference by its consequence for the resume.
    classes = {**{k: "cosmetic" for k in config_drift.COSMETIC_KEYS},
               **{k: "training" for k in config_drift.TRAINING_KEYS},
               **{k: "optimizer-state" for k in config_drift.OPTIMIZER_KEYS},
               **{k: "schedule" for k in config_drift.SCHEDULE_KEYS},
               **{k: "data-skip" for k in config_drift.DATA_SKIP_KEYS}}
    target = resolve_target(path) if path is not None else resolve_target(recipe_path.parent)
    ctx = RunContext(target, Settings(), Options(recipe=recipe_path, recipe_args=recipe_args), environ)
    recipe = ctx.recipe()
    saved = {}
    if path is not None and target.checkpoint is not None and (target.checkpoint / "training_args.bin").is_file():
        try:
            saved = ctx.training_args(target.checkpoint / "training_args.bin")
        except (UnsafePickleError, PickleReadError) as exc:
            saved = {}
            if notes is not None:
                notes.append(f"{target.checkpoint.name}/training_args.bin was not read ({exc.reason}): "
                             "the checkpoint column is empty, no drift was judged (resumedoctor diagnose says more)")
    keys = list(dict.fromkeys([*recipe.data, *recipe.overrides, *(k for k in classes if k in saved)]))
    rows = []
    for key in keys:
        if key == "env":
            continue
        resolved = recipe.resolve(key)
        before = saved.get(key)
        differs = key in saved and config_drift.normalize(key, before) != config_drift.normalize(key, resolved.value)
        rows.append(ConfigRow(key, resolved.value, resolved.source, before, key in saved,
                              classes.get(key, "training") if differs else ""))
    return rows


def render_config(rows: list[ConfigRow], fmt: str, *, checkpoint: str | None) -> str:
    if fmt == "json":
        return json.dumps([asdict(row) for row in rows], indent=2, default=str) + "\n"
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(title="resolved recipe (source: cli > env > file > default)", title_justify="left")
    for column in ("key", "value", "source", f"{checkpoint or 'checkpoint'}", "drift"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.key, repr(row.value), row.source, repr(row.checkpoint) if row.in_checkpoint else "",
                      row.drift)
    buffer = io.StringIO()
    Console(file=buffer, width=120, no_color=True, highlight=False).print(table)
    return buffer.getvalue()

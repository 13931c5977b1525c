"""`resumedoctor config RECIPE [PATH]`: the resolved recipe, the source of every value, and the checkpoint's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from resumedoctor.engine.context import Options, RunContext
from resumedoctor.engine.settings import Settings
from resumedoctor.engine.target import resolve_target
from resumedoctor.integrations.trl.saved_arguments import KEY_CLASSES, differing_keys
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
    target = resolve_target(path) if path is not None else resolve_target(recipe_path.parent)
    ctx = RunContext(target, Settings(), Options(recipe=recipe_path, recipe_args=recipe_args), environ)
    recipe = ctx.recipe()
    saved = _saved_arguments(ctx, notes) if path is not None else {}
    keys = [key for key in dict.fromkeys([*recipe.data, *recipe.overrides, *(k for k in KEY_CLASSES if k in saved)])
            if key != "env"]
    resolved = {key: recipe.resolve(key) for key in keys}
    # `diagnose` (CFG) judges each difference by its consequence for the resume; here it is labelled by what
    # the key decides.
    changed = differing_keys(saved, {key: resolved[key].value for key in keys if key in saved})
    return [ConfigRow(key, resolved[key].value, resolved[key].source, saved.get(key), key in saved,
                      KEY_CLASSES.get(key, "training") if key in changed else "")
            for key in keys]


def _saved_arguments(ctx: RunContext, notes: list[str] | None) -> dict:
    """The diagnosed checkpoint's training_args.bin, or {} (with a note when it could not be read)."""
    checkpoint = ctx.target.checkpoint
    if checkpoint is None or not (checkpoint / "training_args.bin").is_file():
        return {}
    try:
        return ctx.training_args(checkpoint / "training_args.bin")
    except (UnsafePickleError, PickleReadError) as exc:
        if notes is not None:
            notes.append(f"{checkpoint.name}/training_args.bin was not read ({exc.reason}): "
                         "the checkpoint column is empty, no drift was judged (resumedoctor diagnose says more)")
        return {}


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

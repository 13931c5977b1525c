"""How to read a result ledger: from the command line's flags over `[tool.resumedoctor.ledger]`.

    [tool.resumedoctor.ledger]
    id_field = "id"            # names one result (and, without a task field, one input)
    task_field = "task_id"     # names the task a result belongs to (generation: many samples per task)
    inputs = "tasks.jsonl"     # the whole work list (relative to this file's folder)
    quota = 32                 # successes each task needs (default 1)
    success = "!starts_with(prediction, '[ERROR]')"   # JMESPath over one record
    token_budget = 4096        # inputs longer than this many tokens are reported
    tokenizer = "models/tok"   # a local tokenizer folder to count them with
    text_field = "prompt"      # the input field whose tokens count
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from resumedoctor.integrations.ledger.success import (
    DEFAULT_SUCCESS,
    SuccessExpressionError,
    compile_success,
)

PATH_KEYS = ("inputs", "tokenizer")
INT_KEYS = ("quota", "token_budget")


class LedgerConfigError(ValueError):
    """A ledger setting or flag has a wrong name or value; one line for the user."""


@dataclass(frozen=True)
class LedgerConfig:
    id_field: str = "id"
    task_field: str | None = None
    inputs: Path | None = None
    # The inputs' field that names a unit of work; default: the task field, else the id field.
    input_id_field: str | None = None
    quota: int = 1
    success: str = DEFAULT_SUCCESS
    token_budget: int | None = None
    tokenizer: Path | None = None
    text_field: str = "prompt"
    # Where each value came from: "default", "--flag" or the settings file.
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def unit_field(self) -> str:
        """The field of a result that names its unit of work (a task, or the input it answers)."""
        return self.task_field or self.id_field

    @property
    def input_key(self) -> str:
        return self.input_id_field or self.unit_field


KEYS = tuple(f.name for f in fields(LedgerConfig) if f.name != "sources")


def ledger_config(flags: Mapping[str, Any] | None = None, table: Mapping[str, Any] | None = None,
                  table_source: Path | None = None) -> LedgerConfig:
    """Flags (None: not given) over the settings table over the defaults; checked, paths resolved."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in (table or {}).items():
        if key not in KEYS:
            raise LedgerConfigError(_unknown(key, f"{table_source or 'settings'}: [tool.resumedoctor.ledger]"))
        if key in PATH_KEYS and table_source is not None:
            value = table_source.parent / str(value)
        values[key], sources[key] = value, str(table_source or "settings")
    for key, value in (flags or {}).items():
        if key not in KEYS:
            raise LedgerConfigError(_unknown(key, "ledger option"))
        if value is not None:
            values[key], sources[key] = value, "--" + key.replace("_", "-")
    return LedgerConfig(**{key: _checked(key, value, sources[key]) for key, value in values.items()}, sources=sources)


def command_line(config: LedgerConfig) -> list[str]:
    """The ledger options that were given on the command line, as arguments that give them again."""
    arguments = []
    for key in KEYS:
        source = config.sources.get(key, "")
        if source.startswith("--"):
            arguments += [source, str(getattr(config, key))]
    return arguments


def _unknown(key: str, where: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, KEYS, n=1)
    return f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(KEYS)})")


def _checked(key: str, value: Any, source: str) -> Any:
    if key in PATH_KEYS:
        return Path(value)
    if key in INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LedgerConfigError(f"{source}: {key} must be a whole number of at least 1, not {value!r}")
        return value
    if not isinstance(value, str) or not value.strip():
        raise LedgerConfigError(f"{source}: {key} must be a non-empty string, not {value!r}")
    if key == "success":
        try:
            compile_success(value)
        except SuccessExpressionError as exc:
            raise LedgerConfigError(f"{source}: {exc}") from None
    return value

"""A ledger's work list (the inputs file): which units exist, and which are over a token budget.

Read with the same streaming reader as the results (JSONL, JSON, CSV, Parquet); a row's unit is its
`input_key` field (config.input_key). Tokens are counted with a local `tokenizers` tokenizer
(`tokenizer.json`), never with transformers: no model import, no hub.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from resumedoctor.errors import ReasonError
from resumedoctor.integrations.ledger.config import LedgerConfig
from resumedoctor.io.records import iter_records

MAX_EXAMPLES = 5
BATCH = 512  # texts per encode_batch call: the Rust tokenizer runs a batch on every core


@dataclass
class InputList:
    """The units of the work list, in file order."""

    path: Path
    keys: dict[str, None] = field(default_factory=dict)  # an ordered set
    rows: int = 0
    without_key: int = 0
    problems: int = 0  # rows that are not records
    unreadable: str | None = None


def read_inputs(config: LedgerConfig) -> InputList | None:
    """The work list named by config.inputs (None: none given); unreadable -> `unreadable` says why."""
    from resumedoctor.integrations.ledger.tally import unit_key

    if config.inputs is None:
        return None
    inputs = InputList(config.inputs)
    try:
        for item in iter_records(config.inputs):
            if type(item) is not tuple:
                inputs.problems += 1
                continue
            inputs.rows += 1
            key = unit_key(item[1].get(config.input_key))
            if key is None:
                inputs.without_key += 1
            else:
                inputs.keys[key] = None
    except ReasonError as exc:
        inputs.unreadable = exc.reason
    return inputs


@dataclass
class Budget:
    """Inputs over the token budget, or why they could not be counted."""

    over: int = 0
    counted: int = 0
    longest: int = 0
    examples: list[tuple[str, int]] = field(default_factory=list)  # (unit, tokens)
    not_counted: str | None = None


def over_budget(config: LedgerConfig) -> Budget | None:
    """Count every input's `text_field` tokens; None when no budget, tokenizer or inputs were given."""
    if config.token_budget is None or config.tokenizer is None or config.inputs is None:
        return None
    budget = Budget()
    try:
        tokenizer = load_tokenizer(config.tokenizer)
        for keys, texts in _batches(config):
            for key, encoding in zip(keys, tokenizer.encode_batch(texts)):
                _measure(budget, key, len(encoding.ids), config.token_budget)
    except ReasonError as exc:
        budget.not_counted = exc.reason
    return budget


def _measure(budget: Budget, key: str, tokens: int, limit: int) -> None:
    budget.counted += 1
    budget.longest = max(budget.longest, tokens)
    if tokens > limit:
        budget.over += 1
        if len(budget.examples) < MAX_EXAMPLES:
            budget.examples.append((key, tokens))


def _batches(config: LedgerConfig) -> Iterator[tuple[list[str], list[str]]]:
    from resumedoctor.integrations.ledger.tally import unit_key

    keys: list[str] = []
    texts: list[str] = []
    for item in iter_records(config.inputs):
        if type(item) is not tuple or not isinstance(text := item[1].get(config.text_field), str):
            continue
        keys.append(unit_key(item[1].get(config.input_key)) or f"row {item[0]}")
        texts.append(text)
        if len(texts) == BATCH:
            yield keys, texts
            keys, texts = [], []
    if texts:
        yield keys, texts


class TokenizerError(ReasonError):
    """The tokenizer given cannot be loaded."""


def load_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` from a local folder's tokenizer.json (or the file itself)."""
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(f"no tokenizer.json at {path} (give a local tokenizer folder)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TokenizerError("counting tokens needs the `tokenizers` package (pip install tokenizers)") from None
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # noqa: BLE001 - the Rust library raises its own exception type
        raise TokenizerError(f"{file} cannot be loaded: {' '.join(str(exc).split())[:200]}") from None

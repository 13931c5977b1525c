"""What a saved tokenizer folder says about its vocabulary and chat template, read without transformers.

The length is what `len(tokenizer)` must fit into the embedding: the highest token id any of
tokenizer.json's model vocabulary, its `added_tokens` and tokenizer_config.json's `added_tokens_decoder`
names, plus one. The chat template is the one transformers 5 loads: `chat_template.jinja` first (its
new home), else tokenizer_config.json's `chat_template` (a string, or a list of named templates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import (
    JSON_CONFIG_LIMIT,
    TEXT_LIMIT,
    JsonFileError,
    MiB,
    read_bytes_bounded,
    read_json_file,
)

# The largest real tokenizer.json files (262k-token vocabularies with merges) are ~35 MB.
TOKENIZER_JSON_LIMIT = 128 * MiB
TEMPLATE_FILE = "chat_template.jinja"


class TokenizerFileError(ReasonError):
    """A tokenizer file that cannot be read or does not have the shape transformers writes."""


@dataclass(frozen=True)
class TokenizerLength:
    length: int  # highest id + 1
    source: str  # which file(s) it comes from


@dataclass(frozen=True)
class ChatTemplate:
    text: str
    source: str  # "chat_template.jinja" or "tokenizer_config.json"


def _json(path: Path, limit: int) -> Any:
    try:
        return read_json_file(path, limit)
    except JsonFileError as exc:
        raise TokenizerFileError(f"{path.name}: {exc.reason}") from None


def _int_ids(values: Any) -> list[int]:
    return [value for value in values if type(value) is int and value >= 0]


def _model_vocab_ids(model: Any) -> list[int]:
    """Token ids of tokenizer.json's `model.vocab`: a {token: id} map (BPE, WordPiece, WordLevel) or a
    list of [piece, score] (Unigram, ids are positions)."""
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict):
        return _int_ids(vocab.values())
    if isinstance(vocab, list):
        return [len(vocab) - 1] if vocab else []
    return []


def _added_ids(document: Any) -> list[int]:
    added = document.get("added_tokens") if isinstance(document, dict) else None
    if not isinstance(added, list):
        return []
    return _int_ids(entry.get("id") for entry in added if isinstance(entry, dict))


def _decoder_ids(config: Any) -> list[int]:
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    if not isinstance(decoder, dict):
        return []
    return [int(key) for key in decoder if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 19]


def tokenizer_length(folder: Path) -> TokenizerLength | None:
    """The length of the tokenizer saved in `folder`; None when it has no tokenizer.json (a slow
    tokenizer's vocabulary is not read here). Raises TokenizerFileError for a damaged file."""
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.exists():
        return None
    document = _json(tokenizer_file, TOKENIZER_JSON_LIMIT)
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise TokenizerFileError("tokenizer.json: not an object with a `model`")
    ids = _model_vocab_ids(document["model"]) + _added_ids(document)
    sources = ["tokenizer.json"]
    config_file = folder / "tokenizer_config.json"
    if config_file.exists():
        decoder_ids = _decoder_ids(_json(config_file, JSON_CONFIG_LIMIT))
        if decoder_ids:
            ids += decoder_ids
            sources.append("tokenizer_config.json's added_tokens_decoder")
    if not ids:
        raise TokenizerFileError("tokenizer.json: no token ids in its vocabulary")
    return TokenizerLength(max(ids) + 1, " and ".join(sources))


def _config_template(value: Any) -> str | None:
    """tokenizer_config.json's `chat_template`: a string, or the `default` of a list of named templates."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict) and entry.get("name") == "default" and isinstance(entry.get("template"), str):
                return entry["template"]
    return None


def chat_template(folder: Path) -> ChatTemplate | None:
    """The default chat template transformers loads from `folder`; None when it has none.
    Raises TokenizerFileError for an unreadable file."""
    jinja = folder / TEMPLATE_FILE
    if jinja.exists():
        try:
            raw = read_bytes_bounded(jinja, TEXT_LIMIT)
        except ReasonError as exc:
            raise TokenizerFileError(f"{TEMPLATE_FILE}: {exc.reason}") from None
        try:
            return ChatTemplate(raw.decode("utf-8"), TEMPLATE_FILE)
        except UnicodeDecodeError:
            raise TokenizerFileError(f"{TEMPLATE_FILE}: not UTF-8 text") from None
    config_file = folder / "tokenizer_config.json"
    if not config_file.exists():
        return None
    config = _json(config_file, JSON_CONFIG_LIMIT)
    text = _config_template(config.get("chat_template")) if isinstance(config, dict) else None
    return None if text is None else ChatTemplate(text, "tokenizer_config.json")

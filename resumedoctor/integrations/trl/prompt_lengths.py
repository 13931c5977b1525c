"""Token lengths of a dataset's prompts, tokenized the way GRPOTrainer does, cached by fingerprint.

GRPOTrainer renders a conversational prompt with the chat template and `add_generation_prompt=True`
and tokenizes it without special tokens; a plain-text prompt goes through the tokenizer as is. Here the
same happens in large batches with the fast (Rust) tokenizer. The lengths are cached under the cache
folder, keyed by the dataset's and the tokenizer's file hashes, so a second diagnosis of an unchanged
dataset imports neither `datasets` nor `transformers`.
"""

from __future__ import annotations

import json
import os
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import iter_blocks
from resumedoctor.io.cache import cache_dir, write_entry
from resumedoctor.io.hashing import cache_key, digest_blocks

DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt")
BATCH = 2048


class DatasetError(ReasonError):
    """One line for a person."""


class MeasureError(ReasonError):
    """The prompts could not be measured here (the helper failed, timed out, answered nonsense)."""


@dataclass
class PromptLengths:
    lengths: array  # one token count per row, in dataset order
    ids: list  # the dataset's `id` column when it has one, else row numbers
    conversational: bool
    from_cache: bool

    def percentile(self, q: float) -> int:
        ordered = sorted(self.lengths)
        if not ordered:
            return 0
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix in DATA_SUFFIXES or os.path.exists(name)


def _hash_files(paths: list[Path]) -> str:
    """One sha256 over every file, each as its name then its bytes."""
    return digest_blocks(_named_blocks(paths))


def _named_blocks(paths: list[Path]) -> Iterator[bytes]:
    for path in sorted(paths):
        yield str(path.name).encode()
        try:
            yield from iter_blocks(path)
        except ReasonError as exc:
            raise DatasetError(f"{path} {exc.reason}") from None


def dataset_files(location: Path) -> list[Path]:
    if location.is_file():
        return [location]
    return sorted(p for p in location.rglob("*") if p.is_file() and not p.name.startswith("."))


def tokenizer_files(folder: Path) -> list[Path]:
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def load_local_dataset(location: Path, split: str):
    """json/jsonl/parquet/csv file, a folder of such files, or a `save_to_disk` folder."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if location.is_file():
            kind = DATA_SUFFIXES.get(location.suffix)
            if kind is None:
                raise DatasetError(f"{location.name}: unknown data file type (json, jsonl, parquet, csv)")
            return datasets.load_dataset(kind, data_files=str(location), split="train")
        if (location / "dataset_info.json").is_file() or (location / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(location))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(str(location), split=split)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; each is one line for the user
        raise DatasetError(f"cannot load {location}: {type(exc).__name__}: {exc}") from None


def _render(tokenizer, prompts: list, conversational: bool, chat_template_kwargs: dict) -> list[str]:
    if not conversational:
        return [str(p) for p in prompts]
    return tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False, **chat_template_kwargs)


def _batch_encoder(tokenizer):
    """Token counts for a batch of texts, as `tokenizer(texts)` would give them.

    A fast tokenizer is called on its Rust backend (a copy with truncation and padding off, as
    transformers sets them per call), which skips converting every encoding to Python lists.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda texts, special: [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    encode_batch = getattr(plain, "encode_batch_fast", plain.encode_batch)
    return lambda texts, special: [len(e.ids) for e in encode_batch(texts, add_special_tokens=special)]


def measure(location: Path, tokenizer_folder: Path, *, split: str = "train", column: str = "prompt",
            chat_template_kwargs: dict | None = None, use_cache: bool = True,
            in_process: bool | None = None) -> PromptLengths:
    """Prompt token lengths for every row of a local dataset.

    On a cache miss the tokenizing runs in a helper process (transformers imports torch), unless
    `in_process` or torch is already imported here. DatasetError: the dataset cannot be used;
    MeasureError: the measuring itself failed (a broken install, the helper's time limit).
    """
    chat_template_kwargs = chat_template_kwargs or {}
    data_paths, tokenizer_paths = dataset_files(location), tokenizer_files(tokenizer_folder)
    if not data_paths:
        raise DatasetError(f"{location}: no data files")
    if not tokenizer_paths:
        raise DatasetError(f"{tokenizer_folder}: no tokenizer files")
    key_source = json.dumps([_hash_files(data_paths), _hash_files(tokenizer_paths), split, column,
                             sorted(chat_template_kwargs.items())], default=str)
    cached = cache_dir() / "prompt-lengths" / f"{cache_key(key_source)}.json"
    if use_cache:
        try:
            record = json.loads(cached.read_text(encoding="utf-8"))
            return PromptLengths(array("I", record["lengths"]), record["ids"], record["conversational"], True)
        except (OSError, ValueError, KeyError):
            pass

    if in_process is None:
        in_process = "torch" in sys.modules
    if in_process:
        try:
            result = measure_here(location, tokenizer_folder, split, column, chat_template_kwargs)
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - as the helper's non-zero exit: not measured, said in one line
            raise MeasureError(f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    else:
        result = _measure_in_helper(location, tokenizer_folder, split, column, chat_template_kwargs)
    if use_cache:
        try:
            write_entry(cached, json.dumps({"lengths": list(result.lengths), "ids": result.ids,
                                            "conversational": result.conversational}))
        except TypeError:
            pass  # ids that JSON cannot hold: measured, not cached
    return result


def _measure_in_helper(location: Path, tokenizer_folder: Path, split: str, column: str,
                       chat_template_kwargs: dict) -> PromptLengths:
    from resumedoctor.io.helper_process import HelperError, run_json

    try:
        raw = run_json("resumedoctor.integrations.trl.prompt_lengths", {
            "location": str(location), "tokenizer": str(tokenizer_folder), "split": split, "column": column,
            "chat_template_kwargs": chat_template_kwargs})
    except HelperError as exc:
        raise MeasureError(exc.reason) from None
    if "error" in raw:
        raise DatasetError(str(raw["error"]))
    try:
        return PromptLengths(array("I", raw["lengths"]), list(raw["ids"]), bool(raw["conversational"]), False)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise MeasureError("helper resumedoctor.integrations.trl.prompt_lengths answered without the prompt lengths") from None


def measure_here(location: Path, tokenizer_folder: Path, split: str, column: str,
                 chat_template_kwargs: dict) -> PromptLengths:
    """Load, render and tokenize in this process."""
    from transformers import AutoTokenizer

    dataset = load_local_dataset(location, split)
    if column not in dataset.column_names:
        raise DatasetError(f"{location}: no {column!r} column (columns: {', '.join(dataset.column_names)})")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    # Columns straight from Arrow: iterating a datasets column goes row by row through its formatter.
    ids = dataset.data.column("id").to_pylist() if "id" in dataset.column_names else list(range(len(dataset)))
    encode = _batch_encoder(tokenizer)
    lengths = array("I")
    conversational = False
    for start in range(0, len(dataset), BATCH):
        prompts = dataset.data.column(column).slice(start, BATCH).to_pylist()
        conversational = bool(prompts) and isinstance(prompts[0], list)
        texts = _render(tokenizer, prompts, conversational, chat_template_kwargs)
        lengths.extend(encode(texts, not conversational))
    return PromptLengths(lengths, ids, conversational, False)


if __name__ == "__main__":  # the helper process of measure()
    request = json.loads(sys.argv[1])
    try:
        measured = measure_here(Path(request["location"]), Path(request["tokenizer"]), request["split"],
                                request["column"], request["chat_template_kwargs"])
        print(json.dumps({"lengths": list(measured.lengths), "ids": measured.ids,
                          "conversational": measured.conversational}, default=str))
    except DatasetError as exc:
        print(json.dumps({"error": exc.reason}))

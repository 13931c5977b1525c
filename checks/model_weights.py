"""MODEL: the weights hold every key the model needs; the vocabulary and chat template are the trained ones.

Read from config.json, the safetensors headers and the tokenizer files only (no torch). The oracle is
the resume itself: transformers' Trainer._load_from_checkpoint loads full weights with
`load_state_dict(state_dict, strict=False)` and PEFT's `load_adapter` loads adapters the same way, so a
missing or renamed key is only logged, and the resume silently trains the weights the recipe's model
started from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import JsonFileError
from resumedoctor.io.printable import printable
from resumedoctor.io.safetensors_header import SafetensorsError
from resumedoctor.io.tokenizer_files import (
    ChatTemplate,
    TokenizerFileError,
    TokenizerLength,
    chat_template,
    tokenizer_length,
)

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

LM_HEAD_MISSING = Rule(
    "MODEL001", "lm-head-missing", ERROR,
    "lm_head.weight is missing while config.json says the output embedding is not tied to the input one.",
    "safetensors cannot store two names for one tensor, so a model whose lm_head shares the embedding's "
    "storage (tied by hand while tie_word_embeddings is false) is saved without lm_head.weight. On resume, "
    "transformers loads the weights with strict=False and only logs the missing key: the model keeps the "
    "lm_head of the model the recipe builds (the base model's) and trains it instead of the trained one.",
)
WRAPPED_KEYS = Rule(
    "MODEL002", "wrapped-key-prefix", ERROR,
    "Weight names start with `_orig_mod.` (torch.compile) or `module.` (DDP): those keys match nothing in the model.",
    "A state dict taken from a compiled or DDP-wrapped model and saved by hand carries the wrapper's "
    "prefix. The resume loads it with strict=False: every prefixed key is unexpected, its parameter missing, "
    "both only logged, and training continues from the recipe's base weights for those parameters (for all "
    "of them when every name is prefixed, as if no checkpoint existed). "
    "`resumedoctor fix --auto` strips the prefix from the tensor names (the tensor data is copied unchanged).",
)
LAYERS_MISSING = Rule(
    "MODEL003", "layers-missing", ERROR,
    "Whole decoder layers named by num_hidden_layers have no weights in the checkpoint.",
    "config.json's num_hidden_layers builds layers 0..N-1; the checkpoint's tensors hold fewer. The resume "
    "loads with strict=False, so the missing layers keep the base model's weights and are trained from "
    "there, silently. The checkpoint is incomplete: resume from an older whole checkpoint.",
)
ADAPTER_KEYS_MISSING = Rule(
    "MODEL004", "adapter-keys-missing", ERROR,
    "The PEFT adapter lacks weights for modules its adapter_config.json targets.",
    "PEFT's load_adapter loads with strict=False and logs missing adapter keys only: a targeted module "
    "without its lora_A/lora_B keeps a fresh adapter (lora_B zero) and its training restarts from nothing. "
    "Checked: every lora_A has its lora_B (and the reverse), and every target module found in one layer "
    "is in every layer the adapter covers.",
)
TOKENIZER_EXCEEDS_EMBEDDINGS = Rule(
    "MODEL005", "tokenizer-exceeds-embeddings", ERROR,
    "The tokenizer has more tokens than the model's embedding has rows: some token ids are out of range.",
    "Tokens were added to the tokenizer after the weights were saved (or the embedding was never resized). "
    "A prompt holding one of them indexes past the embedding: IndexError on CPU, a device-side assert on "
    "GPU, after the GPUs are allocated. Resize the model's embeddings to the tokenizer "
    "(model.resize_token_embeddings(len(tokenizer))) and save it, or point model_name_or_path at a tokenizer "
    "whose length fits. Reported for the tokenizer the resume uses: the recipe's (model_name_or_path). Rows "
    "beyond the tokenizer are normal padding and not reported.",
)
CHECKPOINT_TOKENIZER_EXCEEDS = Rule(
    "MODEL009", "checkpoint-tokenizer-exceeds-embeddings", WARNING,
    "The tokenizer saved in the checkpoint has more tokens than the checkpoint's embedding has rows.",
    "The resume itself formats its prompts with the recipe's tokenizer (model_name_or_path), not this one, "
    "so it is not broken by it. But whoever later loads the checkpoint with its own tokenizer (inference, "
    "evaluation, a resume pointed at the checkpoint) gets token ids past the embedding: IndexError on CPU, a "
    "device-side assert on GPU. Resize the embeddings to len(tokenizer) and save the model, or save the "
    "tokenizer the run trained with into the checkpoint.",
)
CHAT_TEMPLATE_CHANGED = Rule(
    "MODEL006", "chat-template-changed", WARNING,
    "The chat template the recipe's tokenizer applies differs from the one saved with the checkpoint.",
    "The resumed run formats every prompt with the recipe's tokenizer (model_name_or_path): another "
    "template means other prompt tokens than the ones the checkpoint was trained on. transformers 5 keeps "
    "the template in chat_template.jinja, older versions in tokenizer_config.json's chat_template; both "
    "places are read and only the content is compared. A recipe that names its own template "
    "(chat_template_path) is not compared. Intended changes are fine; otherwise point model_name_or_path "
    "at a folder with the checkpoint's tokenizer.",
)
NOT_JUDGED = Rule(
    "MODEL007", "vocabulary-not-judged", INFO,
    "A tokenizer or model file could not be read: the vocabulary or template was not compared.",
    "tokenizer.json, tokenizer_config.json, chat_template.jinja or config.json is damaged, too large or not "
    "what transformers writes. Nothing was judged from it; the resume may fail when it loads the tokenizer.",
)

TENSORS_MISSING = Rule(
    "MODEL008", "tensors-missing", ERROR,
    "A decoder layer lacks tensors every other layer has (or the final norm is missing).",
    "The checkpoint's layers are built alike: a layer whose tensors are a subset of what every other layer "
    "holds, short of some of them (q_proj of layer 0, say), lost them in the save. The resume loads with "
    "strict=False and only logs the missing keys: those parameters keep the recipe's base weights and are "
    "trained from there, silently. Layers that differ by design (dense and MoE layers, attention and "
    "linear-attention ones) hold tensors the others lack and are not judged. The final norm is checked for "
    "the Llama-like model types whose name for it is known (model.norm.weight). Resume from an older "
    "checkpoint whose weights are whole.",
)

RULES = (LM_HEAD_MISSING, WRAPPED_KEYS, LAYERS_MISSING, ADAPTER_KEYS_MISSING, TOKENIZER_EXCEEDS_EMBEDDINGS,
         CHAT_TEMPLATE_CHANGED, NOT_JUDGED, TENSORS_MISSING, CHECKPOINT_TOKENIZER_EXCEEDS)

WRAPPER_PREFIXES = ("_orig_mod.", "module.")
LM_ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel")
INPUT_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
OUTPUT_HEADS = ("lm_head.weight", "embed_out.weight", "output.weight")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
MAX_LAYERS = 100_000  # beyond any real model: a crafted config.json is not judged
LAYER_NAME = re.compile(r"^(.*?)(?:^|\.)(layers|h|layer|blocks)\.(\d{1,9})\.")
FULL_INDEX = "model.safetensors.index.json"
FULL_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# ---- reading the checkpoint's weights ------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """The tensor names (and first dimension) of a checkpoint's safetensors files."""

    files: tuple[Path, ...]
    rows: dict[str, int]  # tensor name -> first dimension (0 for a scalar)
    adapter: bool

    @property
    def names(self) -> list[str]:
        return list(self.rows)


def weight_files(ctx: RunContext, checkpoint: Path) -> tuple[tuple[Path, ...], bool] | None:
    """The safetensors files the resume loads and whether they are an adapter; None: none or unreadable."""
    if (checkpoint / FULL_WEIGHTS).is_file():
        return (checkpoint / FULL_WEIGHTS,), False
    if (checkpoint / FULL_INDEX).is_file():
        try:
            index = ctx.read_json(checkpoint / FULL_INDEX)
        except JsonFileError:
            return None  # CKPT008
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(_plain_name(v) for v in weight_map.values()):
            return None  # CKPT008, or a shard outside the checkpoint: not read from here
        return tuple(checkpoint / name for name in sorted(set(weight_map.values()))), False
    if (checkpoint / ADAPTER_WEIGHTS).is_file():
        return (checkpoint / ADAPTER_WEIGHTS,), True
    return None


def _plain_name(value: Any) -> bool:
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


def read_weights(ctx: RunContext, checkpoint: Path) -> Weights | None:
    """Every tensor name of the checkpoint's weights; None when a header cannot be read (CKPT reports it)."""
    found = weight_files(ctx, checkpoint)
    if found is None:
        return None
    files, adapter = found
    rows: dict[str, int] = {}
    for path in files:
        try:
            header = ctx.safetensors_header(path)
        except (SafetensorsError, ReasonError, OSError):
            return None
        rows.update((name, entry.shape[0] if entry.shape else 0) for name, entry in header.tensors.items())
    return Weights(files, rows, adapter) if rows else None


def wrapper_prefix(name: str) -> str:
    """The `_orig_mod.` / `module.` wrappers a tensor name starts with (nested ones too), or ''.

    Scanned with an offset: slicing the name once per wrapper is quadratic in a crafted name's length."""
    end = 0
    while True:
        wrapper = next((prefix for prefix in WRAPPER_PREFIXES if name.startswith(prefix, end)), None)
        if wrapper is None:
            return name[:end]
        end += len(wrapper)


def common_wrapper(names: list[str]) -> tuple[str, int] | None:
    """The most common wrapper prefix and how many names have one; None when none has."""
    prefixes = [prefix for prefix in map(wrapper_prefix, names) if prefix]
    if not prefixes:
        return None
    return max(set(prefixes), key=prefixes.count), len(prefixes)


def model_config(ctx: RunContext, checkpoint: Path) -> dict | None:
    try:
        config = ctx.read_json(checkpoint / "config.json")
    except JsonFileError:
        return None  # CKPT026
    return config if isinstance(config, dict) else None


def is_causal_lm(config: dict) -> bool:
    architectures = config.get("architectures")
    return (isinstance(architectures, list) and len(architectures) == 1 and isinstance(architectures[0], str)
            and architectures[0].endswith(LM_ARCHITECTURE_SUFFIXES))


# ---- item 5: every key the model needs ---------------------------------------------------------


def check_lm_head(config: dict, names: list[str], where: str) -> Iterator[Finding]:
    if config.get("tie_word_embeddings") is not False or not is_causal_lm(config):
        return
    has_embedding = any(name.endswith(INPUT_EMBEDDINGS) for name in names)
    has_head = any(name == head or name.endswith("." + head) for name in names for head in OUTPUT_HEADS)
    if has_embedding and not has_head:
        yield LM_HEAD_MISSING.finding(
            f"{where}: no lm_head.weight among its {len(names)} tensors while config.json has "
            "tie_word_embeddings: false; the resume keeps the recipe model's lm_head and trains it",
            path=where, hint="re-save the weights with the untied lm_head (model.lm_head.weight.data = "
            "model.lm_head.weight.data.clone() before save_pretrained), or resume from a checkpoint that has it")


def layer_count(config: dict) -> int | None:
    for key in LAYER_COUNT_KEYS:
        value = config.get(key)
        if type(value) is int:
            return value if 0 < value <= MAX_LAYERS else None
    return None


def layer_indices(names: list[str]) -> dict[str, set[int]]:
    """Layer indices per layer container (`model.layers`, `transformer.h`...)."""
    containers: dict[str, set[int]] = {}
    for name in names:
        match = LAYER_NAME.match(name)
        if match:
            container = f"{match.group(1)}.{match.group(2)}".lstrip(".")
            containers.setdefault(container, set()).add(int(match.group(3)))
    return containers


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (the first few ranges)."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans[:8])
    return text + (", ..." if len(spans) > 8 else "")


def check_layers(config: dict, names: list[str], where: str) -> Iterator[Finding]:
    expected = layer_count(config)
    containers = layer_indices(names)
    if expected is None or len(containers) != 1 or not is_causal_lm(config):
        return  # several layer stacks (vision tower, MTP) or none: which one is counted cannot be told
    (container, present), = containers.items()
    missing = [index for index in range(expected) if index not in present]
    if missing:
        yield LAYERS_MISSING.finding(
            f"{where}: config.json has num_hidden_layers={expected} but {container} has no weights for "
            f"{len(missing)} of them (layer {_ranges(missing)}); the resume keeps the base model's weights there",
            path=where, hint="the save is incomplete: resume from an older checkpoint whose layers are all there")


# Model types whose final norm is `model.norm.weight` (Llama's layout); others are not judged.
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2", "granite", "smollm3")


def layer_keys(names: list[str]) -> tuple[str, dict[int, set[str]]] | None:
    """The one layer container and each layer's tensor names relative to it; None for none or several."""
    per_layer: dict[tuple[str, int], set[str]] = {}
    for name in names:
        match = LAYER_NAME.match(name)
        if match:
            container = f"{match.group(1)}.{match.group(2)}".lstrip(".")
            per_layer.setdefault((container, int(match.group(3))), set()).add(name[match.end():])
    if len({container for container, _ in per_layer}) != 1:
        return None
    return next(iter(per_layer))[0], {index: keys for (_, index), keys in per_layer.items()}


def missing_in_layers(layers: dict[int, set[str]]) -> list[str]:
    """`layer.key` for keys every other layer has and a layer whose keys are all shared lacks."""
    missing = []
    for index, keys in sorted(layers.items()):
        others = [other for other_index, other in layers.items() if other_index != index]
        if not others:
            break
        shared = set.intersection(*others)
        if keys < shared:  # holds nothing of its own: built like the others, short of some tensors
            missing += [f"{index}.{key}" for key in sorted(shared - keys)]
    return missing


def check_tensors(config: dict, names: list[str], where: str) -> Iterator[Finding]:
    if not is_causal_lm(config):
        return
    found = layer_keys(names)
    missing = []
    if found is not None:
        container, layers = found
        missing = [f"{container}.{key}" for key in missing_in_layers(layers)]
        if (container == "model.layers" and config.get("model_type") in LLAMA_LIKE
                and "model.norm.weight" not in names):
            missing.append("model.norm.weight")
    if missing:
        shown = ", ".join(printable(name, limit=100) for name in missing[:6])
        yield TENSORS_MISSING.finding(
            f"{where}: {len(missing)} tensor(s) the model has are not in the weights: {shown}"
            + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            + "; the resume keeps the base model's weights for them and trains those", path=where,
            hint="the save is incomplete: resume from an older checkpoint whose weights are whole")


LORA_PART = re.compile(r"^(.*)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$")


def adapter_modules(names: list[str]) -> tuple[set[str], set[str]]:
    """The module paths that hold lora_A and those that hold lora_B weights."""
    found: dict[str, set[str]] = {"lora_A": set(), "lora_B": set()}
    for name in names:
        match = LORA_PART.match(name)
        if match:
            found[match.group(2)].add(match.group(1))
    return found["lora_A"], found["lora_B"]


def target_names(adapter_config: Any) -> list[str] | None:
    """target_modules as a list of module names; None for a regex, `all-linear` or per-layer settings."""
    if not isinstance(adapter_config, dict):
        return None
    if any(adapter_config.get(key) not in (None, "", []) for key in ("layers_to_transform", "layers_pattern", "exclude_modules")):
        return None
    targets = adapter_config.get("target_modules")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        return None
    return targets


def missing_targets(modules: set[str], targets: list[str]) -> list[str]:
    """Targeted modules absent from a layer whose same block (`self_attn`, `mlp`) has the others.

    Compared within one block only: hybrid models (attention and Mamba layers, dense and MoE ones) have
    other modules in other layers, so a target seen in no layer or in another block is not judged."""
    seen: dict[tuple[str, str], dict[str, set[int]]] = {}  # (layer container, block) -> target -> layers
    for module in modules:
        match = LAYER_NAME.match(module + ".")
        last = module.rsplit(".", 1)[-1]
        if match is None or last not in targets:
            continue
        rest = module[match.end():]
        block = rest.rsplit(".", 1)[0] if "." in rest else ""
        container = f"{match.group(1)}.{match.group(2)}".lstrip(".")
        seen.setdefault((container, block), {}).setdefault(last, set()).add(int(match.group(3)))
    missing = []
    for (container, block), per_target in sorted(seen.items()):
        layers = set().union(*per_target.values())
        for target, present in sorted(per_target.items()):
            missing += [f"{container}.{index} {block + '.' if block else ''}{target}" for index in sorted(layers - present)]
    return missing


def check_adapter(ctx: RunContext, checkpoint: Path, names: list[str], where: str) -> Iterator[Finding]:
    with_a, with_b = adapter_modules(names)
    unpaired = sorted((with_a ^ with_b))
    try:
        adapter_config = ctx.read_json(checkpoint / "adapter_config.json")
    except JsonFileError:
        adapter_config = None  # CKPT023
    targets = target_names(adapter_config)
    missing = [f"{module} ({'lora_B' if module in with_a else 'lora_A'})" for module in unpaired]
    if targets is not None:
        missing += missing_targets(with_a | with_b, targets)
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        yield ADAPTER_KEYS_MISSING.finding(
            f"{where}: {len(missing)} adapter weight(s) missing: {shown}; PEFT loads the adapter without them "
            "and those modules restart from a fresh adapter", path=where,
            hint="the adapter save is incomplete: resume from an older checkpoint whose adapter is whole")


def check_keys(ctx: RunContext, checkpoint: Path, weights: Weights) -> Iterator[Finding]:
    names = weights.names
    where = str(weights.files[0] if len(weights.files) == 1 else checkpoint / FULL_INDEX)
    wrapped = common_wrapper(names)
    if wrapped is not None:
        prefix, count = wrapped
        example = next(name for name in names if wrapper_prefix(name))
        which = f"all {len(names)}" if count == len(names) else f"{count} of the {len(names)}"
        yield with_extra(WRAPPED_KEYS.finding(
            f"{where}: {which} tensor names start with {printable(prefix, limit=40)!r} (e.g. "
            f"{printable(example, limit=80)!r}); the resume matches none of those and trains the recipe's base "
            "weights for them", path=where, hint="`resumedoctor fix --auto` renames the tensors without the prefix"),
            checkpoint=checkpoint)
        names = [name[len(wrapper_prefix(name)):] for name in names]
    if weights.adapter:
        yield from check_adapter(ctx, checkpoint, names, where)
        return
    config = model_config(ctx, checkpoint)
    if config is not None:
        yield from check_lm_head(config, names, where)
        yield from check_layers(config, names, where)
        yield from check_tensors(config, names, where)


def with_extra(finding: Finding, **extra: Any) -> Finding:
    finding.extra.update(extra)
    return finding


# ---- item 6: the vocabulary and the chat template ----------------------------------------------


def embedding_rows(weights: Weights) -> tuple[str, int] | None:
    """The input embedding's name and rows; None when there is none or several disagree."""
    found = {(name, rows) for name, rows in weights.rows.items() if name.endswith(INPUT_EMBEDDINGS)}
    if not found or len({rows for _, rows in found}) != 1:
        return None
    return min(found)


def recipe_model(ctx: RunContext) -> str | None:
    """The recipe's model_name_or_path; None without a recipe (or an unreadable one: LEN001 says so)."""
    if ctx.options.recipe is None:
        return None
    try:
        model = ctx.recipe().get("model_name_or_path")
    except ReasonError:
        return None
    return model if isinstance(model, str) and model else None


def _is_dir(folder: Path) -> bool:
    try:
        return folder.is_dir()
    except (OSError, RuntimeError):
        return False


def _same(folder: Path, checkpoint: Path) -> bool:
    try:
        return folder.resolve() == checkpoint.resolve()
    except (OSError, RuntimeError):
        return False


def recipe_model_folder(ctx: RunContext, checkpoint: Path) -> Path | None:
    """The local folder the recipe's tokenizer is loaded from (model_name_or_path), unless it is the checkpoint."""
    model = recipe_model(ctx)
    folder = Path(model).expanduser() if model else None
    if folder is None or not _is_dir(folder) or _same(folder, checkpoint):
        return None
    return folder


def recipe_uses_checkpoint(ctx: RunContext, checkpoint: Path) -> bool:
    """The recipe loads its model and tokenizer from the checkpoint itself."""
    model = recipe_model(ctx)
    return model is not None and _same(Path(model).expanduser(), checkpoint)


def check_hub_model(ctx: RunContext, checkpoint: Path) -> Iterator[Finding]:
    """A recipe model that is no local folder (a hub id): its tokenizer cannot be read here."""
    model = recipe_model(ctx)
    if model is None or _is_dir(Path(model).expanduser()):
        return
    yield NOT_JUDGED.finding(
        f"the recipe's model_name_or_path {printable(model, limit=120)!r} is not a local folder (a hub id?): "
        f"its tokenizer's length and chat template were not compared with {checkpoint.name}'s", path=str(checkpoint),
        hint="to compare them, point model_name_or_path at a local copy of the model")


def tokenizer_folders(ctx: RunContext, checkpoint: Path) -> list[tuple[Path, str, bool]]:
    """The checkpoint's own tokenizer, then the recipe's: each with how to name it and whether the resume uses it."""
    folders = [(checkpoint, f"{checkpoint.name}'s tokenizer", recipe_uses_checkpoint(ctx, checkpoint))]
    recipe_folder = recipe_model_folder(ctx, checkpoint)
    if recipe_folder is not None:
        folders.append((recipe_folder, f"the recipe's tokenizer ({recipe_folder})", True))
    return folders


def not_judged(what: str, path: Path, reason: str) -> Finding:
    return NOT_JUDGED.finding(f"{what} was not compared: {printable(reason, limit=200)}", path=str(path),
                              hint="check that the tokenizer files load: AutoTokenizer.from_pretrained(folder)")


def check_vocabulary(ctx: RunContext, checkpoint: Path, weights: Weights) -> Iterator[Finding]:
    embedding = embedding_rows(weights)
    if embedding is None:
        return
    name, rows = embedding
    for folder, label, used in tokenizer_folders(ctx, checkpoint):
        try:
            length: TokenizerLength | None = ctx.load(tokenizer_length, folder)
        except TokenizerFileError as exc:
            yield not_judged(f"{label}'s vocabulary", folder, exc.reason)
            continue
        if length is None or length.length <= rows:
            continue
        what = (f"{label} has {length.length} tokens ({length.source}) but {checkpoint.name}'s {name} has "
                f"{rows} rows: token ids {rows}..{length.length - 1} are out of range for the embedding")
        if used:
            yield TOKENIZER_EXCEEDS_EMBEDDINGS.finding(
                f"{what}; the resume uses this tokenizer", path=str(folder), hint="resize the model's embeddings "
                "to len(tokenizer) and save it, or point model_name_or_path at a tokenizer whose length fits")
        else:
            yield CHECKPOINT_TOKENIZER_EXCEEDS.finding(
                f"{what}; the resume uses the recipe's tokenizer, but loading the checkpoint with its own one "
                "fails on those tokens", path=str(folder), hint="resize the embeddings to len(tokenizer) and "
                "save the model, or save the tokenizer the run trained with into the checkpoint")


def _drop_final_newline(text: str) -> str:
    """Jinja drops one trailing newline of a template (keep_trailing_newline=False): it renders nothing."""
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def template_difference(old: str, new: str) -> str:
    """Where two templates first differ, in one line with both sides' text there."""
    position = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    line = old.count("\n", 0, position) + 1
    start = max(0, position - 20)
    return (f"{len(old)} vs {len(new)} characters, first difference at character {position} (line {line}): "
            f"`{printable(old[start:position + 40], limit=70)}` vs `{printable(new[start:position + 40], limit=70)}`")


def read_template(ctx: RunContext, folder: Path) -> ChatTemplate | None:
    return ctx.load(chat_template, folder)


def template_overridden(ctx: RunContext) -> bool:
    """The recipe names its own template (SFT's chat_template_path): the model folder's is not the one applied."""
    try:
        return bool(ctx.recipe().get("chat_template_path"))
    except (ReasonError, KeyError):
        return False


def check_template(ctx: RunContext, checkpoint: Path) -> Iterator[Finding]:
    recipe_folder = recipe_model_folder(ctx, checkpoint)
    if recipe_folder is None or template_overridden(ctx):
        return
    templates = []
    for folder in (checkpoint, recipe_folder):
        try:
            templates.append(read_template(ctx, folder))
        except TokenizerFileError as exc:
            yield not_judged(f"the chat template of {folder}", folder, exc.reason)
            return
    saved, coming = templates
    if saved is None and coming is None:
        return
    if saved is not None and coming is not None:
        if _drop_final_newline(saved.text) == _drop_final_newline(coming.text):
            return  # the same template, wherever each side keeps it
        what = (f"the template differs ({checkpoint.name}'s {saved.source} vs {recipe_folder}'s {coming.source}): "
                + template_difference(_drop_final_newline(saved.text), _drop_final_newline(coming.text)))
    elif saved is None:
        what = f"{checkpoint.name} has no chat template, {recipe_folder}'s {coming.source} has one"
    else:
        what = f"{checkpoint.name}'s {saved.source} has a chat template, {recipe_folder} has none"
    yield CHAT_TEMPLATE_CHANGED.finding(
        f"{what}: the resumed run formats its prompts differently from the run so far",
        path=str(recipe_folder), hint="intended? Otherwise copy the checkpoint's chat_template.jinja (or "
        "tokenizer files) into the recipe's model folder")


# ---- the family ----------------------------------------------------------------------------------


def run(ctx: RunContext) -> Iterator[Finding]:
    checkpoint = ctx.resume_point() or ctx.target.checkpoint
    if checkpoint is None:
        return
    # A checkpoint CKPT already finds damaged (a shard left out of the index, a truncated file) is judged
    # there: its missing keys are that damage, whose fix is CKPT's.
    weights = None if ctx.checkpoint_errors(Path(checkpoint)) else read_weights(ctx, Path(checkpoint))
    if weights is not None:
        yield from check_keys(ctx, Path(checkpoint), weights)
        yield from check_vocabulary(ctx, Path(checkpoint), weights)
    yield from check_template(ctx, Path(checkpoint))
    yield from check_hub_model(ctx, Path(checkpoint))


FAMILY = CheckFamily(
    name="model-weights",
    prefix="MODEL",
    title="Model weights: every key the model needs; the vocabulary and chat template it was trained with",
    rules=RULES,
    run=run,
)

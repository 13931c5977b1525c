"""LEN: does every prompt plus its completion fit the model's window, and does TRL accept the recipe?

Runs when a recipe is given (`--config RECIPE`): the recipe is read as TrlParser reads it, the window
comes from the checkpoint's (or the model's) config.json, the prompts of a local dataset are
tokenized the way GRPOTrainer tokenizes them, and every reward function and launcher callback the
recipe names is located without importing it (the gate of `launch` imports no torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.integrations.trl.import_paths import import_problem, reward_problem
from resumedoctor.integrations.trl.prompt_lengths import (
    DatasetError,
    MeasureError,
    looks_local,
    measure,
    tokenizer_files,
)
from resumedoctor.integrations.trl.recipe import (
    REMOVED_KEYS,
    Recipe,
    RecipeError,
    TrlUnavailable,
)
from resumedoctor.io.bounded_read import JsonFileError

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

RECIPE_INVALID = Rule(
    "LEN001", "recipe-invalid", ERROR,
    "The recipe is not valid YAML or not a mapping.",
    "`trl grpo --config RECIPE` reads the recipe with yaml.safe_load and needs a mapping of keys; "
    "a syntax error stops the job before training starts.",
)
UNKNOWN_KEY = Rule(
    "LEN002", "unknown-recipe-key", ERROR,
    "The recipe has a key that no TRL GRPO argument class knows.",
    "TrlParser refuses unknown keys (\"Unknown arguments from config file\"); a typo in a key also "
    "means the value you meant to set is silently the default.",
)
REMOVED_KEY = Rule(
    "LEN003", "removed-recipe-key", ERROR,
    "The recipe uses a key that TRL removed (max_prompt_length, vllm_max_model_len).",
    "max_prompt_length was deprecated in TRL 0.26 and removed in 0.28 (TRL no longer truncates "
    "prompts: filter over-long prompts from the dataset); vllm_max_model_len is now "
    "vllm_max_model_length. TrlParser refuses the old keys. `fix --auto` migrates them.",
)
COMPLETION_EXCEEDS_WINDOW = Rule(
    "LEN004", "completion-exceeds-window", ERROR,
    "max_completion_length alone does not fit the model's window.",
    "A prompt plus its completion must fit the window: vllm_max_model_length when vLLM generates, "
    "else the model's max_position_embeddings. A completion budget as large as the window leaves no "
    "room for any prompt. `fix --unsafe` re-allocates the window by a strategy.",
)
PROMPTS_EXCEED_WINDOW = Rule(
    "LEN005", "prompts-exceed-window", ERROR,
    "Some prompts plus max_completion_length do not fit the window.",
    "TRL 1.x does not truncate prompts. A prompt whose tokens plus max_completion_length exceed the "
    "window fails in vLLM or generates past the positions the model was trained on. `fix --unsafe` "
    "re-allocates the window (strategy balanced, completion_heavy, prompt_heavy or data: the prompt "
    "budget becomes the p99 of the real prompts) or writes a filtered copy of the dataset.",
)
DATASET_UNAVAILABLE = Rule(
    "LEN006", "dataset-unavailable", ERROR,
    "The recipe's local dataset is missing or cannot be loaded.",
    "dataset_name names a local path that does not exist, cannot be loaded as json, jsonl, parquet, "
    "csv or a save_to_disk folder, or has no prompt column. Training would stop at load time.",
)
GENERATION_BATCH_INDIVISIBLE = Rule(
    "LEN007", "generation-batch-indivisible", ERROR,
    "generation_batch_size is not divisible by num_generations.",
    "GRPO generates num_generations completions per prompt in each generation batch; GRPOConfig "
    "refuses a generation_batch_size that is not a multiple of it.",
)
GENERATION_BATCH_AND_STEPS = Rule(
    "LEN008", "generation-batch-and-steps", ERROR,
    "generation_batch_size and steps_per_generation are both set.",
    "They are two ways to say the same thing and GRPOConfig refuses both at once.",
)
NOT_MEASURED = Rule(
    "LEN009", "budget-not-measured", INFO,
    "The prompts could not be measured here (hub dataset or model, no local copy, or the measuring failed).",
    "resumedoctor never downloads: a dataset or tokenizer that exists only on the hub is not "
    "measured. Point the recipe at local copies to have every prompt checked. The measuring runs in a "
    "helper process; when it fails or reaches its time limit (RESUMEDOCTOR_HELPER_TIMEOUT) the "
    "finding says why.",
)
# Retired: drift against the checkpoint is the CFG family's (one fact, one finding, one severity).
# The code stays registered so that `explain LEN010` and settings naming it keep working.
BUDGET_CHANGED = Rule(
    "LEN010", "budget-changed", INFO,
    "Retired, never reported: a budget that differs from the checkpoint's is reported by CFG.",
    "max_completion_length, num_generations and the generation batch saved in the checkpoint's "
    "training_args.bin are compared with the recipe by the CFG family, which judges each change once "
    "by its consequence: CFG001 when it moves the data skip (num_generations, the generation batch), "
    "CFG005 when it changes what a step trains (max_completion_length). LEN judges whether the "
    "budgets fit the window.",
)

IMPORT_NOT_FOUND = Rule(
    "LEN011", "import-not-found", ERROR,
    "A reward function or launcher callback the recipe names cannot be found.",
    "`trl grpo` (and `resumedoctor launch`) loads each `reward_funcs` entry by TRL's name for it "
    "(accuracy_reward, ...) or by importing `package.module.name` with the working folder first on "
    "sys.path; the launcher imports each `resumedoctor: callbacks:` class the same way. A module that "
    "is not there, or a name it does not define, stops the job only after the model and dataset have "
    "loaded. The module is located and its source read without running it.",
)
RECIPE_NOT_CHECKED = Rule(
    "LEN012", "recipe-not-checked", WARNING,
    "TRL's arguments could not be read here, so the recipe was not checked.",
    "The valid keys, their types and defaults come from TRL's own dataclasses, read in a helper "
    "process (importing TRL imports torch). When that helper fails (TRL missing or broken, the "
    "helper's time limit RESUMEDOCTOR_HELPER_TIMEOUT reached), nothing about the recipe can be "
    "judged; a TRL that does not import here will not train here either.",
)

DATASET_FILE_NAME = Rule(
    "LEN013", "dataset-name-is-a-file", WARNING,
    "dataset_name is a data file: `trl grpo` cannot load it, `resumedoctor launch` can.",
    "TRL's script calls datasets.load_dataset(dataset_name), which takes a hub id or a folder, not a file "
    "(`Couldn't find any data file`, after the GPUs are allocated). `resumedoctor launch` loads a local "
    "file itself. For `trl grpo`, put the file in a folder and name the folder.",
)

RULES = (RECIPE_INVALID, UNKNOWN_KEY, REMOVED_KEY, COMPLETION_EXCEEDS_WINDOW, PROMPTS_EXCEED_WINDOW,
         DATASET_UNAVAILABLE, GENERATION_BATCH_INDIVISIBLE, GENERATION_BATCH_AND_STEPS, NOT_MEASURED,
         BUDGET_CHANGED, IMPORT_NOT_FOUND, RECIPE_NOT_CHECKED, DATASET_FILE_NAME)


def model_folder(ctx: RunContext, recipe: Recipe) -> Path | None:
    """Where config.json and the tokenizer are: the checkpoint being resumed, else a local model path."""
    candidates = []
    if ctx.resume_point() is not None:
        candidates.append(ctx.resume_point())
    model = recipe.get("model_name_or_path")
    if isinstance(model, str) and model:
        candidates.append(Path(model).expanduser())
    for folder in candidates:
        if (folder / "config.json").is_file() and tokenizer_files(folder):
            return folder
    return None


def window_of(ctx: RunContext, recipe: Recipe, folder: Path) -> tuple[int | None, str]:
    if recipe.get("use_vllm") and recipe.get("vllm_max_model_length"):
        return int(recipe.get("vllm_max_model_length")), "vllm_max_model_length"
    try:
        config = ctx.read_json(folder / "config.json")
    except JsonFileError:
        return None, "config.json unreadable"
    window = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return (int(window), f"max_position_embeddings of {folder.name}/config.json") if isinstance(window, int) else (None, "")


def measure_prompts(ctx: RunContext, recipe: Recipe, folder: Path):
    """Prompt lengths of the recipe's local dataset (cached per run and across runs)."""
    location = Path(str(recipe.get("dataset_name"))).expanduser()
    split = recipe.get("dataset_train_split") or "train"
    kwargs = recipe.get("chat_template_kwargs") or {}
    return ctx.memo(("prompt-lengths", location, folder, split),
                    lambda: measure(location, folder, split=split, chat_template_kwargs=dict(kwargs)), "measure")


def summary_of(lengths) -> str:
    return (f"prompt tokens p50 {lengths.percentile(50)}, p95 {lengths.percentile(95)}, "
            f"p99 {lengths.percentile(99)}, max {max(lengths.lengths, default=0)}")


def run(ctx: RunContext) -> Iterator[Finding]:
    if ctx.options.recipe is None:
        return
    recipe_path = str(ctx.options.recipe)
    try:
        recipe = ctx.recipe()
    except TrlUnavailable as exc:
        yield RECIPE_NOT_CHECKED.finding(exc.reason, path=recipe_path,
                                         hint="python -c 'import trl' shows what is wrong with the install")
        return
    except RecipeError as exc:
        yield RECIPE_INVALID.finding(exc.reason, path=recipe_path)
        return
    for key in recipe.removed_keys():
        replacement, why = REMOVED_KEYS[key]
        yield REMOVED_KEY.finding(f"{key}: {why}", path=recipe_path,
                                  hint=f"rename it to {replacement}" if replacement else "fix --auto removes it")
    for key in recipe.unknown_keys():
        yield UNKNOWN_KEY.finding(f"{key!r} is not a TRL GRPO argument: TrlParser refuses the recipe", path=recipe_path)
    yield from check_import_paths(recipe, recipe_path)
    yield from check_generation_batch(recipe, recipe_path)
    yield from check_budgets(ctx, recipe, recipe_path)


def check_generation_batch(recipe: Recipe, recipe_path: str) -> Iterator[Finding]:
    """generation_batch_size and steps_per_generation as GRPOConfig accepts them."""
    generations = recipe.get("num_generations")
    batch, steps = recipe.resolve("generation_batch_size"), recipe.resolve("steps_per_generation")
    if batch.value is not None and steps.value is not None:
        yield GENERATION_BATCH_AND_STEPS.finding(
            f"generation_batch_size={batch.value} ({batch.source}) and steps_per_generation={steps.value} ({steps.source})",
            path=recipe_path, hint="keep one of them")
    if isinstance(batch.value, int) and isinstance(generations, int) and generations and batch.value % generations:
        yield GENERATION_BATCH_INDIVISIBLE.finding(
            f"generation_batch_size={batch.value} is not a multiple of num_generations={generations}", path=recipe_path)


@dataclass(frozen=True)
class Window:
    """The model's window and the completion budget the recipe takes from it."""

    tokens: int
    source: str  # what sets it: vllm_max_model_length or the model's max_position_embeddings
    folder: Path  # where config.json and the tokenizer are
    completion: int  # max_completion_length
    completion_source: str


def check_budgets(ctx: RunContext, recipe: Recipe, recipe_path: str) -> Iterator[Finding]:
    """max_completion_length within the window, then every local prompt plus it."""
    folder = model_folder(ctx, recipe)
    if folder is None:
        yield NOT_MEASURED.finding("no local config.json and tokenizer (checkpoint or model_name_or_path)", path=recipe_path)
        return
    tokens, source = window_of(ctx, recipe, folder)
    completion = recipe.resolve("max_completion_length")
    if tokens is None or not isinstance(completion.value, int):
        return
    window = Window(tokens, source, folder, completion.value, completion.source)
    if window.completion >= window.tokens:
        yield _budget(COMPLETION_EXCEEDS_WINDOW.finding(
            f"max_completion_length={window.completion} ({window.completion_source}) leaves no room in the window of "
            f"{window.tokens} tokens ({window.source})", path=recipe_path,
            hint="fix --unsafe re-allocates the window (--strategy balanced|completion_heavy|prompt_heavy|data)"),
            window.tokens, folder, None)
        return
    dataset = recipe.get("dataset_name")
    if not isinstance(dataset, str) or not dataset:
        return
    if not looks_local(dataset):
        yield NOT_MEASURED.finding(f"dataset {dataset!r} is on the hub; not measured (no downloads)", path=recipe_path)
        return
    if not Path(dataset).expanduser().exists():
        yield DATASET_UNAVAILABLE.finding(f"dataset_name {dataset!r} does not exist", path=recipe_path)
        return
    if Path(dataset).expanduser().is_file() and not ctx.options.launching:
        yield DATASET_FILE_NAME.finding(f"dataset_name {dataset!r} is a file: `trl grpo` fails to load it "
                                        "(datasets.load_dataset takes a folder or a hub id)", path=recipe_path,
                                        hint="put the file alone in a folder and name the folder, or start with resumedoctor launch")
    yield from check_prompts(ctx, recipe, recipe_path, window)


def check_prompts(ctx: RunContext, recipe: Recipe, recipe_path: str, window: Window) -> Iterator[Finding]:
    """Every prompt of the local dataset plus max_completion_length fits the window."""
    try:
        lengths = measure_prompts(ctx, recipe, window.folder)
    except DatasetError as exc:
        yield DATASET_UNAVAILABLE.finding(exc.reason, path=recipe_path)
        return
    except MeasureError as exc:
        yield NOT_MEASURED.finding(f"the prompts could not be measured: {exc.reason}", path=recipe_path)
        return
    room = window.tokens - window.completion
    over = [(row, length) for row, length in enumerate(lengths.lengths) if length > room]
    if over:
        shown = ", ".join(str(lengths.ids[row]) for row, _ in over[:10]) + (" ..." if len(over) > 10 else "")
        yield _budget(PROMPTS_EXCEED_WINDOW.finding(
            f"{len(over)} of {len(lengths.lengths)} prompts do not fit: prompt + max_completion_length "
            f"({window.completion}) > {window.tokens} ({window.source}); ids {shown}; {summary_of(lengths)}",
            path=recipe_path,
            hint="fix --unsafe: re-allocate the window (--strategy data uses the p99 prompt) or filter the dataset"),
            window.tokens, window.folder, lengths)


def check_import_paths(recipe: Recipe, recipe_path: str) -> Iterator[Finding]:
    """Every `reward_funcs` entry and launcher callback is there, found without importing it."""
    rewards = recipe.resolve("reward_funcs")
    entries = rewards.value
    if isinstance(entries, str):
        yield IMPORT_NOT_FOUND.finding(
            f"reward_funcs is the single string {entries!r} ({rewards.source}): TRL takes it one character at a "
            f"time", path=recipe_path, hint=f"write a list: reward_funcs: [{entries}]")
        entries = []
    for entry in entries if isinstance(entries, list) else []:
        problem = reward_problem(entry)
        if problem:
            yield IMPORT_NOT_FOUND.finding(f"reward_funcs entry {entry!r} ({rewards.source}) cannot be loaded: {problem}",
                                           path=recipe_path)
    section = recipe.values.get("resumedoctor")
    callbacks = section.get("callbacks") if isinstance(section, dict) else None
    for entry in callbacks if isinstance(callbacks, list) else []:
        problem = import_problem(entry) if isinstance(entry, str) else f"{entry!r} is not an import path"
        if problem:
            yield IMPORT_NOT_FOUND.finding(f"resumedoctor: callbacks: entry {entry!r} cannot be imported: {problem}",
                                           path=recipe_path)


def _budget(finding: Finding, window: int, folder: Path, lengths) -> Finding:
    finding.extra.update(window=window, model_folder=str(folder), lengths=lengths)
    return finding


FAMILY = CheckFamily(
    name="length-budgets",
    prefix="LEN",
    title="Length budgets: prompt + completion fits the window; TRL accepts the recipe",
    rules=RULES,
    run=run,
    requires=("transformers", "trl"),
    not_applicable=lambda ctx: ctx.recipe_not_judged(),
)

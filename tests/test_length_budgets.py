"""The LEN family on a real tokenizer with a chat template, real local datasets and TRL's own parser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import codes

from resumedoctor.context import Options
from resumedoctor.diagnose import diagnose
from resumedoctor.fixing import fix, undo
from resumedoctor.prompt_lengths import measure
from resumedoctor.settings import Settings

WINDOW = 128  # the demo model's max_position_embeddings

RECIPE = """\
# GRPO recipe of the demo run (comments must survive every fix)
model_name_or_path: {model}   # the tiny local model
dataset_name: {dataset}
reward_funcs: [think_format_reward]
output_dir: {output_dir}
use_cpu: true
bf16: false
max_completion_length: {completion}   # completion budget
num_generations: 4
per_device_train_batch_size: 4
learning_rate: 1.0e-3
max_steps: 6
save_steps: 2
{extra}"""


def write_prompts(path: Path, lengths_in_words: list[int], *, conversational: bool = True) -> Path:
    from resumedoctor.demo import WORDS

    with open(path, "w") as handle:
        for index, words in enumerate(lengths_in_words):
            text = " ".join(WORDS[(index + k) % len(WORDS)] for k in range(words))
            prompt = [{"role": "user", "content": text}] if conversational else text
            handle.write(json.dumps({"id": f"q{index}", "prompt": prompt}) + "\n")
    return path


@pytest.fixture
def budget_run(full_run, tmp_path, monkeypatch):
    """A real run, a dataset with a few over-long prompts, and a recipe that points at both."""
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(tmp_path / "cache"))
    dataset = write_prompts(tmp_path / "prompts.jsonl", [4, 6, 8, 10, 5, 7, 9, 80, 120, 3] * 10)

    def recipe(completion: int = 32, extra: str = "", dataset_name: str | None = None) -> Path:
        path = tmp_path / "recipe.yaml"
        path.write_text(RECIPE.format(model=full_run / "checkpoint-6", dataset=dataset_name or dataset,
                                      output_dir=full_run, completion=completion, extra=extra))
        return path

    return {"run": full_run, "dataset": dataset, "recipe": recipe, "tmp": tmp_path}


def len_report(budget_run, recipe: Path, recipe_args=()):
    # LEN010 (budget changed against the checkpoint, trained with 8 completion tokens) has its own test.
    return diagnose(budget_run["run"], settings=Settings(select=("LEN",), ignore=("LEN010",)),
                    options=Options(recipe=recipe, recipe_args=tuple(recipe_args)), environ={})


def trl_parses(recipe: Path):
    """TRL's own parser, exactly as `trl grpo --config RECIPE` builds its arguments."""
    from trl import GRPOConfig, ModelConfig, TrlParser
    from trl.scripts.grpo import GRPOScriptArguments
    from trl.scripts.utils import DatasetMixtureConfig

    parser = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig))
    return parser.parse_args_and_config(["--config", str(recipe)])


def test_lengths_match_what_grpo_trainer_tokenizes(budget_run):
    from transformers import AutoTokenizer

    measured = measure(budget_run["dataset"], budget_run["run"] / "checkpoint-6", use_cache=False)
    tokenizer = AutoTokenizer.from_pretrained(budget_run["run"] / "checkpoint-6")
    rows = [json.loads(line) for line in budget_run["dataset"].read_text().splitlines()]
    # GRPOTrainer._tokenize_prompts: one batched apply_chat_template with the generation prompt.
    reference = tokenizer.apply_chat_template(conversation=[row["prompt"] for row in rows], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"]
    assert list(measured.lengths) == [len(ids) for ids in reference]
    assert measured.ids[:2] == ["q0", "q1"] and measured.conversational


def test_plain_text_prompts_use_the_tokenizer_directly(budget_run, tmp_path):
    from transformers import AutoTokenizer

    dataset = write_prompts(tmp_path / "plain.jsonl", [3, 9, 27], conversational=False)
    measured = measure(dataset, budget_run["run"] / "checkpoint-6", use_cache=False)
    tokenizer = AutoTokenizer.from_pretrained(budget_run["run"] / "checkpoint-6")
    texts = [json.loads(line)["prompt"] for line in dataset.read_text().splitlines()]
    assert list(measured.lengths) == [len(ids) for ids in tokenizer(text=texts)["input_ids"]]


def test_clean_recipe_has_no_finding_and_trl_accepts_it(budget_run):
    shortened = write_prompts(budget_run["tmp"] / "short.jsonl", [4, 6, 8] * 5)
    recipe = budget_run["recipe"](dataset_name=shortened)
    trl_parses(recipe)
    assert len_report(budget_run, recipe).findings == ()


def test_over_long_prompts_are_counted_with_ids_and_percentiles(budget_run):
    report = len_report(budget_run, budget_run["recipe"](completion=64))
    finding = next(f for f in report.findings if f.code == "LEN005")
    assert "of 100 prompts do not fit" in finding.message
    assert "ids q7, q8" in finding.message
    for label in ("p50", "p95", "p99", "max"):
        assert label in finding.message
    assert report.exit_code == 1


def test_completion_alone_exceeds_the_window(budget_run):
    report = len_report(budget_run, budget_run["recipe"](completion=WINDOW))
    assert codes(report) == ["LEN004"]


def test_cli_override_wins_and_is_reported_as_cli(budget_run):
    report = len_report(budget_run, budget_run["recipe"](completion=8), ["--max_completion_length", "200"])
    finding = next(f for f in report.findings if f.code == "LEN004")
    assert "max_completion_length=200 (cli)" in finding.message


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("balanced", WINDOW // 2), ("completion_heavy", WINDOW * 3 // 4), ("prompt_heavy", WINDOW // 4)],
)
def test_reallocation_strategies(budget_run, strategy, expected):
    recipe = budget_run["recipe"](completion=WINDOW)
    fix(budget_run["run"], unsafe=True, settings=Settings(select=("LEN004",)),
        options=Options(recipe=recipe, strategy=strategy), environ={})
    _, config, _, _ = trl_parses(recipe)
    assert config.max_completion_length == expected
    assert "# completion budget" in recipe.read_text() and recipe.read_text().startswith("# GRPO recipe")


def test_data_strategy_uses_the_p99_prompt_and_then_everything_fits(budget_run):
    one_long = write_prompts(budget_run["tmp"] / "one-long.jsonl", [4, 6, 8, 10, 5, 7, 9, 12, 3, 11] * 9 + [120] + [5] * 9)
    recipe = budget_run["recipe"](completion=100, dataset_name=one_long)
    measured = measure(one_long, budget_run["run"] / "checkpoint-6")
    result = fix(budget_run["run"], unsafe=True, settings=Settings(select=("LEN",), ignore=("LEN010",)),
                 options=Options(recipe=recipe, strategy="data"), environ={})
    _, config, _, _ = trl_parses(recipe)
    assert config.max_completion_length == WINDOW - measured.percentile(99)
    assert result.after.findings == ()  # the few prompts beyond p99 went to a filtered copy


def test_filtered_dataset_copy_leaves_the_original_untouched(budget_run):
    original = budget_run["dataset"].read_bytes()
    recipe = budget_run["recipe"](completion=64)
    fix(budget_run["run"], unsafe=True, settings=Settings(select=("LEN005",)),
        options=Options(recipe=recipe, strategy="balanced"), environ={})
    script, config, _, _ = trl_parses(recipe)
    copy = Path(script.dataset_name)
    assert copy.parent == budget_run["run"] / ".resumedoctor" / "datasets"
    kept = [json.loads(line)["id"] for line in copy.read_text().splitlines()]
    assert "q7" not in kept and "q0" in kept
    assert budget_run["dataset"].read_bytes() == original
    assert codes(len_report(budget_run, recipe)) == []
    undo(budget_run["run"])
    assert str(budget_run["dataset"]) in recipe.read_text() and not copy.exists()


def test_removed_keys_are_migrated_safely(budget_run):
    short = write_prompts(budget_run["tmp"] / "short.jsonl", [4, 6, 8])
    recipe = budget_run["recipe"](dataset_name=short, extra="max_prompt_length: 64  # old\nvllm_max_model_len: 128\n")
    with pytest.raises((ValueError, SystemExit)):
        trl_parses(recipe)  # TRL refuses the removed keys
    report = len_report(budget_run, recipe)
    assert sorted(codes(report)) == ["LEN003", "LEN003"]
    fix(budget_run["run"], settings=Settings(select=("LEN",)), options=Options(recipe=recipe), environ={})
    _, config, _, _ = trl_parses(recipe)
    assert config.vllm_max_model_length == 128
    text = recipe.read_text()
    assert "max_prompt_length" not in text and "# the tiny local model" in text


def test_unknown_key_and_yaml_syntax_error(budget_run):
    recipe = budget_run["recipe"](extra="max_completion_lenght: 64\n")
    assert "LEN002" in codes(len_report(budget_run, recipe))
    recipe.write_text("model_name_or_path: [unclosed\n")
    finding = len_report(budget_run, recipe).findings[0]
    assert finding.code == "LEN001" and "line 2" in finding.message


def test_missing_and_unloadable_dataset(budget_run):
    missing = len_report(budget_run, budget_run["recipe"](dataset_name=budget_run["tmp"] / "nope.jsonl"))
    assert codes(missing) == ["LEN006"]
    broken = budget_run["tmp"] / "broken.jsonl"
    broken.write_text('{"no_prompt_column": 1}\n')
    assert codes(len_report(budget_run, budget_run["recipe"](dataset_name=broken))) == ["LEN006"]


def test_hub_dataset_is_not_measured(budget_run):
    report = len_report(budget_run, budget_run["recipe"](dataset_name="trl-lib/tldr"))
    assert codes(report) == ["LEN009"] and report.exit_code == 0


def test_generation_batch_rules(budget_run):
    short = write_prompts(budget_run["tmp"] / "short.jsonl", [4])
    recipe = budget_run["recipe"](dataset_name=short, extra="generation_batch_size: 6\nsteps_per_generation: 2\n")
    assert sorted(codes(len_report(budget_run, recipe))) == ["LEN007", "LEN008"]


def test_budget_changed_against_the_checkpoint_is_reported_once_by_cfg(budget_run):
    short = write_prompts(budget_run["tmp"] / "short.jsonl", [4])
    recipe = budget_run["recipe"](dataset_name=short, extra="")
    text = recipe.read_text().replace("num_generations: 4", "num_generations: 2")
    recipe.write_text(text)
    report = diagnose(budget_run["run"], settings=Settings(select=("LEN", "CFG")), options=Options(recipe=recipe),
                      environ={})
    # The demo run was trained with max_completion_length 8 and num_generations 4: one finding each, from CFG
    # (LEN010 is retired; LEN judges whether the budgets fit, CFG judges drift against the checkpoint).
    about = {key: [(f.code, f.severity.value) for f in report.findings if f.message.startswith(f"{key}:")]
             for key in ("max_completion_length", "num_generations")}
    assert about == {"max_completion_length": [("CFG005", "warning")], "num_generations": [("CFG001", "error")]}
    assert "LEN010" not in codes(report)


@pytest.mark.parametrize("kind", ["parquet", "csv", "save_to_disk"])
def test_other_dataset_formats(budget_run, kind):
    import datasets

    rows = [json.loads(line) for line in budget_run["dataset"].read_text().splitlines()]
    plain = datasets.Dataset.from_list([{"id": r["id"], "prompt": r["prompt"][0]["content"]} for r in rows])
    location = budget_run["tmp"] / f"data-{kind}"
    if kind == "parquet":
        location = location.with_suffix(".parquet")
        plain.to_parquet(str(location))
    elif kind == "csv":
        location = location.with_suffix(".csv")
        plain.to_csv(str(location), index=False)
    else:
        datasets.DatasetDict({"train": plain}).save_to_disk(str(location))
    measured = measure(location, budget_run["run"] / "checkpoint-6", use_cache=False)
    assert len(measured.lengths) == 100 and not measured.conversational
    assert measured.ids[7] == "q7"


def test_second_measure_comes_from_the_cache_without_heavy_imports(budget_run):
    first = measure(budget_run["dataset"], budget_run["run"] / "checkpoint-6")
    assert not first.from_cache
    script = ("import sys; from pathlib import Path; from resumedoctor.prompt_lengths import measure\n"
              "m = measure(Path(sys.argv[1]), Path(sys.argv[2]))\n"
              "print(m.from_cache, len(m.lengths), 'transformers' in sys.modules, 'datasets' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script, str(budget_run["dataset"]), str(budget_run["run"] / "checkpoint-6")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "100", "False", "False"]
    # A changed dataset is a new fingerprint: measured again.
    shutil.copy(budget_run["dataset"], budget_run["tmp"] / "copy.jsonl")
    with open(budget_run["tmp"] / "copy.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "extra", "prompt": [{"role": "user", "content": "a"}]}) + "\n")
    assert not measure(budget_run["tmp"] / "copy.jsonl", budget_run["run"] / "checkpoint-6").from_cache


def test_diagnosing_with_a_recipe_never_imports_torch(budget_run):
    """The gate of `launch` must refuse a broken run before torch is imported: helpers do the heavy work."""
    recipe = budget_run["recipe"](completion=64)
    script = (
        "import sys\n"
        "from resumedoctor.cli import main\n"
        "try:\n    main(['diagnose', sys.argv[1], '--config', sys.argv[2], '--format', 'json'])\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('EXIT', code, 'TORCH', 'torch' in sys.modules, 'TRL', 'trl' in sys.modules, file=sys.stderr)\n"
    )
    env = {**__import__("os").environ, "RESUMEDOCTOR_CACHE_DIR": str(budget_run["tmp"] / "fresh-cache")}
    result = subprocess.run([sys.executable, "-c", script, str(budget_run["run"]), str(recipe)],
                            capture_output=True, text=True, env=env)
    assert "EXIT 1 TORCH False TRL False" in result.stderr, result.stderr[-2000:]
    assert "LEN005" in result.stdout  # measured in a helper process, with a cold cache

"""The LEN family on a real tokenizer with a chat template, real local datasets and TRL's own parser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import codes

from resumedoctor.engine.context import Options
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix, undo
from resumedoctor.integrations.trl.prompt_lengths import measure

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
    from demo_run import WORDS

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
    # LEN010 (retired) and LEN013 (these recipes name a data file, as launch loads it) have their own tests.
    return diagnose(budget_run["run"], settings=Settings(select=("LEN",), ignore=("LEN010", "LEN013")),
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
    result = fix(budget_run["run"], unsafe=True, settings=Settings(select=("LEN",), ignore=("LEN010", "LEN013")),
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
    script = ("import sys; from pathlib import Path; from resumedoctor.integrations.trl.prompt_lengths import measure\n"
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
        "from resumedoctor.cli.app import main\n"
        "try:\n    main(['diagnose', sys.argv[1], '--config', sys.argv[2], '--format', 'json'])\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('EXIT', code, 'TORCH', 'torch' in sys.modules, 'TRL', 'trl' in sys.modules, file=sys.stderr)\n"
    )
    env = {**__import__("os").environ, "RESUMEDOCTOR_CACHE_DIR": str(budget_run["tmp"] / "fresh-cache")}
    result = subprocess.run([sys.executable, "-c", script, str(budget_run["run"]), str(recipe)],
                            capture_output=True, text=True, env=env)
    assert "EXIT 1 TORCH False TRL False" in result.stderr, result.stderr[-2000:]
    assert "LEN005" in result.stdout  # measured in a helper process, with a cold cache


YAML_11_RECIPE = """\
# values that YAML 1.1 (PyYAML, TrlParser) and YAML 1.2 read differently, or that argparse converts
model_name_or_path: {model}
output_dir: {output_dir}
use_cpu: yes
bf16: off
reward_funcs:
  - think_format_reward   # an indented list: an edit keeps it indented
use_vllm: no              # false for TrlParser; the string "no" for a YAML 1.2 reader
log_completions: on
disable_dropout: off
learning_rate: 1e-5       # a string for PyYAML, a float once argparse has converted it
max_completion_length: "16"
num_generations: 0x4
seed: 017                 # YAML 1.1 octal
"""


def trl_value(parsed, key: str):
    return next(getattr(part, key) for part in parsed if hasattr(part, key))


def test_values_are_what_trl_parser_sees(budget_run):
    from resumedoctor.integrations.trl.recipe import load_recipe

    recipe_path = budget_run["tmp"] / "yaml11.yaml"
    recipe_path.write_text(YAML_11_RECIPE.format(model=budget_run["run"] / "checkpoint-6", output_dir=budget_run["run"]))
    recipe = load_recipe(recipe_path, [], {})
    parsed = trl_parses(recipe_path)
    keys = ("use_cpu", "bf16", "use_vllm", "log_completions", "disable_dropout", "learning_rate",
            "max_completion_length", "num_generations", "seed", "reward_funcs")
    assert {key: recipe.get(key) for key in keys} == {key: trl_value(parsed, key) for key in keys}
    assert recipe.get("use_vllm") is False and recipe.get("seed") == 15  # the oracle agrees; spelled out


def test_an_edit_keeps_comments_order_and_list_indentation(budget_run):
    recipe_path = budget_run["tmp"] / "yaml11.yaml"
    original = YAML_11_RECIPE.format(model=budget_run["run"] / "checkpoint-6", output_dir=budget_run["run"]) + \
        f"dataset_name: {budget_run['dataset']}\nmax_steps: 6\nsave_steps: 2\n"
    recipe_path.write_text(original.replace('max_completion_length: "16"', f"max_completion_length: {WINDOW}"))
    fix(budget_run["run"], unsafe=True, settings=Settings(select=("LEN004",)),
        options=Options(recipe=recipe_path, strategy="balanced"), environ={})
    edited = recipe_path.read_text().splitlines()
    before = original.replace('max_completion_length: "16"', f"max_completion_length: {WINDOW}").splitlines()
    changed = [(old, new) for old, new in zip(before, edited) if old != new]
    assert len(edited) == len(before) and len(changed) == 1, changed  # one line changed, every other kept as is
    assert changed[0][1].startswith(f"max_completion_length: {WINDOW // 2}")
    parsed = trl_parses(recipe_path)
    assert trl_value(parsed, "max_completion_length") == WINDOW // 2 and trl_value(parsed, "use_vllm") is False


def test_an_edit_that_is_already_so_writes_nothing(budget_run, tmp_path):
    """`use_vllm: no` is already False for TRL: setting False is no change (not a rewrite to `false`)."""
    from resumedoctor.engine.context import RunContext
    from resumedoctor.engine.target import resolve_target
    from resumedoctor.integrations.trl.recipe_edit import recipe_change

    recipe_path = budget_run["tmp"] / "yaml11.yaml"
    recipe_path.write_text(YAML_11_RECIPE.format(model=budget_run["run"] / "checkpoint-6", output_dir=budget_run["run"]))
    ctx = RunContext(resolve_target(budget_run["run"]), Settings(), Options(recipe=recipe_path), {})
    assert recipe_change(ctx, "use_vllm", False, "test") == []
    assert recipe_change(ctx, "max_completion_length", 16, "test") == []
    assert len(recipe_change(ctx, "use_vllm", True, "test")) == 1


MODULE = """\
import os
open(os.environ["IMPORTED_MARKER"], "a").write(__name__ + "\\n")  # proof of being imported
from json import dumps as aliased
import os.path


def reward(completions, **kwargs):
    return [0.0 for _ in completions]


class Callback:
    def method(self):
        inner_only = 1


try:
    from nosuch_optional import fast_reward
except ImportError:
    def fast_reward(completions, **kwargs):
        return [1.0 for _ in completions]

if True:
    CONSTANT: int = 3
annotated_only: int
"""


@pytest.fixture
def import_world(tmp_path, monkeypatch):
    """Modules in the working folder, where TRL looks first; each records it if anyone imports it."""
    root = tmp_path / "work"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "namespace_pkg").mkdir()
    (root / "mymodule.py").write_text(MODULE)
    (root / "pkg" / "__init__.py").write_text(MODULE)
    (root / "pkg" / "sub" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "rewards.py").write_text(MODULE)
    (root / "namespace_pkg" / "rewards.py").write_text(MODULE)
    (root / "starred.py").write_text("from os.path import *\n")
    (root / "broken.py").write_text("def reward(:\n")
    marker = tmp_path / "imported.txt"
    monkeypatch.setenv("IMPORTED_MARKER", str(marker))
    monkeypatch.chdir(root)
    return {"root": root, "marker": marker}


IMPORT_CASES = [
    "mymodule.reward", "mymodule.Callback", "mymodule.aliased", "mymodule.os", "mymodule.fast_reward",
    "mymodule.CONSTANT", "mymodule.missing", "mymodule.inner_only", "mymodule.annotated_only", "mymodule.method",
    "pkg.reward", "pkg.sub.rewards.reward", "pkg.sub.rewards.missing", "pkg.sub.nosuch.reward", "pkg.nosub.x",
    "namespace_pkg.rewards.reward", "namespace_pkg.rewards.missing", "nosuchmodule.reward",
    "mymodule.reward.attribute", "starred.join", "broken.reward", "demo_run.length_reward",
    "demo_run.missing",
]


def test_import_paths_are_judged_as_importing_them_would(import_world):
    """The oracle is TRL's own loading code (trl/scripts/grpo.py), run in a separate process."""
    from resumedoctor.integrations.trl.import_paths import import_problem

    load = ("import importlib, os, sys\nsys.path.insert(0, os.getcwd())\n"
            "module, _, name = sys.argv[1].rpartition('.')\ngetattr(importlib.import_module(module), name)\n")
    judged = {dotted: import_problem(dotted) for dotted in IMPORT_CASES}
    assert not import_world["marker"].exists()  # judging imported none of them
    for dotted, problem in judged.items():
        imported = subprocess.run([sys.executable, "-c", load, dotted], capture_output=True, text=True)
        assert (problem is None) == (imported.returncode == 0), (dotted, problem, imported.stderr[-300:])
    assert "defines no 'missing'" in judged["mymodule.missing"]
    assert "no module named 'pkg.sub.nosuch'" in judged["pkg.sub.nosuch.reward"]
    assert "SyntaxError at line 1" in judged["broken.reward"]


def test_trl_reward_names_are_the_ones_trl_grpo_knows():
    """The names the gate accepts without an import path: read from the installed trl/scripts/grpo.py."""
    import ast
    import importlib.util

    from resumedoctor.integrations.trl.import_paths import TRL_REWARD_NAMES

    source = Path(importlib.util.find_spec("trl.scripts.grpo").origin).read_text()
    registry = next(node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
                    and any(getattr(t, "id", None) == "reward_funcs_registry" for t in node.targets))
    assert tuple(key.value for key in registry.keys) == TRL_REWARD_NAMES


def test_missing_reward_functions_and_callbacks_are_errors(budget_run, import_world):
    shortened = write_prompts(budget_run["tmp"] / "short.jsonl", [4, 6, 8])
    recipe = budget_run["recipe"](dataset_name=shortened, extra="resumedoctor:\n  callbacks: [mymodule.Callback, pkg.Nope]\n")
    recipe.write_text(recipe.read_text().replace(
        "reward_funcs: [think_format_reward]",
        "reward_funcs: [think_format_reward, mymodule.reward, nosuchmodule.reward, mymodule.missing, no_such_name]"))
    report = len_report(budget_run, recipe)
    messages = sorted(f.message for f in report.findings if f.code == "LEN011")
    assert len(messages) == 4 and report.exit_code == 1, messages
    assert any("'pkg.Nope'" in m and "defines no 'Nope'" in m for m in messages)
    assert any("'no_such_name'" in m and "nor a dotted import path" in m for m in messages)
    assert not import_world["marker"].exists()
    # The oracle: TRL's own script (trl/scripts/grpo.py main) refuses each entry the gate refused.
    plain = recipe.with_name("plain.yaml")
    plain.write_text(recipe.read_text().split("resumedoctor:")[0])
    refused = ["nosuchmodule.reward", "mymodule.missing", "no_such_name"]
    result = subprocess.run([sys.executable, "-c", TRL_GRPO_MAIN, str(plain), *refused], capture_output=True, text=True)
    verdicts = [line for line in result.stdout.splitlines() if line.startswith(("REFUSED", "ACCEPTED"))]
    assert verdicts == [f"REFUSED {entry}" for entry in refused], result.stdout[-2000:] + result.stderr[-2000:]


TRL_GRPO_MAIN = """\
import sys
from trl.scripts.grpo import main, make_parser
parsed = make_parser().parse_args_and_config(["--config", sys.argv[1]])
for entry in sys.argv[2:]:
    parsed[0].reward_funcs = [entry]
    try:
        main(*parsed)  # loads the reward functions first: each of these fails there, before any model loads
    except Exception:
        print("REFUSED", entry)
    else:
        print("ACCEPTED", entry)
"""


def test_reward_funcs_as_one_string_is_an_error(budget_run):
    shortened = write_prompts(budget_run["tmp"] / "short.jsonl", [4, 6, 8])
    recipe = budget_run["recipe"](dataset_name=shortened)
    recipe.write_text(recipe.read_text().replace("reward_funcs: [think_format_reward]", "reward_funcs: think_format_reward"))
    script, _, _, _ = trl_parses(recipe)
    assert script.reward_funcs == "think_format_reward"  # TRL keeps the string: its loop takes it letter by letter
    assert codes(len_report(budget_run, recipe)) == ["LEN011"]


def broken_package(root: Path, name: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f'raise ImportError("this {name} is broken (a stand-in for a bad install)")\n')
    return root


def diagnose_cli(budget_run, recipe: Path, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "resumedoctor", "diagnose", str(budget_run["run"]), "--config",
                           str(recipe), "--select", "LEN", "--ignore", "LEN010", "--format", "json"],
                          capture_output=True, text=True, env={**os.environ, **env})


def test_a_broken_trl_is_a_finding_not_an_internal_error(budget_run):
    broken = broken_package(budget_run["tmp"] / "broken-site", "trl")
    result = diagnose_cli(budget_run, budget_run["recipe"](), PYTHONPATH=str(broken),
                          RESUMEDOCTOR_CACHE_DIR=str(budget_run["tmp"] / "cold-cache"))
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-2000:]
    findings = json.loads(result.stdout)["findings"]
    assert [f["code"] for f in findings] == ["LEN012"] and findings[0]["severity"] == "warning"
    assert "helper resumedoctor.integrations.trl.recipe failed (exit 1): ImportError: this trl is broken" in findings[0]["message"]


def test_helper_time_limit_is_a_finding(budget_run):
    result = diagnose_cli(budget_run, budget_run["recipe"](), RESUMEDOCTOR_HELPER_TIMEOUT="0.01",
                          RESUMEDOCTOR_CACHE_DIR=str(budget_run["tmp"] / "cold-cache"))
    findings = json.loads(result.stdout)["findings"]
    assert [f["code"] for f in findings] == ["LEN012"], result.stderr[-2000:]
    assert "did not finish within 0.01 s" in findings[0]["message"]


def test_measuring_that_fails_or_runs_out_of_time_is_not_measured(budget_run):
    """TRL's table is cached; the measuring helper then fails for real (a broken transformers), or times out."""
    recipe = budget_run["recipe"](completion=64)
    cache = str(budget_run["tmp"] / "cache")  # the fixture's: TRL's field table is in it after this first run
    assert "LEN005" in diagnose_cli(budget_run, recipe, RESUMEDOCTOR_CACHE_DIR=cache).stdout
    fresh = write_prompts(budget_run["tmp"] / "fresh.jsonl", [4, 80])  # not measured yet: the helper must run
    recipe = budget_run["recipe"](completion=64, dataset_name=fresh)
    broken = broken_package(budget_run["tmp"] / "broken-site", "transformers")
    for env, why in (({"PYTHONPATH": str(broken)}, "ImportError: this transformers is broken"),
                     ({"RESUMEDOCTOR_HELPER_TIMEOUT": "0.01"}, "did not finish within 0.01 s")):
        result = diagnose_cli(budget_run, recipe, RESUMEDOCTOR_CACHE_DIR=cache, **env)
        findings = [f for f in json.loads(result.stdout)["findings"] if f["code"] != "LEN013"]  # a data file
        assert [f["code"] for f in findings] == ["LEN009"], result.stdout[-2000:] + result.stderr[-2000:]
        assert "the prompts could not be measured: helper resumedoctor.integrations.trl.prompt_lengths" in findings[0]["message"]
        assert why in findings[0]["message"]


def test_a_helper_that_prints_no_json_or_cannot_start(monkeypatch):
    from resumedoctor.io.helper_process import HelperError, run_json

    with pytest.raises(HelperError, match="printed no JSON object"):
        run_json("this", {})  # a real module that prints the Zen of Python, not JSON
    with pytest.raises(HelperError, match=r"failed \(exit 1\): .*No module named nosuch_helper_module"):
        run_json("nosuch_helper_module", {})
    monkeypatch.setenv("RESUMEDOCTOR_HELPER_TIMEOUT", "soon")
    with pytest.raises(HelperError, match="is not a number of seconds"):
        run_json("this", {})


def test_a_dataset_file_is_a_warning_for_trl_grpo_not_for_launch(budget_run, tmp_path):
    import datasets

    from resumedoctor.integrations.trl.launcher import prepare

    recipe = budget_run["recipe"]()
    dataset = budget_run["dataset"]
    with pytest.raises(FileNotFoundError):  # the oracle: what `trl grpo` calls
        datasets.load_dataset(str(dataset))
    report = diagnose(budget_run["run"], settings=Settings(select=("LEN013",)), options=Options(recipe=recipe),
                      environ={})
    found = [f for f in report.findings if f.code == "LEN013"]
    assert len(found) == 1 and found[0].severity.value == "warning"
    alone = tmp_path / "prompts"
    alone.mkdir()
    shutil.copy(dataset, alone / dataset.name)
    datasets.load_dataset(str(alone))  # a folder holding the file loads
    folder = budget_run["recipe"](dataset_name=str(alone))
    assert "LEN013" not in [f.code for f in diagnose(budget_run["run"], settings=Settings(select=("LEN013",)),
                                                     options=Options(recipe=folder), environ={}).findings]
    _, report = prepare(recipe, dry_run=True, environ={})
    assert "LEN013" not in [f.code for f in report.findings]  # launch loads the file itself

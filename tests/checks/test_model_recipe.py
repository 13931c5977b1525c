"""CFG014-CFG017: the recipe builds the model the checkpoint holds (full weights or the LoRA adapter).

The oracle is the real resume: the recipe parsed by TRL's own TrlParser, its LoraConfig built by TRL's
get_peft_config, and GRPOTrainer.train(resume_from_checkpoint=...) on CPU. A resume that raises, or one that
trains with another LoRA scaling than the adapter was trained with, must be an error; one that resumes the
adapter as it was must not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DEMO_RUN_ARGS, GRPO_RECIPE

from resumedoctor.engine.context import Options
from resumedoctor.engine.findings import Severity
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix

pytestmark = pytest.mark.slow

LORA = "use_peft: true\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0.0\nlora_target_modules: [q_proj, v_proj]\n"
MODEL_CODES = ("CFG014", "CFG015", "CFG016", "CFG017")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: TRL's field table and PEFT's targets are read once, in a helper each."""
    return tmp_path_factory.mktemp("model-recipe-cache")


@pytest.fixture
def world(built_runs, launch_inputs, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(cache))
    runs = {name: tmp_path / name for name in ("peft", "full")}
    for name, folder in runs.items():
        shutil.copytree(built_runs[name], folder)
    return {"runs": runs, "tmp": tmp_path, **launch_inputs}


def recipe(world, run: str, lora: str, checkpoint: str = "checkpoint-2") -> Path:
    out = world["runs"][run]
    text = GRPO_RECIPE.format(model=world["model"], dataset=world["dataset"], output_dir=out, max_steps=4)
    path = world["tmp"] / f"recipe-{run}.yaml"
    path.write_text(text + "disable_tqdm: true\n" + f"resume_from_checkpoint: {out / checkpoint}\n" + lora)
    return path


def findings(world, run: str, path: Path, checkpoint: str = "checkpoint-2"):
    report = diagnose(world["runs"][run] / checkpoint, options=Options(recipe=path), environ={})
    return [f for f in report.findings if f.code in MODEL_CODES or f.code == "CFG005"], report


def real_resume(world, run: str, path: Path, checkpoint: str = "checkpoint-2") -> str:
    """The resume as `trl grpo --config` builds it: "fails: ...", or "scaling S" of the first LoRA layer."""
    from datasets import Dataset
    from demo_run import build_model, build_prompt_rows, build_tokenizer, length_reward
    from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser, get_peft_config
    from trl.scripts.grpo import GRPOScriptArguments

    _, training_args, model_args = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig)).parse_args_and_config(
        args=["--config", str(path)])
    tokenizer = build_tokenizer()
    trainer = GRPOTrainer(model=build_model(tokenizer), reward_funcs=length_reward, args=training_args,
                          train_dataset=Dataset.from_list(build_prompt_rows(64)), processing_class=tokenizer,
                          peft_config=get_peft_config(model_args))
    try:
        trainer.train(resume_from_checkpoint=str(world["runs"][run] / checkpoint))
    except Exception as exc:  # noqa: BLE001 - the failure is the oracle's answer
        return f"fails: {type(exc).__name__}"
    scalings = [module.scaling["default"] for module in trainer.model.modules() if isinstance(getattr(module, "scaling", None), dict)]
    return f"scaling {scalings[0]}" if scalings else "no adapter"


TRAINED_SCALING = "scaling 2.0"  # the demo adapter: lora_alpha 8 / r 4


@pytest.mark.parametrize(("run", "lora", "code"), [
    ("peft", LORA, None),
    ("peft", LORA.replace("lora_target_modules: [q_proj, v_proj]\n", ""), None),  # PEFT's llama default: q, v
    ("peft", "", "CFG014"),
    ("peft", LORA.replace("lora_r: 4", "lora_r: 8"), "CFG016"),
    ("peft", LORA.replace("lora_alpha: 8", "lora_alpha: 16"), "CFG016"),
    ("peft", LORA.replace("[q_proj, v_proj]", "[q_proj, k_proj, v_proj]"), "CFG016"),
    ("peft", LORA + "lora_modules_to_save: [lm_head]\n", "CFG016"),
    ("peft", LORA.replace("lora_dropout: 0.0", "lora_dropout: 0.1"), "CFG005"),
    ("full", LORA, "CFG015"),
    ("full", "", None),
], ids=["same", "default-targets", "no-peft", "r", "alpha", "targets", "modules-to-save", "dropout", "full+peft",
        "full"])
def test_error_exactly_when_the_real_resume_fails_or_trains_another_adapter(world, run, lora, code):
    path = recipe(world, run, lora)
    found, _ = findings(world, run, path)
    outcome = real_resume(world, run, path)
    wrong = outcome.startswith("fails") or (run == "peft" and outcome != TRAINED_SCALING)
    errors = [f for f in found if f.severity is Severity.ERROR]
    assert bool(errors) == wrong, (outcome, [(f.code, f.message) for f in found])
    assert [f.code for f in found] == ([code] if code else []), [(f.code, f.message) for f in found]
    if code == "CFG005":
        assert found[0].severity is Severity.WARNING and "0.0" in found[0].message and "0.1" in found[0].message


def test_fix_writes_the_adapter_into_the_recipe_and_the_resume_then_works(world):
    path = recipe(world, "peft", "lora_r: 16\n")  # no use_peft: CFG014
    before, report = findings(world, "peft", path)
    assert [f.code for f in before] == ["CFG014"] and "r=4, lora_alpha=8" in before[0].message
    fix(world["runs"]["peft"] / "checkpoint-2", options=Options(recipe=path), environ={})
    text = path.read_text()
    assert "use_peft: true" in text and "lora_r: 4" in text and "lora_alpha: 8" in text
    after, _ = findings(world, "peft", path)
    assert after == []
    assert real_resume(world, "peft", path) == TRAINED_SCALING


def test_a_damaged_adapter_config_is_no_crash(world):
    config = world["runs"]["peft"] / "checkpoint-2" / "adapter_config.json"
    path = recipe(world, "peft", LORA)
    for content in ("{not json", "[1, 2]", json.dumps({"r": "x", "lora_alpha": None, "target_modules": 7})):
        config.write_text(content)
        found, report = findings(world, "peft", path)
        assert report.exit_code in (0, 1)
        assert all(f.code != "CFG014" for f in found)  # the adapter is there, its values are not readable


@pytest.mark.parametrize("values", [{"r": 10 ** 400}, {"modules_to_save": [["lm_head"]]},
                                    {"target_modules": ["q_proj", 1]}, {"lora_alpha": float("nan")}])
def test_adapter_values_of_a_type_peft_never_writes_are_not_judged(world, values):
    config = world["runs"]["peft"] / "checkpoint-2" / "adapter_config.json"
    saved = json.loads(config.read_text())
    for use_peft in (LORA, "learning_rate: 0.001\n"):  # the LoRA comparison, and the "adapter without use_peft" fix
        config.write_text(json.dumps({**saved, **values}))
        found, report = findings(world, "peft", recipe(world, "peft", use_peft))
        assert report.exit_code in (0, 1), [(f.code, f.message) for f in found]
    config.write_text(json.dumps(saved))
    if "target_modules" not in values:  # a bad target list is reported by the target comparison instead
        config.write_text(json.dumps({**saved, **values}))
        found, _ = findings(world, "peft", recipe(world, "peft", LORA))
        assert any(f.code == "CFG017" and "not compared" in f.message for f in found)
        assert not any(f.code == "CFG016" for f in found), [(f.code, f.message) for f in found]
        config.write_text(json.dumps(saved))


def test_a_matching_peft_recipe_resumes_the_peft_run_without_error(world):
    path = recipe(world, "peft", LORA)
    report = diagnose(world["runs"]["peft"], options=Options(recipe=path), environ={}, settings=Settings())
    assert not [f for f in report.findings if f.severity is Severity.ERROR], [(f.code, f.message) for f in report.findings]


def test_the_demo_run_args_still_give_no_model_finding(world):
    path = world["tmp"] / "plain.yaml"
    path.write_text(f"output_dir: {world['runs']['full']}\n" + DEMO_RUN_ARGS + "resume_from_checkpoint: true\n")
    found, _ = findings(world, "full", path)
    assert found == []

"""MODEL (every key the model needs; the vocabulary and chat template) on checkpoints TRL really wrote.

The oracle is the real resume: transformers' Trainer._load_from_checkpoint (the code `train(resume_from_
checkpoint=...)` runs to load the weights) and PEFT's load_adapter, called on a model built from the base
model as the recipe builds it; a weight is then compared with the checkpoint's trained one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import GRPO_RECIPE

from resumedoctor.engine.context import Options
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix, undo
from resumedoctor.io.tokenizer_files import chat_template, tokenizer_length

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def model_findings(target: Path, recipe: Path | None = None):
    report = diagnose(target, settings=Settings(select=("MODEL",)), options=Options(recipe=recipe), environ={})
    return list(report.findings)


def by_code(findings, code):
    return [f for f in findings if f.code == code]


def trained(checkpoint: Path, name: str = Q_PROJ):
    """A tensor as the run trained it (read from an untouched copy of the checkpoint)."""
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")[name]


def resume_weights(checkpoint: Path):
    """The model the resume trains: the base model as the recipe builds it, then the checkpoint loaded
    into it by transformers' own resume code."""
    from demo_run import build_model, build_tokenizer
    from transformers import Trainer, TrainingArguments

    model = build_model(build_tokenizer())
    trainer = Trainer(model=model, args=TrainingArguments(str(checkpoint.parent / "trainer-out"), use_cpu=True,
                                                          report_to="none"))
    trainer._load_from_checkpoint(str(checkpoint))
    return dict(model.state_dict())


def save_state_dict(state_dict: dict, path: Path) -> None:
    """As transformers writes a checkpoint's weights (contiguous tensors, format metadata)."""
    from safetensors.torch import save_file

    save_file({name: tensor.detach().contiguous() for name, tensor in state_dict.items()}, str(path),
              metadata={"format": "pt"})


def loaded_model(checkpoint: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint)


# ---- clean runs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["full", "sharded", "peft", "model_only"])
def test_clean_runs_have_no_model_findings(built_runs, kind):
    run = built_runs[kind]
    assert model_findings(run) == []
    for checkpoint in sorted(run.glob("checkpoint-*")):
        assert model_findings(checkpoint) == [], checkpoint


def test_finished_run_with_its_recipe_has_no_model_findings(built_runs, launch_inputs, tmp_path, monkeypatch):
    """The recipe's tokenizer (the base model folder) is the one the run trained with: nothing to say."""
    recipe = write_recipe(tmp_path, monkeypatch, launch_inputs["model"], launch_inputs, built_runs["full"])
    assert model_findings(built_runs["full"] / "checkpoint-6", recipe) == []


# ---- item 5: keys ----------------------------------------------------------------------------------


def test_compiled_state_dict_is_an_error_and_the_fix_strips_the_prefix(full_run, built_runs):
    import torch

    checkpoint = full_run / "checkpoint-6"
    original = (checkpoint / "model.safetensors").read_bytes()
    compiled = torch.compile(loaded_model(checkpoint))  # no compilation happens until it is called
    save_state_dict(compiled.state_dict(), checkpoint / "model.safetensors")
    expected = trained(built_runs["full"] / "checkpoint-6")
    # The oracle: the real resume loads nothing and silently trains the base weights.
    assert not torch.equal(resume_weights(checkpoint)[Q_PROJ], expected)

    [finding] = by_code(model_findings(full_run), "MODEL002")
    assert finding.severity.value == "error" and "'_orig_mod.'" in finding.message
    fix(full_run, settings=Settings(select=("MODEL",)), environ={})
    assert model_findings(full_run) == []
    assert torch.equal(resume_weights(checkpoint)[Q_PROJ], expected)
    from safetensors.torch import load_file
    assert set(load_file(checkpoint / "model.safetensors")) == set(load_file(built_runs["full"] / "checkpoint-6" / "model.safetensors"))
    undo(full_run)
    assert (checkpoint / "model.safetensors").read_bytes() != original  # the compiled file is back
    assert by_code(model_findings(full_run), "MODEL002")


def test_sharded_ddp_keys_are_fixed_with_their_index(sharded_run, built_runs):
    """DataParallel names its parameters exactly as DistributedDataParallel does (`module.`); DDP itself
    needs a process group, DataParallel runs on CPU without one."""
    import torch

    checkpoint = sharded_run / "checkpoint-6"
    wrapped = torch.nn.DataParallel(loaded_model(checkpoint))
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    state = wrapped.state_dict()
    for shard in sorted(set(index["weight_map"].values())):
        names = [name for name, file in index["weight_map"].items() if file == shard]
        save_state_dict({f"module.{name}": state[f"module.{name}"] for name in names}, checkpoint / shard)
    index["weight_map"] = {f"module.{name}": shard for name, shard in index["weight_map"].items()}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    expected = trained(built_runs["full"] / "checkpoint-6")
    assert not torch.equal(resume_weights(checkpoint)[Q_PROJ], expected)

    [finding] = by_code(model_findings(sharded_run), "MODEL002")
    assert "'module.'" in finding.message
    fix(sharded_run, settings=Settings(select=("MODEL",)), environ={})
    assert model_findings(sharded_run) == []
    assert torch.equal(resume_weights(checkpoint)[Q_PROJ], expected)


def test_lm_head_dropped_by_a_tie_made_by_hand(full_run, built_runs):
    import torch

    checkpoint = full_run / "checkpoint-6"
    model = loaded_model(checkpoint)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied by hand; config.json still says untied
    model.save_pretrained(checkpoint)
    assert "lm_head.weight" not in json.loads(header_json(checkpoint / "model.safetensors"))
    resumed = resume_weights(checkpoint)["lm_head.weight"]
    assert not torch.equal(resumed, trained(built_runs["full"] / "checkpoint-6", "lm_head.weight"))
    assert not torch.equal(resumed, trained(checkpoint, "model.embed_tokens.weight"))  # the base model's head

    [finding] = by_code(model_findings(full_run), "MODEL001")
    assert finding.severity.value == "error" and "tie_word_embeddings: false" in finding.message


def test_missing_layer_is_an_error(full_run, built_runs):
    import torch
    from safetensors.torch import load_file

    checkpoint = full_run / "checkpoint-6"
    state = load_file(checkpoint / "model.safetensors")
    save_state_dict({k: v for k, v in state.items() if not k.startswith("model.layers.1.")}, checkpoint / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    assert not torch.equal(resume_weights(checkpoint)[name], trained(built_runs["full"] / "checkpoint-6", name))

    [finding] = by_code(model_findings(full_run), "MODEL003")
    assert "num_hidden_layers=2" in finding.message and "layer 1" in finding.message


def test_one_layer_under_a_ddp_prefix_is_an_error_and_fixed(full_run, built_runs):
    """Only layer 0's tensors renamed `module.model.layers.0.*`: the resume loads every other key and
    silently restarts layer 0 from the base model."""
    import torch
    from safetensors.torch import load_file

    checkpoint = full_run / "checkpoint-6"
    state = load_file(checkpoint / "model.safetensors")
    save_state_dict({("module." + k if k.startswith("model.layers.0.") else k): v for k, v in state.items()},
                    checkpoint / "model.safetensors")
    expected = trained(built_runs["full"] / "checkpoint-6")
    assert not torch.equal(resume_weights(checkpoint)[Q_PROJ], expected)  # the oracle

    [finding] = [f for f in model_findings(full_run) if f.severity.value == "error"]
    assert finding.code == "MODEL002" and "of the" in finding.message and "'module.'" in finding.message
    fix(full_run, settings=Settings(select=("MODEL",)), environ={})
    assert model_findings(full_run) == []
    assert torch.equal(resume_weights(checkpoint)[Q_PROJ], expected)


def test_missing_tensors_of_a_layer_and_the_norm_are_an_error(full_run, built_runs):
    import torch
    from safetensors.torch import load_file

    checkpoint = full_run / "checkpoint-6"
    state = load_file(checkpoint / "model.safetensors")
    save_state_dict({k: v for k, v in state.items() if k not in (Q_PROJ, "model.norm.weight")},
                    checkpoint / "model.safetensors")
    resumed = resume_weights(checkpoint)  # the oracle: both keep the base model's weights
    for name in (Q_PROJ, "model.norm.weight"):
        assert not torch.equal(resumed[name], trained(built_runs["full"] / "checkpoint-6", name))

    [finding] = by_code(model_findings(full_run), "MODEL008")
    assert finding.severity.value == "error"
    assert Q_PROJ in finding.message and "model.norm.weight" in finding.message and "2 tensor(s)" in finding.message


def test_layers_built_differently_are_not_missing_tensors():
    """Dense first layers of an MoE model hold tensors the others lack: not judged."""
    from resumedoctor.checks.model_weights import missing_in_layers

    dense, moe = {"mlp.up_proj.weight", "attn.q.weight"}, {"mlp.gate.weight", "mlp.experts.0.w.weight", "attn.q.weight"}
    assert missing_in_layers({0: dense, 1: moe, 2: set(moe)}) == []
    assert missing_in_layers({0: {"attn.q.weight"}, 1: moe, 2: set(moe)}) == ["0.mlp.experts.0.w.weight", "0.mlp.gate.weight"]


def test_a_huge_prefixed_name_is_read_in_linear_time():
    from resumedoctor.checks.model_weights import wrapper_prefix

    name = "module." * 300_000 + "model.x"
    started = time.monotonic()
    assert wrapper_prefix(name) == "module." * 300_000
    assert time.monotonic() - started < 1.0


def test_adapter_missing_a_targeted_module(peft_run):
    import torch
    from demo_run import build_model, build_tokenizer
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    checkpoint = peft_run / "checkpoint-2"
    state = load_file(checkpoint / "adapter_model.safetensors")
    dropped = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    assert dropped in state and torch.count_nonzero(state[dropped]) > 0
    save_state_dict({k: v for k, v in state.items() if ".layers.1.self_attn.v_proj." not in k},
                    checkpoint / "adapter_model.safetensors")
    # The oracle: PEFT's load (what the Trainer calls) accepts it; the module keeps a fresh adapter.
    model = get_peft_model(build_model(build_tokenizer()), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                     task_type="CAUSAL_LM"))
    model.load_adapter(str(checkpoint), "default", is_trainable=True)
    assert torch.count_nonzero(model.base_model.model.model.layers[1].self_attn.v_proj.lora_B["default"].weight) == 0

    [finding] = by_code(model_findings(peft_run), "MODEL004")
    assert "layers.1 self_attn.v_proj" in finding.message and finding.severity.value == "error"


def test_hybrid_layers_are_not_missing_targets():
    """Attention layers and Mamba layers (Jamba, Qwen3-Next) adapt other modules: only a block that has
    some targets in one layer and not in another is incomplete."""
    from resumedoctor.checks.model_weights import missing_targets, target_names

    base = "base_model.model.model.layers"
    hybrid = {f"{base}.0.self_attn.q_proj", f"{base}.0.self_attn.v_proj", f"{base}.1.mamba.in_proj",
              f"{base}.2.self_attn.q_proj", f"{base}.2.self_attn.v_proj", f"{base}.3.mamba.in_proj"}
    targets = ["q_proj", "v_proj", "in_proj", "gate_proj"]
    assert missing_targets(hybrid, targets) == []
    assert missing_targets(hybrid - {f"{base}.2.self_attn.v_proj"}, targets) == [f"{base}.2 self_attn.v_proj"]
    assert target_names({"target_modules": ["q_proj"], "layers_to_transform": 0}) is None
    assert target_names({"target_modules": ["q_proj"], "exclude_modules": ["model.layers.0.self_attn.q_proj"]}) is None
    assert target_names({"target_modules": "all-linear"}) is None


def header_json(path: Path) -> str:
    raw = path.read_bytes()
    return raw[8 : 8 + int.from_bytes(raw[:8], "little")].decode()


# ---- item 6: vocabulary and chat template ----------------------------------------------------------


def test_tokens_added_since_the_save(full_run):
    import torch
    from transformers import AutoTokenizer

    checkpoint = full_run / "checkpoint-6"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.add_tokens(["<tool_call>", "</tool_call>"])
    tokenizer.save_pretrained(checkpoint)
    reloaded = AutoTokenizer.from_pretrained(checkpoint)
    assert tokenizer_length(checkpoint).length == len(reloaded) == 322  # the oracle: transformers' own len()
    embedding = loaded_model(checkpoint).get_input_embeddings()
    with pytest.raises(IndexError):
        embedding(torch.tensor([reloaded.convert_tokens_to_ids("</tool_call>")]))

    # The resume formats prompts with the recipe's tokenizer: the checkpoint's own is a warning ...
    [finding] = by_code(model_findings(full_run), "MODEL009")
    assert finding.severity.value == "warning"
    assert "322 tokens" in finding.message and "320 rows" in finding.message and "320..321" in finding.message
    assert "tokenizer saved in the checkpoint" not in finding.hint


def test_checkpoint_tokenizer_the_recipe_loads_is_an_error(full_run, launch_inputs, tmp_path, monkeypatch):
    """... unless the recipe's model_name_or_path is the checkpoint itself: then the resume uses it."""
    from transformers import AutoTokenizer

    checkpoint = full_run / "checkpoint-6"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.add_tokens(["<tool_call>"])
    tokenizer.save_pretrained(checkpoint)
    recipe = write_recipe(tmp_path, monkeypatch, checkpoint, launch_inputs, full_run)
    [finding] = by_code(model_findings(full_run, recipe), "MODEL005")
    assert finding.severity.value == "error" and "the resume uses this tokenizer" in finding.message
    assert not by_code(model_findings(full_run, recipe), "MODEL009")


def test_hub_recipe_model_says_what_was_not_compared(full_run, launch_inputs, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, monkeypatch, "someorg/some-model", launch_inputs, full_run)
    [finding] = model_findings(full_run, recipe)
    assert finding.code == "MODEL007" and finding.severity.value == "info"
    assert "'someorg/some-model'" in finding.message and "not compared" in finding.message


def test_a_damaged_recipe_template_names_the_recipe_folder(full_run, recipe_model, launch_inputs, tmp_path, monkeypatch):
    (recipe_model / "chat_template.jinja").write_bytes(b"\xff\xfe{{")
    recipe = write_recipe(tmp_path, monkeypatch, recipe_model, launch_inputs, full_run)
    [finding] = [f for f in model_findings(full_run, recipe) if "chat template" in f.message]
    assert finding.code == "MODEL007" and finding.path == str(recipe_model) and str(recipe_model) in finding.message


@pytest.mark.parametrize("pad_to", [None, 64])
def test_resized_or_padded_embeddings_are_fine(full_run, pad_to):
    from transformers import AutoTokenizer

    checkpoint = full_run / "checkpoint-6"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.add_tokens(["<tool_call>"])
    model = loaded_model(checkpoint)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to)
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    assert model.get_input_embeddings().weight.shape[0] == (321 if pad_to is None else 384)
    assert model_findings(full_run) == []


def write_recipe(tmp_path: Path, monkeypatch, model: Path, launch_inputs, output_dir: Path) -> Path:
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(launch_inputs["cache"]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(GRPO_RECIPE.format(model=model, dataset=launch_inputs["dataset"], output_dir=output_dir,
                                         max_steps=6))
    return recipe


@pytest.fixture
def recipe_model(launch_inputs, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(launch_inputs["model"], folder)
    return folder


def test_recipe_tokenizer_with_added_tokens_and_another_template(full_run, recipe_model, launch_inputs, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(recipe_model)
    tokenizer.add_tokens(["<think>"])
    tokenizer.chat_template = tokenizer.chat_template.replace("</s>", "<|end|>\n")
    tokenizer.save_pretrained(recipe_model)
    assert (recipe_model / "chat_template.jinja").is_file()  # where transformers 5 writes it
    recipe = write_recipe(tmp_path, monkeypatch, recipe_model, launch_inputs, full_run)
    findings = model_findings(full_run, recipe)
    [vocabulary] = by_code(findings, "MODEL005")
    assert "recipe's tokenizer" in vocabulary.message and "321 tokens" in vocabulary.message
    [template] = by_code(findings, "MODEL006")
    assert template.severity.value == "warning"
    assert "}}</s>{% endfor" in template.message and "}}<|end|>" in template.message
    # The oracle: transformers renders other prompt text with the recipe's tokenizer.
    messages = [{"role": "user", "content": "hi"}]
    saved = AutoTokenizer.from_pretrained(full_run / "checkpoint-6")
    assert saved.apply_chat_template(messages, tokenize=False) != tokenizer.apply_chat_template(messages, tokenize=False)


def test_same_template_kept_in_tokenizer_config_is_not_a_change(full_run, recipe_model, launch_inputs, tmp_path, monkeypatch):
    """An older transformers kept the template in tokenizer_config.json: same content, other place."""
    from transformers import AutoTokenizer

    (recipe_model / "chat_template.jinja").unlink()
    config = json.loads((recipe_model / "tokenizer_config.json").read_text())
    config["chat_template"] = (full_run / "checkpoint-6" / "chat_template.jinja").read_text() + "\n"
    (recipe_model / "tokenizer_config.json").write_text(json.dumps(config))
    assert chat_template(recipe_model).source == "tokenizer_config.json"
    assert AutoTokenizer.from_pretrained(recipe_model).chat_template.rstrip("\n") == chat_template(full_run / "checkpoint-6").text
    recipe = write_recipe(tmp_path, monkeypatch, recipe_model, launch_inputs, full_run)
    assert model_findings(full_run, recipe) == []


# ---- crafted input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [-1, 0, 10**12, "2", None, 2.5])
def test_crafted_layer_counts(full_run, layers):
    config_path = full_run / "checkpoint-6" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = layers
    config_path.write_text(json.dumps(config))
    started = time.monotonic()
    assert by_code(model_findings(full_run), "MODEL003") == []
    assert time.monotonic() - started < 30


def test_more_layers_in_config_than_weights(full_run):
    config_path = full_run / "checkpoint-6" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "num_hidden_layers": 10_000}))
    [finding] = by_code(model_findings(full_run), "MODEL003")
    assert "9998 of them" in finding.message and "layer 2-9999" in finding.message


@pytest.mark.parametrize("content", [b"[1, 2]", b"not json", b'{"model": {"vocab": {"a": "x"}}}',
                                     b'{"model": {"vocab": []}, "added_tokens": [{"id": -5}]}', b"\xff\xfe"])
def test_crafted_tokenizer_json_is_not_judged(full_run, content):
    (full_run / "checkpoint-6" / "tokenizer.json").write_bytes(content)
    findings = model_findings(full_run)
    assert [f.code for f in findings] == ["MODEL007"] and findings[0].severity.value == "info"


def test_crafted_files_never_crash(full_run):
    checkpoint = full_run / "checkpoint-6"
    (checkpoint / "config.json").write_text("[]")
    with open(checkpoint / "tokenizer.json", "wb") as handle:  # sparse: 200 MB on paper, nothing on disk
        handle.truncate(200 * 1024 * 1024)
    (checkpoint / "chat_template.jinja").unlink()
    os.mkfifo(checkpoint / "chat_template.jinja")
    config = {"added_tokens_decoder": {"99999999999999999999": {}, "x": 1, "\u00b2": {}}}
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(config))
    started = time.monotonic()
    findings = model_findings(full_run)
    assert time.monotonic() - started < 30
    assert {f.code for f in findings} <= {"MODEL007"}
    assert all(f.severity.value == "info" for f in findings)


def test_a_recipe_with_its_own_template_is_not_compared(full_run, recipe_model, launch_inputs, tmp_path, monkeypatch):
    """SFT's chat_template_path replaces the model folder's template: comparing the folder's would mislead."""
    (recipe_model / "chat_template.jinja").write_text("{{ messages }}")
    recipe = write_recipe(tmp_path, monkeypatch, recipe_model, launch_inputs, full_run)
    assert by_code(model_findings(full_run, recipe), "MODEL006")
    recipe.write_text(recipe.read_text() + f"chat_template_path: {full_run / 'checkpoint-6' / 'chat_template.jinja'}\n")
    assert model_findings(full_run, recipe) == []


def test_an_index_naming_a_shard_outside_is_not_read(sharded_run, tmp_path):
    checkpoint = sharded_run / "checkpoint-6"
    index_path = checkpoint / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    outside = tmp_path / "outside.safetensors"
    shutil.copy(checkpoint / next(iter(index["weight_map"].values())), outside)
    index["weight_map"] = {f"module.{name}": "../../outside.safetensors" for name in index["weight_map"]}
    index_path.write_text(json.dumps(index))
    assert by_code(model_findings(sharded_run), "MODEL002") == []

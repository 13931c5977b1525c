"""OPT: optimizer.pt belongs to the model in the weights, judged against what the real libraries do.

The oracle is a real resume: a second tiny model of another size trains and writes its optimizer.pt,
that file goes into a checkpoint of the demo model, and TRL's GRPOTrainer resumes from it.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import demo_run
import pytest

from resumedoctor.api import diagnose

BUILD_MODEL = demo_run.build_model  # the demo model, before any test swaps another builder in


def _opt(report) -> list:
    return [finding for finding in report.findings if finding.code.startswith("OPT")]


def _family(report):
    return next(result for result in report.families if result.prefix == "OPT")


def _with_model(builder, output_dir: Path, **kwargs) -> Path:
    """train_demo_run with another model builder (train_demo_run calls demo_run.build_model)."""
    demo_run.build_model = builder
    try:
        return demo_run.train_demo_run(output_dir, **kwargs)
    finally:
        demo_run.build_model = BUILD_MODEL


def _tied_frozen(tokenizer, **kwargs):
    """Tied embeddings (saved once), frozen (absent from the optimizer): both make a clean run hold fewer
    optimizer entries than named tensors."""
    from transformers import LlamaForCausalLM

    config = BUILD_MODEL(tokenizer, **kwargs).config
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.model.embed_tokens.weight.requires_grad_(False)
    return model


def _sft_run(output_dir: Path) -> Path:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = demo_run.build_tokenizer()
    rows = [{"text": text} for text in ("a tiny run", "of a few", "short texts to learn", "and save") * 4]
    args = SFTConfig(output_dir=str(output_dir), max_steps=2, save_steps=2, per_device_train_batch_size=2,
                     max_length=16, use_cpu=True, report_to="none", disable_tqdm=True)
    SFTTrainer(model=demo_run.build_model(tokenizer), args=args, train_dataset=Dataset.from_list(rows),
               processing_class=tokenizer).train()
    return output_dir


@pytest.fixture(scope="session")
def opt_runs(tmp_path_factory) -> dict[str, Path]:
    """Real runs the OPT family needs beyond conftest's: other model sizes, tied and frozen embeddings, SFT."""
    root = tmp_path_factory.mktemp("opt")
    build = BUILD_MODEL
    return {
        "wide": _with_model(functools.partial(build, hidden_size=64), root / "wide", max_steps=1, save_steps=1),
        "deep": _with_model(functools.partial(build, layers=3), root / "deep", max_steps=1, save_steps=1),
        "tied_frozen": _with_model(_tied_frozen, root / "tied_frozen", max_steps=2, save_steps=2),
        "sft": _sft_run(root / "sft"),
    }


def _mixed(full_run: Path, other: Path) -> Path:
    """checkpoint-4 of the demo run with the optimizer.pt of another model's run."""
    checkpoint = full_run / "checkpoint-4"
    shutil.copy(other / "checkpoint-1" / "optimizer.pt", checkpoint / "optimizer.pt")
    return checkpoint


def test_wider_model_state_trains_silently_and_is_an_error(full_run, opt_runs):
    import torch

    checkpoint = _mixed(full_run, opt_runs["wide"])
    [finding] = _opt(diagnose(checkpoint))
    assert finding.code == "OPT001" and finding.severity.value == "error"
    assert "[320, 64]" in finding.message and "[64, 32]" in finding.message
    # The oracle: the real resume neither refuses nor fails; it trains two steps on the 64-wide moments.
    shutil.rmtree(full_run / "checkpoint-6")
    demo_run.train_demo_run(full_run, max_steps=6, save_steps=2, resume_from_checkpoint=str(checkpoint))
    resumed = torch.load(full_run / "checkpoint-6" / "optimizer.pt", weights_only=True)
    assert tuple(resumed["state"][0]["exp_avg"].shape) == (320, 64)
    assert resumed["param_groups"][0]["fused"] is True  # torch's fused AdamW stepped with them
    assert "OPT001" in {f.code for f in diagnose(full_run / "checkpoint-6").findings}


def test_deeper_model_state_fails_the_resume_and_is_an_error(full_run, opt_runs):
    checkpoint = _mixed(full_run, opt_runs["deep"])
    [finding] = _opt(diagnose(checkpoint))
    assert finding.code == "OPT001" and "30 parameters" in finding.message and "21 tensors" in finding.message
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):  # the oracle
        demo_run.train_demo_run(full_run, max_steps=6, save_steps=2, resume_from_checkpoint=str(checkpoint))


def test_output_dir_is_judged_at_its_resume_point(full_run, opt_runs):
    _mixed(full_run, opt_runs["wide"])  # checkpoint-4: not where resume_from_checkpoint=True starts
    assert _opt(diagnose(full_run)) == []
    shutil.copy(full_run / "checkpoint-4" / "optimizer.pt", full_run / "checkpoint-6" / "optimizer.pt")
    assert [f.code for f in _opt(diagnose(full_run))] == ["OPT001"]


@pytest.mark.parametrize("name", ["tied_frozen", "sft"])
def test_clean_runs_of_other_kinds_get_nothing(opt_runs, name):
    report = diagnose(opt_runs[name])
    assert _family(report).status == "ran" and _opt(report) == []
    # Tied embeddings and frozen layers hold every tensor: MODEL (lm_head, MODEL008) has nothing to say either.
    assert [f.code for f in report.findings if f.code.startswith("MODEL")] == []


@pytest.mark.parametrize("kind", ["full", "sharded", "peft"])
def test_clean_conftest_runs_get_nothing(built_runs, kind):
    for checkpoint in sorted(built_runs[kind].glob("checkpoint-*")):
        report = diagnose(checkpoint)
        assert _family(report).status == "ran" and _opt(report) == [], checkpoint


def test_tied_frozen_run_holds_fewer_moments_than_tensors(opt_runs, built_runs):
    """What makes it a clean run worth testing: lm_head saved once, the embedding out of the optimizer."""
    from resumedoctor.io.optimizer_state import read_optimizer_state
    from resumedoctor.io.safetensors_header import read_safetensors_header

    checkpoint = opt_runs["tied_frozen"] / "checkpoint-2"
    params = len(read_optimizer_state(checkpoint / "optimizer.pt").param_indices)
    tensors = read_safetensors_header(checkpoint / "model.safetensors").tensors
    untied = read_safetensors_header(built_runs["full"] / "checkpoint-2" / "model.safetensors").tensors
    assert "lm_head.weight" not in tensors and len(tensors) == len(untied) - 1
    assert params == len(tensors) - 1


def test_model_only_and_missing_optimizer_are_not_judged(built_runs, full_run):
    assert "no optimizer.pt" in _family(diagnose(built_runs["model_only"])).reason
    for name in ("optimizer.pt", "scheduler.pt"):
        (full_run / "checkpoint-6" / name).unlink()
    assert "no optimizer.pt" in _family(diagnose(full_run / "checkpoint-6")).reason


def test_deepspeed_and_fsdp_layouts_are_not_judged(full_run):
    checkpoint = full_run / "checkpoint-6"
    (checkpoint / "optimizer_0").mkdir()
    assert "FSDP" in _family(diagnose(checkpoint)).reason
    (checkpoint / "optimizer_0").rmdir()
    (checkpoint / "global_step6").mkdir()
    assert "DeepSpeed" in _family(diagnose(checkpoint)).reason


def test_lora_state_of_another_rank_is_an_error(built_runs, tmp_path, opt_runs):
    peft = Path(shutil.copytree(built_runs["peft"], tmp_path / "peft"))
    checkpoint = peft / "checkpoint-2"
    shutil.copy(built_runs["full"] / "checkpoint-2" / "optimizer.pt", checkpoint / "optimizer.pt")
    [finding] = _opt(diagnose(checkpoint))
    assert finding.code == "OPT001" and "adapter_model.safetensors" in finding.message


@pytest.mark.parametrize("damage", ["cut", "garbage", "weights", "unfamiliar"])
def test_damaged_inputs_are_not_judged_never_a_crash(full_run, damage):
    import torch

    checkpoint = full_run / "checkpoint-6"
    optimizer, weights = checkpoint / "optimizer.pt", checkpoint / "model.safetensors"
    if damage == "cut":
        optimizer.write_bytes(optimizer.read_bytes()[:-40])
    elif damage == "garbage":
        optimizer.write_bytes(b"\x00" * 100)
    elif damage == "weights":
        weights.write_bytes(weights.read_bytes()[:6])
    else:  # FSDP's full optimizer state keys its parameters by name
        torch.save({"state": {"model.embed_tokens.weight": {}}, "param_groups": [{"params": ["x"]}]}, optimizer)
    report = diagnose(checkpoint)
    if damage == "unfamiliar":  # readable, not a state this check knows: said as an info finding
        assert [(f.code, f.severity.value) for f in _opt(report)] == [("OPT003", "info")]
        assert "not matched" in _opt(report)[0].message
    else:  # damage CKPT reports: the family says it did not judge, with no second finding
        assert _opt(report) == [] and _family(report).status == "skipped"
        assert _family(report).reason.startswith("not judged: checkpoint-6:")
        assert any(f.code.startswith("CKPT") and f.severity.value == "error" for f in report.findings)


def test_moments_that_disagree_are_an_error(full_run):
    import torch

    optimizer = full_run / "checkpoint-6" / "optimizer.pt"
    state = torch.load(optimizer, weights_only=True)
    state["state"][3]["exp_avg_sq"] = torch.zeros(2, 2)
    torch.save(state, optimizer)
    [finding] = _opt(diagnose(full_run / "checkpoint-6"))
    assert finding.code == "OPT002" and "parameter 3" in finding.message and "[2, 2]" in finding.message


def test_low_rank_projected_moments_are_not_compared(full_run):
    """GaLore / APOLLO groups (rank, proj_type) keep moments of the projected gradient, not the parameter's."""
    import torch

    optimizer = full_run / "checkpoint-6" / "optimizer.pt"
    state = torch.load(optimizer, weights_only=True)
    state["param_groups"][0].update(rank=4, proj_type="std", update_proj_gap=200)
    for index in state["param_groups"][0]["params"]:
        state["state"][index]["exp_avg"] = state["state"][index]["exp_avg_sq"] = torch.zeros(4, 32)
    torch.save(state, optimizer)
    assert _opt(diagnose(full_run / "checkpoint-6")) == []


def test_weights_short_of_tensors_do_not_blame_the_optimizer(full_run):
    """q_proj and the final norm deleted from the weights: optimizer.pt is this run's own."""
    from safetensors.torch import load_file, save_file

    weights = full_run / "checkpoint-6" / "model.safetensors"
    state = load_file(weights)
    drop = ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight")
    save_file({k: v for k, v in state.items() if k not in drop}, str(weights), metadata={"format": "pt"})
    [finding] = _opt(diagnose(full_run / "checkpoint-6"))
    assert finding.code == "OPT001" and "another model" not in finding.message.split(":")[0]
    assert "lost tensors" in finding.message and f"only {len(state) - 2} tensors" in finding.message
    assert "missing tensors" in finding.hint


def test_crafted_huge_index_and_shape_stay_bounded(full_run):
    import torch

    optimizer = full_run / "checkpoint-6" / "optimizer.pt"
    state = torch.load(optimizer, weights_only=True)
    state["state"][0]["exp_avg"] = state["state"][0]["exp_avg_sq"] = torch.empty([1] * 64)
    torch.save(state, optimizer)
    [finding] = _opt(diagnose(full_run / "checkpoint-6"))
    assert finding.code == "OPT001" and "... 64 dims]" in finding.message and len(finding.message) < 1500
    state["state"] = {1 << 40000: state["state"][0]}
    torch.save(state, optimizer)
    assert [f.code for f in _opt(diagnose(full_run / "checkpoint-6"))] == ["OPT003"]

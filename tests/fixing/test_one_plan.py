"""One plan: the resume target, the W&B decision and the recipe edit name the same checkpoint.

The oracle for "the right W&B decision" is the decision for a run that simply ends at that checkpoint
(the same run with the later checkpoints removed): the plan for a damaged run must equal it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from conftest import DEMO_RUN_ARGS, run_cli

from resumedoctor.engine.context import Options
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix
from resumedoctor.integrations.wandb.shell_env import shell_environment

RECIPE = ("# the demo run's arguments, resuming a checkpoint that is gone\noutput_dir: {output_dir}\n" + DEMO_RUN_ARGS
          + "report_to: wandb\nresume_from_checkpoint: {resume}\n")


def _decision_of(report):
    decisions = [f.extra["decision"] for f in report.findings if f.extra.get("decision") is not None]
    assert decisions, [f.code for f in report.findings]
    assert len({(d.checkpoint, d.mode, d.step) for d in decisions}) == 1  # one decision per report
    return decisions[0]


def _copy(world: dict, tmp_path: Path) -> Path:
    run = tmp_path / world["output_dir"].name  # moved: matched to its W&B run by name
    shutil.copytree(world["output_dir"], run)
    return run


def test_a_damaged_newest_checkpoint_moves_the_whole_plan(wandb_world, tmp_path):
    run = _copy(wandb_world, tmp_path / "damaged")
    with open(run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    options = Options(wandb_dir=wandb_world["wandb_dir"])
    decision = _decision_of(diagnose(run, settings=Settings(), options=options, environ={}))

    oracle_run = _copy(wandb_world, tmp_path / "oracle")
    shutil.rmtree(oracle_run / "checkpoint-6")
    oracle = _decision_of(diagnose(oracle_run, settings=Settings(), options=options, environ={}))
    assert oracle.checkpoint == "checkpoint-4" and oracle.mode == "fork"
    assert (decision.checkpoint, decision.mode, decision.step) == (oracle.checkpoint, oracle.mode, oracle.step)
    # `env` exports the same plan.
    rendered = shell_environment(run, wandb_dir=wandb_world["wandb_dir"], environ={}).render()
    assert rendered.splitlines()[0].endswith("-> checkpoint-4")
    assert f"WANDB_FORK_FROM='{wandb_world['run_id']}?_step={oracle.step}'" in rendered


def test_the_recipe_fix_and_the_recorded_decision_agree(wandb_world, tmp_path):
    run = _copy(wandb_world, tmp_path)
    with open(run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=run, resume=tmp_path / "gone" / "checkpoint-6"))
    options = Options(recipe=recipe, wandb_dir=wandb_world["wandb_dir"])
    # Safe fixes alone never move the resume to an older checkpoint (that changes what is trained).
    safe = fix(run, dry_run=True, settings=Settings(), options=options, environ={})
    assert not [op for op in safe.operations if op.path == recipe]
    result = fix(run, unsafe=True, settings=Settings(select=("CKPT", "CFG", "WANDB")), options=options, environ={})

    resumed = Path(yaml.safe_load(recipe.read_text())["resume_from_checkpoint"])
    assert resumed.name == "checkpoint-4"  # checkpoint-6 quarantined, then CFG007's fix: the newest checkpoint
    recorded = json.loads((run / ".resumedoctor" / "wandb.json").read_text())
    assert recorded["checkpoint"] == resumed.name and recorded["global_step"] == 4
    assert recorded["mode"] == "fork"  # the run logged up to step 6: continuing it would log 5-6 twice
    after = result.final
    assert not [f for f in after.findings if f.code in ("WANDB009", "CFG007")], [f.code for f in after.findings]
    assert after.resume_from == str(resumed)
    env = run_cli("env", run, "--wandb-dir", wandb_world["wandb_dir"], env={"WANDB_RUN_ID": ""})
    assert f"_step={recorded['step']}" in env.stdout


def test_a_recipe_pinned_to_a_usable_checkpoint_is_not_blocked_by_a_broken_newer_one(full_run, tmp_path):
    from resumedoctor.engine.findings import Severity

    with open(full_run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=full_run, resume=full_run / "checkpoint-4").replace(
        "report_to: wandb", "report_to: none"))
    report = diagnose(full_run, settings=Settings(select=("CKPT", "CFG")), options=Options(recipe=recipe), environ={})
    assert report.resume_from == str(full_run / "checkpoint-4")
    ckpt = {f.code: f for f in report.findings if f.code.startswith("CKPT")}
    assert set(ckpt) == {"CKPT019"} and ckpt["CKPT019"].severity is Severity.WARNING
    assert ckpt["CKPT019"].path == str(full_run / "checkpoint-6")
    # Without the pin, resume_from_checkpoint=True picks the broken checkpoint-6: an error.
    unpinned = diagnose(full_run, settings=Settings(select=("CKPT",)), environ={})
    assert "CKPT018" in [f.code for f in unpinned.findings] and unpinned.exit_code == 1


def test_env_with_the_recipe_follows_a_rollback_the_recipe_asks_for(wandb_world, tmp_path):
    """The recipe resumes checkpoint-4 of a run logged up to step 6: env must fork, as diagnose decides."""
    run = _copy(wandb_world, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=run, resume=run / "checkpoint-4"))
    options = Options(recipe=recipe, wandb_dir=wandb_world["wandb_dir"])
    decision = _decision_of(diagnose(run, settings=Settings(select=("WANDB",)), options=options, environ={}))
    assert (decision.checkpoint, decision.mode) == ("checkpoint-4", "fork")
    with_recipe = run_cli("env", run, "--wandb-dir", wandb_world["wandb_dir"], "--config", recipe,
                          env={"WANDB_RUN_ID": ""})
    assert f"WANDB_FORK_FROM='{wandb_world['run_id']}?_step={decision.step}'" in with_recipe.stdout
    without = run_cli("env", run, "--wandb-dir", wandb_world["wandb_dir"], env={"WANDB_RUN_ID": ""})
    assert "-> checkpoint-6" in without.stdout.splitlines()[0]  # resume_from_checkpoint=True's pick

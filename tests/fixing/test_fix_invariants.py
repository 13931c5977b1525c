"""Invariants every fixer keeps, checked on real runs that each fixer's own damage triggers.

For every fixer the registry loads there is at least one case: a private copy of a real run
(TRL/transformers checkpoints, a real curriculum run, a real offline W&B run), damaged the way a
crash or a user leaves it, with the recipe/options the case needs. On each case:

- `fix` really applies that fixer, creates no error that was not there before, and `undo` gives
  back the tree byte for byte;
- no report gives one fact (a recipe key, a file of a checkpoint) two severities;
- the fix a finding shows (`finding.fix`, the report's fix column) is the fix `fix` applies to it,
  and `explain` names that fixer with its safety.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import DEMO_RUN_ARGS
from test_fix import tree
from test_length_budgets import write_prompts

from resumedoctor.engine.catalog import explain_code
from resumedoctor.engine.context import Options
from resumedoctor.engine.findings import Finding, FixInfo, FixSafety, Severity
from resumedoctor.engine.registry import load_registry
from resumedoctor.engine.runner import Report, diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import FixResult, fix, undo

# The demo run's own arguments (demo_run.train_demo_run): this recipe resumes it without drift.
RECIPE = ("# recipe of the demo run (comments must survive every fix)\nmodel_name_or_path: {model}\n"
          "dataset_name: {dataset}\noutput_dir: {output_dir}\n" + DEMO_RUN_ARGS + "resume_from_checkpoint: true\n")
SHORT_PROMPTS = [4, 6, 8] * 5  # words; every prompt fits the demo model's 128-token window
SOME_TOO_LONG = [4, 6, 8, 10, 5, 7, 9, 80, 120, 3] * 10  # q7, q8, q17... cannot fit beside 64 completion tokens


# ---- the cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What one case diagnoses and fixes, and with which options (the CLI's --config, --strategy...)."""

    path: Path
    options: Options = Options()
    environ: dict = field(default_factory=dict)


class Workspace:
    """Private copies of the session's real runs, with the recipes and datasets a case writes beside them."""

    def __init__(self, request: pytest.FixtureRequest, root: Path):
        self.request, self.root = request, root

    def run(self, kind: str = "full", *, keep_up_to: int | None = None) -> Path:
        """A copy of a session run; `keep_up_to=4`: the checkpoints a run killed after step 4's save has."""
        copy = Path(shutil.copytree(self.request.getfixturevalue("built_runs")[kind], self.root / kind))
        return _cut(copy, keep_up_to)

    def curriculum_run(self) -> Path:
        return Path(shutil.copytree(self.request.getfixturevalue("built_curriculum_run"), self.root / "curriculum"))

    def wandb_run(self) -> tuple[Path, Path]:
        """A copy of the W&B-logged run (matched by its folder name) and of its wandb folder."""
        world = self.request.getfixturevalue("wandb_world")
        run = Path(shutil.copytree(world["output_dir"], self.root / world["output_dir"].name))
        wandb_dir = Path(shutil.copytree(world["wandb_dir"], self.root / "wandb", symlinks=True))
        return run, wandb_dir

    def prompts(self, lengths_in_words: list[int]) -> Path:
        return write_prompts(self.root / "prompts.jsonl", lengths_in_words)

    def recipe(self, run: Path, *, prompts: list[int] = SHORT_PROMPTS, extra: str = "", **replace) -> Path:
        """RECIPE for `run` with some keys replaced (`None`: YAML null) and `extra` lines appended."""
        text = RECIPE.format(model=_newest_checkpoint(run), dataset=self.prompts(prompts), output_dir=run)
        for key, value in replace.items():
            value = "null" if value is None else value
            text = re.sub(rf"(?m)^{key}: .*$", f"{key}: {value}", text)
        path = self.root / "recipe.yaml"
        path.write_text(text + extra)
        return path


def _cut(run: Path, keep_up_to: int | None) -> Path:
    for checkpoint in run.glob("checkpoint-*"):
        if keep_up_to is not None and int(checkpoint.name.split("-")[1]) > keep_up_to:
            shutil.rmtree(checkpoint)
    return run


def _newest_checkpoint(run: Path) -> Path:
    return max(run.glob("checkpoint-*"), key=lambda folder: int(folder.name.split("-")[1]))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def edit_trainer_state(checkpoint: Path, **changes) -> None:
    """Change trainer_state.json, written back as transformers writes it."""
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    state.update(changes)
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


# -- CKPT


def seal_write_interrupted(ws: Workspace) -> Setup:
    """SealCallback's atomic write was cut off: its temp file is left, every trainer file is whole."""
    from resumedoctor.integrations.seal.record import SEAL_TEMP_FILE

    run = ws.run()
    (run / "checkpoint-6" / SEAL_TEMP_FILE).write_text('{"version": 1, "files": {"model.saf')
    return Setup(run)


def unfinished_sealed_save(ws: Workspace) -> Setup:
    """A save that was sealing (its temp seal is there) and lost trainer_state.json: given directly."""
    from resumedoctor.integrations.seal.record import SEAL_TEMP_FILE

    run = ws.run()
    (run / "checkpoint-6" / SEAL_TEMP_FILE).write_text('{"version": 1')
    (run / "checkpoint-6" / "trainer_state.json").unlink()
    return Setup(run / "checkpoint-6")


def newest_checkpoint_truncated(ws: Workspace) -> Setup:
    run = ws.run()
    truncate(run / "checkpoint-6" / "model.safetensors", 1000)  # a copy cut off
    return Setup(run)


def shard_missing(ws: Workspace) -> Setup:
    run = ws.run("sharded")
    (run / "checkpoint-6" / "model-00002-of-00004.safetensors").unlink()
    return Setup(run)


def shard_index_missing(ws: Workspace) -> Setup:
    run = ws.run("sharded")
    (run / "checkpoint-6" / "model.safetensors.index.json").unlink()
    return Setup(run)


def shard_index_wrong_entry(ws: Workspace) -> Setup:
    run = ws.run("sharded")
    path = run / "checkpoint-6" / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    first = sorted(index["weight_map"])[0]
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"][first] = next(shard for shard in shards if shard != index["weight_map"][first])
    path.write_text(json.dumps(index, indent=2) + "\n")
    return Setup(run)


def best_model_checkpoint_gone(ws: Workspace) -> Setup:
    run = ws.run()
    edit_trainer_state(run / "checkpoint-6", best_model_checkpoint=str(run / "checkpoint-1"))
    return Setup(run)


def global_step_off_by_one(ws: Workspace) -> Setup:
    run = ws.run()
    edit_trainer_state(run / "checkpoint-6", global_step=5)
    return Setup(run)


def tmp_checkpoint_debris(ws: Workspace) -> Setup:
    run = ws.run()
    (run / "tmp-checkpoint-8").mkdir()
    (run / "tmp-checkpoint-8" / "model.safetensors").write_bytes(b"partial")
    return Setup(run)


# -- RUN


def output_dir_reused(ws: Workspace) -> Setup:
    """A second run (another batch size, other losses) saved checkpoint-2 and -4 over the first run's, after it."""
    run = ws.run()
    for step in (2, 4):
        state = json.loads((run / f"checkpoint-{step}" / "trainer_state.json").read_text())
        history = [{**entry, "loss": 1.0 + index} for index, entry in enumerate(state["log_history"])]
        edit_trainer_state(run / f"checkpoint-{step}", log_history=history, train_batch_size=8)
    return Setup(run)


# -- CFG (on a run killed after step 4's save: the run's own recipe resumes it cleanly)


def no_resume_in_recipe(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, resume_from_checkpoint=None)))


def resume_target_missing(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, resume_from_checkpoint=run / "checkpoint-99")))


def batch_size_changed(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, per_device_train_batch_size=8)))


def num_generations_changed(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, num_generations=2)))


def learning_rate_changed(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, learning_rate="2.0e-3")))


def lora_rank_changed(ws: Workspace) -> Setup:
    """The PEFT run (r=4) resumed by a recipe that builds an r=8 adapter (CFG016)."""
    run = ws.run("peft")
    lora = "use_peft: true\nlora_r: 8\nlora_alpha: 8\nlora_dropout: 0.0\nlora_target_modules: [q_proj, v_proj]\n"
    return Setup(run, Options(recipe=ws.recipe(run, extra=lora)))


def data_skip_ignored(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, extra="ignore_data_skip: true\n")))


def dataset_grew(ws: Workspace) -> Setup:
    """The demo run's 64 prompts, sealed with their row manifest as SealCallback seals; 4 rows appended since."""
    from datasets import Dataset
    from demo_run import build_prompt_rows

    from resumedoctor.integrations.seal.record import SEAL_FILE, build_seal, seal_bytes
    from resumedoctor.integrations.trl.dataset_rows import write_manifest

    run = ws.run(keep_up_to=4)
    trained = Dataset.from_list(build_prompt_rows(64))  # what train_demo_run trains on
    record = write_manifest(trained, run)
    for checkpoint in sorted(run.glob("checkpoint-*")):
        seal = build_seal(checkpoint, global_step=int(checkpoint.name.split("-")[1]), world_size=1, arguments={},
                          dataset_fingerprint=trained._fingerprint, dataset_rows=record)
        (checkpoint / SEAL_FILE).write_bytes(seal_bytes(seal))
    recipe = ws.recipe(run)
    rows = build_prompt_rows(68)
    (ws.root / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Setup(run, Options(recipe=recipe))


def horizon_at_the_checkpoint(ws: Workspace) -> Setup:
    """Resuming checkpoint-4 with max_steps 4: nothing left to train (the checkpoint's horizon was 6)."""
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, max_steps=4)))


def completion_budget_changed(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, max_completion_length=16)))


# -- CURR (on a real run with resumedoctor's CurriculumCallback)


def killed_while_saving(ws: Workspace) -> Setup:
    """Killed while saving checkpoint-6: the live state is at step 6, the folder a tmp-checkpoint without its state."""
    run = ws.curriculum_run()
    (run / "checkpoint-6" / "trainer_state.json").unlink()
    (run / "checkpoint-6").rename(run / "tmp-checkpoint-6")
    return Setup(run)


def live_state_missing(ws: Workspace) -> Setup:
    run = ws.curriculum_run()
    (run / "curriculum_state.json").unlink()
    return Setup(run)


def only_the_promotion_rule_left(ws: Workspace) -> Setup:
    """Neither snapshot nor saved attributes, a garbled live file: only --create-fresh can rebuild the state."""
    run = ws.curriculum_run()
    checkpoint = run / "checkpoint-6"
    (checkpoint / "curriculum_state.json").unlink()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["stateful_callbacks"]["CurriculumCallback"]["attributes"] = {}
    edit_trainer_state(checkpoint, stateful_callbacks=state["stateful_callbacks"])
    (run / "curriculum_state.json").write_text("garbage")
    return Setup(run, Options(create_fresh=True))


def snapshot_missing(ws: Workspace) -> Setup:
    run = ws.curriculum_run()
    (run / "checkpoint-6" / "curriculum_state.json").unlink()
    return Setup(run)


def callback_restore_off(ws: Workspace) -> Setup:
    """The finished curriculum run, extended by two steps with a recipe that leaves the Trainer's restore off,
    and no curriculum_state.json snapshot in the checkpoint (the callback cannot restore itself from it)."""
    run = ws.curriculum_run()
    (run / "checkpoint-6" / "curriculum_state.json").unlink()
    return Setup(run, Options(recipe=ws.recipe(run, max_steps=8)))


# -- LEN


def removed_keys_in_recipe(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    recipe = ws.recipe(run, extra="max_prompt_length: 64  # TRL removed it\nvllm_max_model_len: 128\n")
    return Setup(run, Options(recipe=recipe))


def completion_fills_the_window(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    return Setup(run, Options(recipe=ws.recipe(run, max_completion_length=128)))


def prompts_too_long(ws: Workspace) -> Setup:
    run = ws.run(keep_up_to=4)
    recipe = ws.recipe(run, prompts=SOME_TOO_LONG, max_completion_length=64)
    return Setup(run, Options(recipe=recipe, strategy="balanced"))  # 64 is already the balanced split


# -- WANDB


def wandb_run_ahead(ws: Workspace) -> Setup:
    """Resuming checkpoint-4 of a run that logged to W&B up to step 6."""
    run, wandb_dir = ws.wandb_run()
    return Setup(run / "checkpoint-4", Options(wandb_dir=wandb_dir))


def stale_wandb_run_id(ws: Workspace) -> Setup:
    """WANDB_RUN_ID left over from another job names someone else's run."""
    run, wandb_dir = ws.wandb_run()
    other = ws.request.getfixturevalue("wandb_world")["other_id"]
    return Setup(run, Options(wandb_dir=wandb_dir), {"WANDB_RUN_ID": other, "WANDB_RESUME": "allow"})


# -- MODEL


def compiled_state_dict(ws: Workspace) -> Setup:
    """checkpoint-6's weights saved from a torch.compile'd model: every name starts with `_orig_mod.`."""
    from safetensors.torch import load_file, save_file

    run = ws.run()
    weights = run / "checkpoint-6" / "model.safetensors"
    save_file({f"_orig_mod.{name}": tensor for name, tensor in load_file(weights).items()}, str(weights),
              metadata={"format": "pt"})
    return Setup(run)


# -- GEN (result ledgers: tests/ledger/ledger_fixer_inputs.py)


def ledger_folder(ws: Workspace) -> Path:
    folder = ws.root / "ledger"
    folder.mkdir()
    return folder


def writer_killed_mid_record(ws: Workspace) -> Setup:
    from ledger_fixer_inputs import killed_writer, ledger_options

    results = ledger_folder(ws) / "results.jsonl"
    killed_writer(results, records=10)
    return Setup(results, ledger_options())


def failures_in_processed_ids(ws: Workspace) -> Setup:
    from ledger_fixer_inputs import (
        INFERENCE_SUCCESS,
        inference_inputs,
        inference_loop,
        ledger_options,
    )

    checkpoint = ledger_folder(ws) / "checkpoint.json"
    inference_loop(checkpoint, inference_inputs(20), attempt=0, bug=True)
    return Setup(checkpoint, ledger_options(success=INFERENCE_SUCCESS))


def tasks_below_quota(ws: Workspace) -> Setup:
    from ledger_fixer_inputs import QUOTA, generation_job, ledger_options

    inputs, results = generation_job(ledger_folder(ws))
    return Setup(results, ledger_options(task_field="task_id", inputs=str(inputs), quota=QUOTA))


def shards_not_merged(ws: Workspace) -> Setup:
    from ledger_fixer_inputs import csv_shards, ledger_options

    folder = ledger_folder(ws)
    csv_shards(folder)
    return Setup(folder, ledger_options())


def failure_records_in_results(ws: Workspace) -> Setup:
    from ledger_fixer_inputs import ledger_options, run_writer

    results = ledger_folder(ws) / "results.jsonl"
    run_writer(results, 0, 10)
    return Setup(results, ledger_options())


FIXERS = {fixer.name: fixer for fixer in load_registry(fixers_now=True).fixers}


@dataclass(frozen=True)
class Case:
    fixer: str
    build: Callable[[Workspace], Setup]

    @property
    def id(self) -> str:
        return f"{self.fixer}:{self.build.__name__}"


CASES = [
    Case("quarantine-unusable-newest", newest_checkpoint_truncated),
    Case("quarantine-missing-shard", shard_missing),
    Case("rebuild-shard-index", shard_index_missing),
    Case("rebuild-shard-index", shard_index_wrong_entry),
    Case("clear-best-model-checkpoint", best_model_checkpoint_gone),
    Case("restore-global-step", global_step_off_by_one),
    Case("quarantine-tmp-checkpoint", tmp_checkpoint_debris),
    Case("quarantine-other-run", output_dir_reused),
    Case("set-resume-from-checkpoint", no_resume_in_recipe),
    Case("set-resume-from-checkpoint", resume_target_missing),
    Case("seal-after-the-fact", seal_write_interrupted),
    Case("quarantine-unfinished-save", unfinished_sealed_save),
    Case("restore-data-values", batch_size_changed),
    Case("restore-data-values", num_generations_changed),
    Case("restore-optimizer-values", learning_rate_changed),
    Case("restore-horizon", horizon_at_the_checkpoint),
    Case("set-lora-values", lora_rank_changed),
    Case("restore-data-skip", data_skip_ignored),
    Case("pin-dataset", dataset_grew),
    Case("restore-training-values", completion_budget_changed),
    Case("restore-live-curriculum", killed_while_saving),
    Case("restore-live-curriculum", live_state_missing),
    Case("replay-curriculum", only_the_promotion_rule_left),
    Case("write-curriculum-snapshot", snapshot_missing),
    Case("enable-callback-restore", callback_restore_off),
    Case("migrate-removed-keys", removed_keys_in_recipe),
    Case("reallocate-window", completion_fills_the_window),
    Case("filter-dataset", prompts_too_long),
    Case("record-wandb-decision", wandb_run_ahead),
    Case("record-wandb-decision", stale_wandb_run_id),
    Case("strip-wrapper-prefix", compiled_state_dict),
    Case("cut-torn-record", writer_killed_mid_record),
    Case("rebuild-processed-ids", failures_in_processed_ids),
    Case("write-remaining-work", tasks_below_quota),
    Case("merge-shards", shards_not_merged),
    Case("drop-failure-records", failure_records_in_results),
]


# ---- one fix run per case, shared by the invariants ---------------------------------------------


@dataclass
class Outcome:
    case: Case
    setup: Setup
    unsafe: bool
    before: Report
    result: FixResult
    after: Report
    tree_before: dict[str, str]
    tree_after_undo: dict[str, str]


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory) -> Path:
    """One cache of prompt lengths for every case: the same dataset and tokenizer are measured once."""
    return tmp_path_factory.mktemp("prompt-cache")


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.id)
def outcome(request, tmp_path_factory, prompt_cache) -> Outcome:
    """Diagnose, fix (--unsafe when the case's fixer is unsafe), diagnose again, undo: all on one copy."""
    case: Case = request.param
    unsafe = FIXERS[case.fixer].safety is FixSafety.UNSAFE
    root = tmp_path_factory.mktemp("case")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESUMEDOCTOR_CACHE_DIR", str(prompt_cache))
        setup = case.build(Workspace(request, root))
        kwargs = dict(settings=Settings(), options=setup.options, environ=setup.environ)
        tree_before = tree(root)
        before = diagnose(setup.path, **kwargs)
        result = fix(setup.path, unsafe=unsafe, **kwargs)
        # A quarantined checkpoint given directly is gone: what is left is its output_dir.
        remaining = setup.path if setup.path.exists() else setup.path.parent
        after = diagnose(remaining, **kwargs)
        undo(remaining)
    return Outcome(case, setup, unsafe, before, result, after, tree_before, tree(root))


def test_every_fixer_has_a_case():
    """A new fixer without a case here fails the suite: the invariants hold for every fixer or are not known to."""
    assert {case.fixer for case in CASES} == set(FIXERS)


# ---- what a finding is about --------------------------------------------------------------------

# A finding about one recipe key names it in extra["key"] (CFG drift) or opens its message with
# "key: " (LEN003, LEN010). "max_steps=6 is not beyond ..." states a value in context, not the key's drift.
KEY_FIRST = re.compile(r"^([a-z][a-z0-9_]*): ")


def recipe_key(finding: Finding, setup: Setup) -> str | None:
    if finding.extra.get("key"):
        return finding.extra["key"]
    if setup.options.recipe is not None and finding.path == str(setup.options.recipe):
        match = KEY_FIRST.match(finding.message)
        return match.group(1) if match else None
    return None


def identity(finding: Finding, setup: Setup) -> tuple:
    """Which error a finding is: (code, path), refined by recipe key and checkpoint.

    Every CFG/LEN finding has the recipe as its path: without the key, a fix that trades one CFG002
    for another (max_steps 10 -> 6: "training ends at once") would look like the same error.
    """
    return finding.code, finding.path, recipe_key(finding, setup), finding.extra.get("checkpoint")


def fact(finding: Finding, report: Report, setup: Setup) -> tuple | None:
    """The fact a finding gives a severity to: a recipe key for the resumed checkpoint, or a checkpoint file's integrity."""
    key = recipe_key(finding, setup)
    if key is not None:
        return "recipe key", key, report.resume_from
    checkpoint = finding.extra.get("checkpoint")
    if finding.code.startswith("CKPT") and checkpoint and finding.path and finding.path != checkpoint:
        return "checkpoint file", finding.path
    return None


def show(finding: Finding) -> str:
    return f"{finding.severity.value} {finding.code} {finding.path}: {finding.message}"


# ---- the invariants -----------------------------------------------------------------------------


def test_fix_applies_its_fixer_creates_no_error_and_undo_restores(outcome):
    name, result = outcome.case.fixer, outcome.result
    # (a) the case still triggers the fixer: an operation it planned was applied.
    applied = {operation.fixer for operation in result.operations}
    assert name in applied, f"{name} applied nothing; applied: {sorted(applied)}; findings: " + \
        "; ".join(show(f) for f in outcome.before.findings)
    # (b) every error left is one that was there before.
    errors_before = {identity(f, outcome.setup) for f in outcome.before.findings if f.severity is Severity.ERROR}
    created = [f for f in outcome.after.findings
               if f.severity is Severity.ERROR and identity(f, outcome.setup) not in errors_before]
    assert not created, "the fix created: " + "; ".join(show(f) for f in created)
    # (c) undo gives back every byte, the recipe and datasets beside the run included. The one exception:
    # the temp file of a seal write that was cut off is the fix's own atomic-write temp file, consumed
    # when the seal is written; it held no data (a partial copy of a seal that never existed).
    from resumedoctor.integrations.seal.record import SEAL_TEMP_FILE

    before = {path: digest for path, digest in outcome.tree_before.items()
              if not (outcome.case.fixer == "seal-after-the-fact" and path.endswith(SEAL_TEMP_FILE))}
    assert outcome.tree_after_undo == before


@pytest.mark.parametrize("when", ["before", "after"])
def test_each_fact_has_one_severity_in_a_report(outcome, when):
    report = getattr(outcome, when)
    severities: dict[tuple, dict[Severity, list[Finding]]] = {}
    for finding in report.findings:
        subject = fact(finding, report, outcome.setup)
        if subject is not None:
            severities.setdefault(subject, {}).setdefault(finding.severity, []).append(finding)
    mixed = {subject: by_severity for subject, by_severity in severities.items() if len(by_severity) > 1}
    assert not mixed, "; ".join(
        f"{subject}: " + " / ".join(show(f) for findings in by_severity.values() for f in findings)
        for subject, by_severity in mixed.items())


def test_the_fix_shown_is_the_fix_applied(outcome):
    registry = load_registry(fixers_now=True)
    wrong = []
    for plan in outcome.result.planned:
        applied = FixInfo(plan.fixer.safety, plan.fixer.description)
        if plan.finding.fix != applied:
            shown = plan.finding.fix
            wrong.append(f"{plan.finding.code} shows {shown.safety.value if shown else None} "
                         f"{shown.description if shown else None!r}, fix applies {plan.fixer.name} ({plan.fixer.safety.value})")
        explained = explain_code(registry, plan.finding.code) or ""
        if f"{plan.fixer.name} ({plan.fixer.safety.value}, " not in explained or plan.fixer.description not in explained:
            wrong.append(f"explain {plan.finding.code} does not name {plan.fixer.name} ({plan.fixer.safety.value})")
    # A finding left after `fix` whose fix column shows a fix this run was allowed to apply: none applied.
    allowed = {FixSafety.SAFE, FixSafety.UNSAFE} if outcome.unsafe else {FixSafety.SAFE}
    for finding in outcome.after.findings:
        if finding.fix is not None and finding.fix.safety in allowed:
            wrong.append(f"{finding.code} shows {finding.fix.safety.value} {finding.fix.description!r}, "
                         f"which fix{' --unsafe' if outcome.unsafe else ''} did not apply: {finding.message}")
    assert not wrong, "; ".join(wrong)

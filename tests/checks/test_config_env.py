"""CFG (config drift against the checkpoint) and ENV (the machine) on real runs and recipes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import DEMO_RUN_ARGS, codes, run_cli

from resumedoctor.engine.context import Options
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix

# The demo run's own arguments: a recipe with exactly these resumes it without drift.
BASE = "# recipe of the demo run\noutput_dir: {output_dir}\n" + DEMO_RUN_ARGS + "resume_from_checkpoint: true\n{extra}"


@pytest.fixture
def recipe_for(full_run, tmp_path, monkeypatch):
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(tmp_path / "cache"))

    def write(extra: str = "", **replace) -> Path:
        text = BASE.format(output_dir=full_run, extra=extra)
        for key, value in replace.items():
            text = "\n".join(f"{key}: {value}" if line.startswith(f"{key}:") else line for line in text.splitlines()) + "\n"
        path = tmp_path / "recipe.yaml"
        path.write_text(text)
        return path

    return write


def report_of(run: Path, recipe: Path, select=("CFG",), recipe_args=(), environ=None, checkpoint="checkpoint-4"):
    """Resume checkpoint-4 of the 6-step run (checkpoint-6 is the end: resuming it only runs a stray step)."""
    target = run / checkpoint if checkpoint else run
    return diagnose(target, settings=Settings(select=select), options=Options(recipe=recipe, recipe_args=tuple(recipe_args)),
                    environ=environ or {})


def by_code(report, code):
    return [f for f in report.findings if f.code == code]


def test_the_runs_own_arguments_give_no_drift(full_run, recipe_for):
    assert report_of(full_run, recipe_for()).findings == ()


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        ("per_device_train_batch_size", 8, "CFG001"),
        ("seed", 1, "CFG001"),
        ("num_generations", 2, "CFG001"),
        ("learning_rate", "2.0e-3", "CFG012"),
        ("max_completion_length", 16, "CFG005"),
        ("logging_steps", 5, "CFG004"),
        ("save_steps", 3, "CFG004"),
    ],
)
def test_each_drift_is_classified(full_run, recipe_for, key, value, code):
    report = report_of(full_run, recipe_for(**{key: value}))
    (finding,) = [f for f in report.findings if f.message.startswith(f"{key}:")]
    assert finding.code == code
    assert "checkpoint-4 was trained with" in finding.message and "(file)" in finding.message


def sampler_position(global_step: int, *, per_device: int, generations: int, accumulation: int = 1,
                     rows: int = 64, seed: int = 0) -> int:
    """Oracle: where TRL's own RepeatSampler, batched and skipped as the Trainer does, resumes.

    GRPOTrainer batches per_device x steps_per_generation samples from RepeatSampler; on resume the
    Trainer skips global_step x gradient_accumulation_steps batches (accelerate's skip_first_batches)
    and generates for the batch it meets. Returns that batch's first prompt as a position in the
    seeded permutation.
    """
    import torch
    from accelerate.data_loader import skip_first_batches
    from torch.utils.data import DataLoader
    from trl.trainer.utils import RepeatSampler

    steps = accumulation  # GRPOConfig's default steps_per_generation
    batch = per_device * steps  # generation_batch_size on one process
    sampler = RepeatSampler(range(rows), mini_repeat_count=generations, batch_size=batch // generations,
                            repeat_count=steps, shuffle=True, seed=seed)
    loader = DataLoader(list(range(rows)), batch_size=per_device * steps, sampler=sampler)
    first = int(next(iter(skip_first_batches(loader, global_step * accumulation)))[0])
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist().index(first)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"num_generations": 2}, "CFG001"),  # 2 prompts per step instead of 1: the skip passes 8, not 4
        ({"per_device_train_batch_size": 8}, "CFG001"),
        ({"num_generations": 8, "per_device_train_batch_size": 8}, "CFG005"),  # same prompts, more completions
        ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, "CFG004"),  # same step, split
    ],
)
def test_data_skip_severity_follows_trls_sampler(full_run, recipe_for, changes, code):
    extra = "".join(f"{key}: {value}\n" for key, value in changes.items() if key == "gradient_accumulation_steps")
    recipe = recipe_for(extra=extra, **{k: v for k, v in changes.items() if k != "gradient_accumulation_steps"})
    (finding,) = report_of(full_run, recipe).findings  # one fact, one finding, however many keys
    assert finding.code == code
    before, after = finding.extra["positions"]
    assert before == sampler_position(4, per_device=4, generations=4)
    assert after == sampler_position(4, per_device=changes.get("per_device_train_batch_size", 4),
                                     generations=changes.get("num_generations", 4),
                                     accumulation=changes.get("gradient_accumulation_steps", 1))
    if code == "CFG001":
        assert f"skips {after} prompts of the seeded order, the checkpoint's values skip {before}" in finding.message


def test_num_generations_is_reported_once_across_families(full_run, recipe_for):
    report = diagnose(full_run / "checkpoint-4", settings=Settings(select=("CFG", "LEN")),
                      options=Options(recipe=recipe_for(num_generations=2)), environ={})
    about = [f for f in report.findings if "num_generations" in f.message]
    assert [(f.code, f.severity.value) for f in about] == [("CFG001", "error")]


def test_data_seed_does_not_seed_grpos_sampler(full_run, recipe_for):
    import inspect

    from trl import GRPOTrainer

    source = inspect.getsource(GRPOTrainer._get_train_sampler)
    assert "seed=self.args.seed" in source and "data_seed" not in source  # why the change is harmless
    (finding,) = report_of(full_run, recipe_for(extra="data_seed: 3\n")).findings
    assert finding.code == "CFG004" and "RepeatSampler shuffles with seed alone" in finding.message


def test_learning_rate_change_is_kept_by_the_checkpoint_and_the_fix_makes_the_recipe_say_so(full_run, recipe_for):
    # tests/integrations/test_schedule.py shows with a real resume that the recipe's learning_rate is not used.
    recipe = recipe_for(learning_rate="2.0e-3")
    (finding,) = report_of(full_run, recipe).findings
    assert finding.code == "CFG012" and "the resume keeps learning_rate=0.001" in finding.message
    assert finding.fix.safety.value == "safe"
    fix(full_run / "checkpoint-4", settings=Settings(select=("CFG",)), options=Options(recipe=recipe), environ={})
    assert report_of(full_run, recipe).findings == ()
    assert recipe.read_text().startswith("# recipe of the demo run")


def test_scheduler_type_and_max_steps(full_run, recipe_for):
    (finding,) = report_of(full_run, recipe_for(extra="lr_scheduler_type: cosine\n")).findings
    assert finding.code == "CFG009" and finding.message.startswith("lr_scheduler_type:")
    (finding,) = report_of(full_run, recipe_for(max_steps=4)).findings
    assert finding.code == "CFG002" and "max_steps=4 is not beyond global_step 4" in finding.message


def test_unset_key_falls_back_to_trl_default_and_that_is_drift(full_run, recipe_for):
    recipe = recipe_for()
    recipe.write_text(recipe.read_text().replace("seed: 0\n", ""))
    finding = by_code(report_of(full_run, recipe), "CFG001")[0]
    assert finding.message.startswith("seed: checkpoint-4 was trained with 0, the recipe says 42 (default): ")


def test_cli_override_is_the_source(full_run, recipe_for):
    report = report_of(full_run, recipe_for(), recipe_args=["--per_device_train_batch_size", "8"])
    assert "(cli)" in by_code(report, "CFG001")[0].message


def test_world_size_change(full_run, recipe_for):
    report = report_of(full_run, recipe_for(), environ={"WORLD_SIZE": "8"})
    assert "trained on 1 process(es), WORLD_SIZE is 8" in by_code(report, "CFG001")[0].message


def test_different_model_architecture(full_run, recipe_for, tmp_path):
    from demo_run import build_model, build_tokenizer

    other = tmp_path / "bigger-model"
    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden_size=64).save_pretrained(other)
    tokenizer.save_pretrained(other)
    report = report_of(full_run, recipe_for(extra=f"model_name_or_path: {other}\n"))
    assert "hidden_size 32 vs 64" in by_code(report, "CFG003")[0].message


def test_no_resume_from_checkpoint_is_fixed_with_the_newest_usable_path(full_run, recipe_for):
    from trl import GRPOConfig, TrlParser

    with open(full_run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(10)  # the newest is broken: the path must be checkpoint-4
    recipe = recipe_for(resume_from_checkpoint="null")
    finding = by_code(report_of(full_run, recipe, checkpoint=None), "CFG006")[0]
    assert "restarts at step 0 and overwrites them" in finding.message
    before = recipe.read_bytes()
    # A safe fix never moves the resume to an older checkpoint: that changes what is trained.
    fix(full_run, settings=Settings(select=("CFG006",)), options=Options(recipe=recipe), environ={})
    assert recipe.read_bytes() == before
    # --unsafe quarantines the broken checkpoint-6 first; then checkpoint-4 is the newest, and CFG006's fix names it.
    fix(full_run, unsafe=True, settings=Settings(select=("CKPT", "CFG006")), options=Options(recipe=recipe), environ={})
    (config,) = TrlParser((GRPOConfig,)).parse_args_and_config(["--config", str(recipe)])
    assert config.resume_from_checkpoint == str((full_run / "checkpoint-4").resolve())
    assert recipe.read_text().startswith("# recipe of the demo run")


def test_resume_target_missing_older_or_the_string_true(full_run, recipe_for):
    report = report_of(full_run, recipe_for(resume_from_checkpoint=str(full_run / "checkpoint-99")), checkpoint=None)
    assert "does not exist" in by_code(report, "CFG007")[0].message
    report = report_of(full_run, recipe_for(resume_from_checkpoint=str(full_run / "checkpoint-2")), checkpoint=None)
    older = by_code(report, "CFG013")[0]  # a rollback may be intended: a warning, with no fix
    assert "checkpoint-6 is newer and usable: the 4 steps after checkpoint-2 are trained again" in older.message
    assert older.severity.value == "warning" and older.fix is None and not by_code(report, "CFG007")
    # `--resume_from_checkpoint true` on the command line is the string "true": a path that is not there.
    report = report_of(full_run, recipe_for(), recipe_args=["--resume_from_checkpoint", "true"], checkpoint=None)
    assert "use the YAML boolean true" in by_code(report, "CFG007")[0].message


def test_resume_true_without_a_checkpoint_is_an_error(tmp_path, recipe_for):
    from transformers.trainer_utils import get_last_checkpoint

    empty = tmp_path / "empty-out"
    empty.mkdir()
    assert get_last_checkpoint(str(empty)) is None  # what Trainer.train(resume_from_checkpoint=True) raises on
    report = report_of(empty, recipe_for(output_dir=empty), checkpoint=None)
    assert "holds no checkpoint" in by_code(report, "CFG007")[0].message and report.exit_code == 1


def test_yaml_boolean_true_resumes_the_newest(full_run, recipe_for):
    report = report_of(full_run, recipe_for(resume_from_checkpoint="true", max_steps=8), checkpoint=None)
    assert codes(report) == ["CFG009"]  # only the longer schedule: no complaint about the resume target


def test_restoring_the_checkpoint_value_is_unsafe_and_undoes_the_drift(full_run, recipe_for):
    recipe = recipe_for(per_device_train_batch_size=8)
    checkpoint = full_run / "checkpoint-4"
    safe = fix(checkpoint, settings=Settings(select=("CFG",)), options=Options(recipe=recipe), environ={})
    assert {f.code for f, _ in safe.skipped_unsafe} == {"CFG001"}
    fix(checkpoint, unsafe=True, settings=Settings(select=("CFG",)), options=Options(recipe=recipe), environ={})
    assert "per_device_train_batch_size: 4" in recipe.read_text()
    assert report_of(full_run, recipe).findings == ()


def test_malicious_training_args_does_not_run_in_the_drift_check(full_run, recipe_for, tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class RunsACommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save(RunsACommand(), full_run / "checkpoint-6" / "training_args.bin")
    report = diagnose(full_run, settings=Settings(select=("CFG", "CKPT")), options=Options(recipe=recipe_for()), environ={})
    assert not marker.exists()
    assert "CKPT028" in codes(report) and not by_code(report, "CFG001")


def test_config_command_shows_sources_and_the_checkpoint(full_run, recipe_for):
    result = run_cli("config", recipe_for(per_device_train_batch_size=8), full_run, "--format", "json",
                     "--", "--seed", "3")
    rows = {row["key"]: row for row in json.loads(result.stdout)}
    assert rows["per_device_train_batch_size"] == {**rows["per_device_train_batch_size"], "value": 8,
                                                   "source": "file", "checkpoint": 4, "drift": "data-skip"}
    assert rows["seed"]["source"] == "cli" and rows["seed"]["value"] == 3
    assert rows["logging_strategy"]["source"] == "default"
    assert "resolved recipe" in run_cli("config", recipe_for(), full_run).stdout


def test_config_and_cfg_see_the_same_changes(full_run, recipe_for):
    """One comparison of the saved arguments with the recipe: the keys `config` marks as drift are the keys
    the CFG findings are about, and the ones CFG judges otherwise: output_dir and resume_from_checkpoint
    (CFG006-CFG008), and the generation batch GRPOConfig derives from per_device_train_batch_size here."""
    recipe = recipe_for("temperature: 0.5\nlr_scheduler_kwargs: {}\n", per_device_train_batch_size=8,
                        logging_steps=3, learning_rate="2.0e-3")
    result = run_cli("config", recipe, full_run / "checkpoint-4", "--format", "json")
    drifted = {row["key"] for row in json.loads(result.stdout) if row["drift"]}
    judged = {key for finding in report_of(full_run, recipe).findings for key in finding.extra.get("keys", ())}
    assert judged == {"per_device_train_batch_size", "logging_steps", "learning_rate", "temperature"}
    assert drifted - judged == {"generation_batch_size", "steps_per_generation", "output_dir", "resume_from_checkpoint"}


# ---- ENV ----------------------------------------------------------------------------------------


def env_report(run: Path, recipe: Path | None = None):
    return diagnose(run, settings=Settings(select=("ENV",)), options=Options(recipe=recipe), environ={})


def test_clean_environment_has_no_finding(full_run):
    assert env_report(full_run).findings == ()


def test_checkpoint_written_by_a_newer_transformers(full_run):
    path = full_run / "checkpoint-6" / "config.json"
    config = json.loads(path.read_text())
    config["transformers_version"] = "99.1.0"
    path.write_text(json.dumps(config))
    finding = by_code(env_report(full_run), "ENV001")[0]
    assert "the run was written with 99.1.0" in finding.message


def test_torch_older_than_2_6(full_run, monkeypatch):
    # torch < 2.6 cannot be installed beside this project's pins; the installed version is simulated.
    from resumedoctor.checks import environment

    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda name: "2.5.1" if name == "torch" else real(name))
    report = env_report(full_run)
    assert by_code(report, "ENV002") and report.exit_code == 1


def test_disk_space_below_the_remaining_saves(full_run, monkeypatch):
    from resumedoctor.checks import environment

    shutil.rmtree(full_run / "checkpoint-6")  # killed after the save of step 4: one save (step 6) to come
    monkeypatch.setattr(environment, "disk_free", lambda path: 1024)  # a full disk, simulated
    finding = by_code(env_report(full_run), "ENV004")[0]
    assert "1.0 KiB free" in finding.message and "1 more checkpoint(s)" in finding.message
    assert "1 save(s) from step 4 to 6 every 2 steps" in finding.message


def test_finished_run_needs_no_disk(full_run, monkeypatch):
    from resumedoctor.checks import environment

    monkeypatch.setattr(environment, "disk_free", lambda path: 1024)
    assert env_report(full_run).findings == ()  # checkpoint-6 is max_steps: a resume saves nothing


def test_resume_from_an_older_checkpoint_saves_over_the_newer_ones(full_run, monkeypatch):
    from resumedoctor.checks import environment

    monkeypatch.setattr(environment, "disk_free", lambda path: 1024)
    assert env_report(full_run / "checkpoint-4").findings == ()  # step 6's save rewrites checkpoint-6


def resumed_checkpoints(run: Path, **arguments) -> list[str]:
    """Resume the run for real with transformers (the oracle) and list the checkpoints it leaves."""
    from demo_run import train_demo_run

    before = {p.name for p in run.glob("checkpoint-*")}
    train_demo_run(run, resume_from_checkpoint=True, **arguments)
    return sorted(p.name for p in run.glob("checkpoint-*") if p.name not in before)


def test_save_steps_of_a_resume_are_the_checkpoints_own(full_run, recipe_for, monkeypatch):
    """A recipe's save_steps below 1 is a fraction of max_steps, but a resume takes trainer_state.json's
    absolute save_steps: transformers replaces its state with the checkpoint's."""
    from resumedoctor.checks import environment

    recipe = recipe_for(max_steps=12, save_steps=0.25)  # ceil(12 * 0.25) = 3 for a new run
    monkeypatch.setattr(environment, "disk_free", lambda path: 1024)
    finding = by_code(env_report(full_run, recipe), "ENV004")[0]
    assert "3 more checkpoint(s)" in finding.message
    assert "3 save(s) from step 6 to 12 every 2 steps" in finding.message  # not (12 - 6) / 0.25 = 24
    assert resumed_checkpoints(full_run, max_steps=12, save_steps=0.25) == ["checkpoint-10", "checkpoint-12",
                                                                             "checkpoint-8"]


def test_fractional_save_steps_of_a_new_run(tmp_path):
    """Without a saved save_steps (a run's start), a value below 1 is ceil(max_steps * save_steps)."""
    from demo_run import train_demo_run
    from resumedoctor.checks.environment import SaveSettings, saves_to_come

    settings = SaveSettings(global_step=0, max_steps=5, save_steps=0.5, strategy="steps", limit=None,
                            best_kept=False, epoch=None, num_train_epochs=None, source="recipe")
    assert saves_to_come(settings)[0] == 2  # every ceil(2.5) = 3 steps, and the final save at step 5
    run = train_demo_run(tmp_path / "fraction", max_steps=5, save_steps=0.5)  # the oracle: transformers
    assert sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")) == [3, 5]


SMALL_DISK = """
set -e
mount -t tmpfs -o size=64m tmpfs "{mount}"
cp -r "{run}" "{mount}/run"
used=$(df -k --output=used "{mount}" | tail -1)
mount -o remount,size=$((used + {room_kib}))k "{mount}"
"{python}" -m resumedoctor diagnose "{mount}/run" --config "{recipe}" --select ENV --format json > "{out}/report.json" || true
"{python}" -c "from pathlib import Path; from demo_run import train_demo_run; \
train_demo_run(Path('{mount}/run'), max_steps=12, save_steps=2, resume_from_checkpoint=True, save_total_limit={limit})" \
    > "{out}/train.log" 2>&1 && echo 0 > "{out}/train.rc" || echo 1 > "{out}/train.rc"
ls "{mount}/run" > "{out}/left.txt"
"""


@pytest.mark.slow
@pytest.mark.parametrize("limit", [2, None])
def test_rotation_bounds_the_disk_a_resume_needs_on_a_real_small_disk(built_runs, recipe_for, tmp_path, limit):
    """A real tmpfs in a private mount namespace with room for 1.6 more checkpoints; the run is resumed
    from step 6 to 12 (three saves) for real on it: transformers' own rotation is the oracle."""
    from resumedoctor.checks.environment import folder_size

    recipe = recipe_for(max_steps=12, extra=f"save_total_limit: {limit}\n" if limit else "")
    mount, out = tmp_path / "small-disk", tmp_path / "out"
    mount.mkdir()
    out.mkdir()
    room_kib = folder_size(built_runs["full"] / "checkpoint-6") * 16 // 10 // 1024
    script = SMALL_DISK.format(mount=mount, run=built_runs["full"], room_kib=room_kib, python=sys.executable,
                               recipe=recipe, out=out, limit=limit)
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    findings = json.loads((out / "report.json").read_text())["findings"]
    trained = (out / "train.rc").read_text().strip() == "0"
    if limit:
        # At most 3 exist, plus the one being written: one more checkpoint than now, and it fits.
        assert findings == [] and trained, (out / "train.log").read_text()[-2000:]
        assert "checkpoint-12" in (out / "left.txt").read_text().split()
    else:
        assert [f["code"] for f in findings] == ["ENV004"] and "3 more checkpoint(s)" in findings[0]["message"]
        log = (out / "train.log").read_text()
        # torch.save reports a full disk as a short write ("unexpected pos"), other writers as ENOSPC.
        assert not trained and ("No space left on device" in log or "unexpected pos" in log), log[-2000:]


def test_nearly_full_disk_on_a_real_small_file_system(built_runs, tmp_path):
    """A real 4 MiB tmpfs in a private mount namespace holding a copy of the run."""
    from resumedoctor.checks.environment import folder_size

    mount = tmp_path / "small-disk"
    mount.mkdir()
    # Room for the checkpoint and half of another: the next save (step 6 after checkpoint-4) does not fit.
    size_kib = folder_size(built_runs["full"] / "checkpoint-4") * 3 // 2 // 1024
    script = (f'mount -t tmpfs -o size={size_kib}k tmpfs "{mount}" && cp -r "{built_runs["full"]}/checkpoint-4" "{mount}/" && '
              f'"{sys.executable}" -m resumedoctor diagnose "{mount}" --select ENV --format json')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    document = json.loads(result.stdout)
    assert [f["code"] for f in document["findings"]] == ["ENV004"], result.stderr
    assert result.returncode == 1


def test_read_only_output_dir(full_run):
    script = (f'mount --bind -o ro "{full_run}" "{full_run}" && '
              f'"{sys.executable}" -m resumedoctor diagnose "{full_run}" --select ENV --format json')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    finding = json.loads(result.stdout)["findings"][0]
    assert finding["code"] == "ENV005" and "read-only file system" in finding["message"]


def test_gpus_are_checked_only_when_the_recipe_trains_on_gpu(full_run, recipe_for, monkeypatch):
    recipe = recipe_for(use_cpu="false")
    assert by_code(env_report(full_run, recipe), "ENV006")  # no NVML on this machine: an info line
    assert not by_code(env_report(full_run, recipe_for()), "ENV006")  # use_cpu: true


def test_gpu_with_too_little_free_memory(full_run, recipe_for, monkeypatch):
    # No GPU exists here: NVML is simulated with one GPU of 1 KiB free.
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(free=1 << 10),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    finding = by_code(env_report(full_run, recipe_for(use_cpu="false")), "ENV007")[0]
    assert finding.message.startswith("GPU 0 has 1.0 KiB free")


def test_stale_wandb_variables_are_unset_by_env(full_run):
    result = run_cli("env", full_run, env={"WANDB_RESUME": "must", "WANDB_RUN_ID": ""})
    assert "unset WANDB_RESUME" in result.stdout


def test_output_dir_copy_keeps_checks_independent(full_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    assert env_report(copy).findings == ()


def test_an_sft_recipe_is_not_judged_as_a_grpo_recipe(tmp_path):
    """SFTTrainer's own arguments (max_length) are no GRPO errors: the recipe families say they cannot judge."""
    import demo_run as demo
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer, TrlParser

    tokenizer = demo.build_tokenizer()
    rows = [{"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c d"}]}] * 16
    out = tmp_path / "sft"
    SFTTrainer(model=demo.build_model(tokenizer), processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
               args=SFTConfig(output_dir=str(out), max_steps=2, save_steps=2, use_cpu=True, report_to="none",
                              per_device_train_batch_size=4, max_length=64, disable_tqdm=True)).train()
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"output_dir: {out}\nmax_length: 64\nmax_steps: 2\nsave_steps: 2\nuse_cpu: true\n"
                      "resume_from_checkpoint: true\n")
    TrlParser((SFTConfig,)).parse_args_and_config(["--config", str(recipe)])  # the oracle: a valid SFT recipe
    report = diagnose(out, settings=Settings(), options=Options(recipe=recipe), environ={})
    assert report.exit_code == 0, [(f.code, f.message) for f in report.findings]
    skipped = {family.prefix: family.reason for family in report.families if family.status == "skipped"}
    assert "SFTConfig" in skipped["LEN"] and "not checked" in skipped["CFG"]


def test_a_recipe_with_anchors_reads_as_trl_reads_it(full_run, tmp_path):
    """The alias budget refuses bombs only: anchors and merge keys read exactly as TrlParser's yaml.safe_load."""
    import yaml
    from trl import GRPOConfig, TrlParser

    from resumedoctor.integrations.trl.recipe import load_values

    recipe = tmp_path / "anchors.yaml"
    recipe.write_text(f"output_dir: {full_run}\nlearning_rate: &lr 3.0e-4\nmax_steps: &steps 8\n"
                      "use_cpu: true\nreport_to: &none [none]\n"
                      "lr_scheduler_kwargs: &kwargs {min_lr: 1.0e-5}\n"
                      "model_init_kwargs: {<<: *kwargs, torch_dtype: float32}\n"
                      "save_steps: *steps\nlogging_steps: 2\n")
    assert load_values(recipe) == yaml.safe_load(recipe.read_text())
    (parsed,) = TrlParser((GRPOConfig,)).parse_args_and_config(["--config", str(recipe)])
    values = load_values(recipe)
    assert (parsed.learning_rate, parsed.max_steps, parsed.save_steps) == (values["learning_rate"], 8, values["save_steps"])
    assert parsed.model_init_kwargs == values["model_init_kwargs"] == {"min_lr": 1.0e-5, "torch_dtype": "float32"}


def test_config_says_when_the_checkpoints_arguments_could_not_be_read(full_run, recipe_for):
    """An empty checkpoint column must not read as "no drift": the refusal is said on stderr."""
    (full_run / "checkpoint-6" / "training_args.bin").write_bytes(b"PK\x03\x04 not really a zip")
    result = run_cli("config", recipe_for(per_device_train_batch_size=8), full_run, "--format", "json")
    assert result.returncode == 0
    assert not any(row["in_checkpoint"] for row in json.loads(result.stdout))
    assert "checkpoint-6/training_args.bin was not read" in result.stderr and "no drift was judged" in result.stderr


def test_a_recipe_fix_journaled_with_another_key_blocks_neither_fix_nor_a_clear_undo(full_run, recipe_for, tmp_path):
    """Another container or HOME has another journal key: fix goes on, undo says how to restore by hand."""
    recipe = recipe_for(per_device_train_batch_size=8)
    original = recipe.read_text()
    here, elsewhere = {"XDG_STATE_HOME": str(tmp_path / "state-a")}, {"XDG_STATE_HOME": str(tmp_path / "state-b")}
    applied = run_cli("fix", full_run / "checkpoint-4", "--config", recipe, "--auto", "--unsafe", "--select", "CFG",
                      env=here)
    assert applied.returncode == 0 and "per_device_train_batch_size: 4" in recipe.read_text(), applied.stderr
    again = run_cli("fix", full_run, "--auto", env=elsewhere)
    assert again.returncode in (0, 1) and "internal error" not in again.stderr, again.stderr
    refused = run_cli("undo", full_run, env=elsewhere)
    assert refused.returncode == 2 and "per_device_train_batch_size: 4" in recipe.read_text()
    assert str(tmp_path / "state-b") in refused.stderr and "backup" in refused.stderr, refused.stderr
    assert run_cli("undo", full_run, env=here).returncode == 0 and recipe.read_text() == original


def test_a_recipe_number_python_cannot_build_is_an_unreadable_recipe_not_a_crash(full_run, tmp_path):
    """PyYAML (TrlParser's reader) raises ValueError on an int of over 4300 digits: the recipe is refused."""
    import yaml

    from resumedoctor.integrations.trl.recipe import RecipeError, load_values, load_yaml

    recipe = tmp_path / "huge.yaml"
    recipe.write_text(f"output_dir: {full_run}\nlora_r: {'9' * 5000}\n")
    with pytest.raises(ValueError):
        yaml.safe_load(recipe.read_text())  # the oracle: TrlParser cannot read it either
    for reader in (load_values, load_yaml):
        with pytest.raises(RecipeError, match="too long to read"):
            reader(recipe)
    report = diagnose(full_run, settings=Settings(), options=Options(recipe=recipe), environ={})
    assert report.exit_code in (0, 1)
    assert not [f for f in report.findings if "internal" in f.message.lower()]

"""The life of a run, on real TRL GRPO runs on CPU: what `resumedoctor diagnose` says at every stage.

Stages: fresh (nothing saved yet), SIGKILLed mid-step, SIGKILLed during the save at each file the save
writes (with and without SealCallback), finished (`resumedoctor launch` ends with `save_model(output_dir)`),
extended (max_steps raised, resumed by `resumedoctor launch`), resumed by plain training after
`resumedoctor seal`, and a two-process torchrun run. The promise held at each stage: a clean run gets no
error; a cut-off save is never called safe; the report has errors only when `resume_from_checkpoint=True`
would pick a broken checkpoint (CKPT018). Wherever the verdict is "resumable from X", the run is resumed
from X for real and must continue at X's global_step.

The kill points come from tests/lifecycle_helpers.py: one training child per variant that stops itself
after each file it writes; the independent oracles are transformers itself (`get_last_checkpoint`, a
real resume) and the files the Trainer really wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GRPO_RECIPE, codes, run_cli
from lifecycle_helpers import (
    MAX_STEPS,
    SAVE_STEP,
    KillPoint,
    resume_for_real,
    run_to_each_kill_point,
)

from resumedoctor.engine.findings import Severity
from resumedoctor.engine.runner import Report, diagnose
from resumedoctor.integrations.seal.record import SEAL_FILE
from resumedoctor.report import render

# Every test here trains real runs (in its body or in the session fixtures it uses); CI runs them all.
pytestmark = pytest.mark.slow

PREVIOUS = SAVE_STEP - 2  # the whole checkpoint before the save the child is killed in
STATE = "trainer_state.json"


# ---------------------------------------------------------------- helpers


def errors(report: Report) -> list:
    return [f for f in report.findings if f.severity is Severity.ERROR]


def text(report: Report) -> str:
    return render(report, "text", width=1000)  # no wrapping: verdict lines are matched whole


def copy(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, symlinks=True)
    return destination


def last_checkpoint(output_dir: Path) -> str | None:
    """What `resume_from_checkpoint=True` picks: transformers' own answer."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir))


def cut_off_problems(out: Path) -> list[str]:
    """Why this report breaks the promise for a save cut off in checkpoint-SAVE_STEP (empty if it keeps it)."""
    broken, whole = out / f"checkpoint-{SAVE_STEP}", out / f"checkpoint-{PREVIOUS}"
    problems = []
    if last_checkpoint(out) != str(broken):
        problems.append(f"harness: transformers would pick {last_checkpoint(out)}, not the cut-off save")
    report = diagnose(out)
    if f"Safe to resume from {broken}" in text(report):
        problems.append("the cut-off checkpoint is called safe")
    if report.exit_code != 1 or "CKPT018" not in codes(report):
        problems.append(f"no CKPT018 error (exit {report.exit_code}, codes {codes(report)})")
    else:
        ckpt018 = next(f for f in report.findings if f.code == "CKPT018")
        if f"the newest usable checkpoint is {whole.name}" not in ckpt018.message:
            problems.append(f"CKPT018 does not name {whole.name}: {ckpt018.message}")
    stray = [f"{f.code} {f.path}" for f in errors(report) if not (f.path or "").startswith(str(broken))]
    if stray:
        problems.append(f"errors about something else than the cut-off checkpoint: {stray}")
    return problems


def finished_problems(out: Path, checkpoint: Path) -> list[str]:
    """Why this report breaks the promise for a whole run resumable from `checkpoint`."""
    report = diagnose(out)
    problems = [f"error {f.code} {f.path}: {f.message}" for f in errors(report)]
    if report.resume_from != str(checkpoint):
        problems.append(f"resumes from {report.resume_from}, not {checkpoint}")
    if last_checkpoint(out) != str(checkpoint):
        problems.append(f"harness: transformers would pick {last_checkpoint(out)}")
    return problems


def assert_resumes_for_real(out: Path, checkpoint: Path | str | bool, start: int, end: int) -> None:
    """Train on from `checkpoint` with the real Trainer: it must begin at `start` and step on to `end`."""
    steps = resume_for_real(out, checkpoint, max_steps=end)
    assert steps == list(range(start, end + 1)), f"global_step at train begin, then after each step: {steps}"
    state = json.loads((out / f"checkpoint-{end}" / STATE).read_text())
    assert state["global_step"] == end


def save_points(points: list[KillPoint]) -> list[KillPoint]:
    return [point for point in points if point.label == "save"]


def save_finished(point: KillPoint, sealed: bool) -> bool:
    """Whether the save had ended at this stop: trainer_state.json, the Trainer's last file, is there.

    With SealCallback the seal comes after it; a kill before the seal is whole leaves a whole save whose
    seal write was interrupted (CKPT034, a warning with a safe fix), not a cut-off save."""
    checkpoint = point.snapshot / f"checkpoint-{SAVE_STEP}"
    return (checkpoint / STATE).is_file()


# ---------------------------------------------------------------- the runs, built once per session


def _kill_run(tmp_path_factory, sealed: bool) -> dict:
    root = tmp_path_factory.mktemp("sealed-kills" if sealed else "kills")
    points, status = run_to_each_kill_point(root / "out", root / "snapshots", seal=sealed)
    return {"points": points, "status": status, "out": root / "out", "sealed": sealed}


@pytest.fixture(scope="session")
def sealed_kills(tmp_path_factory) -> dict:
    """A 4-step run with SealCallback, stopped at every kill point (copies), SIGKILLed at its end."""
    return _kill_run(tmp_path_factory, sealed=True)


@pytest.fixture(scope="session")
def plain_kills(tmp_path_factory) -> dict:
    """The same run without SealCallback (a plain `trl grpo` run)."""
    return _kill_run(tmp_path_factory, sealed=False)


@pytest.fixture(params=["sealed", "plain"])
def kills(request) -> dict:
    return request.getfixturevalue(f"{request.param}_kills")


def point(kills: dict, label: str) -> KillPoint:
    return next(p for p in kills["points"] if p.label == label)


RECIPE = GRPO_RECIPE + "report_to: wandb\n{extra}"
FINISHED_STEPS, EXTENDED_STEPS = 6, 10


def wandb_env(root: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(root), WANDB_SILENT="true", WANDB_PROJECT="lifecycle-tests",
               WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true", RESUMEDOCTOR_CACHE_DIR=str(root / "cache"))
    return env


def write_recipe(world: dict, root: Path, max_steps: int, extra: str = "") -> Path:
    path = root / f"recipe-{max_steps}.yaml"
    path.write_text(RECIPE.format(model=world["model"], dataset=world["dataset"], output_dir=root / "out",
                                  max_steps=max_steps, extra=extra))
    return path


def launch(recipe: Path, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resumedoctor", "launch", "--config", str(recipe)],
                          capture_output=True, text=True, env=wandb_env(root), cwd=root)


@pytest.fixture(scope="session")
def finished_world(tmp_path_factory, launch_inputs) -> dict:
    """A 6-step run trained to its end by `resumedoctor launch` (W&B offline): checkpoint-2, -4, -6 and the
    final `save_model(output_dir)` (model.safetensors, config.json, training_args.bin, ...) beside them."""
    root = tmp_path_factory.mktemp("finished")
    world = {"root": root, "out": root / "out", "model": launch_inputs["model"], "dataset": launch_inputs["dataset"]}
    result = launch(write_recipe(world, root, FINISHED_STEPS), root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return world


def written(out: Path, root: Path) -> tuple[dict, list]:
    """Every file in out with its bytes, and what lies beside out (resumedoctor's own cache aside)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    return files, sorted(p.name for p in root.iterdir() if p.name != "cache")


def finished_copy(world: dict, tmp_path: Path) -> Path:
    """A private copy of the finished run and its wandb/ folder (the output_dir keeps its name)."""
    copy(world["out"], tmp_path / "out")
    copy(world["root"] / "wandb", tmp_path / "wandb")
    return tmp_path / "out"


# ---------------------------------------------------------------- fresh


def test_fresh_output_dir_has_nothing_to_resume(plain_kills, tmp_path):
    out = copy(point(plain_kills, "fresh").snapshot, tmp_path / "out")  # killed in step 1: nothing saved
    assert out.is_dir() and not any(out.iterdir())  # the Trainer made the folder, no save yet
    report = diagnose(out)
    assert report.exit_code == 0 and not errors(report) and report.resume_from is None
    assert {f.severity for f in report.findings} <= {Severity.INFO}
    result = run_cli("diagnose", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Nothing to resume: training starts at step 0." in result.stdout


# ---------------------------------------------------------------- killed mid-step


def test_killed_mid_step_resumes_from_the_last_save(kills, tmp_path):
    out = copy(point(kills, "mid-step").snapshot, tmp_path / "out")
    whole = out / f"checkpoint-{PREVIOUS}"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [whole.name]
    assert finished_problems(out, whole) == []
    assert f"Safe to resume from {whole}." in text(diagnose(out))
    assert_resumes_for_real(out, diagnose(out).resume_from, PREVIOUS, MAX_STEPS)


# ---------------------------------------------------------------- killed during the save, at each file


def test_the_harness_stops_after_every_file_of_the_save(kills):
    """Each stop shows one new file; together they are every file the Trainer (and SealCallback) wrote."""
    points, out = kills["points"], kills["out"]
    assert kills["status"] == -9  # the child was really SIGKILLed, at its last stop
    final = {p.name for p in (out / f"checkpoint-{SAVE_STEP}").iterdir()}
    assert final == {p.name for p in (points[-1].snapshot / f"checkpoint-{SAVE_STEP}").iterdir()}
    saves = save_points(points)
    assert not saves[0].new and not saves[0].changed  # first the empty folder
    assert all(len(p.new) <= 1 for p in saves), [p.name for p in saves]
    # The seal's temporary file comes and goes (renamed into the seal): it is a kill point, not a file.
    appeared = [p.new[0] for p in saves if p.new and not p.new[0].endswith(".resumedoctor-tmp")]
    assert sorted(appeared) == sorted(final)
    # The premise of CKPT001/CKPT030: trainer_state.json comes after the training state, the seal last.
    order = {name: appeared.index(name) for name in appeared}
    assert max(order[n] for n in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")) < order[STATE]
    assert (SEAL_FILE in order) is kills["sealed"]
    if kills["sealed"]:
        assert order[SEAL_FILE] == len(appeared) - 1


def kill_states(kills: dict, tmp_path: Path) -> list[tuple[str, Path, bool]]:
    """(name, private copy of the output_dir, save finished?) for each stop during the save, plus each file
    cut in half: the prefix a SIGKILL while that file was being written leaves."""
    states = []
    for index, stop in enumerate(save_points(kills["points"])):
        out = copy(stop.snapshot, tmp_path / f"{index:02d}" / "out")
        states.append((stop.name, out, save_finished(stop, kills["sealed"])))
        if len(stop.new) == 1 and SEAL_FILE not in stop.new[0]:  # the seal appears whole, by a rename
            half = copy(stop.snapshot, tmp_path / f"{index:02d}-half" / "out")
            cut = half / f"checkpoint-{SAVE_STEP}" / stop.new[0]
            with open(cut, "r+b") as handle:
                handle.truncate(cut.stat().st_size // 2)
            states.append((f"while writing {stop.new[0]}", half, False))
    return states


def test_killed_during_the_save_never_resumes_from_the_cut_off_checkpoint(kills, tmp_path):
    broken_at_all = []
    for name, out, finished in kill_states(kills, tmp_path):
        if finished:
            problems = finished_problems(out, out / f"checkpoint-{SAVE_STEP}")
        else:
            problems = cut_off_problems(out)
        broken_at_all += [f"{name}: {problem}" for problem in problems]
    assert broken_at_all == []


def test_fix_unsafe_moves_every_cut_off_save_aside(kills, tmp_path):
    from resumedoctor.fixing.planner import fix

    broken_at_all = []
    for name, out, finished in kill_states(kills, tmp_path):
        if finished:
            continue
        fix(out, unsafe=True)
        problems = finished_problems(out, out / f"checkpoint-{PREVIOUS}")  # transformers picks it now, too
        broken_at_all += [f"{name}: {problem}" for problem in problems]
    assert broken_at_all == []


def test_killed_during_the_save_resumes_for_real(kills, tmp_path):
    """A few kill points, resumed for real: after `fix --auto --unsafe` where the save was cut off,
    as diagnosed where it had finished."""
    states = kill_states(kills, tmp_path)
    cut_off = [state for state in states if not state[2]]
    finished = [state for state in states if state[2]]
    chosen = [cut_off[0], cut_off[-1], finished[0]]  # the empty folder, the last moment before the end, the end
    for name, out, was_finished in chosen:
        if was_finished:
            checkpoint, start = diagnose(out).resume_from, SAVE_STEP
        else:
            fixed = run_cli("fix", out, "--auto", "--unsafe")
            assert fixed.returncode == 0, f"{name}: {fixed.stdout[-2000:]}{fixed.stderr[-2000:]}"
            verdict = " ".join(fixed.stdout.split())  # the text report wraps long lines
            assert f"Safe to resume from {out / f'checkpoint-{PREVIOUS}'}." in verdict, name
            checkpoint, start = True, PREVIOUS  # what a plain resume now picks
        assert_resumes_for_real(out, checkpoint, start, MAX_STEPS + 2)


# ---------------------------------------------------------------- finished


def test_finished_run_resumes_from_its_last_checkpoint(finished_world, tmp_path):
    out = finished_copy(finished_world, tmp_path)
    assert (out / "model.safetensors").is_file() and (out / "training_args.bin").is_file()  # the final save
    newest = out / f"checkpoint-{FINISHED_STEPS}"
    report = diagnose(out, environ=wandb_env(tmp_path))
    assert report.target == str(out)
    assert report.resume_from == str(newest)
    assert not errors(report), [f"{f.code} {f.path}: {f.message}" for f in errors(report)]
    assert last_checkpoint(out) == str(newest)  # transformers agrees
    result = run_cli("diagnose", out, "--format", "json", env=wandb_env(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert json.loads(result.stdout)["resume_from"] == str(newest)
    # The real resume from checkpoint-6 is test_extended_run_resumes_to_the_new_end.


def test_finished_run_commands_take_out_as_the_output_dir(finished_world, tmp_path):
    out = finished_copy(finished_world, tmp_path)
    env = wandb_env(tmp_path)
    run_id = next((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")).stem.removeprefix("run-")

    shell = run_cli("env", out, env=env)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines()[0] == f"# resumedoctor env: {out} -> checkpoint-{FINISHED_STEPS}"
    assert run_id in shell.stdout and "no local W&B run logged this output_dir" not in shell.stdout

    nothing = run_cli("undo", out, env=env)
    assert nothing.returncode == 0 and nothing.stdout.strip() == f"nothing to undo in {out}"

    before = written(out, tmp_path)
    planned = run_cli("fix", out, "--auto", "--dry-run", env=env)
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-2000:]
    said = " ".join(planned.stdout.split())  # the text report wraps long lines
    assert f"resumes from {out / f'checkpoint-{FINISHED_STEPS}'}" in said and "nothing was changed" in said
    plan = re.search(r"would change \d+ thing\(s\) in (\S+):", said)
    assert plan is None or plan.group(1) == str(out), plan.group(0)  # a plan, if any, is for out itself
    assert written(out, tmp_path) == before  # a dry run writes nothing, in out or beside it

    (out / "checkpoint-2" / SEAL_FILE).unlink()  # one checkpoint for `seal` to seal
    sealed = run_cli("seal", out, env=env)
    assert sealed.returncode == 0, sealed.stdout + sealed.stderr
    assert f"sealed {out / 'checkpoint-2'} (after the fact)" in sealed.stdout
    assert sealed.stdout.count("already sealed") == 2 and "not sealed" not in sealed.stdout
    assert (out / ".resumedoctor").is_dir() and not (tmp_path / ".resumedoctor").exists()

    undone = run_cli("undo", out, env=env)
    assert undone.returncode == 0 and undone.stdout.startswith("undid fix"), undone.stdout + undone.stderr
    assert not (out / "checkpoint-2" / SEAL_FILE).exists()


# ---------------------------------------------------------------- extended


def lr_numbers(message: str) -> list[float]:
    return [float(number) for number in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", message) if "." in number or "e" in number]


def scheduled_lrs(max_steps: int, steps: tuple[int, ...]) -> list[float]:
    """The learning rate the real linear schedule gives after `steps` optimizer steps (transformers' own)."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=max_steps)
    rates = {0: scheduler.get_last_lr()[0]}
    for step in range(1, max(steps) + 1):
        optimizer.step()
        scheduler.step()
        rates[step] = scheduler.get_last_lr()[0]
    return [rates[step] for step in steps]


def test_extended_run_resumes_to_the_new_end(finished_world, tmp_path):
    out = finished_copy(finished_world, tmp_path)
    recipe = write_recipe(finished_world, tmp_path, EXTENDED_STEPS, "resume_from_checkpoint: true\n")
    env = wandb_env(tmp_path)

    result = run_cli("diagnose", out, "--config", recipe, "--format", "json", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    findings = json.loads(result.stdout)["findings"]
    assert [f for f in findings if f["severity"] == "error"] == []
    moved = [f for f in findings if "max_steps" in f["message"]]
    assert moved and all(f["severity"] in ("warning", "info") for f in moved), moved
    # The default schedule decays linearly: the LR jumps at the resume, so a warning says by how much.
    candidates = [rate for rate in scheduled_lrs(FINISHED_STEPS, (FINISHED_STEPS - 1,))
                  + scheduled_lrs(EXTENDED_STEPS, (FINISHED_STEPS, FINISHED_STEPS + 1)) if rate > 0]
    warning = [f for f in moved if f["severity"] == "warning"]
    assert warning, moved
    quoted = [n for f in warning for n in lr_numbers(f["message"])]
    assert any(abs(n - c) <= 0.02 * c for n in quoted for c in candidates), (warning, candidates)

    old = {p: p.stat().st_mtime_ns for p in out.glob("checkpoint-*/*")}
    resumed = launch(recipe, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumedoctor launch: checkpoint-{FINISHED_STEPS} -> step {EXTENDED_STEPS}" in resumed.stdout
    # A resume leaves checkpoint-2..6 alone (a restart from step 0 would save over them) and adds -8, -10.
    assert {p: p.stat().st_mtime_ns for p in old} == old
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == [2, 4, 6, 8, 10]
    state = json.loads((out / f"checkpoint-{EXTENDED_STEPS}" / STATE).read_text())
    assert state["global_step"] == EXTENDED_STEPS
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, EXTENDED_STEPS + 1))
    after = diagnose(out, environ=env)
    assert after.resume_from == str(out / f"checkpoint-{EXTENDED_STEPS}") and not errors(after)


# ---------------------------------------------------------------- sealed after the fact, resumed plainly


def test_plain_resume_after_seal_is_not_an_error(plain_kills, tmp_path):
    out = copy(plain_kills["out"], tmp_path / "out")  # a plain run, SIGKILLed after its last save
    sealed = run_cli("seal", out)
    assert sealed.returncode == 0, sealed.stdout + sealed.stderr
    assert sealed.stdout.count("(after the fact)") == 2
    assert_resumes_for_real(out, True, SAVE_STEP, SAVE_STEP + 2)  # no SealCallback, as `trl grpo` trains
    newest = out / f"checkpoint-{SAVE_STEP + 2}"
    assert not (newest / SEAL_FILE).exists()
    assert finished_problems(out, newest) == []


# ---------------------------------------------------------------- two processes


TWO_PROCESSES = """
import json, sys
from pathlib import Path
from transformers import TrainerCallback
from demo_run import train_demo_run

steps = []

class Record(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        steps.append(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        steps.append(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            Path(sys.argv[4]).write_text(json.dumps(steps))

resume = None if sys.argv[3] == "none" else sys.argv[3]
train_demo_run(Path(sys.argv[1]), max_steps=int(sys.argv[2]), save_steps=2, resume_from_checkpoint=resume,
               callbacks=[Record()])
"""


def torchrun(script: Path, out: Path, max_steps: int, resume: str | None, record: Path) -> list[int]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(out), str(max_steps), resume or "none", str(record)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"torchrun exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return json.loads(record.read_text())


def test_two_process_run_is_resumed_from_its_per_rank_state(tmp_path):
    # A real two-process CPU run (torchrun, gloo): one rng_state_<rank>.pth per process.
    script = tmp_path / "train_two.py"
    script.write_text(TWO_PROCESSES)
    out = tmp_path / "out"
    assert torchrun(script, out, 2, None, tmp_path / "first.json") == [0, 1, 2]
    first = out / "checkpoint-2"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in first.iterdir()}
    assert finished_problems(out, first) == []
    checkpoint = diagnose(out).resume_from
    assert torchrun(script, out, 4, checkpoint, tmp_path / "second.json") == [2, 3, 4]
    assert finished_problems(out, out / "checkpoint-4") == []

"""The save-file table (integrations/trl/save_files.py) against real saves, and the CKPT checks built on it:
the state GRPO writes after trainer_state.json (CKPT038/039) and the fp16 GradScaler's state (CKPT040)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import codes

from resumedoctor.api import diagnose
from resumedoctor.integrations.trl import save_files
from resumedoctor.integrations.trl.save_files import ENTROPY_STATE, write_position

DOC = Path(__file__).resolve().parents[2] / "docs" / "checkpoint-files.md"
BEGIN, END = "<!-- save-files table: generated -->", "<!-- end of generated table -->"


@pytest.fixture(scope="session")
def entropy_run(tmp_path_factory) -> Path:
    """A 2-step GRPO run with use_adaptive_entropy: entropy_ctrl_state.json after trainer_state.json."""
    from demo_run import train_demo_run

    return train_demo_run(tmp_path_factory.mktemp("entropy") / "run", max_steps=2, save_steps=2,
                          use_adaptive_entropy=True)


@pytest.fixture
def entropy_copy(entropy_run, tmp_path) -> Path:
    return Path(shutil.copytree(entropy_run, tmp_path / "run"))


def written_in_order(checkpoint: Path) -> list[tuple[int, str]]:
    """(modification time, name) of every file, oldest first."""
    return sorted((p.stat().st_mtime_ns, p.name) for p in checkpoint.iterdir() if p.is_file())


@pytest.mark.parametrize("kind", ["entropy", "full", "peft", "model_only"])
def test_a_real_save_writes_its_files_in_the_table_order(entropy_run, built_runs, kind):
    """The oracle is the file system: modification times of a real save, in the order the savers finished them.
    Files finished within one tick of the kernel's file clock share a time and may come in any order."""
    run = entropy_run if kind == "entropy" else built_runs[kind]
    written = written_in_order(run / "checkpoint-2")
    positions = {name: write_position(name) for _, name in written}
    assert None not in positions.values(), positions
    for earlier_time, earlier in written:
        for later_time, later in written:
            if earlier_time < later_time:
                assert positions[earlier] <= positions[later], (earlier, later)
    last = "entropy_ctrl_state.json" if kind == "entropy" else "trainer_state.json"
    assert max(positions, key=positions.get) == last
    assert {time for time, name in written if name == last} == {max(time for time, _ in written)}
    assert (run / "README.md").is_file()  # TRL's model card, written into the output_dir


def test_the_docs_table_is_generated_from_the_data():
    text = DOC.read_text()
    assert text.split(BEGIN, 1)[1].split(END, 1)[0].strip() == save_files.markdown().strip(), \
        "regenerate: python tests/checks/test_save_files.py --write"


def test_clean_adaptive_entropy_run_has_no_finding(entropy_run):
    assert diagnose(entropy_run, environ={}).findings == ()


def resume_logged_coef(run: Path) -> list[float] | BaseException:
    from demo_run import train_demo_run
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        values: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "entropy_coef" in logs:
                self.values.append(float(logs["entropy_coef"]))

    record = Record()
    record.values = []
    try:
        train_demo_run(run, max_steps=3, save_steps=100, use_adaptive_entropy=True, callbacks=[record],
                       resume_from_checkpoint=str(run / "checkpoint-2"))
    except Exception as exc:  # noqa: BLE001 - the oracle of a failing resume
        return exc
    return record.values


def test_entropy_state_missing_restarts_the_coefficient(entropy_copy):
    """The oracle: GRPO resumes from the file when it is there, and restarts at entropy_coef without it."""
    import json

    checkpoint = entropy_copy / "checkpoint-2"
    (checkpoint / ENTROPY_STATE).write_text(json.dumps({"entropy_coef": 0.5, "last_world_entropy": 0.0}))
    assert diagnose(entropy_copy, environ={}).findings == ()
    kept = shutil.copytree(entropy_copy, entropy_copy.parent / "kept")
    assert resume_logged_coef(kept) == [pytest.approx(0.5, abs=0.01)]  # 0.5 +- entropy_coef_delta
    (checkpoint / ENTROPY_STATE).unlink()
    report = diagnose(entropy_copy, environ={})
    assert set(codes(report)) == {"CKPT038", "CKPT018"}
    message = next(f.message for f in report.findings if f.code == "CKPT038")
    assert "use_adaptive_entropy" in message and "restarts the entropy coefficient at entropy_coef 0.0" in message
    assert resume_logged_coef(entropy_copy) == [pytest.approx(0.0, abs=0.01)]  # restarted, silently


@pytest.mark.parametrize("content", ['{"entropy_coef": 0.0, "last_wor', "[1, 2]", '{"entropy_coef": 0.1}',
                                     '{"entropy_coef": "0.1", "last_world_entropy": 1.0}', ""])
def test_damaged_entropy_state_is_an_error(entropy_copy, content):
    path = entropy_copy / "checkpoint-2" / ENTROPY_STATE
    path.write_text(content)
    report = diagnose(entropy_copy, environ={})
    assert "CKPT039" in codes(report) and "CKPT018" in codes(report)


@pytest.mark.parametrize("content", ['{"entropy_coef": NaN, "last_world_entropy": 0.5}',
                                     '{"entropy_coef": 0.1, "last_world_entropy": -Infinity}'])
def test_non_finite_entropy_state_is_an_error(entropy_copy, content):
    (entropy_copy / "checkpoint-2" / ENTROPY_STATE).write_text(content)
    report = diagnose(entropy_copy, environ={})
    assert "CKPT039" in codes(report) and report.exit_code == 1
    assert "non-finite" in next(f.message for f in report.findings if f.code == "CKPT039")


def test_a_nan_entropy_coefficient_is_resumed_as_nan(entropy_copy):
    """The oracle: GRPO takes the NaN as it is and logs a NaN coefficient after the resume."""
    import math

    from demo_run import train_demo_run
    from transformers import TrainerCallback

    logged = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "entropy_coef" in logs:
                logged.append(logs["entropy_coef"])

    (entropy_copy / "checkpoint-2" / ENTROPY_STATE).write_text('{"entropy_coef": NaN, "last_world_entropy": 0.0}')
    train_demo_run(entropy_copy, max_steps=3, save_steps=100, use_adaptive_entropy=True, callbacks=[Record()],
                   resume_from_checkpoint=str(entropy_copy / "checkpoint-2"))
    assert len(logged) == 1 and (logged[0] is None or math.isnan(logged[0])), logged  # the log writes NaN as None


def test_cut_off_entropy_state_fails_the_real_resume(entropy_copy):
    (entropy_copy / "checkpoint-2" / ENTROPY_STATE).write_text('{"entropy_coef": 0.0, "last_wor')
    assert "CKPT039" in codes(diagnose(entropy_copy, environ={}))
    failure = resume_logged_coef(entropy_copy)
    assert isinstance(failure, ValueError)  # json.JSONDecodeError, in GRPOTrainer._load_optimizer_and_scheduler


def test_entropy_state_as_a_fifo_is_unreadable_not_a_hang(entropy_copy):
    import os

    path = entropy_copy / "checkpoint-2" / ENTROPY_STATE
    path.unlink()
    os.mkfifo(path)
    assert "CKPT027" in codes(diagnose(entropy_copy, environ={}))


def test_no_entropy_state_expected_without_adaptive_entropy(full_run):
    assert diagnose(full_run, environ={}).findings == ()  # GRPO without use_adaptive_entropy writes none


def fp16_arguments(checkpoint: Path) -> None:
    """Rewrite the run's own training_args.bin as an fp16 run on an accelerator saved it (no GPU here: fp16 with a
    GradScaler cannot run on CPU, so the flag is set on the real GRPOConfig object and saved with torch.save)."""
    import torch

    arguments = torch.load(checkpoint / "training_args.bin", weights_only=False)  # our own file, just written
    arguments.fp16, arguments.use_cpu = True, False
    torch.save(arguments, checkpoint / "training_args.bin")


def test_fp16_run_without_scaler_state_is_a_warning(full_run):
    import torch

    checkpoint = full_run / "checkpoint-6"
    fp16_arguments(checkpoint)
    report = diagnose(full_run, environ={})
    assert codes(report) == ["CKPT040"]
    assert report.exit_code == 0 and "restarts at 65536" in report.findings[0].message
    assert torch.amp.GradScaler("cpu").get_scale() == 65536.0  # the oracle for the number in the message
    torch.save(torch.amp.GradScaler("cpu").state_dict(), checkpoint / "scaler.pt")
    assert diagnose(full_run, environ={}).findings == ()


def test_fp16_model_only_checkpoint_is_ckpt012_only(model_only_run):
    fp16_arguments(model_only_run / "checkpoint-2")
    assert codes(diagnose(model_only_run, environ={})) == ["CKPT012"]


def write_docs() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n\n{save_files.markdown().strip()}\n\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write_docs()


def test_a_crafted_rank_number_is_no_rank_file(full_run):
    """rng_state_<200 digits>.pth: once a range of 10**200 ranks to walk (diagnose hung); now not a rank file."""
    checkpoint = full_run / "checkpoint-6"
    shutil.copy(checkpoint / "rng_state.pth", checkpoint / f"rng_state_{'9' * 200}.pth")
    started = time.monotonic()
    report = diagnose(full_run, environ={})
    assert time.monotonic() - started < 60
    assert not [f for f in report.findings if f.severity.value == "error"]

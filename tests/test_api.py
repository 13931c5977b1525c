"""The Python API as users call it: `import resumedoctor`, then diagnose / resume_point / fix / undo.

Oracles: the real Trainer (a resume from `resume_point(out)` must continue at that checkpoint's
global_step), transformers' `get_last_checkpoint`, and the CLI itself (the API must do what the
command does: the same report, the same journal, the same one-line errors).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import codes, run_cli
from lifecycle_helpers import resume_for_real

import resumedoctor

HEAVY = {"torch", "transformers", "trl", "wandb", "datasets", "numpy"}


def cut_off(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(1000)


def same_but_the_seconds(one: str, other: str) -> bool:
    return re.sub(r"\d+ s ago", "N s ago", one) == re.sub(r"\d+ s ago", "N s ago", other)


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file outside `.resumedoctor/` (its names carry run ids)."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*"))
            if path.is_file() and path.relative_to(root).parts[0] != ".resumedoctor"}


def journal_effect(root: Path) -> list[list[tuple]]:
    """Per fix transaction, oldest first: what each journal entry did (ids and times left out)."""
    journals = [json.loads(path.read_text()) for path in root.glob(".resumedoctor/transactions/*/journal.json")]
    return [[(entry["kind"], entry.get("path") or entry.get("src"), entry["code"], entry["fixer"], entry["reason"])
             for entry in journal["operations"]]
            for journal in sorted(journals, key=lambda journal: journal["created_ns"])]


# ---------------------------------------------------------------- import


def test_import_resumedoctor_is_light():
    result = subprocess.run([sys.executable, "-c", "import sys, resumedoctor\n"
                             f"print(sorted(set({sorted(HEAVY)!r}) & set(sys.modules)))"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"resumedoctor {resumedoctor.__version__}"


def test_the_api_names_resolve_and_fix_survives_its_subpackage():
    from resumedoctor import api

    assert resumedoctor.diagnose is api.diagnose and resumedoctor.resume_point is api.resume_point
    assert issubclass(resumedoctor.NoResumePoint, resumedoctor.ResumeDoctorError)
    # The fix planner and journal live in resumedoctor/fixing/: importing them must not hide the function.
    from resumedoctor.fixing import planner
    from resumedoctor.fixing.journal import Transaction

    assert resumedoctor.fix is api.fix and callable(resumedoctor.fix)
    assert planner.fix is not api.fix and Transaction is sys.modules["resumedoctor.fixing.journal"].Transaction


# ---------------------------------------------------------------- diagnose


def test_diagnose_is_the_report_the_cli_renders(full_run):
    from transformers.trainer_utils import get_last_checkpoint

    from resumedoctor.report import render

    report = resumedoctor.diagnose(full_run)
    assert report.resume_from == get_last_checkpoint(str(full_run))
    assert report.exit_code == 0 and resumedoctor.verdict(report) == "safe_to_resume"
    cli = run_cli("diagnose", full_run, "--format", "json")
    assert cli.returncode == report.exit_code
    assert json.loads(cli.stdout) == json.loads(render(report, "json"))

    cut_off(full_run / "checkpoint-6" / "model.safetensors")
    damaged = resumedoctor.diagnose(full_run)
    assert {"CKPT003", "CKPT018"} <= set(codes(damaged))
    assert damaged.exit_code == 1 and resumedoctor.verdict(damaged) == "do_not_resume"
    # A just-cut file reads "written N s ago" (a trainer may still be saving): the seconds move on.
    cli = run_cli("diagnose", full_run, "--format", "json")
    assert cli.returncode == 1 and same_but_the_seconds(cli.stdout, render(damaged, "json"))


def test_a_request_that_cannot_be_carried_out_is_the_cli_line(full_run, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run\n")
    missing = tmp_path / "missing.yaml"
    cases = [(dict(path=full_run, select="CKPTX"), (full_run, "--select", "CKPTX")),
             (dict(path=a_file), (a_file,)),
             (dict(path=full_run, recipe=missing), (full_run, "--config", missing))]
    for arguments, cli_arguments in cases:
        with pytest.raises(resumedoctor.ResumeDoctorError) as raised:
            resumedoctor.diagnose(**arguments)
        cli = run_cli("diagnose", *cli_arguments)
        assert cli.returncode == 2
        assert cli.stderr == f"resumedoctor: {raised.value}\n"


# ---------------------------------------------------------------- resume_point


@pytest.mark.slow
def test_resume_point_of_a_clean_run_resumes_there_for_real(full_run):
    from transformers.trainer_utils import get_last_checkpoint

    point = resumedoctor.resume_point(full_run)
    assert point == full_run / "checkpoint-6" and str(point) == get_last_checkpoint(str(full_run))
    assert resume_for_real(full_run, point, max_steps=7) == [6, 7]


@pytest.mark.slow
def test_resume_point_passes_over_a_newest_checkpoint_cut_off_mid_save(full_run):
    from transformers.trainer_utils import get_last_checkpoint

    cut_off(full_run / "checkpoint-6" / "model.safetensors")
    # What a plain resume_from_checkpoint=True would load, and the report that refuses it:
    assert get_last_checkpoint(str(full_run)) == str(full_run / "checkpoint-6")
    assert "CKPT018" in codes(resumedoctor.diagnose(full_run))

    with pytest.warns(resumedoctor.PassedOverCheckpoints) as warned:
        point = resumedoctor.resume_point(full_run)
    assert point == full_run / "checkpoint-4"
    assert "not from the newer checkpoint-6 (CKPT003, CKPT018)" in str(warned[0].message)
    assert "steps 5-6 are trained again" in str(warned[0].message)
    assert resume_for_real(full_run, point, max_steps=5) == [4, 5]


def test_resume_point_of_a_clean_run_warns_nothing(full_run):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resumedoctor.resume_point(full_run) == full_run / "checkpoint-6"


def test_a_string_of_recipe_args_or_a_non_path_is_a_type_error(full_run, tmp_path):
    """A string would be read letter by letter (LEN001 "unexpected argument '-'", CFG silently unjudged)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {full_run}\n")
    with pytest.raises(TypeError, match="recipe_args is a sequence"):
        resumedoctor.diagnose(full_run, recipe, recipe_args="--max_steps 8")
    for bad in (None, 3, b"out"):
        with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
            resumedoctor.diagnose(bad)


def test_star_import_and_the_old_curriculum_path_stay_light_and_working():
    script = ("import sys, warnings\nfrom resumedoctor import *\n"
              "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'star import is heavy'\n"
              "with warnings.catch_warnings(record=True) as w:\n"
              "    warnings.simplefilter('always')\n"
              "    from resumedoctor.curriculum import CurriculumCallback\n"
              "import resumedoctor\n"
              "assert CurriculumCallback is resumedoctor.CurriculumCallback\n"
              "assert any(issubclass(x.category, DeprecationWarning) for x in w)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_resume_point_raises_when_no_checkpoint_is_usable(full_run):
    for state in full_run.glob("checkpoint-*/trainer_state.json"):
        state.unlink()  # every save cut off before its last file
    with pytest.raises(resumedoctor.NoResumePoint) as raised:
        resumedoctor.resume_point(full_run)
    error = raised.value
    assert error.output_dir == full_run and error.checkpoint is None
    lines = str(error).splitlines()
    assert lines[0] == f"no checkpoint of {full_run} can be resumed: {len(error.findings)} blocking findings"
    listed = [line.split()[0] for line in lines[1:-1]]
    assert listed == [finding.code for finding in error.findings]
    assert {"CKPT001", "CKPT018", "CKPT019"} <= set(listed)
    assert all(line.startswith("  ") for line in lines[1:-1])  # one line per finding


def test_resume_point_raises_when_the_resume_itself_is_blocked(full_run, tmp_path):
    """A usable checkpoint, and an error that still stops it (the recipe names a checkpoint that is not there)."""
    from conftest import DEMO_RUN_ARGS

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {full_run}\nresume_from_checkpoint: {full_run / 'checkpoint-5'}\n" + DEMO_RUN_ARGS)
    errors = [f.code for f in resumedoctor.diagnose(full_run, recipe).findings if f.severity.value == "error"]
    assert errors == ["CFG007"]  # resume_from_checkpoint names a checkpoint that does not exist
    with pytest.raises(resumedoctor.NoResumePoint) as raised:
        resumedoctor.resume_point(full_run, recipe)
    assert raised.value.checkpoint == full_run / "checkpoint-6"
    assert [finding.code for finding in raised.value.findings] == errors
    assert str(raised.value).splitlines()[1].startswith(f"  CFG007 {recipe}: resume_from_checkpoint=")


@pytest.mark.slow
def test_resume_point_of_a_fresh_output_dir_is_none_and_training_starts_at_zero(tmp_path):
    out = tmp_path / "out"
    assert resumedoctor.resume_point(out) is None  # the first start: the Trainer creates the folder
    out.mkdir()
    assert resumedoctor.resume_point(out) is None
    assert resume_for_real(out, resumedoctor.resume_point(out), max_steps=1) == [0, 1]


# ---------------------------------------------------------------- fix, undo


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_fix_does_what_the_cli_fix_does(built_runs, tmp_path, unsafe):
    import shutil

    runs = {}
    for name in ("cli", "api"):
        run = runs[name] = tmp_path / name / "run"
        shutil.copytree(built_runs["full"], run)
        cut_off(run / "checkpoint-6" / "model.safetensors")
        (run / "tmp-checkpoint-8").mkdir()
        (run / "tmp-checkpoint-8" / "model.safetensors").write_bytes(b"partial")
    before = tree(runs["api"])

    flags = ("--unsafe",) if unsafe else ()
    cli = run_cli("fix", runs["cli"], "--auto", *flags)
    result = resumedoctor.fix(runs["api"], unsafe=unsafe)

    assert result.final.exit_code == cli.returncode == (0 if unsafe else 1)
    assert tree(runs["api"]) == tree(runs["cli"]) != before
    assert journal_effect(runs["api"]) == journal_effect(runs["cli"]) != []
    assert ("checkpoint-6" in {entry[1] for journal in journal_effect(runs["api"]) for entry in journal}) == unsafe

    assert resumedoctor.undo(runs["api"]) and tree(runs["api"]) == before


def test_fix_dry_run_plans_and_changes_nothing(full_run):
    cut_off(full_run / "checkpoint-6" / "model.safetensors")
    before = tree(full_run)
    result = resumedoctor.fix(full_run, unsafe=True, dry_run=True)
    assert result.dry_run and result.operations and result.transactions == []
    assert tree(full_run) == before and not (full_run / ".resumedoctor" / "transactions").exists()

"""The command line as users and CI scripts run it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_cli

from resumedoctor import __version__
from resumedoctor.registry import load_registry


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"resumedoctor {__version__}"


def test_clean_run_exits_0_with_a_verdict(built_runs):
    result = run_cli("diagnose", built_runs["full"])
    assert result.returncode == 0, result.stderr
    assert "✔ Safe to resume from" in result.stdout
    assert "CKPT  checkpoint-integrity" in result.stdout


def test_damaged_run_exits_1(full_run):
    (full_run / "checkpoint-6" / "trainer_state.json").unlink()
    result = run_cli("diagnose", full_run)
    assert result.returncode == 1
    assert "✖ Do not resume" in result.stdout
    assert "CKPT001" in result.stdout and "CKPT018" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["diagnose", "/no/such/dir"], "no such file or directory"),
        (["diagnose", "--bogus", "."], "No such option"),
        (["diagnose"], "Missing argument"),
        (["diagnose", ".", "--format", "xml"], "Invalid value"),
        (["diagnose", ".", "--config", "/no/recipe.yaml"], "no such recipe file"),
        (["explain", "NOPE999"], "unknown code"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(args, needle):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_where_a_folder_is_expected(full_run):
    result = run_cli("diagnose", full_run / "checkpoint-6" / "config.json")
    assert result.returncode == 2
    assert "not a directory" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_select_and_ignore_options(full_run):
    (full_run / "tmp-checkpoint-8").mkdir()
    (full_run / "checkpoint-6" / "config.json").unlink()
    everything = json.loads(run_cli("diagnose", full_run, "--format", "json").stdout)
    assert {f["code"] for f in everything["findings"]} == {"CKPT021", "CKPT026"}
    ignored = json.loads(run_cli("diagnose", full_run, "--format", "json", "--ignore", "CKPT021").stdout)
    assert [f["code"] for f in ignored["findings"]] == ["CKPT026"]
    selected = json.loads(run_cli("diagnose", full_run, "--format", "json", "--select", "ckpt021").stdout)
    assert [f["code"] for f in selected["findings"]] == ["CKPT021"]


def test_output_file(full_run, tmp_path):
    out = tmp_path / "report.sarif"
    result = run_cli("diagnose", full_run, "--format", "sarif", "-o", out)
    assert result.returncode == 0 and result.stdout == ""
    assert json.loads(out.read_text())["version"] == "2.1.0"


def test_checks_lists_every_registered_rule():
    registry = load_registry()
    listed = json.loads(run_cli("checks", "--format", "json").stdout)
    listed_codes = [rule["code"] for family in listed for rule in family["rules"]]
    assert listed_codes == [rule.code for _, rule in registry.rules()]
    text = run_cli("checks").stdout
    for _, rule in registry.rules():
        assert rule.code in text


def test_explain_is_generated_from_the_rule():
    registry = load_registry()
    _, rule = registry.rule("CKPT003")
    result = run_cli("explain", "ckpt003")
    assert result.returncode == 0
    assert result.stdout.startswith(f"CKPT003 {rule.name}")
    assert rule.summary in result.stdout
    assert "default severity: error" in result.stdout


def test_internal_error_is_one_line_and_debug_shows_traceback(full_run, tmp_path):
    # A crashing check (a bug) must give exit 2, never a silent pass; --debug shows where.
    script = (
        "import sys; import resumedoctor.diagnose as d\n"
        "def boom(*a, **k): raise RuntimeError('kaboom')\n"
        "d.run_checks = boom\n"
        "from resumedoctor.cli import main; main(sys.argv[1:])\n"
    )
    quiet = subprocess.run([sys.executable, "-c", script, "diagnose", str(full_run)], capture_output=True, text=True)
    assert quiet.returncode == 2
    assert quiet.stderr.strip() == "resumedoctor: internal error: RuntimeError: kaboom (run with --debug for the traceback)"
    loud = subprocess.run([sys.executable, "-c", script, "--debug", "diagnose", str(full_run)], capture_output=True, text=True)
    assert "Traceback" in loud.stderr and "kaboom" in loud.stderr


def test_diagnose_imports_no_heavy_library(built_runs):
    script = (
        "import sys\n"
        "from resumedoctor.cli import main\n"
        "try:\n    main(['diagnose', sys.argv[1], '--format', sys.argv[2]])\n"
        "except SystemExit:\n    pass\n"
        "heavy = {'torch', 'transformers', 'trl', 'wandb', 'datasets', 'numpy'}\n"
        "print('HEAVY', sorted(heavy & set(sys.modules)), file=sys.stderr)\n"
    )
    for fmt in ("text", "json", "sarif", "junit", "github"):
        result = subprocess.run([sys.executable, "-c", script, str(built_runs["sharded"]), fmt],
                                capture_output=True, text=True)
        assert "HEAVY []" in result.stderr, (fmt, result.stderr)


def test_no_arguments_prints_help():
    result = run_cli()
    assert "diagnose" in result.stdout and "Usage" in result.stdout

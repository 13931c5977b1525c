"""The command line as users and CI scripts run it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GRPO_RECIPE, run_cli

from resumedoctor import __version__
from resumedoctor.engine.registry import load_registry


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
    assert "a file of the checkpoint" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("diagnose", Path(__file__))  # not a results file either
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


def truncate_newest_weights(run) -> None:
    """A save cut off mid-copy: checkpoint-6's model.safetensors loses its tail (an error, CKPT003)."""
    weights = run / "checkpoint-6" / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)


def one_line_usage_error(result, needle: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_a_typo_in_select_is_refused_not_a_pass(full_run):
    truncate_newest_weights(full_run)
    assert run_cli("diagnose", full_run).returncode == 1  # the damage is found without --select
    result = run_cli("diagnose", full_run, "--select", "CPKT")
    one_line_usage_error(result, "--select: unknown code or prefix 'CPKT' (did you mean CKPT?)")
    assert "Safe to resume" not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [["--ignore", "FOO1"], ["--select", "CKPT,WNADB"], ["--ignore", "ckpt0001"]])
def test_unknown_codes_are_exit_2_in_diagnose_and_fix(full_run, args):
    for command in ("diagnose", "fix"):
        result = run_cli(command, full_run, *args)
        one_line_usage_error(result, "unknown code or prefix")


def test_codes_and_prefixes_of_registered_rules_are_accepted(full_run):
    truncate_newest_weights(full_run)
    for codes in ("CKPT", "ckpt0", "CKPT003", "WANDB001,CKPT"):
        result = run_cli("diagnose", full_run, "--select", codes, "--ignore", "ENV")
        assert result.returncode == 1, (codes, result.stderr)


def test_a_plugins_codes_are_known_only_when_it_is_installed(tmp_path, built_runs):
    from test_plugins import GOOD_ENTRY_POINTS, install_fake_distribution

    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(site, GOOD_ENTRY_POINTS)
    cache = {"RESUMEDOCTOR_CACHE_DIR": str(tmp_path / "cache")}
    with_plugin = run_cli("diagnose", built_runs["full"], "--select", "DEMO", env={"PYTHONPATH": str(site), **cache})
    assert with_plugin.returncode == 0, with_plugin.stderr
    assert "DEMO001" in with_plugin.stdout  # the plugin's rule ran: the output_dir has no NOTES.md
    without = run_cli("diagnose", built_runs["full"], "--select", "DEMO", env=cache)
    one_line_usage_error(without, "unknown code or prefix 'DEMO'")


def test_a_select_that_runs_nothing_does_not_say_safe(full_run):
    truncate_newest_weights(full_run)
    # LEN is selected but needs a recipe: every family is skipped.
    result = run_cli("diagnose", full_run, "--select", "LEN")
    assert result.returncode == 0, result.stderr  # no error finding: the exit code contract
    assert "Safe to resume" not in result.stdout
    verdict = " ".join(result.stdout.split())
    assert "Nothing was checked: every check was skipped" in verdict
    assert "LEN: no recipe (--config RECIPE)" in verdict and "CKPT" in verdict
    document = json.loads(run_cli("diagnose", full_run, "--select", "LEN", "--format", "json").stdout)
    assert document["verdict"] == "nothing_checked"
    assert {check["status"] for check in document["checks"]} == {"skipped"}


@pytest.mark.parametrize(("args", "why"), [(["--select", "ENV"], "not selected"), (["--ignore", "CKPT"], "ignored")])
def test_without_the_checkpoint_check_the_verdict_says_what_was_checked(full_run, args, why):
    truncate_newest_weights(full_run)
    result = run_cli("diagnose", full_run, *args)
    assert result.returncode == 0, result.stderr
    verdict = " ".join(result.stdout.split())
    assert "Safe to resume" not in verdict
    # The families that ran are named: ENV alone when selected; with only CKPT ignored, every family that
    # judges without a recipe (which ones depends on what the truncated checkpoint still lets them read).
    found = re.search(r"No problems found by ([A-Z, ]+), but the checkpoint itself was not checked \(CKPT: (.*?)\)",
                      verdict)
    assert found and found.group(2) == why, verdict
    ran = found.group(1).split(", ")
    assert "ENV" in ran and "CKPT" not in ran, verdict
    if args[0] == "--select":
        assert ran == ["ENV"], verdict


def test_a_narrow_select_inside_the_checkpoint_family_is_no_pass(full_run):
    truncate_newest_weights(full_run)
    result = run_cli("diagnose", full_run, "--select", "CKPT021")
    assert result.returncode == 0, result.stderr
    verdict = " ".join(result.stdout.split())
    assert "Safe to resume" not in verdict and "rules not selected" in verdict
    # Ignoring a code is the user's decision about what matters: the rest of CKPT still judges.
    ignoring = run_cli("diagnose", full_run, "--ignore", "CKPT021")
    assert ignoring.returncode == 1 and "CKPT003" in ignoring.stdout


def test_unknown_code_in_a_settings_file_is_exit_2_for_every_command(full_run, tmp_path):
    (tmp_path / "resumedoctor.toml").write_text('ignore = ["CKPT021", "FOO1"]\n')
    for args in (["diagnose", full_run], ["fix", full_run], ["seal", full_run]):
        result = run_cli(*args, cwd=tmp_path)
        one_line_usage_error(result, "resumedoctor.toml: ignore: unknown code or prefix 'FOO1'")
    assert not list(full_run.glob("checkpoint-*/resumedoctor.seal.json")) and not (full_run / ".resumedoctor").exists()


def test_debug_after_double_dash_is_trls_not_ours(full_run):
    script = (
        "import sys; import resumedoctor.engine.runner as d\n"
        "def boom(*a, **k): raise RuntimeError('kaboom')\n"
        "d.run_checks = boom\n"
        "from resumedoctor.cli.app import main; main(sys.argv[1:])\n"
    )
    result = subprocess.run([sys.executable, "-c", script, "diagnose", str(full_run), "--", "--debug"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "resumedoctor: internal error: RuntimeError: kaboom (run with --debug for the traceback)"


# A GRPO recipe (conftest.GRPO_RECIPE) on the session's launch inputs; --dry-run trains nothing. It leaves
# the seed to TRL's default (42), so it differs from the run's (0): a drift for the gate to report.
LAUNCH_RECIPE = GRPO_RECIPE.replace("{max_steps}", "8").replace("seed: 0\n", "") + "report_to: none\n"


def launch_recipe(launch_inputs, tmp_path, output_dir) -> str:
    recipe = tmp_path / f"recipe-{output_dir.name}.yaml"
    recipe.write_text(LAUNCH_RECIPE.format(model=launch_inputs["model"], dataset=launch_inputs["dataset"],
                                           output_dir=output_dir))
    return str(recipe)


def test_launch_select_and_ignore_gate_as_diagnose_does(full_run, launch_inputs, tmp_path):
    truncate_newest_weights(full_run)
    recipe = launch_recipe(launch_inputs, tmp_path, full_run)
    everything = run_cli("launch", "--config", recipe, "--dry-run", cwd=tmp_path)
    assert everything.returncode == 1 and "CFG001" in everything.stdout  # the recipe's seed differs too

    only = run_cli("launch", "--config", recipe, "--dry-run", "--select", "ckpt003", cwd=tmp_path)
    assert only.returncode == 1 and "not starting" in only.stderr
    assert "CKPT003" in only.stdout and "CFG001" not in only.stdout and "CKPT018" not in only.stdout

    ignored = run_cli("launch", "--config", recipe, "--dry-run", "--ignore", "CKPT,CFG", cwd=tmp_path)
    assert ignored.returncode == 0, ignored.stdout[-2000:] + ignored.stderr[-2000:]
    verdict = " ".join(ignored.stdout.split())
    assert "the checkpoint itself was not checked (CKPT: ignored)" in verdict
    assert "Safe to resume" not in verdict
    assert f"resume from: {full_run / 'checkpoint-6'}" in ignored.stdout  # the plan, printed by --dry-run


def test_launch_refuses_unknown_codes_before_touching_anything(launch_inputs, tmp_path):
    fresh = tmp_path / "fresh-out"
    recipe = launch_recipe(launch_inputs, tmp_path, fresh)
    result = run_cli("launch", "--config", recipe, "--dry-run", "--select", "CPKT", cwd=tmp_path)
    one_line_usage_error(result, "--select: unknown code or prefix 'CPKT' (did you mean CKPT?)")
    assert not fresh.exists()
    (tmp_path / "resumedoctor.toml").write_text('[severity]\nCKPT0019 = "error"\n')
    from_settings = run_cli("launch", "--config", recipe, "--dry-run", cwd=tmp_path)
    one_line_usage_error(from_settings, "resumedoctor.toml: severity: unknown code or prefix 'CKPT0019'")


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
        "import sys; import resumedoctor.engine.runner as d\n"
        "def boom(*a, **k): raise RuntimeError('kaboom')\n"
        "d.run_checks = boom\n"
        "from resumedoctor.cli.app import main; main(sys.argv[1:])\n"
    )
    quiet = subprocess.run([sys.executable, "-c", script, "diagnose", str(full_run)], capture_output=True, text=True)
    assert quiet.returncode == 2
    assert quiet.stderr.strip() == "resumedoctor: internal error: RuntimeError: kaboom (run with --debug for the traceback)"
    loud = subprocess.run([sys.executable, "-c", script, "--debug", "diagnose", str(full_run)], capture_output=True, text=True)
    assert "Traceback" in loud.stderr and "kaboom" in loud.stderr


def test_diagnose_imports_no_heavy_library(built_runs):
    script = (
        "import sys\n"
        "from resumedoctor.cli.app import main\n"
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


def test_explain_a_near_miss_suggests_the_code():
    result = run_cli("explain", "CKPT18")
    one_line_usage_error(result, "unknown code 'CKPT18' (did you mean CKPT018")


def test_seal_says_when_there_is_nothing_to_seal(tmp_path):
    result = run_cli("seal", tmp_path)
    assert result.returncode == 0 and f"nothing to seal: {tmp_path} holds no checkpoint-N folder" in result.stdout

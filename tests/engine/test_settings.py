"""select / ignore / severity from [tool.resumedoctor] or resumedoctor.toml, and the CLI."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from resumedoctor.engine.catalog import known_codes
from resumedoctor.engine.findings import Severity
from resumedoctor.engine.registry import load_registry
from resumedoctor.engine.settings import (
    Settings,
    SettingsError,
    check_known,
    find_settings,
    parse_codes,
)


def test_prefix_matching_and_specificity():
    settings = Settings(select=("CKPT",), ignore=("CKPT021",))
    assert settings.is_enabled("CKPT001")
    assert not settings.is_enabled("CKPT021")
    assert not settings.is_enabled("WANDB001")
    assert Settings(select=("CKPT021",), ignore=("CKPT",)).is_enabled("CKPT021")
    assert Settings().is_enabled("ANY001")


def test_severity_override_by_code_or_prefix():
    settings = Settings(severity={"CKPT": Severity.INFO, "CKPT003": Severity.ERROR})
    assert settings.severity_for("CKPT003", Severity.WARNING) is Severity.ERROR
    assert settings.severity_for("CKPT019", Severity.WARNING) is Severity.INFO
    assert settings.severity_for("WANDB001", Severity.WARNING) is Severity.WARNING


def test_parse_codes():
    assert parse_codes("ckpt, WANDB001;CFG") == ("CKPT", "WANDB001", "CFG")
    with pytest.raises(SettingsError):
        parse_codes("CKPT-1")


def test_pyproject_table_found_above_the_target(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.resumedoctor]\nignore = ["CKPT021"]\nseverity = { CKPT019 = "error" }\n')
    nested = tmp_path / "runs" / "out"
    nested.mkdir(parents=True)
    settings = find_settings(nested)
    assert settings.ignore == ("CKPT021",)
    assert settings.severity == {"CKPT019": Severity.ERROR}
    assert settings.source == tmp_path / "pyproject.toml"


def test_pyproject_without_table_is_skipped(tmp_path):
    (tmp_path / "resumedoctor.toml").write_text('select = ["CKPT"]\n')
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_settings(inner).select == ("CKPT",)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('selct = ["CKPT"]\n', "unknown key"),
        ('severity = { CKPT001 = "fatal" }\n', "must be error, warning or info"),
        ("select = [\n", "not valid TOML"),
    ],
)
def test_bad_settings_are_exit_2(tmp_path, full_run, content, needle):
    settings_file = tmp_path / "resumedoctor.toml"
    settings_file.write_text(content)
    result = run_cli("diagnose", full_run, "--settings", settings_file)
    assert result.returncode == 2 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_severity_override_changes_the_exit_code(tmp_path, full_run):
    (full_run / "checkpoint-2" / "trainer_state.json").unlink()  # older checkpoint: a warning
    assert run_cli("diagnose", full_run).returncode == 0
    (tmp_path / "resumedoctor.toml").write_text('[severity]\nCKPT019 = "error"\n')
    strict = run_cli("diagnose", full_run, "--format", "json", cwd=tmp_path)
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["findings"][0]["severity"] == "error"


def test_known_codes_are_every_registered_code_and_prefix():
    registry = load_registry()
    known = known_codes(registry)
    check_known(("CKPT", "CKPT01", "CKPT003", "WANDB001", "W", "ENV"), known, "--select")  # all real prefixes
    for code, hint in [("CPKT", "did you mean CKPT?"), ("FOO1", "resumedoctor checks"), ("CKPT0003", "CKPT003")]:
        with pytest.raises(SettingsError) as raised:
            check_known((code,), known, "--select")
        assert str(raised.value).startswith(f"--select: unknown code or prefix '{code}' (")
        assert hint in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        (Settings(select=("CKPT", "LNE")), "select"),
        (Settings(ignore=("WANDB999",)), "ignore"),
        (Settings(severity={"CFGG": Severity.INFO}), "severity"),
    ],
)
def test_settings_name_the_table_of_an_unknown_code(tmp_path, settings, where):
    from dataclasses import replace

    with pytest.raises(SettingsError, match=f"^{tmp_path}/x.toml: {where}: unknown code or prefix"):
        replace(settings, source=tmp_path / "x.toml").check_known(known_codes(load_registry()))
    Settings(select=("CKPT",), ignore=("CKPT021",), severity={"CKPT019": Severity.ERROR}).check_known(
        known_codes(load_registry()))


def test_unknown_code_in_pyproject_is_exit_2(tmp_path, full_run):
    (tmp_path / "pyproject.toml").write_text('[tool.resumedoctor]\nselect = ["CKTP"]\n')
    result = run_cli("diagnose", full_run, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"resumedoctor: {tmp_path / 'pyproject.toml'}: select: unknown code or prefix "
                                     "'CKTP' (did you mean CKPT?)")


def test_settings_come_from_the_working_directory_never_from_the_diagnosed_folder(tmp_path, full_run, monkeypatch):
    from resumedoctor.engine.settings import user_settings

    (tmp_path / "pyproject.toml").write_text('[tool.resumedoctor]\nignore = ["CKPT021"]\n')  # the user's project
    (full_run / "resumedoctor.toml").write_text('ignore = ["CKPT"]\n')  # shipped with the run
    (full_run / "checkpoint-6" / "pyproject.toml").write_text('[tool.resumedoctor]\nselect = ["ENV"]\n')
    for cwd, path in ((tmp_path, full_run), (full_run, full_run), (full_run / "checkpoint-6", full_run / "checkpoint-6"),
                      (full_run, full_run / "checkpoint-6")):
        monkeypatch.chdir(cwd)
        settings = user_settings(path)
        assert settings.source == tmp_path / "pyproject.toml" and settings.ignore == ("CKPT021",), (cwd, path)
    monkeypatch.chdir(full_run / "checkpoint-6")
    assert user_settings(full_run / "checkpoint-4").source == tmp_path / "pyproject.toml"  # checkpoint-6 is in the run
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert user_settings(full_run).source is None  # a file above PATH but not above the working directory: not read


def test_settings_inside_the_run_are_reported_as_info(full_run, tmp_path):
    (full_run / "pyproject.toml").write_text('[tool.resumedoctor]\nignore = ["CKPT"]\nseverity = { ENV = "error" }\n')
    report = json.loads(run_cli("diagnose", full_run, "--format", "json", cwd=tmp_path).stdout)
    shipped = [f for f in report["findings"] if f["code"] == "ENV008"]
    assert len(shipped) == 1 and shipped[0]["severity"] == "info"  # not raised to error by the file itself
    assert "ignore CKPT; severity ENV=error: not applied" in shipped[0]["message"]
    assert report["summary"]["error"] == 0
    (full_run / "pyproject.toml").write_text('[project]\nname = "x"\n')  # no resumedoctor table: nothing to say
    report = json.loads(run_cli("diagnose", full_run, "--format", "json", cwd=tmp_path).stdout)
    assert not [f for f in report["findings"] if f["code"] == "ENV008"]

"""Check families and fixers load through entry points: built-ins and third-party alike."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import run_cli

from resumedoctor.engine.registry import PluginError, load_registry
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings

PLUGIN_SOURCE = '''
from resumedoctor.engine.findings import FixSafety, Rule, Severity
from resumedoctor.engine.registry import CheckFamily, Fixer

NOTE = Rule("DEMO001", "notes-missing", Severity.WARNING, "The output_dir has no NOTES.md.",
            "A third-party rule, registered through the resumedoctor.checks entry point.")
MISSING = Rule("DEMO002", "never-fires", Severity.ERROR, "Never fires.", "Exists to be listed.")

def run(ctx):
    if not (ctx.target.output_dir / "NOTES.md").exists():
        yield NOTE.finding("no NOTES.md", path=str(ctx.target.output_dir))

FAMILY = CheckFamily(name="demo-plugin", prefix="DEMO", title="A third-party family", rules=(NOTE, MISSING), run=run)
NEEDY = CheckFamily(name="needy-plugin", prefix="NEEDY", title="Needs a module that is not installed",
                    rules=(Rule("NEEDY001", "needy", Severity.ERROR, "x", "y"),), run=run,
                    requires=("a_module_that_is_not_installed",))
def plan_notes(ctx, finding):
    from resumedoctor.fix.journal import WriteFile
    return [WriteFile(ctx.target.output_dir / "NOTES.md", b"notes\\n", "a NOTES.md")]

FIXERS = [Fixer("write-notes", "demo-plugin", (NOTE,), FixSafety.SAFE, "write a NOTES.md", plan_notes)]
'''


def install_fake_distribution(root: Path, entry_points_txt: str, source: str = PLUGIN_SOURCE) -> Path:
    """A real (if tiny) installed distribution: a module and a dist-info with entry_points.txt."""
    (root / "rd_demo_plugin.py").write_text(source)
    info = root / "rd_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rd-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points_txt))
    return root


GOOD_ENTRY_POINTS = """
    [resumedoctor.checks]
    demo = rd_demo_plugin:FAMILY
    needy = rd_demo_plugin:NEEDY

    [resumedoctor.fixers]
    demo = rd_demo_plugin:FIXERS
"""


@pytest.fixture
def demo_plugin(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    install_fake_distribution(root, GOOD_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    yield root
    sys.modules.pop("rd_demo_plugin", None)


def test_builtin_family_comes_through_the_entry_point():
    from resumedoctor.checks import checkpoint_integrity

    names = {ep.name: ep.value for ep in entry_points(group="resumedoctor.checks")}
    assert names["checkpoint-integrity"] == "resumedoctor.checks.checkpoint_integrity:FAMILY"
    fixer_names = {ep.name for ep in entry_points(group="resumedoctor.fixers")}
    assert "checkpoint-integrity" in fixer_names
    registry = load_registry()
    assert checkpoint_integrity.FAMILY in registry.families


def test_third_party_family_runs_and_is_listed(demo_plugin, built_runs):
    registry = load_registry()
    assert {family.name for family in registry.families} >= {"checkpoint-integrity", "demo-plugin", "needy-plugin"}
    report = diagnose(built_runs["full"], settings=Settings(), registry=registry)
    demo = [f for f in report.findings if f.code == "DEMO001"]
    assert demo and demo[0].check == "demo-plugin"
    assert demo[0].fix is not None and demo[0].fix.safety.value == "safe"
    needy = next(family for family in report.families if family.name == "needy-plugin")
    assert needy.status == "skipped" and "a_module_that_is_not_installed" in needy.reason

    listed = json.loads(run_cli("checks", "--format", "json").stdout)
    demo_entry = next(entry for entry in listed if entry["prefix"] == "DEMO")
    assert [rule["code"] for rule in demo_entry["rules"]] == ["DEMO001", "DEMO002"]
    assert demo_entry["rules"][0]["fixers"][0]["safety"] == "safe"
    explained = run_cli("explain", "DEMO001").stdout
    assert "third-party rule" in explained and "write-notes (safe" in explained

    text = run_cli("diagnose", built_runs["full"]).stdout
    assert "skipped: a_module_that_is_not_installed not installed" in text


def test_broken_plugin_is_a_clear_exit_2(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    install_fake_distribution(root, "[resumedoctor.checks]\nbroken = rd_demo_plugin:DOES_NOT_EXIST\n")
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(PluginError, match="broken"):
        load_registry()
    result = run_cli("checks", env={"PYTHONPATH": str(root)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "failed to load" in result.stderr
    sys.modules.pop("rd_demo_plugin", None)


def test_plugin_reusing_a_builtin_code_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    source = PLUGIN_SOURCE + '''
CLASH = CheckFamily(name="clash", prefix="CKPT", title="t",
                    rules=(Rule("CKPT001", "dup", Severity.ERROR, "x", "y"),), run=run)
'''
    install_fake_distribution(root, "[resumedoctor.checks]\nclash = rd_demo_plugin:CLASH\n", source)
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(PluginError, match="CKPT001 is already registered"):
        load_registry()
    sys.modules.pop("rd_demo_plugin", None)


def test_entry_point_cache_is_invalidated_by_a_new_installation(tmp_path, monkeypatch):
    from resumedoctor.engine import registry as registry_module

    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(tmp_path / "cache"))
    registry_module._ENTRY_POINTS.clear()
    first = registry_module._entry_point_table()
    assert list((tmp_path / "cache").glob("entry-points-*.json"))
    assert registry_module._entry_point_table() == first  # served from the cache
    assert first == {group: [tuple(p) for p in pairs] for group, pairs in registry_module._scan_entry_points().items()}
    root = tmp_path / "site"
    root.mkdir()
    install_fake_distribution(root, GOOD_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))  # a new installation location: a new key, a fresh scan
    assert ("demo", "rd_demo_plugin:FAMILY") in registry_module._entry_point_table()["resumedoctor.checks"]
    sys.modules.pop("rd_demo_plugin", None)

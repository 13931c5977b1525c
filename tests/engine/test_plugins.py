"""Check families and fixers load through entry points: built-ins and third-party alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import REPO, run_cli

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
    from resumedoctor.engine.operations import WriteFile
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


def _with_plugin(source: str, entry_points_txt: str, tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    install_fake_distribution(root, entry_points_txt, source)
    monkeypatch.syspath_prepend(str(root))
    return root


BAD_FIXERS = {
    # A code string where the Rule object belongs.
    "code string": ("FIXERS = [Fixer('by-code', 'demo-plugin', ('DEMO001',), FixSafety.SAFE, 'd', plan_notes)]",
                    "names 'DEMO001', not a Rule"),
    # A Rule of its own under a built-in code: not the rule the CKPT family registered.
    "impostor rule": ("FIXERS = [Fixer('impostor', 'demo-plugin', (Rule('CKPT017', 'mine', Severity.INFO, 's', 'e'),), "
                      "FixSafety.SAFE, 'd', plan_notes)]", "names a rule CKPT017 that is not the registered CKPT017"),
    # A rule whose family is not installed.
    "unregistered rule": ("FIXERS = [Fixer('orphan', 'demo-plugin', (Rule('ORPH001', 'o', Severity.INFO, 's', 'e'),), "
                          "FixSafety.SAFE, 'd', plan_notes)]", "fixes ORPH001, which no check family registered"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIXERS))
def test_a_fixer_that_names_no_registered_rule_is_a_clear_exit_2(case, tmp_path, monkeypatch):
    fixers, expected = BAD_FIXERS[case]
    root = _with_plugin(PLUGIN_SOURCE + fixers + "\n", GOOD_ENTRY_POINTS, tmp_path, monkeypatch)
    with pytest.raises(PluginError, match=expected):
        load_registry(fixers_now=True)
    for command in (("checks",), ("explain", "CKPT017")):
        result = run_cli(*command, env={"PYTHONPATH": str(root)})
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and expected in result.stderr
    sys.modules.pop("rd_demo_plugin", None)


def test_several_fixers_may_claim_one_rule_and_are_offered_in_load_order(tmp_path, monkeypatch):
    """As before rules declared their fixes: a rule may have several fixers (CURR001 has a safe and an
    unsafe one), a plugin may fix a built-in rule; `fix` asks them in load order, built-ins first."""
    source = PLUGIN_SOURCE + '''
from resumedoctor.checks.checkpoint_integrity import BEST_MODEL_MISSING
FIXERS = FIXERS + [Fixer("rewrite-notes", "demo-plugin", (NOTE,), FixSafety.UNSAFE, "rewrite NOTES.md", plan_notes),
                   Fixer("plugin-best-model", "demo-plugin", (BEST_MODEL_MISSING,), FixSafety.UNSAFE, "d", plan_notes)]
'''
    root = _with_plugin(source, GOOD_ENTRY_POINTS, tmp_path, monkeypatch)
    registry = load_registry(fixers_now=True)
    _, note = registry.rule("DEMO001")
    assert [fixer.name for fixer in note.fix.fixers] == ["write-notes", "rewrite-notes"]
    assert note.fix.availability.value == "sometimes" and [s.value for s in note.fix.safeties] == ["safe", "unsafe"]
    _, best = registry.rule("CKPT017")
    assert [fixer.name for fixer in best.fix.fixers] == ["clear-best-model-checkpoint", "plugin-best-model"]
    assert registry.rule("DEMO002")[1].fix.availability.value == "none"
    listed = json.loads(run_cli("checks", "--format", "json", env={"PYTHONPATH": str(root)}).stdout)
    demo = next(entry for entry in listed if entry["prefix"] == "DEMO")["rules"][0]
    assert [(fixer["name"], fixer["safety"]) for fixer in demo["fixers"]] == [("write-notes", "safe"),
                                                                           ("rewrite-notes", "unsafe")]
    assert "safe/unsafe" in run_cli("checks", env={"PYTHONPATH": str(root)}).stdout
    sys.modules.pop("rd_demo_plugin", None)


EXAMPLE_PLUGIN = REPO / "examples" / "plugin"


@pytest.fixture(scope="module")
def example_plugin_env(tmp_path_factory) -> dict[str, str]:
    """examples/plugin installed by pip into a folder of its own (never into the shared venv)."""
    import importlib.util

    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 70 and importlib.util.find_spec("wheel") is None:
        pytest.skip("pip cannot build a wheel without build isolation here: needs setuptools>=70.1 or wheel")
    root = tmp_path_factory.mktemp("example-plugin")
    source, site = root / "source", root / "site"
    shutil.copytree(EXAMPLE_PLUGIN, source)  # the build writes build/ and *.egg-info beside the sources
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(site), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def _declared_fix(env: dict[str, str], code: str) -> str:
    script = ("from resumedoctor.engine.registry import load_registry\n"
              f"fix = load_registry(fixers_now=True).rule({code!r})[1].fix\n"
              "print(fix.availability.value, *[fixer.name for fixer in fix.fixers])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_example_plugin_is_listed_with_its_declared_fix(example_plugin_env):
    env = example_plugin_env
    assert run_cli("explain", "CARD001").returncode == 2  # not installed in the shared environment
    listed = json.loads(run_cli("checks", "--format", "json", env=env).stdout)
    card = next(entry for entry in listed if entry["prefix"] == "CARD")
    assert card["check"] == "model-card"
    assert [(rule["code"], rule["name"], rule["severity"]) for rule in card["rules"]] == [
        ("CARD001", "model-card-missing", "info")]
    assert [(fixer["name"], fixer["safety"]) for fixer in card["rules"][0]["fixers"]] == [("write-model-card-stub", "safe")]
    assert _declared_fix(env, "CARD001") == "always write-model-card-stub"
    assert card["rules"][0]["fix_availability"] == "always"  # `checks` reads the rule's declaration
    builtin = {rule["code"]: rule["fix_availability"] for entry in listed for rule in entry["rules"]}
    assert builtin["CKPT001"] == "none" and builtin["CKPT018"] == "sometimes"
    assert _declared_fix(env, "CKPT001") == "none"
    explained = run_cli("explain", "card001", env=env).stdout
    assert explained.startswith("CARD001 model-card-missing\ncheck: model-card (CARD)    default severity: info")
    assert "write-model-card-stub (safe, fix --auto): write a README.md model card stub" in explained


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and ".resumedoctor" not in path.relative_to(folder).parts}


def _codes(run: Path, env: dict[str, str]) -> list[str]:
    result = run_cli("diagnose", run, "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return [finding["code"] for finding in json.loads(result.stdout)["findings"]]


def test_the_example_plugin_fixes_and_undoes_a_real_run(example_plugin_env, full_run):
    from huggingface_hub import ModelCard

    env = example_plugin_env
    assert (full_run / "README.md").is_file()  # TRL wrote the card at every save: the policy holds
    assert "CARD001" not in _codes(full_run, env)
    (full_run / "README.md").unlink()
    before = _tree(full_run)
    assert "CARD001" in _codes(full_run, env)

    fixed = run_cli("fix", full_run, "--auto", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert "create README.md (CARD001" in fixed.stdout
    card = ModelCard.load(full_run / "README.md")  # the hub library reads the stub as a model card
    assert card.data.library_name == "transformers" and "checkpoint-6" in card.text
    assert "CARD001" not in _codes(full_run, env)

    undone = run_cli("undo", full_run, env=env)
    assert undone.returncode == 0 and "write-model-card-stub" in undone.stdout
    assert _tree(full_run) == before and not (full_run / "README.md").exists()

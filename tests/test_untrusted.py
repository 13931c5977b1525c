"""An output_dir is untrusted input (issue 13): the first cases, the shell lines of `resumedoctor env`.

Real `bash` and `sh` evaluate the output, as the pre-training hook does; a crafted name must stay text.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MEMORY_LIMIT = 3 << 30  # address space for a child resumedoctor: plenty for a real run, far below a bomb


def run_cli(*args: str, cwd: Path, timeout: float = 60, memory: int = MEMORY_LIMIT,
            env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`resumedoctor ARGS` in a child bounded in time (timeout) and memory (RLIMIT_AS); raises on a hang."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, "-m", "resumedoctor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit_memory, env={**os.environ, **(env or {})}, input=stdin)


def assert_one_clear_answer(result: subprocess.CompletedProcess) -> None:
    """A crafted input is a finding or one line on stderr, never a traceback or "internal error"."""
    assert "internal error" not in result.stderr.lower() and "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1, 2), (result.returncode, result.stderr)


def tree_digest(folder: Path) -> str:
    """A hash of every name, type, link target and file content under `folder` (links are not followed)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(root, name)
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            if path.is_symlink():
                digest.update(b"link:" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


CRAFTED = "run\ntouch pwned\n# "  # run in tmp_path: a command that got out would create tmp_path/pwned


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_env_output_evaluates_to_nothing_but_exports(full_run, tmp_path, shell):
    crafted = tmp_path / CRAFTED  # a folder name may hold newlines
    shutil.copytree(full_run, crafted)
    (crafted / "checkpoint-6").rename(crafted / "checkpoint-6\ntouch pwned2\n")  # transformers' pattern lists it too
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "WANDB_RESUME": "must", "WANDB_FORK_FROM": "x", "TARGET": str(crafted)}
    script = 'eval "$(resumedoctor env "$TARGET")" && echo "RESUME=${WANDB_RESUME-unset}"'
    result = subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert "RESUME=unset" in result.stdout  # the real lines still work: the stale variable is unset
    printed = subprocess.run([sys.executable, "-m", "resumedoctor", "env", str(crafted)], capture_output=True,
                             text=True, env=env).stdout
    assert all(line.startswith(("# ", "export ", "unset ")) for line in printed.splitlines()), printed


# --- confine ---
# Build 1 (confinement, journal schema, real `.resumedoctor/` folders) and Build 4 (one writer, the
# live-trainer guard, no-op writes). Each case runs the real CLI in a child; a sibling tree beside the
# output_dir stands for everything outside it and must not change.


import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TX_ID = "20260101T000000.000000001-abcd"


def _world(built_runs, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the real 6-step run, and a sibling tree (files and folders) beside it."""
    run = Path(shutil.copytree(built_runs["full"], tmp_path / "world" / "run"))
    sibling = tmp_path / "world" / "sibling"
    for folder in ("victim/a", "victim/b", "keep"):
        (sibling / folder).mkdir(parents=True)
        (sibling / folder / "data.txt").write_text(f"precious {folder}\n")
    return run, sibling


def _craft(run: Path, operations: list, status: str = "committed", payload: bytes = b"pwned\n") -> Path:
    """A journal as an attacker would ship it, with new/ and backup/ bytes that match its hashes."""
    folder = run / ".resumedoctor" / "transactions" / TX_ID
    (folder / "new").mkdir(parents=True)
    (folder / "backup").mkdir()
    digest = hashlib.sha256(payload).hexdigest()
    for index, entry in enumerate(operations):
        if entry.get("kind") == "write":
            (folder / "new" / str(index)).write_bytes(payload)
            (folder / "backup" / str(index)).write_bytes(payload)
            entry = {"new_sha256": digest, "old_sha256": None, "new": f"new/{index}", "backup": f"backup/{index}",
                     **entry}
        operations[index] = {"reason": "r", "code": "X", "fixer": "f", **entry}
    journal = {"version": 1, "id": TX_ID, "created_ns": 1, "run": TX_ID, "description": "crafted",
               "status": status, "operations": operations}
    (folder / "journal.json").write_text(json.dumps(journal))
    return folder / "journal.json"


def _assert_refused(result: subprocess.CompletedProcess, *names: str) -> None:
    assert_one_clear_answer(result)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


def _outside_untouched(world: Path, sibling: Path, digest: str, pwned: list[Path] = ()) -> None:
    assert tree_digest(sibling) == digest
    assert sorted(p.name for p in world.iterdir()) == ["run", "sibling"]
    for path in pwned:
        assert not os.path.lexists(path), path


CRAFTED_OPERATIONS = {
    "write-dotdot": lambda s: [{"kind": "write", "path": "../sibling/keep/data.txt"}],
    "write-dotdot-new": lambda s: [{"kind": "write", "path": "../../pwned"}],
    "write-absolute": lambda s: [{"kind": "write", "path": str(s / "keep" / "data.txt")}],
    "write-absolute-forged-mac": lambda s: [{"kind": "write", "path": str(s / "keep" / "data.txt"), "mac": "0" * 64}],
    "move-in-from-outside": lambda s: [{"kind": "move", "src": "../sibling/victim",
                                        "dst": ".resumedoctor/quarantine/victim"}],
    "move-out": lambda s: [{"kind": "move", "src": "checkpoint-6", "dst": "../sibling/stolen"}],
    "move-into-journals": lambda s: [{"kind": "move", "src": "checkpoint-6",
                                      "dst": ".resumedoctor/transactions/x"}],
    "unknown-key": lambda s: [{"kind": "write", "path": "x.txt", "exec": "rm -rf /"}],
    "unknown-kind": lambda s: [{"kind": "delete", "path": "checkpoint-6"}],
}


@pytest.mark.parametrize("status", ["committed", "prepared"])
@pytest.mark.parametrize("case", sorted(CRAFTED_OPERATIONS))
def test_crafted_journal_is_refused_by_undo_and_fix(built_runs, tmp_path, case, status):
    run, sibling = _world(built_runs, tmp_path)
    journal = _craft(run, CRAFTED_OPERATIONS[case](sibling), status)
    digest, inside = tree_digest(sibling), tree_digest(run)
    pwned = [tmp_path / "pwned", tmp_path / "world" / "pwned", sibling / "stolen"]
    for command in (["undo", str(run), "--all"], ["fix", str(run), "--auto", "--unsafe"]):
        result = run_cli(*command, cwd=tmp_path)
        _assert_refused(result, str(journal))  # the offending journal is named
        _outside_untouched(tmp_path / "world", sibling, digest, pwned)
        Path(run / ".resumedoctor" / "lock").unlink(missing_ok=True)  # the writer lock (holds a pid) may stay
        assert tree_digest(run) == inside  # never acted on: not even its status was changed


@pytest.mark.parametrize("content", ["[1, 2]", "5", '"journal"', "null", "{", "[" * 100_000, "{}"])
def test_journal_that_is_not_an_object_is_refused_clearly(built_runs, tmp_path, content):
    run, sibling = _world(built_runs, tmp_path)
    journal = _craft(run, [])
    journal.write_text(content)
    digest = tree_digest(sibling)
    for command in (["undo", str(run)], ["fix", str(run), "--auto"]):
        result = run_cli(*command, cwd=tmp_path)
        _assert_refused(result, str(journal), "move its folder")  # and what to do about it
        _outside_untouched(tmp_path / "world", sibling, digest)
    # Doing what the line says makes fix work again.
    shutil.move(str(journal.parent), str(tmp_path / "set-aside"))
    assert run_cli("fix", str(run), "--auto", cwd=tmp_path).returncode == 0


def _link_state(run: Path, sibling: Path, which: str) -> None:
    target = sibling / "victim"
    if which == ".resumedoctor":
        (run / ".resumedoctor").symlink_to(target, target_is_directory=True)
    else:
        (run / ".resumedoctor").mkdir()
        (run / ".resumedoctor" / which).symlink_to(target, target_is_directory=True)


@pytest.mark.parametrize("which", [".resumedoctor", "transactions", "quarantine"])
def test_symlinked_state_folders_are_refused(built_runs, tmp_path, which):
    run, sibling = _world(built_runs, tmp_path)
    with open(run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)  # fix --unsafe wants to quarantine checkpoint-6
    _link_state(run, sibling, which)
    digest = tree_digest(sibling)
    for command in (["undo", str(run), "--all"], ["fix", str(run), "--auto", "--unsafe"], ["seal", str(run)]):
        result = run_cli(*command, cwd=tmp_path)
        if which == "quarantine" and command[0] != "fix":
            assert_one_clear_answer(result)  # undo and seal never use the quarantine
        else:
            _assert_refused(result, which)
        _outside_untouched(tmp_path / "world", sibling, digest)
        assert (run / "checkpoint-6").is_dir()


def test_symlinked_checkpoint_is_not_written_through(built_runs, tmp_path):
    run, sibling = _world(built_runs, tmp_path)
    elsewhere = Path(shutil.move(str(run / "checkpoint-6"), str(sibling / "checkpoint-6")))
    (run / "checkpoint-6").symlink_to(elsewhere, target_is_directory=True)
    state = json.loads((elsewhere / "trainer_state.json").read_text())
    state["best_model_checkpoint"] = str(run / "checkpoint-1")  # CKPT017: a safe fix rewrites the file
    (elsewhere / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    digest = tree_digest(sibling)
    result = run_cli("fix", str(run), "--auto", cwd=tmp_path)
    _assert_refused(result, "symbolic link")
    _outside_untouched(tmp_path / "world", sibling, digest)


def test_transactions_folder_owned_by_someone_else_is_refused(built_runs, tmp_path):
    if os.getuid() != 0:
        pytest.skip("only root can give a folder to another user")
    run, _ = _world(built_runs, tmp_path)
    _craft(run, [])
    os.chown(run / ".resumedoctor" / "transactions", 4242, 4242)
    _assert_refused(run_cli("undo", str(run), cwd=tmp_path), "belongs to user id 4242")


# ---- one writer ---------------------------------------------------------------------------------


def _damage(run: Path) -> None:
    with open(run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    (run / "tmp-checkpoint-8").mkdir()
    (run / "tmp-checkpoint-8" / "model.safetensors").write_bytes(b"partial")
    old = time.time() - 3600  # an old leftover, not a save in progress
    for path in (run / "checkpoint-6" / "model.safetensors", run / "tmp-checkpoint-8" / "model.safetensors",
                 run / "tmp-checkpoint-8", run / "checkpoint-6"):
        os.utime(path, (old, old))


def test_busy_lock_names_its_holder(built_runs, tmp_path):
    run, _ = _world(built_runs, tmp_path)
    _damage(run)
    from resumedoctor.writer_lock import writer_lock

    with writer_lock(run):
        for command in (["fix", str(run), "--auto"], ["undo", str(run)], ["seal", str(run)]):
            _assert_refused(run_cli(*command, cwd=tmp_path), f"pid {os.getpid()}")
        assert (run / "tmp-checkpoint-8").is_dir()  # nothing was done
    assert run_cli("fix", str(run), "--auto", cwd=tmp_path).returncode in (0, 1)
    assert not (run / "tmp-checkpoint-8").exists()


def test_lock_is_not_followed_through_a_link(built_runs, tmp_path):
    run, sibling = _world(built_runs, tmp_path)
    (run / ".resumedoctor").mkdir()
    (run / ".resumedoctor" / "lock").symlink_to(sibling / "keep" / "data.txt")
    digest = tree_digest(sibling)
    _assert_refused(run_cli("fix", str(run), "--auto", cwd=tmp_path), "lock")
    _outside_untouched(tmp_path / "world", sibling, digest)


def test_concurrent_fixes_leave_a_consistent_journal(built_runs, tmp_path):
    from test_fix import tree

    run, _ = _world(built_runs, tmp_path)
    _damage(run)
    before = tree(run)
    for attempt in range(3):
        processes = [subprocess.Popen([sys.executable, "-m", "resumedoctor", "fix", str(run), "--auto", "--unsafe"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
        for code, stderr in outcomes:
            assert "internal error" not in stderr and "Traceback" not in stderr, stderr
            assert code == 0 or (code == 2 and "being changed by another resumedoctor" in stderr), (code, stderr)
        third = run_cli("fix", str(run), "--auto", "--unsafe", cwd=tmp_path)
        assert third.returncode == 0, third.stderr
        assert not (run / "checkpoint-6").exists() and not (run / "tmp-checkpoint-8").exists()
        assert run_cli("undo", str(run), "--all", cwd=tmp_path).returncode == 0
        assert tree(run) == before, f"attempt {attempt}"


# ---- the live-trainer guard ---------------------------------------------------------------------

WRITER = """
import sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds
with open(path, "ab") as handle:
    print("writing", flush=True)
    while time.time() < end:
        handle.write(b"\\0" * 4096)
        handle.flush()
        time.sleep(0.02)
"""


def test_checkpoint_being_written_is_not_quarantined(built_runs, tmp_path):
    run, _ = _world(built_runs, tmp_path)
    with open(run / "checkpoint-6" / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)  # mid-save: the file is short, and still growing
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run / "checkpoint-6" / "optimizer.pt"), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        result = run_cli("fix", str(run), "--auto", "--unsafe", cwd=tmp_path)
        assert_one_clear_answer(result)
        assert (run / "checkpoint-6").is_dir(), "a save in progress was quarantined"
        assert "trainer seems to be writing" in result.stdout and "checkpoint-6" in result.stdout, result.stdout
        assert "Stop the trainer or wait for its save to finish" in result.stdout
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    # The writer is gone: the files are fresh but still, and the broken checkpoint is quarantined.
    result = run_cli("fix", str(run), "--auto", "--unsafe", cwd=tmp_path)
    assert not (run / "checkpoint-6").exists(), result.stdout


def test_fresh_tmp_checkpoint_being_written_is_left_alone(built_runs, tmp_path):
    run, _ = _world(built_runs, tmp_path)
    (run / "tmp-checkpoint-8").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run / "tmp-checkpoint-8" / "model.safetensors"), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        result = run_cli("fix", str(run), "--auto", cwd=tmp_path)  # the tmp quarantine is a safe fix
        assert_one_clear_answer(result)
        assert (run / "tmp-checkpoint-8").is_dir() and "trainer seems to be writing" in result.stdout
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()


# ---- no-op writes -------------------------------------------------------------------------------


def test_no_op_write_never_wedges_fix_or_undo(built_runs, tmp_path):
    """The wedge of the issue: a journaled write whose new bytes equal the old ones had no backup state
    ('already changed'), so the transaction could neither complete nor roll back, for good."""
    from resumedoctor.journal import Transaction, WriteFile, new_id

    run, _ = _world(built_runs, tmp_path)
    before = tree_digest(run)
    path = run / "checkpoint-6" / "trainer_state.json"
    # Through the engine: the no-op is not journaled at all.
    transaction = Transaction.prepare(run, [WriteFile(path, path.read_bytes(), "same bytes")], "noop", new_id())
    transaction.complete()
    assert transaction.journal["operations"] == []
    # A journal an older version wrote, with old == new, interrupted: fix finishes it, undo takes it back.
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    journal = _craft(run, [{"kind": "write", "path": "checkpoint-6/trainer_state.json", "old_sha256": digest,
                            "new_sha256": digest}], status="prepared", payload=content)
    (journal.parent / "backup" / "0").unlink()  # the backup step never ran
    fixed = run_cli("fix", str(run), "--auto", cwd=tmp_path)
    assert fixed.returncode == 0 and f"finished the fix {TX_ID}" in fixed.stdout, fixed.stdout + fixed.stderr
    assert run_cli("undo", str(run), "--all", cwd=tmp_path).returncode == 0
    assert run_cli("fix", str(run), "--auto", cwd=tmp_path).returncode == 0
    assert tree_digest(run) == before


# ---- the journal loader on random JSON ----------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
_paths = st.sampled_from(["../x", "/etc/passwd", "a/../../b", "checkpoint-6", ".resumedoctor/quarantine/c",
                          ".resumedoctor/transactions/x", "", ".", "a//b", "x\0y", "link/file", "ok.txt",
                          "checkpoint-6/trainer_state.json", "~/x", "a\\..\\b"]) | st.text(max_size=20)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
_entry = st.fixed_dictionaries(
    {"kind": st.sampled_from(["write", "move", "delete", 1]), "reason": st.text(max_size=5),
     "code": st.just("X"), "fixer": st.just("f")},
    optional={"path": _paths, "src": _paths, "dst": _paths, "new": st.sampled_from(["new/0", "../x", "new/1"]),
              "backup": st.sampled_from(["backup/0", "/tmp/x"]), "old_sha256": st.none() | st.just("a" * 64),
              "new_sha256": st.just("b" * 64) | _scalars, "mac": st.text(max_size=64), "extra": _json})


@st.composite
def _plausible(draw) -> dict:
    """A journal of the right shape whose paths are drawn from the dangerous ones: most reach the resolver."""
    operations = []
    for index in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            entry = {"kind": "write", "path": draw(_paths), "old_sha256": draw(st.none() | st.just("a" * 64)),
                     "new_sha256": "b" * 64, "new": f"new/{index}", "backup": f"backup/{index}"}
            if draw(st.booleans()):
                entry["mac"] = draw(st.just("0" * 64) | st.text(max_size=64))
        else:
            entry = {"kind": "move", "src": draw(_paths), "dst": ".resumedoctor/quarantine/" + draw(_paths)}
        operations.append({**entry, "reason": "r", "code": "X", "fixer": "f"})
    return {"version": 1, "id": TX_ID, "status": draw(st.sampled_from(sorted(["prepared", "committed", "undoing"]))),
            "operations": operations}


_journals = _plausible() | _json | st.fixed_dictionaries(
    {"version": st.just(1) | _scalars, "id": st.just(TX_ID) | st.text(max_size=10),
     "status": st.sampled_from(["prepared", "applying", "committed", "undoing", "undone", "evil"]),
     "operations": st.lists(_entry, max_size=3) | _json},
    optional={"run": st.just(TX_ID) | _scalars, "created_ns": _scalars, "description": _scalars, "x": _json})


@pytest.fixture(scope="module")
def loader_world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    run = root / "run"
    (run / "checkpoint-6").mkdir(parents=True)
    (run / "checkpoint-6" / "trainer_state.json").write_text("{}")
    (run / "link").symlink_to(root, target_is_directory=True)
    (run / ".resumedoctor" / "transactions" / TX_ID / "new").mkdir(parents=True)
    return run


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_journals)
def test_journal_loader_on_random_json(loader_world, data):
    from resumedoctor.journal import Transaction, UntrustedJournalError

    folder = loader_world / ".resumedoctor" / "transactions" / TX_ID
    (folder / "journal.json").write_text(json.dumps(data))
    try:
        transaction = Transaction.load(loader_world, folder)
        transaction.check_paths()
    except UntrustedJournalError as exc:
        assert "\n" not in exc.reason
        return
    root = os.path.realpath(loader_world)
    for entry in transaction.journal["operations"]:
        for path in transaction._paths(entry):
            real = os.path.realpath(path)
            assert real == root or real.startswith(root + os.sep), (entry, real)


def test_launch_fix_says_who_holds_the_lock(built_runs, tmp_path):
    from conftest import GRPO_RECIPE

    from resumedoctor.writer_lock import writer_lock

    run, _ = _world(built_runs, tmp_path)
    _damage(run)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(GRPO_RECIPE.replace("{max_steps}", "6").format(
        model=run / "checkpoint-4", dataset=tmp_path / "prompts.jsonl", output_dir=run))
    with writer_lock(run):
        result = run_cli("launch", "--config", str(recipe), "--fix", "--unsafe", cwd=tmp_path)
    _assert_refused(result, f"pid {os.getpid()}", "--fix")
    assert (run / "checkpoint-6").is_dir() and (run / "tmp-checkpoint-8").is_dir()

"""An output_dir is untrusted input (issue 13): each attack as a case.

Sections: the shell lines of `env` (evaluated by real `bash` and `sh`), confinement of writes and the
journal (confine), one writer and the live-trainer guard, the pickles (pickle), W&B identities and
linear cost (shellcost), terminal output, readers of special, huge and damaged files and settings
(readers). Payloads are built here; the CLI runs in a child bounded in time and memory (run_cli), and
a sibling tree is hashed to prove nothing outside the output_dir changed (tree_digest).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import pickletools
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from conftest import DEMO_RUN_ARGS
from demo_run import hard_linked_checkpoints
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumedoctor.io import safe_pickle
from resumedoctor.io.torch_archive import inspect_torch_archive, torch_pickle_member

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
        if command[0] == "fix" and case == "write-absolute-forged-mac" and status == "committed":
            # A finished journal fix never acts on again (a signature from another key looks the same as a
            # forged one): it does not block fix; undo is what refuses it.
            assert_one_clear_answer(result)
            assert result.returncode in (0, 1) and json.loads(journal.read_text())["status"] == "committed"
            _outside_untouched(tmp_path / "world", sibling, digest, pwned)
            continue
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
    from resumedoctor.fixing.writer_lock import writer_lock

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
    from resumedoctor.engine.operations import WriteFile
    from resumedoctor.fixing.journal import Transaction, new_id

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
    from resumedoctor.fixing.journal import Transaction, UntrustedJournalError

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

    from resumedoctor.fixing.writer_lock import writer_lock

    run, _ = _world(built_runs, tmp_path)
    _damage(run)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(GRPO_RECIPE.replace("{max_steps}", "6").format(
        model=run / "checkpoint-4", dataset=tmp_path / "prompts.jsonl", output_dir=run))
    with writer_lock(run):
        result = run_cli("launch", "--config", str(recipe), "--fix", "--unsafe", cwd=tmp_path)
    _assert_refused(result, f"pid {os.getpid()}", "--fix")
    assert (run / "checkpoint-6").is_dir() and (run / "tmp-checkpoint-8").is_dir()
# --- pickle ---
# The checkpoint's pickles (training_args.bin, optimizer.pt, scheduler.pt, rng_state*.pth, scaler.pt): an explicit
# allow-list derived from the files the installed transformers/TRL/torch write, a budget, and the member torch reads.
# The oracle is torch's own restricted unpickler, torch.load(weights_only=True): it is only ever given crafted
# payloads to refuse (never weights_only=False), and real files to load.



STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")


def pickle_globals(data: bytes) -> set[str]:
    """Every global a pickle names, by pickletools (independent of the tool's scanner)."""
    found, strings, memo = set(), [], {}
    for op, arg, _ in pickletools.genops(data):
        if "UNICODE" in op.name or "STRING" in op.name:
            strings.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = strings[-1] if strings else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(int(arg)))
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return found


def torch_pickle(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(torch_pickle_member(archive))


def resolve(names) -> list:
    """The real objects behind allow-listed names (the test imports them; the tool never does)."""
    objects = []
    for name in names:
        module, _, attr = name.rpartition(".")
        objects.append(getattr(importlib.import_module(module), attr))
    return objects


@pytest.fixture(scope="module")
def trl_runs(tmp_path_factory) -> dict[str, Path]:
    """Real SFT and DPO runs (2 steps each, checkpoint-2), beside the GRPO runs of built_runs, and a scaler.pt."""
    import demo_run as demo
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    root = tmp_path_factory.mktemp("trl-runs")
    tokenizer = demo.build_tokenizer()
    common = dict(max_steps=2, save_steps=2, use_cpu=True, report_to="none", per_device_train_batch_size=4,
                  disable_tqdm=True)
    chats = [{"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c d"}]}] * 16
    SFTTrainer(model=demo.build_model(tokenizer), processing_class=tokenizer, train_dataset=Dataset.from_list(chats),
               args=SFTConfig(output_dir=str(root / "sft"), max_length=64, **common)).train()
    pairs = [{"prompt": "a b", "chosen": " c d", "rejected": " e"}] * 16
    DPOTrainer(model=demo.build_model(tokenizer), ref_model=demo.build_model(tokenizer), processing_class=tokenizer,
               train_dataset=Dataset.from_list(pairs),
               args=DPOConfig(output_dir=str(root / "dpo"), max_length=64, **common)).train()
    scaler = torch.amp.GradScaler("cpu")  # the Trainer saves accelerator.scaler.state_dict() (fp16 on GPU only)
    torch.save(scaler.state_dict(), root / "sft" / "checkpoint-2" / "scaler.pt")
    return {"sft": root / "sft", "dpo": root / "dpo"}


def real_pickles(built_runs, trl_runs) -> list[Path]:
    folders = [*built_runs.values(), *trl_runs.values()]
    return sorted(path for folder in folders for path in folder.glob("checkpoint-*/*")
                  if path.name in (*STATE_FILES, "training_args.bin") or path.name.startswith("rng_state"))


def test_allow_list_holds_every_global_real_runs_write(built_runs, trl_runs):
    """A new library version that pickles a new global fails here, not as a false CKPT028 for users."""
    paths = real_pickles(built_runs, trl_runs)
    kinds = {path.name for path in paths}
    assert {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"} <= kinds
    seen: set[str] = set()
    for path in paths:
        names = pickle_globals(torch_pickle(path))
        unknown = [name for name in names if safe_pickle.allowed_kind(*name.rsplit(".", 1)) is None]
        assert not unknown, (path, unknown)
        seen |= names
    classes = {name for name in seen if name.endswith("Config")}
    assert {"trl.trainer.grpo_config.GRPOConfig", "trl.trainer.sft_config.SFTConfig",
            "trl.trainer.dpo_config.DPOConfig"} <= classes


def test_verdict_agrees_with_torch_weights_only(built_runs, trl_runs):
    """Every real file is accepted, and torch's own restricted unpickler loads it.

    The Trainer loads optimizer/scheduler/RNG/scaler with torch.load(weights_only=True), the RNG state inside
    transformers' safe_globals() (numpy's array rebuild). It never loads training_args.bin, and torch's default
    weights_only list refuses it (GRPOConfig is no torch class); given exactly the allow-listed globals the file
    names, torch loads it, and its values are the ones the tool read.
    """
    import torch
    from transformers.trainer_pt_utils import safe_globals

    for path in real_pickles(built_runs, trl_runs):
        if path.name == "training_args.bin":
            saved = safe_pickle.read_training_args(path)
            with pytest.raises(pickle.UnpicklingError):
                torch.load(path, weights_only=True)
            allowed = resolve(pickle_globals(torch_pickle(path)))
            with torch.serialization.safe_globals(allowed):
                args = torch.load(path, weights_only=True)
            assert saved["__class__"].endswith(type(args).__name__)
            for field in ("learning_rate", "max_steps", "seed", "output_dir", "per_device_train_batch_size"):
                assert saved[field] == getattr(args, field), field
            assert saved["lr_scheduler_type"] == args.lr_scheduler_type.value
        else:
            assert safe_pickle.check_state_pickle(path) is not None
            with safe_globals():
                torch.load(path, weights_only=True)


def test_trl_arguments_rule_matches_the_installed_trl():
    """The by-name rule for TRL arguments classes (never importing TRL) against the installed TRL itself:
    every name it accepts is a dataclass subclass of TrainingArguments, and every such class is accepted."""
    import dataclasses

    import trl
    from transformers import TrainingArguments

    root = Path(trl.__file__).parent
    checked = 0
    for path in sorted([*root.glob("trainer/*_config.py"), *root.glob("experimental/*/*_config.py")]):
        module_name = "trl." + ".".join(path.relative_to(root).with_suffix("").parts)
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an experimental trainer whose optional dependency is not installed
            continue
        for name, value in vars(module).items():
            if not isinstance(value, type) or value.__module__ != module_name:
                continue
            is_arguments = dataclasses.is_dataclass(value) and issubclass(value, TrainingArguments)
            accepted = safe_pickle.allowed_kind(module_name, name) == safe_pickle.DATA_CLASS
            assert accepted == (is_arguments and not name.startswith("_")), (module_name, name)
            checked += accepted
    assert checked >= 10


def archive_with(tmp_path: Path, name: str, members: dict[str, bytes]) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def replace_pickle(path: Path, data: bytes, *, before: dict[str, bytes] | None = None) -> None:
    """Rewrite a real torch archive with `data` as the data.pkl torch reads (other members kept)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    record = next(name for name in members if name.endswith("/data.pkl"))
    folder = record.split("/")[0]
    rebuilt = {f"{folder}/{name}": value for name, value in (before or {}).items()}
    rebuilt.update({name: (data if name == record else value) for name, value in members.items()})
    path.unlink()
    with zipfile.ZipFile(path, "w") as archive:
        for member, value in rebuilt.items():
            archive.writestr(member, value)


class Calls:
    """Pickles as a call of `function(*args)`, the way a crafted checkpoint runs code."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def crafted_payloads(marker: Path) -> dict[str, bytes]:
    import builtins

    import torch
    import torch.hub
    import torch.jit
    from transformers import dynamic_module_utils
    from trl import GRPOConfig

    command = f"touch {marker}"
    return {
        "os.system": pickle.dumps(Calls(os.system, command), protocol=2),
        "builtins.eval": pickle.dumps(Calls(builtins.eval, f"__import__('os').system({command!r})"), protocol=2),
        "torch.hub.load": pickle.dumps(Calls(torch.hub.load, "attacker/repo", "model"), protocol=2),
        "torch.jit.load": pickle.dumps(Calls(torch.jit.load, str(marker)), protocol=2),
        "get_class_from_dynamic_module": pickle.dumps(Calls(dynamic_module_utils.get_class_from_dynamic_module,
                                                            "x.Y", "attacker/repo"), protocol=2),
        # an allowed data class called instead of rebuilt: a real load would run GRPOConfig.__post_init__
        "GRPOConfig(...)": pickle.dumps(Calls(GRPOConfig, str(marker)), protocol=2),
        # protocol 4 names globals with STACK_GLOBAL on strings
        "os.system (protocol 4)": pickle.dumps(Calls(os.system, command), protocol=4),
    }


@pytest.mark.parametrize("target", ["training_args.bin", "optimizer.pt", "rng_state.pth"])
def test_crafted_pickles_are_refused_and_never_run(full_run, tmp_path, target):
    import torch

    marker = tmp_path / "pwned"
    for label, payload in crafted_payloads(marker).items():
        checkpoint = full_run / "checkpoint-6"
        shutil.copy2(next(full_run.glob("checkpoint-4")) / target, checkpoint / target)
        replace_pickle(checkpoint / target, payload)
        with pytest.raises(pickle.UnpicklingError):  # the oracle: torch's restricted unpickler refuses it too
            torch.load(checkpoint / target, weights_only=True)
        result = run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path)
        assert_one_clear_answer(result)
        assert not marker.exists(), label
        findings = [f for f in json.loads(result.stdout)["findings"] if f["code"] == "CKPT028"]
        assert findings and target in findings[0]["message"], (label, result.stdout[-2000:])
        assert result.returncode == 1


def test_an_archive_read_like_torch_reads_it(full_run, tmp_path):
    """A harmless xdata.pkl before the malicious data.pkl: the tool judges the member torch.load runs."""
    import torch

    marker = tmp_path / "pwned"
    path = full_run / "checkpoint-6" / "training_args.bin"
    harmless = torch_pickle(path)
    replace_pickle(path, pickle.dumps(Calls(os.system, f"touch {marker}"), protocol=2), before={"xdata.pkl": harmless})
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist()[0].endswith("/xdata.pkl")  # the first *data.pkl, which the old reader took
    with pytest.raises(pickle.UnpicklingError, match="system"):  # the oracle: torch reads the malicious one
        torch.load(path, weights_only=True)
    with pytest.raises(safe_pickle.UnsafePickleError, match="system"):
        safe_pickle.read_training_args(path)
    assert "differ" in inspect_torch_archive(path).suspicious[0]
    result = run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path)
    assert_one_clear_answer(result)
    messages = [f["message"] for f in json.loads(result.stdout)["findings"] if f["code"] == "CKPT028"]
    assert any("xdata.pkl" in message for message in messages), messages
    assert not marker.exists()


def bomb_cases() -> dict[str, bytes]:
    shared: list = []
    for _ in range(40):  # 2**40 leaves as a tree, 40 lists as a graph
        shared = [shared, shared]
    deep = b"\x80\x02}X\x01\x00\x00\x00x" + b"]" * 100_000 + b"a" * 99_999 + b"s."  # {"x": [[[...]]]}
    selfref: list = []
    selfref.append(selfref)
    count = 3_000_000  # a class created 3 million times (GLOBAL once, then memo get + NEWOBJ)
    classes = (b"\x80\x02ctransformers.trainer_utils\nIntervalStrategy\nq\x00" + b"h\x00)\x810" * count + b"N.")
    return {
        "memo bomb": b"\x80\x02Nr\xf0\xff\xff\xff.",  # 9 bytes: LONG_BINPUT at index 4 294 967 280
        "shared references": pickle.dumps({"x": shared}, protocol=2),
        "deep nesting": deep,
        "self-reference": pickle.dumps({"x": selfref}, protocol=2),
        "3M class creations": classes,
        "bytearray(10**12)": b"\x80\x02c__builtin__\nbytearray\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85R.",  # torch allows it
    }


# In a state archive (scanned, never built) only what breaks the allow-list or the scan's budget is a finding: a deep
# or shared structure there costs the scan nothing, and torch's weights_only load runs nothing for it either.
STATE_FINDINGS = {"memo bomb", "3M class creations", "bytearray(10**12)"}


@pytest.mark.parametrize("target", ["training_args.bin", "optimizer.pt"])
@pytest.mark.parametrize("case", list(bomb_cases()))
def test_pickle_bombs_are_findings_in_bounded_time_and_memory(full_run, tmp_path, case, target):
    payload = bomb_cases()[case]
    replace_pickle(full_run / "checkpoint-2" / target, payload)  # an old checkpoint, not the resume point
    started = time.monotonic()
    result = run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path, timeout=60, memory=1 << 30)
    elapsed = time.monotonic() - started
    assert_one_clear_answer(result)
    # an older checkpoint's findings come as one CKPT019 naming them
    said = [f"{f['code']} {f['message']}" for f in json.loads(result.stdout)["findings"] if "checkpoint-2" in f["path"]]
    if target == "training_args.bin" or case in STATE_FINDINGS:
        assert any(("CKPT028" in line or "CKPT010" in line) and target in line for line in said), (case, said)
    assert elapsed < 20, elapsed  # the diagnose itself takes a few seconds; the bomb adds at most ~1 s
# --- shellcost ---
# `resumedoctor env` prints only quoted values and escaped comments, whatever a run's log, the recorded
# decision or a folder name holds; W&B identities are checked as wandb.Settings checks them; the cost of an
# output_dir is linear in its checkpoints (one listing, each seal read once).


EVAL = 'eval "$(resumedoctor env "$TARGET" --wandb-dir "$WANDB_FOLDER")" && env'
MARKERS = ("pwned", "pwned2", "pwned3")


def _write_wandb_log(path: Path, records: list[bytes]) -> None:
    """A `.wandb` log framed as wandb writes it (32 KiB blocks, CRC-32 chunks) around the given records."""
    from resumedoctor.integrations.wandb.log_reader import (
        _TYPE_CRC,
        BLOCK_LEN,
        CHUNK,
        FIRST,
        FULL,
        HEADER,
        LAST,
        MIDDLE,
    )

    out = bytearray(HEADER.pack(b":W&B", 0xBEE1, 0))
    for payload in records:
        first = True
        while True:
            room = BLOCK_LEN - len(out) % BLOCK_LEN
            if room < CHUNK.size:
                out += b"\0" * room
                continue
            piece, payload = payload[:room - CHUNK.size], payload[room - CHUNK.size:]
            kind = (FULL if not payload else FIRST) if first else (LAST if not payload else MIDDLE)
            out += CHUNK.pack(zlib.crc32(piece, _TYPE_CRC[kind]) & 0xFFFFFFFF, len(piece), kind) + piece
            first = False
            if not payload:
                break
    path.write_bytes(bytes(out))


def _crafted_world(wandb_world, tmp_path: Path, **run_fields: str) -> tuple[Path, Path]:
    """A copy of the real offline W&B run and its output_dir, its run record's fields replaced."""
    from wandb.proto import wandb_internal_pb2

    from resumedoctor.integrations.wandb.log_reader import (
        RecordStream,
        iter_record_bytes,
    )

    output_dir, wandb_dir = tmp_path / wandb_world["output_dir"].name, tmp_path / "wandb"
    shutil.copytree(wandb_world["output_dir"], output_dir)
    shutil.copytree(wandb_world["wandb_dir"], wandb_dir, symlinks=True)
    log = next(wandb_dir.glob(f"offline-run-*/run-{wandb_world['run_id']}.wandb"))
    records = []
    for raw in iter_record_bytes(log, RecordStream()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            for name, value in run_fields.items():
                setattr(record.run, name, value)
        records.append(record.SerializeToString())
    _write_wandb_log(log, records)
    return output_dir, wandb_dir


def _eval_env(shell: str, target: Path, wandb_dir: Path, cwd: Path, environ: dict | None = None) -> dict[str, str]:
    """The environment after `eval "$(resumedoctor env TARGET)"` in a real shell (NUL-free `env` output parsed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", TARGET=str(target),
               WANDB_FOLDER=str(wandb_dir), **(environ or {}))
    result = subprocess.run([shell, "-c", EVAL.replace("&& env", "&& python -c 'import os, json; "
                                                        "print(json.dumps(dict(os.environ)))'")],
                            capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not any((cwd / marker).exists() for marker in MARKERS), "a crafted value ran as a command"
    return json.loads(result.stdout.splitlines()[-1])


def _printed(target: Path, wandb_dir: Path, cwd: Path) -> str:
    result = run_cli("env", str(target), "--wandb-dir", str(wandb_dir), cwd=cwd,
                     env={k: "" for k in os.environ if k.startswith("WANDB_")})
    assert_one_clear_answer(result)
    assert all(line.startswith(("# ", "export ", "unset ")) for line in result.stdout.splitlines()), result.stdout
    assert all(ch.isprintable() for ch in result.stdout.replace("\n", ""))
    return result.stdout


INVALID_RUN_IDS = {
    "newline": "x\ntouch pwned\n#",
    "quote": "x'$(touch pwned)'",
    "bidi": "abc\u202edef",
    "separator": "abc\u2028touch pwned",
}


@pytest.mark.parametrize("shell", ["bash", "sh"])
@pytest.mark.parametrize("case", sorted(INVALID_RUN_IDS))
def test_env_exports_nothing_of_a_run_id_wandb_refuses(wandb_world, tmp_path, shell, case):
    output_dir, wandb_dir = _crafted_world(wandb_world, tmp_path, run_id=INVALID_RUN_IDS[case])
    after = _eval_env(shell, output_dir, wandb_dir, tmp_path, {"WANDB_RESUME": "must"})
    assert "WANDB_RUN_ID" not in after and "WANDB_RESUME" not in after  # nothing crafted, the stale one unset
    printed = _printed(output_dir, wandb_dir, tmp_path)
    assert "WANDB012" in printed and "export WANDB_RUN_ID" not in printed
    report = json.loads(run_cli("diagnose", str(output_dir), "--wandb-dir", str(wandb_dir), "--format", "json",
                                cwd=tmp_path).stdout)
    assert [f["severity"] for f in report["findings"] if f["code"] == "WANDB012"] == ["warning"]


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_env_exports_a_shell_hostile_project_wandb_accepts_exactly(wandb_world, tmp_path, shell):
    project = "p$(touch pwned)`touch pwned2`;\"x\" ${HOME} * & | ! ~"
    from wandb.sdk.wandb_settings import Settings as WandbSettings

    assert WandbSettings(project=project).project == project  # W&B accepts it: it must be exported as it is
    output_dir, wandb_dir = _crafted_world(wandb_world, tmp_path, project=project)
    after = _eval_env(shell, output_dir, wandb_dir, tmp_path)
    assert after["WANDB_PROJECT"] == project
    assert after["WANDB_RUN_ID"] == wandb_world["run_id"] and after["WANDB_RESUME"] == "allow"


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_env_ignores_a_crafted_recorded_decision(wandb_world, tmp_path, shell):
    output_dir, wandb_dir = _crafted_world(wandb_world, tmp_path)
    (output_dir / ".resumedoctor").mkdir()
    (output_dir / ".resumedoctor" / "wandb.json").write_text(json.dumps({
        "version": 1, "checkpoint": "checkpoint-6\u2028touch pwned3", "global_step": 6,
        "run_id": "x\ntouch pwned\n", "mode": "resume\ntouch pwned2", "step": None, "project": "p\rq",
        "entity": None, "wandb_dir": None, "offline": True, "reason": "\x1b]0;title\x07"}))
    after = _eval_env(shell, output_dir, wandb_dir, tmp_path)
    assert after["WANDB_RUN_ID"] == wandb_world["run_id"]  # the current decision, not the recorded one
    printed = _printed(output_dir, wandb_dir, tmp_path)
    assert "is not applied" in printed and "\x1b" not in printed
    report = json.loads(run_cli("diagnose", str(output_dir), "--wandb-dir", str(wandb_dir), "--format", "json",
                                cwd=tmp_path).stdout)
    assert any(f["code"] == "WANDB009" and "cannot be applied" in f["message"] for f in report["findings"])


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_env_with_a_checkpoint_name_ending_in_a_newline(wandb_world, tmp_path, shell):
    from transformers.trainer_utils import get_last_checkpoint

    output_dir, wandb_dir = _crafted_world(wandb_world, tmp_path)
    (output_dir / "checkpoint-6").rename(output_dir / "checkpoint-6\n")
    # transformers' `^checkpoint\-(\d+)$` matches before a final newline: the resume really starts there.
    assert get_last_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-6\n")
    after = _eval_env(shell, output_dir, wandb_dir, tmp_path, {"WANDB_FORK_FROM": "stale?_step=1"})
    assert after["WANDB_RUN_ID"] == wandb_world["run_id"] and after["WANDB_RESUME"] == "allow"
    assert "WANDB_FORK_FROM" not in after
    printed = _printed(output_dir, wandb_dir, tmp_path)
    assert printed.splitlines()[0].endswith("-> checkpoint-6\\n")
    result = run_cli("diagnose", str(output_dir), "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["resume_from"] == str(output_dir / "checkpoint-6\n")


@pytest.mark.parametrize("value", [
    "abc123", "", " a", "a ", "   ", "a:b", "a;b", "a,b", "a#b", "a?b", "a/b", "a'b", "a\nb", "a\tb", "a-b_c.d",
    "p$(x)`y`", "a\\b", "a%b", "x" * 128, "x" * 129, "a\rb",
])
def test_identity_rules_agree_with_wandb_settings(value):
    """Our run-id and project rules against wandb's own Settings validators (the oracle); we refuse more
    only where a value holds an unprintable character (stated in wandb_runs)."""
    from wandb.sdk.wandb_settings import Settings as WandbSettings

    from resumedoctor.integrations.wandb.runs import name_problem, run_id_problem
    from resumedoctor.io.printable import unprintable

    for field, ours in (("run_id", run_id_problem), ("project", name_problem)):
        try:
            WandbSettings(**{field: value})
            accepted = True
        except Exception:  # noqa: BLE001 - wandb raises UsageError or pydantic's ValidationError
            accepted = False
        if field == "project" and value == "":
            continue  # W&B takes an empty project as "not set"; a log naming "" is read as no project
        if accepted and unprintable(value):
            assert ours(value) is not None
        else:
            assert (ours(value) is None) == accepted, (field, value, ours(value))


def test_many_checkpoints_are_listed_once_and_each_seal_is_read_once(full_run, tmp_path, monkeypatch):
    from resumedoctor.engine.runner import load_registry, new_context, run_checks
    from resumedoctor.engine.settings import Settings
    from resumedoctor.engine.target import resolve_target

    count, sealed = 300, 150
    output_dir = tmp_path / "many"
    hard_linked_checkpoints(full_run / "checkpoint-6", output_dir, count, sealed)
    registry = load_registry()
    listed: list[str] = []
    real_scandir, real_listdir = os.scandir, os.listdir
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.append(os.fspath(path)) or real_scandir(path))
    monkeypatch.setattr(os, "listdir", lambda path=".": listed.append(os.fspath(path)) or real_listdir(path))
    ctx = new_context(resolve_target(output_dir), Settings(), registry=registry, environ={})
    report = run_checks(ctx, registry)
    assert listed.count(str(output_dir)) == 1  # one listing of the output_dir for the whole run
    assert ctx.loads["read_seal"] == sealed  # every seal read once, however many checkpoints ask
    # The ledger's answer against a count made here: the saves after the last seal, and the seal it names.
    stopped = [f for f in report.findings if f.code == "CKPT035"]
    assert [f.path for f in stopped] == [str(output_dir / f"checkpoint-{10 * count}")]
    assert f"checkpoint-{10 * sealed} was sealed at save time, and {count - sealed} saves since" in stopped[0].message
    assert not [f for f in report.findings if f.severity.value == "error"]


# --- terminal: reports quote names from the output_dir, escaped ---


def test_text_report_and_errors_show_crafted_names_escaped(full_run, tmp_path):
    """A folder name with an escape sequence (clear screen) and a forged line is shown as text, not obeyed."""
    crafted = tmp_path / "out"
    shutil.copytree(full_run, crafted)
    evil = "checkpoint-6\x1b[2J\x1b[31m\nerror   CKPT999 forged"
    (crafted / "checkpoint-6").rename(crafted / evil)
    (crafted / evil / "trainer_state.json").write_text("{")  # a finding that quotes the folder's path
    result = run_cli("diagnose", str(crafted), cwd=tmp_path)
    assert_one_clear_answer(result)
    assert "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout
    assert not any(line.startswith("error   CKPT999") for line in result.stdout.splitlines())
    fixed = run_cli("fix", str(crafted), "--auto", "--dry-run", cwd=tmp_path)
    assert_one_clear_answer(fixed)
    assert "\x1b" not in fixed.stdout + fixed.stderr
# --- readers ---
# Every file inside an output_dir is read through resumedoctor.io.bounded_read: FIFOs, devices and sockets are
# findings (CKPT027), sizes and nesting are bounded, YAML aliases have a budget, damaged values are findings,
# and settings shipped inside the folder are reported (ENV008), never applied.



SPECIAL_NAMES = ["model.safetensors", "trainer_state.json", "optimizer.pt", "training_args.bin", "config.json"]
QUICK = 30  # seconds: every case here answers in about one; a FIFO read would block until the timeout


def _recipe(folder: Path, output_dir: Path, extra: str = "") -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"output_dir: {output_dir}\n" + DEMO_RUN_ARGS + "resume_from_checkpoint: true\n" + extra)
    return recipe


def _findings(result: subprocess.CompletedProcess) -> list[dict]:
    assert_one_clear_answer(result)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)["findings"]


def _every_command_answers(run: Path, recipe: Path, cwd: Path) -> None:
    """diagnose, fix, env, config and launch --dry-run on a crafted run: each in bounded time and memory."""
    for args in (["fix", str(run), "--auto", "--dry-run", "--unsafe"], ["env", str(run)], ["config", str(recipe), str(run)],
                 ["launch", "--config", str(recipe), "--dry-run"], ["diagnose", str(run), "--config", str(recipe)]):
        assert_one_clear_answer(run_cli(*args, cwd=cwd, timeout=QUICK))


@pytest.mark.parametrize("name", SPECIAL_NAMES)
def test_a_fifo_in_a_checkpoint_is_a_finding_and_blocks_nothing(full_run, tmp_path, name):
    fifo = full_run / "checkpoint-6" / name
    fifo.unlink()
    os.mkfifo(fifo)
    sibling = tmp_path / "sibling"
    shutil.copytree(full_run / "checkpoint-2", sibling)
    before = tree_digest(sibling)
    findings = _findings(run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path, timeout=QUICK))
    about = [f for f in findings if f["path"] == str(fifo)]
    assert [(f["code"], f["severity"]) for f in about] == [("CKPT027", "error")], findings  # once, as an error
    assert "FIFO" in about[0]["message"] and "not a regular file" in about[0]["message"]
    resume = next(f for f in findings if f["code"] == "CKPT018")  # the resume moves to the newest whole checkpoint
    assert "checkpoint-4" in resume["message"]
    _every_command_answers(full_run, _recipe(tmp_path, full_run), tmp_path)
    assert tree_digest(sibling) == before and stat_is_fifo(fifo)


def stat_is_fifo(path: Path) -> bool:
    import stat

    return stat.S_ISFIFO(os.lstat(path).st_mode)


def test_a_link_to_dev_zero_is_read_by_nothing(full_run, tmp_path):
    for name in ("trainer_state.json", "model.safetensors", "optimizer.pt"):
        (full_run / "checkpoint-6" / name).unlink()
        (full_run / "checkpoint-6" / name).symlink_to("/dev/zero")
    result = run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path, timeout=QUICK, memory=1 << 30)
    codes = {(Path(f["path"]).name, f["code"]) for f in _findings(result)}
    assert {(name, "CKPT027") for name in ("trainer_state.json", "model.safetensors", "optimizer.pt")} <= codes
    assert result.returncode == 1
    _every_command_answers(full_run, _recipe(tmp_path, full_run), tmp_path)


def test_a_socket_in_a_sealed_checkpoint_is_a_finding_under_deep(full_run, tmp_path):
    import socket

    assert run_cli("seal", str(full_run), cwd=tmp_path).returncode == 0
    target = full_run / "checkpoint-6" / "rng_state.pth"
    target.unlink()
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(target))
        findings = _findings(run_cli("diagnose", str(full_run), "--deep", "--format", "json", cwd=tmp_path, timeout=QUICK))
    finally:
        server.close()
    about = {f["code"] for f in findings if f["path"] in (str(target), str(full_run / "checkpoint-6" / "resumedoctor.seal.json"))}
    assert "CKPT027" in about and "CKPT029" in about  # the socket, and the seal that named a real file there


def test_linked_folders_are_not_walked_out_of_the_checkpoint(full_run, tmp_path):
    checkpoint = full_run / "checkpoint-6"
    (checkpoint / "up").symlink_to("..")  # a loop back into the output_dir
    (checkpoint / "outside").symlink_to(tmp_path)  # a way out
    (tmp_path / "secret.txt").write_text("not the checkpoint's")
    assert run_cli("seal", str(full_run), cwd=tmp_path, timeout=QUICK).returncode == 0
    sealed = json.loads((checkpoint / "resumedoctor.seal.json").read_text())["files"]
    assert not any(name.startswith(("up/", "outside/")) for name in sealed), sorted(sealed)
    assert "model.safetensors" in sealed
    assert_one_clear_answer(run_cli("diagnose", str(full_run), "--deep", cwd=tmp_path, timeout=QUICK))


def test_a_seal_naming_files_outside_the_checkpoint_is_not_followed(full_run, tmp_path):
    assert run_cli("seal", str(full_run), cwd=tmp_path).returncode == 0
    seal_path = full_run / "checkpoint-6" / "resumedoctor.seal.json"
    seal = json.loads(seal_path.read_text())
    (tmp_path / "outside.txt").write_text("x")
    for escape in ("../../outside.txt", str(tmp_path / "outside.txt")):
        seal["files"] = {**seal["files"], escape: {"size": 1}}
        seal_path.write_text(json.dumps(seal))
        findings = _findings(run_cli("diagnose", str(full_run / "checkpoint-6"), "--deep", "--format", "json",
                                     cwd=tmp_path, timeout=QUICK))
        assert [f["code"] for f in findings if f["path"] == str(seal_path)] == ["CKPT031"]  # not a seal: never used


BILLION_LAUGHS = 'lol0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"lol{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("bomb", [BILLION_LAUGHS, "loop: &x [1, *x]\n", "deep: " + "[" * 50000 + "]" * 50000 + "\n"],
                         ids=["billion-laughs", "recursive-alias", "deep-nesting"])
def test_a_yaml_bomb_recipe_is_one_line_fast(full_run, tmp_path, bomb):
    recipe = _recipe(tmp_path, full_run, bomb)
    commands = (["diagnose", str(full_run), "--config", str(recipe)], ["config", str(recipe)],
                ["launch", "--config", str(recipe), "--dry-run"], ["fix", str(full_run), "--auto", "--config", str(recipe)])
    before = tree_digest(full_run)
    for args in commands:
        result = run_cli(*args, cwd=tmp_path, timeout=QUICK, memory=1 << 30)
        assert_one_clear_answer(result)
        if result.returncode == 2:
            assert len(result.stderr.strip().splitlines()) == 1 and "recipe.yaml" in result.stderr, result.stderr
        else:  # the recipe families report it as a finding
            assert "recipe.yaml" in result.stdout and ("refused" in result.stdout or "nested" in result.stdout)
    assert tree_digest(full_run) == before


def _safetensors_with_first_dtype(path: Path, dtype) -> None:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    header[next(name for name in header if name != "__metadata__")]["dtype"] = dtype
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size:])


def _edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **values}))


DAMAGED = {  # the "damaged values crash" cases: each is a finding on checkpoint-6 now
    "log_history: 5": (lambda c: _edit_json(c / "trainer_state.json", log_history=5), "CKPT013", "error"),
    "a 5000-digit step": (lambda c: (c / "trainer_state.json").write_text(
        (c / "trainer_state.json").read_text().replace('"global_step": 6', '"global_step": ' + "9" * 5000)),
        "CKPT013", "error"),
    "stateful_callbacks as a list": (lambda c: _edit_json(c / "trainer_state.json", stateful_callbacks=[1]),
                                     "CKPT013", "error"),
    "global_step NaN": (lambda c: (c / "trainer_state.json").write_text(
        (c / "trainer_state.json").read_text().replace('"global_step": 6', '"global_step": NaN')), "CKPT013", "error"),
    "a dtype that is a list": (lambda c: _safetensors_with_first_dtype(c / "model.safetensors", ["F32"]),
                               "CKPT004", "error"),
    "seal entries that are not objects": (lambda c: _edit_json(c / "resumedoctor.seal.json",
                                                               files={"model.safetensors": 5}), "CKPT031", "warning"),
    "a seal nested 100k deep": (lambda c: (c / "resumedoctor.seal.json").write_text("[" * 100_000 + "]" * 100_000),
                                "CKPT031", "warning"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_values_are_findings(full_run, tmp_path, case):
    damage, code, severity = DAMAGED[case]
    assert run_cli("seal", str(full_run), cwd=tmp_path).returncode == 0
    damage(full_run / "checkpoint-6")
    recipe = _recipe(tmp_path, full_run)
    findings = _findings(run_cli("diagnose", str(full_run), "--config", str(recipe), "--format", "json",
                                 cwd=tmp_path, timeout=QUICK))
    assert any(f["code"] == code and f["severity"] == severity and "checkpoint-6" in f["path"] for f in findings), findings
    _every_command_answers(full_run, recipe, tmp_path)


def test_an_unreadable_checkpoint_folder_is_a_finding(full_run, tmp_path):
    folder = full_run / "checkpoint-6"
    folder.chmod(0)
    try:
        result = run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path, timeout=QUICK)
        findings = _findings(result)
        _every_command_answers(full_run, _recipe(tmp_path, full_run), tmp_path)
    finally:
        folder.chmod(0o755)
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 folder anyway: only 'no crash' could be checked here")
    assert any(f["code"] == "CKPT027" and f["path"] == str(folder) for f in findings), findings


FUZZ_VALUES = {"a list": [1, 2], "a string": "x", "null": None, "a huge int": "9" * 5000, "NaN": float("nan")}


def _json_with(data: dict, key: str | None, value) -> str:
    """data with one top-level value replaced (key None: the whole document), huge ints as raw digits."""
    raw = value if isinstance(value, str) and value.isdigit() else json.dumps(value)
    if key is None:
        return raw
    return "{" + ", ".join(f"{json.dumps(k)}: {raw if k == key else json.dumps(v)}" for k, v in data.items()) + "}"


def test_fuzzing_every_top_level_value_never_crashes(full_run, tmp_path):
    """In-process (hundreds of runs): `--debug` lets any crash out as an exception, which the assertion names."""
    from click.testing import CliRunner

    from resumedoctor.cli.app import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["seal", str(full_run)]).exit_code == 0
    recipe = _recipe(tmp_path, full_run)
    crashes = []
    for name in ("trainer_state.json", "config.json", "resumedoctor.seal.json"):
        path = full_run / "checkpoint-6" / name
        original = path.read_bytes()
        data = json.loads(original)
        for key in [None, *data]:
            for label, value in FUZZ_VALUES.items():
                path.write_text(_json_with(data, key, value))
                result = runner.invoke(cli, ["--debug", "diagnose", str(full_run), "--config", str(recipe)])
                if result.exit_code not in (0, 1) or result.exception and not isinstance(result.exception, SystemExit):
                    crashes.append(f"{name} {key}={label}: {result.exception!r}")
        path.write_bytes(original)
    assert not crashes, crashes


def test_settings_shipped_inside_the_output_dir_are_reported_not_applied(full_run, tmp_path):
    model = full_run / "checkpoint-6" / "model.safetensors"
    with open(model, "r+b") as handle:
        handle.truncate(model.stat().st_size - 4096)
    (full_run / "pyproject.toml").write_text('[tool.resumedoctor]\nignore = ["CKPT"]\n')
    (full_run / "checkpoint-6" / "resumedoctor.toml").write_text('severity = { CKPT = "info" }\n')
    for cwd, path in ((tmp_path, full_run), (full_run, Path(".")), (full_run / "checkpoint-6", Path("."))):
        result = run_cli("diagnose", str(path), "--format", "json", cwd=cwd, timeout=QUICK)
        findings = _findings(result)
        assert result.returncode == 1, findings  # the truncated checkpoint is an error again
        assert any(f["code"] == "CKPT003" and f["severity"] == "error" for f in findings)
        shipped = [f for f in findings if f["code"] == "ENV008"]
        assert shipped and all(f["severity"] == "info" and "not applied" in f["message"] for f in shipped), findings
    assert "ignore CKPT" in " ".join(f["message"] for f in shipped)


# --- found by trying to break it: a shifted zip, a bare pickle, a hard-linked lock, names in messages ---


class _RunsTouch:
    """A pickle payload: unpickling it runs `touch MARKER` (never unpickled here; torch.load is the oracle)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _end_record(data: bytes) -> tuple[int, int, int, int]:
    """(member count, directory size, directory offset, end record position) of a zip without a comment."""
    end = len(data) - 22
    assert data[end:end + 4] == b"PK\x05\x06"
    _, _, _, _, count, size, offset, _ = struct.unpack("<4sHHHHIIH", data[end:end + 22])
    return count, size, offset, end


def shifted_archive(payload: bytes, decoy: bytes) -> bytes:
    """One file, two archives: torch's reader follows the end record to `payload`; Python's zipfile sees
    the directory is not where the record says, assumes prepended bytes, shifts, and reads `decoy`."""
    count, size, offset, _ = _end_record(payload)
    decoy_count, decoy_size, decoy_offset, _ = _end_record(decoy)
    assert (count, size) == (decoy_count, decoy_size)
    payload_locals, payload_directory = payload[:offset], payload[offset:offset + size]
    decoy_locals, directory = decoy[:decoy_offset], bytearray(decoy[decoy_offset:decoy_offset + decoy_size])
    delta = len(payload_locals) + size - (size + len(decoy_locals))  # where the decoy's locals land, minus the shift
    position = 0
    while position < len(directory):
        name_length, extra_length, comment_length = struct.unpack("<HHH", directory[position + 28:position + 34])
        (local_offset,) = struct.unpack("<I", directory[position + 42:position + 46])
        struct.pack_into("<I", directory, position + 42, local_offset + delta)
        position += 46 + name_length + extra_length + comment_length
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, size, len(payload_locals), 0)
    return payload_locals + payload_directory + decoy_locals + bytes(directory) + end


def test_a_zip_whose_readers_disagree_is_ckpt028(full_run, tmp_path):
    import io as _io

    import torch

    def saved(value) -> bytes:
        buffer = _io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()

    marker = tmp_path / "MARKER_RAN"
    data = shifted_archive(saved(_RunsTouch(marker)), saved({"a": 1}))
    # The oracle: Python's zipfile reads the harmless archive, torch reads the payload (refused by weights_only).
    with zipfile.ZipFile(_io.BytesIO(data)) as archive:
        assert b"system" not in archive.read("archive/data.pkl")
    with pytest.raises(pickle.UnpicklingError, match="system"):
        torch.load(_io.BytesIO(data), weights_only=True)
    output_dir = tmp_path / "out"
    shutil.copytree(full_run, output_dir)
    for name in ("training_args.bin", "rng_state.pth"):
        (output_dir / "checkpoint-6" / name).write_bytes(data)
    result = run_cli("diagnose", str(output_dir), "--format", "json", cwd=tmp_path)
    assert_one_clear_answer(result)
    flagged = {Path(f["path"]).name for f in json.loads(result.stdout)["findings"]
               if f["code"] == "CKPT028" and f["severity"] == "error"}
    assert flagged == {"training_args.bin", "rng_state.pth"}, result.stdout
    assert result.returncode == 1 and not marker.exists()


def test_a_bare_pickle_payload_in_the_old_format_is_ckpt028_not_a_warning(full_run, tmp_path):
    import torch

    marker = tmp_path / "MARKER_RAN"
    output_dir = tmp_path / "out"
    shutil.copytree(full_run, output_dir)
    (output_dir / "checkpoint-6" / "training_args.bin").write_bytes(pickle.dumps(_RunsTouch(marker), protocol=2))
    # an honest file in torch's pre-zip format, beside it, stays the "not verified" warning
    torch.save({"state": {}, "param_groups": []}, output_dir / "checkpoint-6" / "optimizer.pt",
               _use_new_zipfile_serialization=False)
    result = run_cli("diagnose", str(output_dir), "--format", "json", cwd=tmp_path)
    assert_one_clear_answer(result)
    findings = {(Path(f["path"]).parent.name, Path(f["path"]).name, f["code"]): f
                for f in json.loads(result.stdout)["findings"]}
    unsafe = findings[("checkpoint-6", "training_args.bin", "CKPT028")]
    assert unsafe["severity"] == "error" and "system" in unsafe["message"]
    assert findings[("checkpoint-6", "optimizer.pt", "CKPT025")]["severity"] == "warning"
    assert not any(key[:2] == ("checkpoint-6", "optimizer.pt") and key[2] == "CKPT028" for key in findings)
    assert not marker.exists()


def test_a_hard_linked_lock_is_refused_and_its_other_name_unchanged(full_run, tmp_path):
    output_dir = tmp_path / "out"
    shutil.copytree(full_run, output_dir)
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    (output_dir / ".resumedoctor").mkdir()
    os.link(precious, output_dir / ".resumedoctor" / "lock")
    result = run_cli("fix", str(output_dir), "--auto", "--unsafe", cwd=tmp_path)
    assert result.returncode == 2 and "hard link" in result.stderr, result.stderr
    assert_one_clear_answer(result)
    assert precious.read_text() == "precious\n"


def test_a_newline_in_a_checkpoint_name_does_not_split_report_lines(full_run, tmp_path):
    output_dir = tmp_path / "out"
    shutil.copytree(full_run, output_dir)
    (output_dir / "checkpoint-6").rename(output_dir / "checkpoint-6\nforged line")
    (output_dir / "checkpoint-6\nforged line" / "model.safetensors").write_bytes(b"\0" * 8)
    result = run_cli("diagnose", str(output_dir), cwd=tmp_path)
    assert_one_clear_answer(result)
    assert "checkpoint-6\\nforged line" in result.stdout
    assert not any(line.lstrip().startswith("forged line") for line in result.stdout.splitlines()), result.stdout


def test_a_linked_checkpoint_is_never_offered_a_fix_that_fix_refuses(full_run, tmp_path):
    """fix never moves a link; diagnose must not promise that it will (newer-than-usable quarantine)."""
    output_dir, elsewhere = tmp_path / "out", tmp_path / "bigdisk"
    shutil.copytree(full_run, output_dir)
    elsewhere.mkdir()
    (output_dir / "checkpoint-6").rename(elsewhere / "checkpoint-6")
    (output_dir / "checkpoint-6").symlink_to(elsewhere / "checkpoint-6")
    (elsewhere / "checkpoint-6" / "model.safetensors").write_bytes(b"\0" * 8)
    before = tree_digest(elsewhere)
    report = json.loads(run_cli("diagnose", str(output_dir), "--format", "json", cwd=tmp_path).stdout)
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert errors and not any(f["fix"] for f in errors), errors
    fixed = run_cli("fix", str(output_dir), "--auto", "--unsafe", cwd=tmp_path)
    assert_one_clear_answer(fixed)
    assert fixed.returncode == 1 and (output_dir / "checkpoint-6").is_symlink() and tree_digest(elsewhere) == before
# --- argsclass ---


def _raw_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _state_body(state: dict) -> bytes:
    """The opcodes of `state` without PROTO and STOP, to splice into a hand-built pickle."""
    import io

    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.fast = True  # no memo: a value can be spliced by its bytes
    pickler.dump(state)
    return buffer.getvalue()[2:-1]


def _real_state(run: Path) -> dict:
    import torch

    return dict(vars(torch.load(run / "checkpoint-6" / "training_args.bin", weights_only=False)))


def _rebuilt(module: str, name: str, state: dict, *, args: bytes = b")") -> bytes:
    """`module.name` rebuilt as pickle stores a dataclass: NEWOBJ on `args` (empty), then BUILD with `state`."""
    return b"\x80\x02" + _raw_global(module, name) + args + b"\x81" + _state_body(state) + b"b."


def _reconstructed(module: str, name: str, state: dict, base: tuple[str, str] = ("__builtin__", "object")) -> bytes:
    """Protocols 0-1: copyreg._reconstructor(cls, base, None) through REDUCE, then BUILD."""
    return (b"\x80\x02" + _raw_global("copy_reg", "_reconstructor") + b"(" + _raw_global(module, name)
            + _raw_global(*base) + b"Nt" + b"R" + _state_body(state) + b"b.")


def _diagnose_with_args(run: Path, payload: bytes, cwd: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    replace_pickle(run / "checkpoint-6" / "training_args.bin", payload)
    result = run_cli("diagnose", str(run), "--format", "json", cwd=cwd)
    assert_one_clear_answer(result)
    return result, json.loads(result.stdout)["findings"]


def test_a_run_own_arguments_class_is_a_warning_read_without_importing_it(full_run, tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "lab_config.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass MyArgs: pass\n")
    state = _real_state(full_run)
    for payload in (_rebuilt("lab_config", "MyArgs", state), _reconstructed("lab_config", "MyArgs", state)):
        result, findings = _diagnose_with_args(full_run, payload, tmp_path)
        assert not marker.exists(), "the class's module was imported"
        assert [f["code"] for f in findings if f["severity"] == "error"] == [], findings
        custom = [f for f in findings if f["code"] == "CKPT037"]
        assert custom and custom[0]["severity"] == "warning" and "lab_config.MyArgs" in custom[0]["message"]
        assert "lab_config" in custom[0]["hint"] and "weights_only=False" in custom[0]["hint"]
        assert result.returncode == 0
    # the oracle: torch.load(weights_only=False) really imports it (run in a child, cwd on sys.path)
    subprocess.run([sys.executable, "-c", "import sys, torch; sys.path.insert(0, '.'); "
                    f"torch.load({str(full_run / 'checkpoint-6' / 'training_args.bin')!r}, weights_only=False)"],
                   cwd=tmp_path, capture_output=True, timeout=120)
    assert marker.exists()


def _unlisted_attacks(state: dict) -> dict[str, bytes]:
    args_state = _state_body(state)
    return {
        # the class called through REDUCE: a real load runs its __init__ (or whatever it is)
        "REDUCE": b"\x80\x02" + _raw_global("lab_config", "MyArgs") + b"(" + args_state + b"tR.",
        "NEWOBJ with arguments": _rebuilt("lab_config", "MyArgs", state, args=b"(X\x02\x00\x00\x00rmt."),
        "state not arguments": _rebuilt("lab_config", "MyArgs", {"command": "rm -rf ~"}),
        "stdlib class rebuilt": _rebuilt("subprocess", "Popen", state),
        "os.system rebuilt": _rebuilt("os", "system", state),
        "class as a value": _rebuilt("transformers.training_args", "TrainingArguments",
                                     {**state, "hook": "X"}).replace(b"X\x04\x00\x00\x00hookX\x01\x00\x00\x00X",
                                                                     b"X\x04\x00\x00\x00hook" + _raw_global("lab_config", "Hook")),
        "reconstructor with another base": _reconstructed("lab_config", "MyArgs", state, ("os", "system")),
        "reconstructor as a value": _rebuilt("transformers.training_args", "TrainingArguments",
                                             {**state, "hook": "X"}).replace(
            b"X\x04\x00\x00\x00hookX\x01\x00\x00\x00X", b"X\x04\x00\x00\x00hook" + _raw_global("copy_reg", "_reconstructor")),
    }


@pytest.mark.parametrize("case", ["REDUCE", "NEWOBJ with arguments", "state not arguments", "stdlib class rebuilt",
                                  "os.system rebuilt", "class as a value", "reconstructor with another base",
                                  "reconstructor as a value"])
def test_other_uses_of_an_unlisted_global_stay_ckpt028(full_run, tmp_path, case):
    import torch

    payload = _unlisted_attacks(_real_state(full_run))[case]
    assert b"hookX\x01\x00\x00\x00X" not in payload  # the splice of a global as a value happened
    path = full_run / "checkpoint-6" / "training_args.bin"
    result, findings = _diagnose_with_args(full_run, payload, tmp_path)
    with pytest.raises(pickle.UnpicklingError):  # the oracle: torch's restricted unpickler refuses it too
        torch.load(path, weights_only=True)
    assert [f["code"] for f in findings if f["code"] in ("CKPT028", "CKPT037")] == ["CKPT028"], (case, findings)
    assert result.returncode == 1


def test_an_unlisted_class_in_a_state_pickle_stays_ckpt028(full_run, tmp_path):
    checkpoint = full_run / "checkpoint-6"
    replace_pickle(checkpoint / "scheduler.pt", _rebuilt("lab_config", "MyArgs", _real_state(full_run)))
    result = run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path)
    assert_one_clear_answer(result)
    codes = [f["code"] for f in json.loads(result.stdout)["findings"]]
    assert "CKPT028" in codes and "CKPT037" not in codes and result.returncode == 1
# --- memory ---
# Memory is bounded as well as bytes: a JSON file may hold at most bounded_read.MAX_JSON_VALUES values (a 210 MiB
# log of 10 M entries would cost ~5 GB parsed), hard links are parsed once, a MemoryError is one line (exit 2),
# and a W&B log is judged by its header before it is read, then read one block at a time.


def _write_trainer_state(path: Path, entry: str, count: int) -> None:
    """The real trainer_state with `count` copies of `entry` as log_history, written as text (never held parsed)."""
    state = json.loads(path.read_text())
    head, tail = json.dumps({**state, "log_history": "@@"}).split('"@@"')
    chunk = ",".join([entry] * 100_000)
    with open(path, "w") as handle:
        handle.write(head + "[")
        for index in range(count // 100_000):
            handle.write(("," if index else "") + chunk)
        handle.write("]" + tail)


def test_a_trainer_state_of_ten_million_log_entries_is_refused_before_parsing(full_run, tmp_path):
    state = full_run / "checkpoint-6" / "trainer_state.json"
    _write_trainer_state(state, '{"loss":0.1,"step":1}', 10_000_000)
    assert 200 << 20 < state.stat().st_size < 256 << 20  # under the byte bound: only the value bound stops it
    for other in ("checkpoint-2", "checkpoint-4"):  # the breaker's hard links: one file in every checkpoint
        (full_run / other / "trainer_state.json").unlink()
        os.link(state, full_run / other / "trainer_state.json")
    started = time.monotonic()
    result = run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path, timeout=120, memory=2 << 30)
    findings = {(f["code"], f["severity"], f["path"]): f["message"] for f in _findings(result)}
    refused = findings[("CKPT013", "error", str(state))]  # the older checkpoints' are summed up by CKPT019
    assert "refused" in refused and "more than 20,000,000 JSON values" in refused, findings
    unusable = {path for code, severity, path in findings if (code, severity) == ("CKPT019", "warning")}
    assert {Path(path).name for path in unusable} == {"checkpoint-2", "checkpoint-4"}, findings
    assert any(code == "CKPT018" and "no checkpoint here is usable" in message
               for (code, _, _), message in findings.items()), findings
    assert result.returncode == 1 and time.monotonic() - started < 90


def test_a_realistic_big_trainer_state_is_read_and_judged_normally(full_run, tmp_path):
    """200 000 entries of 20 keys (4 M values, 90 MiB), more than a week of GRPO logging: no false alarm."""
    state = full_run / "checkpoint-6" / "trainer_state.json"
    entry = json.dumps({**{f"train/metric_{i}": 0.123456789 + i for i in range(18)}, "epoch": 0.5, "step": 6})
    _write_trainer_state(state, entry, 200_000)
    result = run_cli("diagnose", str(full_run), "--format", "json", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, _findings(result)
    assert not [f for f in _findings(result) if f["severity"] == "error"]
    assert json.loads(result.stdout)["run"]["global_step"] == 6  # the state was read, not skipped


def test_running_out_of_memory_in_a_family_is_one_line(full_run, tmp_path):
    """Three distinct states each under every bound (19 M values, 28 MiB) but ~700 MB parsed: more than 1.5 GiB holds."""
    for checkpoint in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        _write_trainer_state(full_run / checkpoint / "trainer_state.json", "{}", 9_400_000)
    result = run_cli("diagnose", str(full_run), cwd=tmp_path, timeout=120, memory=3 << 29)
    assert_one_clear_answer(result)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"ran out of memory judging {full_run}" in result.stderr and "nothing was judged" in result.stderr


@pytest.mark.parametrize("header", [b"", b":W&B\xe1\xbe\x00"], ids=["zeros", "valid-header-then-zeros"])
def test_huge_sparse_wandb_logs_are_judged_without_reading_them_whole(full_run, tmp_path, header):
    wandb_dir = tmp_path / "wandb"
    logs = 2 if header else 8  # a readable header is read to its end: ~2.5 s a GB of zeros, in 32 KiB blocks
    for index in range(logs):
        log = wandb_dir / f"offline-run-20250101_00000{index}-abc{index}" / f"run-abc{index}.wandb"
        log.parent.mkdir(parents=True)
        with open(log, "wb") as handle:
            handle.write(header)
            handle.truncate(1000 << 20)  # sparse: 1000 MB on paper, nothing on disk
    started = time.monotonic()
    result = run_cli("diagnose", str(full_run), "--wandb-dir", str(wandb_dir), "--format", "json", cwd=tmp_path,
                     timeout=60, memory=1 << 30)  # less than one log: it is never held whole
    findings = _findings(result)
    if not header:  # judged by its first 7 bytes
        unreadable = [f for f in findings if f["code"] == "WANDB007"]
        assert len(unreadable) == 8 and all("bad header" in f["message"] for f in unreadable), findings
    assert time.monotonic() - started < 30

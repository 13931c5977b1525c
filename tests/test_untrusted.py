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


# --- shellcost ---
# `resumedoctor env` prints only quoted values and escaped comments, whatever a run's log, the recorded
# decision or a folder name holds; W&B identities are checked as wandb.Settings checks them; the cost of an
# output_dir is linear in its checkpoints (one listing, each seal read once).

import json  # noqa: E402
import zlib  # noqa: E402

EVAL = 'eval "$(resumedoctor env "$TARGET" --wandb-dir "$WANDB_FOLDER")" && env'
MARKERS = ("pwned", "pwned2", "pwned3")


def _write_wandb_log(path: Path, records: list[bytes]) -> None:
    """A `.wandb` log framed as wandb writes it (32 KiB blocks, CRC-32 chunks) around the given records."""
    from resumedoctor.wandb_log import (
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

    from resumedoctor.wandb_log import RecordStream, iter_record_bytes

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

    from resumedoctor.shell_env import unprintable
    from resumedoctor.wandb_runs import name_problem, run_id_problem

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


def _many_checkpoints(template: Path, output_dir: Path, count: int, sealed_until: int) -> None:
    """`count` checkpoints hard-linked from one real TRL checkpoint, trainer_state per step; the first
    `sealed_until` sealed at save time (as SealCallback seals), the rest saved after sealing stopped."""
    from resumedoctor.seal import SEAL_FILE, build_seal, seal_bytes

    state = json.loads((template / "trainer_state.json").read_text())
    files = [p for p in template.iterdir() if p.is_file() and p.name not in ("trainer_state.json", SEAL_FILE)]
    output_dir.mkdir()
    for index in range(1, count + 1):
        step = 10 * index
        folder = output_dir / f"checkpoint-{step}"
        folder.mkdir()
        for path in files:
            os.link(path, folder / path.name)
        (folder / "trainer_state.json").write_text(json.dumps({**state, "global_step": step, "max_steps": 10 * count}))
        if index <= sealed_until:
            seal = build_seal(folder, global_step=step, world_size=1, arguments={}, versions={}, with_hashes=False)
            (folder / SEAL_FILE).write_bytes(seal_bytes(seal))


def test_many_checkpoints_are_listed_once_and_each_seal_is_read_once(full_run, tmp_path, monkeypatch):
    from resumedoctor.diagnose import load_registry, new_context, run_checks
    from resumedoctor.settings import Settings
    from resumedoctor.target import resolve_target

    count, sealed = 300, 150
    output_dir = tmp_path / "many"
    _many_checkpoints(full_run / "checkpoint-6", output_dir, count, sealed)
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

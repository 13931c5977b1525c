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


# --- readers ---
# Every file inside an output_dir is read through resumedoctor.bounded_read: FIFOs, devices and sockets are
# findings (CKPT027), sizes and nesting are bounded, YAML aliases have a budget, damaged values are findings,
# and settings shipped inside the folder are reported (ENV008), never applied.

import json as _json  # noqa: E402
import struct as _struct  # noqa: E402

from conftest import DEMO_RUN_ARGS as _DEMO_RUN_ARGS  # noqa: E402

SPECIAL_NAMES = ["model.safetensors", "trainer_state.json", "optimizer.pt", "training_args.bin", "config.json"]
QUICK = 30  # seconds: every case here answers in about one; a FIFO read would block until the timeout


def _recipe(folder: Path, output_dir: Path, extra: str = "") -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"output_dir: {output_dir}\n" + _DEMO_RUN_ARGS + "resume_from_checkpoint: true\n" + extra)
    return recipe


def _findings(result: subprocess.CompletedProcess) -> list[dict]:
    assert_one_clear_answer(result)
    return _json.loads(result.stdout)["findings"]


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
    sealed = _json.loads((checkpoint / "resumedoctor.seal.json").read_text())["files"]
    assert not any(name.startswith(("up/", "outside/")) for name in sealed), sorted(sealed)
    assert "model.safetensors" in sealed
    assert_one_clear_answer(run_cli("diagnose", str(full_run), "--deep", cwd=tmp_path, timeout=QUICK))


def test_a_seal_naming_files_outside_the_checkpoint_is_not_followed(full_run, tmp_path):
    assert run_cli("seal", str(full_run), cwd=tmp_path).returncode == 0
    seal_path = full_run / "checkpoint-6" / "resumedoctor.seal.json"
    seal = _json.loads(seal_path.read_text())
    (tmp_path / "outside.txt").write_text("x")
    for escape in ("../../outside.txt", str(tmp_path / "outside.txt")):
        seal["files"] = {**seal["files"], escape: {"size": 1}}
        seal_path.write_text(_json.dumps(seal))
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
    (size,) = _struct.unpack("<Q", raw[:8])
    header = _json.loads(raw[8:8 + size])
    header[next(name for name in header if name != "__metadata__")]["dtype"] = dtype
    text = _json.dumps(header).encode()
    path.write_bytes(_struct.pack("<Q", len(text)) + text + raw[8 + size:])


def _edit_json(path: Path, **values) -> None:
    data = _json.loads(path.read_text())
    path.write_text(_json.dumps({**data, **values}))


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
    raw = value if isinstance(value, str) and value.isdigit() else _json.dumps(value)
    if key is None:
        return raw
    return "{" + ", ".join(f"{_json.dumps(k)}: {raw if k == key else _json.dumps(v)}" for k, v in data.items()) + "}"


def test_fuzzing_every_top_level_value_never_crashes(full_run, tmp_path):
    """In-process (hundreds of runs): `--debug` lets any crash out as an exception, which the assertion names."""
    from click.testing import CliRunner

    from resumedoctor.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["seal", str(full_run)]).exit_code == 0
    recipe = _recipe(tmp_path, full_run)
    crashes = []
    for name in ("trainer_state.json", "config.json", "resumedoctor.seal.json"):
        path = full_run / "checkpoint-6" / name
        original = path.read_bytes()
        data = _json.loads(original)
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

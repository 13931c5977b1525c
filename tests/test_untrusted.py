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

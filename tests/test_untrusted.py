"""An output_dir is untrusted input (issue 13): the first cases, the shell lines of `resumedoctor env`.

Real `bash` and `sh` evaluate the output, as the pre-training hook does; a crafted name must stay text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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

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


# --- pickle ---
# The checkpoint's pickles (training_args.bin, optimizer.pt, scheduler.pt, rng_state*.pth, scaler.pt): an explicit
# allow-list derived from the files the installed transformers/TRL/torch write, a budget, and the member torch reads.
# The oracle is torch's own restricted unpickler, torch.load(weights_only=True): it is only ever given crafted
# payloads to refuse (never weights_only=False), and real files to load.

import importlib  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import pickletools  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402

from resumedoctor import safe_pickle  # noqa: E402
from resumedoctor.torch_archive import inspect_torch_archive, torch_pickle_member  # noqa: E402

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
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from resumedoctor import demo

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

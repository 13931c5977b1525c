"""DATA005-DATA009: a dataset that changes under a run, on a real sealed GRPO run over a local JSONL dataset.

The oracle is TRL itself: the run records which prompt ids each step draws (the reward function gets the
dataset's `id` column), and a real resume over the grown (or pinned) dataset shows what the resumed epoch
draws. 12 prompts, 4 per step (8 completions per device, 2 generations each): 3 steps per epoch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from resumedoctor.engine.context import Options
from resumedoctor.engine.findings import Severity
from resumedoctor.engine.runner import diagnose
from resumedoctor.engine.settings import Settings
from resumedoctor.fixing.planner import fix
from resumedoctor.fixing.planner import preview as planned_changes
from resumedoctor.integrations.seal.record import SEAL_FILE
from resumedoctor.integrations.trl.dataset_rows import MAGIC

pytestmark = pytest.mark.slow

ROWS = 12
SHAPE = dict(per_device_train_batch_size=8, num_generations=2)
RECIPE = """\
model_name_or_path: {model}
dataset_name: {dataset}
reward_funcs: [demo_run.length_reward]
output_dir: {output_dir}
resume_from_checkpoint: {checkpoint}
use_cpu: true
bf16: false
seed: 0
max_steps: {max_steps}
save_steps: 1
logging_steps: 1
per_device_train_batch_size: 8
num_generations: 2
max_completion_length: 8
learning_rate: 1.0e-3
disable_tqdm: true
"""
NEW_CODES = ("DATA005", "DATA006", "DATA007", "DATA008", "DATA009")


@contextmanager
def drawn_ids():
    """Every step's prompt ids, as GRPOTrainer hands the dataset's `id` column to the reward function."""
    import demo_run

    steps: list[list[int]] = []
    original = demo_run.length_reward

    def length_reward(completions, id=None, **_):  # noqa: A002 - the dataset's column name
        steps.append(sorted(set(id)))
        return original(completions)

    demo_run.length_reward = length_reward
    try:
        yield steps
    finally:
        demo_run.length_reward = original


def load(folder: Path):
    import datasets

    return datasets.load_dataset(str(folder), split="train")  # as `trl grpo` loads dataset_name


def write_rows(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture(scope="session")
def sealed_world(tmp_path_factory, launch_inputs) -> dict:
    """A 3-step sealed GRPO run (checkpoint-1, -2, -3) over a 12-row JSONL folder, with the ids each step drew."""
    from demo_run import build_prompt_rows, train_demo_run

    from resumedoctor.integrations.seal.callback import SealCallback

    root = tmp_path_factory.mktemp("dataset-changes")
    rows = build_prompt_rows(ROWS + 4)
    data = write_rows(root / "data", rows[:ROWS])
    with drawn_ids() as steps:
        train_demo_run(root / "run", dataset=load(data), max_steps=3, save_steps=1, callbacks=[SealCallback()], **SHAPE)
    return {"root": root, "run": root / "run", "data": data, "rows": rows, "steps": steps,
            "model": launch_inputs["model"]}


@pytest.fixture
def world(sealed_world, tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(tmp_path / "cache"))
    run = Path(shutil.copytree(sealed_world["run"], tmp_path / "run"))
    data = Path(shutil.copytree(sealed_world["data"], tmp_path / "data"))
    return {**sealed_world, "run": run, "data": data, "tmp": tmp_path}


def recipe(world, checkpoint: int = 2, max_steps: int = 3, dataset: str | Path | None = None) -> Path:
    path = world["tmp"] / "recipe.yaml"
    path.write_text(RECIPE.format(model=world["model"], dataset=dataset or world["data"], output_dir=world["run"],
                                  checkpoint=world["run"] / f"checkpoint-{checkpoint}", max_steps=max_steps))
    return path


def findings(world, path: Path, select=("DATA",)):
    report = diagnose(world["run"], options=Options(recipe=path), environ={}, settings=Settings(select=select))
    return [f for f in report.findings if f.code in NEW_CODES]


def rewrite(world, rows: list[dict]) -> None:
    write_rows(world["data"], rows)


def resume(world, checkpoint: int, max_steps: int, data: Path) -> list[list[int]]:
    from demo_run import train_demo_run

    with drawn_ids() as steps:
        train_demo_run(world["run"], dataset=load(data), max_steps=max_steps, save_strategy="no",
                       resume_from_checkpoint=str(world["run"] / f"checkpoint-{checkpoint}"), **SHAPE)
    return steps


def test_the_seal_names_one_manifest_with_a_digest_per_row(sealed_world):
    import xxhash

    seals = [json.loads((sealed_world["run"] / f"checkpoint-{n}" / SEAL_FILE).read_text()) for n in (1, 2, 3)]
    records = [seal["dataset_rows"] for seal in seals]
    assert records[0] == records[1] == records[2] and records[0]["rows"] == ROWS
    assert sorted(p.name for p in sealed_world["run"].glob("resumedoctor-dataset-*.rows")) == [records[0]["manifest"]]
    assert records[0]["manifest"] == f"resumedoctor-dataset-{seals[0]['dataset_fingerprint']}.rows"
    # Independent of datasets: the JSONL lines themselves, as canonical JSON.
    lines = (sealed_world["data"] / "prompts.jsonl").read_text().splitlines()
    expected = b"".join(xxhash.xxh3_64_digest(json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))
                                              .encode()) for line in lines)
    assert (sealed_world["run"] / records[0]["manifest"]).read_bytes() == MAGIC + expected


@pytest.mark.parametrize(("checkpoint", "max_steps"), [(1, 3), (2, 6), (3, 6), (3, 3)])
def test_the_same_rows_get_no_finding(world, checkpoint, max_steps):
    """Mid-epoch, at the epoch boundary, extended and finished: the dataset as it was -> nothing, no error."""
    path = recipe(world, checkpoint, max_steps)
    assert findings(world, path) == []
    report = diagnose(world["run"], options=Options(recipe=path), environ={})  # every family: the manifest is no debris
    assert not [f for f in report.findings if f.severity is Severity.ERROR]


def test_a_grown_dataset_mid_epoch_warns_with_the_numbers_a_real_resume_shows(world):
    rewrite(world, world["rows"])  # 4 rows appended: 16 rows, 4 steps per epoch
    [finding] = findings(world, recipe(world, 2, max_steps=4))
    assert (finding.code, finding.severity) == ("DATA006", Severity.WARNING)
    trained = set(world["steps"][0]) | set(world["steps"][1])  # what steps 1-2 drew
    resumed = resume(world, 2, max_steps=4, data=world["data"])  # steps 3-4: the rest of epoch 1 over 16 rows
    drawn = set(resumed[0]) | set(resumed[1])
    skipped = set(range(ROWS + 4)) - drawn - trained
    shuffle = finding.extra["reshuffle"]
    assert (shuffle.trained, shuffle.again, shuffle.passed) == (8, len(drawn & trained), len(skipped))
    assert shuffle.passed_new == len(skipped & {12, 13, 14, 15})
    assert shuffle.again > 0  # this seed really trains prompts twice: the finding is not hypothetical
    assert f"{shuffle.again} " in finding.message and "16 rows, the run started with 12 (4 added)" in finding.message


def test_the_pin_fix_resumes_exactly_where_the_run_was(world):
    from resumedoctor.fixing.planner import undo

    rewrite(world, world["rows"])
    path = recipe(world, 2, max_steps=3)
    before, settings, options = path.read_text(), Settings(select=("DATA",)), Options(recipe=path)
    preview = fix(world["run"], dry_run=True, options=options, environ={}, settings=settings)
    assert [op.fixer for op in preview.operations] == ["pin-dataset", "pin-dataset"]
    assert "(binary, " in planned_changes(preview.operations, world["run"])  # the Parquet copy: no byte dump
    assert path.read_text() == before and not (world["run"] / ".resumedoctor" / "datasets").exists()
    result = fix(world["run"], options=options, environ={}, settings=settings)
    assert result.transactions and not [f for f in result.final.findings if f.code in NEW_CODES]
    pinned = Path(re.search(r"^dataset_name: (\S+)", path.read_text(), re.M).group(1))
    assert pinned.is_relative_to(world["run"] / ".resumedoctor") and (pinned / "train.parquet").is_file()
    assert findings(world, path) == []  # the rows the run started with, in their order
    again = fix(world["run"], options=options, environ={}, settings=settings)
    assert not again.operations and not again.transactions  # idempotent
    assert resume(world, 2, max_steps=3, data=pinned) == [world["steps"][2]]  # step 3 draws what it drew
    undo(world["run"])
    assert path.read_text() == before and not (pinned / "train.parquet").exists()


@pytest.mark.parametrize("edit", ["removed", "changed", "reordered"])
def test_rows_removed_changed_or_reordered_mid_epoch_are_an_error(world, edit):
    rows = world["rows"][:ROWS]
    if edit == "removed":
        rows = rows[2:]
    elif edit == "changed":
        rows = [*rows[:5], {**rows[5], "prompt": [{"role": "user", "content": "edited"}]}, *rows[6:]]
    else:
        rows = rows[::-1]
    rewrite(world, rows)
    [finding] = findings(world, recipe(world, 2, max_steps=6))
    assert (finding.code, finding.severity) == ("DATA005", Severity.ERROR)
    change = finding.extra["change"]
    assert (change.removed, change.changed, change.reordered) == {
        "removed": (2, 0, False), "changed": (0, 1, False), "reordered": (0, 0, True)}[edit]
    assert ("pin" in finding.extra) == (edit == "reordered")  # gone or edited rows cannot be rebuilt
    if edit != "reordered":
        assert "cannot be rebuilt" in finding.hint


@pytest.mark.parametrize(("edit", "code", "severity"), [("grown", "DATA008", Severity.INFO),
                                                        ("changed", "DATA007", Severity.WARNING)])
def test_a_change_at_an_epoch_boundary_is_not_an_error(world, edit, code, severity):
    rows = world["rows"][:ROWS + 1] if edit == "grown" else [{**world["rows"][0], "id": 99}, *world["rows"][1:ROWS]]
    rewrite(world, rows)  # 13 rows: still 3 steps per epoch, checkpoint-3 ends epoch 1
    [finding] = findings(world, recipe(world, 3, max_steps=6))
    assert (finding.code, finding.severity) == (code, severity)


def test_a_finished_run_is_not_judged_for_a_grown_dataset(world):
    rewrite(world, world["rows"])
    assert findings(world, recipe(world, 3, max_steps=3)) == []


def seal_of(world, checkpoint: int = 2) -> Path:
    return world["run"] / f"checkpoint-{checkpoint}" / SEAL_FILE


def test_an_old_seal_without_a_manifest_is_not_judged(world):
    seal = json.loads(seal_of(world).read_text())
    del seal["dataset_rows"]
    seal_of(world).write_text(json.dumps(seal))
    rewrite(world, world["rows"])
    [finding] = findings(world, recipe(world, 2, max_steps=6))
    assert (finding.code, finding.severity) == ("DATA009", Severity.INFO) and "older resumedoctor" in finding.message
    seal_of(world).unlink()  # unsealed: nothing recorded, nothing said
    assert findings(world, recipe(world, 2, max_steps=6)) == []


def _truncate(world, manifest: Path) -> None:
    manifest.write_bytes(manifest.read_bytes()[:-3])


def _huge(world, manifest: Path) -> None:
    with open(manifest, "r+b") as handle:
        handle.truncate(2 * 1024**3)  # sparse: 2 GiB read as far as the seal's row count allows, no further


def _link(world, manifest: Path) -> None:
    content = manifest.read_bytes()
    manifest.unlink()
    (world["tmp"] / "elsewhere.rows").write_bytes(content)
    os.symlink(world["tmp"] / "elsewhere.rows", manifest)


def _record(value):
    def craft(world, manifest: Path) -> None:
        seal = json.loads(seal_of(world).read_text())
        seal["dataset_rows"] = value(seal["dataset_rows"])
        seal_of(world).write_text(json.dumps(seal))
    return craft


@pytest.mark.parametrize("craft", [
    _truncate, _huge, _link,
    _record(lambda record: 5),
    _record(lambda record: {**record, "rows": "12"}),
    _record(lambda record: {**record, "rows": 10**12}),
    _record(lambda record: {**record, "manifest": "../../recipe.yaml"}),
    _record(lambda record: {**record, "manifest_sha256": "0" * 64}),
    _record(lambda record: {**record, "row_hash": "md5"}),
], ids=["truncated", "huge", "symlink", "not-a-record", "rows-str", "rows-huge", "path-escape", "other-hash", "hash-name"])
def test_a_crafted_manifest_is_not_judged(world, craft):
    manifest = next(world["run"].glob("resumedoctor-dataset-*.rows"))
    craft(world, manifest)
    rewrite(world, world["rows"])
    [finding] = findings(world, recipe(world, 2, max_steps=6))
    assert (finding.code, finding.severity) == ("DATA009", Severity.INFO)


def test_a_hub_dataset_is_not_judged(world):
    [finding] = findings(world, recipe(world, 2, max_steps=6, dataset="someone/prompts"))
    assert finding.code == "DATA009" and "not a local dataset" in finding.message


def test_the_helper_process_digests_and_permutes_as_this_process_does(world, monkeypatch):
    """Diagnosing imports neither datasets nor torch: the same rows and orders come from a helper process."""
    import torch

    from resumedoctor.integrations.trl.dataset_rows import (
        current_rows,
        permutation,
        row_hash_name,
    )

    here = current_rows(world["data"], "train", row_hash_name(), in_process=True)
    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(world["tmp"] / "other-cache"))
    helper = current_rows(world["data"], "train", row_hash_name(), in_process=False)
    assert (helper.digests, helper.columns) == (here.digests, here.columns)
    generator = torch.Generator()
    generator.manual_seed(0)
    torch.randperm(ROWS, generator=generator)
    assert list(permutation(0, ROWS, 1, in_process=False)) == torch.randperm(ROWS, generator=generator).tolist()


def test_a_resumed_run_and_a_save_cut_off_before_its_seal_get_no_dataset_finding(world):
    """Clean-run promise at the last two stages: resumed (SealCallback seals the new saves with the same
    manifest) and killed mid-save (the newest checkpoint has no seal): nothing to say, no error."""
    from demo_run import train_demo_run

    from resumedoctor.integrations.seal.callback import SealCallback

    train_demo_run(world["run"], dataset=load(world["data"]), max_steps=4, save_steps=1, callbacks=[SealCallback()],
                   resume_from_checkpoint=str(world["run"] / "checkpoint-2"), **SHAPE)
    assert findings(world, recipe(world, checkpoint=4, max_steps=6)) == []
    (world["run"] / "checkpoint-4" / SEAL_FILE).unlink()  # what a kill before the seal write leaves
    report = diagnose(world["run"], options=Options(recipe=recipe(world, checkpoint=3, max_steps=6)), environ={})
    assert not [f for f in report.findings if f.code in NEW_CODES or f.code.startswith("DATA") and f.severity is Severity.ERROR]

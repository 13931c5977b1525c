"""OPT: the optimizer state of the resume checkpoint belongs to the model in its weights.

The shapes optimizer.pt records (its pickle only, through io.optimizer_state) are matched against
the tensors the weights' safetensors headers declare: model.safetensors, its shards, or
adapter_model.safetensors for PEFT (where the optimizer holds only the trainable adapter tensors).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.engine.context import RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import JsonFileError
from resumedoctor.io.optimizer_state import (
    OptimizerState,
    OptimizerStateError,
    TensorRecord,
    UnfamiliarOptimizerState,
    read_optimizer_state,
)
from resumedoctor.io.safetensors_header import SafetensorsError

ERROR, INFO = Severity.ERROR, Severity.INFO

SHAPES_MISMATCH = Rule(
    "OPT001", "optimizer-from-another-model", ERROR,
    "optimizer.pt holds moments whose shapes the checkpoint's weights do not have: it belongs to another model.",
    "torch's optimizer.load_state_dict pairs the saved moments with the model's parameters by position and "
    "checks only the number of parameters per group, never a shape. A state saved by another model size or "
    "architecture therefore either fails the resume (ValueError: a parameter group that doesn't match the "
    "size, when the counts differ) or, when the counts agree, trains on without a word: transformers does not "
    "refuse it, and torch's fused AdamW (the default on CPU and GPU) steps with moments of the wrong shape, "
    "reading or writing out of their bounds. The check is certain: every moment must have the shape of some "
    "tensor of the weights (model.safetensors, its shards, or adapter_model.safetensors for PEFT), and the "
    "optimizer cannot hold more parameters than the weights hold tensors (when only that count is off, the "
    "weights may instead have lost tensors in the save: the message says both). Frozen parameters (absent from the "
    "optimizer) and tied embeddings (saved once) are legitimate, and the low-rank moments of GaLore / APOLLO "
    "groups are not compared. Which parameter each moment pairs with is "
    "not judged: the model's parameter order (transformers' decay group, then its no-decay group, each in "
    "named_parameters() order) is not recorded in the weights' headers. Put back the optimizer.pt this "
    "checkpoint was saved with, or resume from a checkpoint whose optimizer matches its weights.",
)
MOMENTS_DISAGREE = Rule(
    "OPT002", "optimizer-moments-disagree", ERROR,
    "Two moments of one parameter (exp_avg, exp_avg_sq) have different shapes: optimizer.pt is damaged or crafted.",
    "Adam keeps exp_avg and exp_avg_sq (and max_exp_avg_sq with amsgrad) in the shape of their parameter; "
    "torch never saves them in different shapes. The resumed step broadcasts one against the other or fails "
    "inside the optimizer. Put back an undamaged optimizer.pt, or resume from another checkpoint.",
)
NOT_JUDGED = Rule(
    "OPT003", "optimizer-state-not-judged", INFO,
    "optimizer.pt holds a state this check does not know: it was not matched against the weights.",
    "The check reads optimizer.pt's pickle (never torch.load) and the weights' safetensors headers. When the "
    "optimizer keeps a state this check does not know (parameters keyed by name, another optimizer's "
    "per-parameter tensors), nothing was judged: neither a match nor a mismatch is claimed. When a file cannot "
    "be read at all (the checkpoint-integrity family reports the damage), or the optimizer lives in DeepSpeed's "
    "or FSDP's folders, the family is skipped with the reason instead.",
)
RULES = (SHAPES_MISMATCH, MOMENTS_DISAGREE, NOT_JUDGED)

# Per-parameter tensors in the shape of their parameter (torch's Adam/AdamW/SGD state keys).
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")
OPTIMIZER = "optimizer.pt"
ADAPTER = "adapter_model.safetensors"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"^[^/\\]+\.safetensors$")
SHARD_FILE = re.compile(r"^model-\d+-of-\d+\.safetensors$")  # transformers' shard names
DCP_OPTIMIZER = re.compile(r"^optimizer_\d+$")


class NotJudged(ReasonError):
    """Why the weights or the optimizer cannot be matched; said as OPT003."""


@dataclass(frozen=True)
class Weights:
    """The tensors of a checkpoint's weights: name -> shape, and the files they were read from."""

    shapes: dict[str, tuple[int, ...]]
    files: tuple[str, ...]
    adapter: bool

    @property
    def described(self) -> str:
        return self.files[0] if len(self.files) == 1 else f"{len(self.files)} weight shards"


# --- the weights ----------------------------------------------------------------------------------


def _weight_files(ctx: RunContext, folder: Path, names: dict[str, bool]) -> tuple[list[str], bool]:
    """The safetensors files that hold what the optimizer trains, and whether they are a PEFT adapter."""
    if ADAPTER in names:
        return [ADAPTER], True
    if SAFETENSORS in names:
        return [SAFETENSORS], False
    if SAFETENSORS_INDEX in names:
        try:
            index = ctx.read_json(folder / SAFETENSORS_INDEX)
        except JsonFileError as exc:
            raise NotJudged(f"{SAFETENSORS_INDEX} cannot be read ({exc.reason})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else set()
        if not shards or not all(isinstance(name, str) and SHARD.match(name) for name in shards):
            raise NotJudged(f"{SAFETENSORS_INDEX} names no shard files")
        # Shards the index leaves out count too (CKPT006 reports the index): every tensor saved is a candidate.
        shards |= {name for name, is_dir in names.items() if not is_dir and SHARD_FILE.match(name)}
        return sorted(shards), False
    raise NotJudged("the checkpoint has no safetensors weights (model.safetensors, shards or an adapter)")


def read_weights(ctx: RunContext, folder: Path) -> Weights:
    """The shapes the weights' headers declare (no tensor data is read); NotJudged when they cannot be read."""
    files, adapter = _weight_files(ctx, folder, ctx.listing(folder))
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        try:
            header = ctx.safetensors_header(folder / name)
        except SafetensorsError as exc:
            raise NotJudged(f"{name} cannot be read ({exc.reason})") from None
        shapes.update((tensor, entry.shape) for tensor, entry in header.tensors.items())
    return Weights(shapes, tuple(files), adapter)


# --- the match -------------------------------------------------------------------------------------


MAX_SHOWN_DIMS = 6  # a crafted 64-dimension shape is shown by its start only


def _shape(shape: tuple[int, ...]) -> str:
    shown = ", ".join(str(dim) for dim in shape[:MAX_SHOWN_DIMS])
    return f"[{shown}, ... {len(shape)} dims]" if len(shape) > MAX_SHOWN_DIMS else f"[{shown}]"


# Options of GaLore / APOLLO groups (transformers' trainer_optimizer): their moments are of a projected,
# low-rank gradient, not in the parameter's shape.
PROJECTED_GROUP = ("rank", "proj_type", "update_proj_gap")


def moment_shapes(state: OptimizerState) -> tuple[dict[int, tuple[int, ...]], list[str]]:
    """The parameter shape each state entry implies (index -> shape) and the entries whose moments disagree."""
    shapes, disagreements = {}, []
    projected = {index for group in state.param_groups if any(key in group.options for key in PROJECTED_GROUP)
                 for index in group.params}
    for index, values in sorted(state.state.items()):
        if index in projected:
            continue
        found = {key: values[key].shape for key in MOMENTS if isinstance(values.get(key), TensorRecord)}
        if len(set(found.values())) > 1:
            listed = ", ".join(f"{key} {_shape(shape)}" for key, shape in found.items())
            disagreements.append(f"parameter {index}: {listed}")
        elif found:
            shapes[index] = next(iter(found.values()))
    return shapes, disagreements


def _examples(counter: Counter, limit: int = 3) -> str:
    shown = [f"{_shape(shape)}" + (f" x{count}" if count > 1 else "") for shape, count in counter.most_common(limit)]
    more = len(counter) - limit
    return ", ".join(shown) + (f" and {more} more shapes" if more > 0 else "")


def mismatch(state: OptimizerState, shapes: dict[int, tuple[int, ...]], weights: Weights) -> str | None:
    """Why the optimizer cannot be this model's (certain only), or None when every moment fits a tensor."""
    params, tensors = len(state.param_indices), len(weights.shapes)
    if params > tensors:
        return (f"its {len(state.param_groups)} parameter groups list {params} parameters, but "
                f"{weights.described} hold{'s' if len(weights.files) == 1 else ''} only {tensors} tensors: "
                "either the weights lost tensors in the save (the model-weights family names missing ones) "
                "or the optimizer was saved by another model")
    unmatched = Counter(shapes.values()) - Counter(weights.shapes.values())
    if not unmatched:
        return None
    first = next(index for index, shape in shapes.items() if shape in unmatched)
    unused = Counter(weights.shapes.values()) - Counter(shapes.values())
    moments = sum(math.prod(shape) for shape in shapes.values())
    held = sum(math.prod(shape) for shape in weights.shapes.values())
    return (f"{sum(unmatched.values())} of its {len(shapes)} parameters' moments have shapes no tensor of "
            f"{weights.described} has ({_examples(unmatched)}; parameter {first}'s exp_avg is "
            f"{_shape(shapes[first])}); the weights' tensors without a moment have "
            f"{_examples(unused) if unused else 'no other shapes'}; the moments are of {moments:,} values, "
            f"the weights of {held:,}")


def judge(folder: Path, state: OptimizerState, weights: Weights) -> Iterator[Finding]:
    path = str(folder / OPTIMIZER)
    shapes, disagreements = moment_shapes(state)
    if disagreements:
        yield MOMENTS_DISAGREE.finding(
            f"{folder.name}/{OPTIMIZER}: {'; '.join(disagreements[:3])}"
            + (f" (and {len(disagreements) - 3} more)" if len(disagreements) > 3 else ""), path=path,
            hint="put back an undamaged optimizer.pt, or resume from another checkpoint")
    if state.state and not shapes and not disagreements:
        keys = sorted({key for values in state.state.values() for key in values})[:6]
        yield NOT_JUDGED.finding(
            f"{folder.name}/{OPTIMIZER} keeps {', '.join(keys)} per parameter, none of them a moment in the "
            f"parameter's shape ({', '.join(MOMENTS)}): not judged", path=path)
        return
    why = mismatch(state, shapes, weights)
    if why is None:
        return
    adapter = (" If the run trained parameters outside the adapter, the adapter checkpoint did not save them "
               "and a resume restarts them from the base model under these moments." if weights.adapter else "")
    counts = len(state.param_indices) > len(weights.shapes)  # lost weights explain it as well as another model
    yield SHAPES_MISMATCH.finding(
        f"{folder.name}/{OPTIMIZER} {'does not fit the weights' if counts else 'was saved by another model'}: "
        f"{why}. {_consequence(counts)}{adapter}", path=path, hint=_hint(counts))


def _consequence(counts: bool) -> str:
    another = "a resume either fails in load_state_dict or trains on with moments of the wrong shape"
    if not counts:
        return another[0].upper() + another[1:] + "."
    return ("If the weights lost tensors, the resume loads this optimizer but trains those parameters from the "
            f"base model's weights; if the optimizer is another model's, {another}.")


def _hint(counts: bool) -> str:
    put_back = "put back the optimizer.pt saved with these weights, or resume from a checkpoint whose optimizer matches its weights"
    if not counts:
        return put_back
    return f"if the model-weights family reports missing tensors, resume from a checkpoint whose weights are whole; otherwise {put_back}"


# --- the family ------------------------------------------------------------------------------------


def _elsewhere(names: dict[str, bool]) -> str | None:
    """Where the optimizer lives when it is not optimizer.pt (not judged), or None."""
    if "latest" in names or any(is_dir and name.startswith("global_step") for name, is_dir in names.items()):
        return "the optimizer is in DeepSpeed's global_step*/ folder"
    if "optimizer.bin" in names or any(is_dir and DCP_OPTIMIZER.match(name) for name, is_dir in names.items()):
        return "the optimizer is FSDP's (optimizer.bin or optimizer_0/)"
    return None


def _read(ctx: RunContext, folder: Path) -> tuple[OptimizerState, Weights]:
    """optimizer.pt's state and the weights' shapes, each read once per run (raises what it cannot read)."""
    return ctx.load(read_optimizer_state, folder / OPTIMIZER), read_weights(ctx, folder)


def _not_applicable(ctx: RunContext) -> str | None:
    checkpoint = ctx.resume_point()
    if checkpoint is None:
        return "no checkpoint to resume from"
    names = ctx.listing(checkpoint)
    if where := _elsewhere(names):
        return f"{where}: its shapes are not matched against the weights"
    if OPTIMIZER not in names or names[OPTIMIZER]:
        return f"{checkpoint.name} holds no optimizer.pt"
    try:
        _read(ctx, checkpoint)
    except UnfamiliarOptimizerState:
        return None  # readable, but not a state this check knows: OPT003 says so
    except (OptimizerStateError, NotJudged) as exc:
        # Damage the checkpoint-integrity family reports: no second finding, but no claim of a match either.
        return f"not judged: {checkpoint.name}: {exc.reason}"
    return None


def run(ctx: RunContext) -> Iterator[Finding]:
    folder = ctx.resume_point()
    if folder is None:
        return
    try:
        state, weights = _read(ctx, folder)
    except UnfamiliarOptimizerState as exc:
        yield NOT_JUDGED.finding(f"{folder.name}: {OPTIMIZER} was not matched against the weights: {exc.reason}",
                                 path=str(folder / OPTIMIZER))
        return
    except (OptimizerStateError, NotJudged):
        return  # said by _not_applicable
    yield from judge(folder, state, weights)


FAMILY = CheckFamily(
    name="optimizer-state",
    prefix="OPT",
    title="Optimizer: the saved state belongs to the model in the weights",
    rules=RULES,
    run=run,
    not_applicable=_not_applicable,
)

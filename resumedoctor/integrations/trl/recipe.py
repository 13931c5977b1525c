"""TRL's own recipe (`trl grpo --config RECIPE`), read as TrlParser reads it, with the source of every value.

TrlParser reads the file with PyYAML's `yaml.safe_load` (YAML 1.1: `no`, `off` are false, `1e-3` is a
string), makes the values the defaults of TRL's dataclasses (GRPOScriptArguments, GRPOConfig,
ModelConfig, DatasetMixtureConfig), converts a string default with the field's type as argparse
does, lets command-line flags override them, and exports the `env:` section. The values here are
read the same way; a second, round-trip reading (ruamel) keeps comments and order for the edits the
fixers write. The valid keys and their defaults come from TRL's dataclasses; importing TRL takes
seconds, so the table is cached per installed TRL and transformers version.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumedoctor.errors import ReasonError
from resumedoctor.io.cache import cache_dir, write_entry

# Keys TRL removed, with what to do instead (TRL 0.26 deprecated max_prompt_length, 0.28 removed it).
REMOVED_KEYS = {
    "max_prompt_length": (None, "removed in TRL 0.28: TRL no longer truncates prompts; filter over-long "
                                "prompts from the dataset instead (resumedoctor fix --unsafe can write a filtered copy)"),
    "vllm_max_model_len": ("vllm_max_model_length", "renamed to vllm_max_model_length"),
}
# `env` is TrlParser's own; `resumedoctor` is the launcher's section, removed before TrlParser reads the recipe.
RECIPE_ONLY_KEYS = {"env", "resumedoctor"}
# Fields the HF stack also takes from the environment (TrainingArguments reads these variables);
# the recipe's `env:` block counts, since TrlParser exports it before the arguments are built.
ENV_FIELDS = {"use_cpu": "ACCELERATE_USE_CPU"}


class RecipeError(ReasonError):
    """The recipe cannot be read: a one-line reason with the line and column when known."""


class TrlUnavailable(RecipeError):
    """TRL's argument table could not be read (TRL missing or broken, its helper failed or timed out)."""


def installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return getattr(value, "value", str(value))  # enums: their value


def field_kind(annotation: Any) -> str:
    """How argparse converts a command-line string for a field of this type (HfArgumentParser's rules)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = str(text).replace("typing.", "").replace("Optional[", "").replace("NoneType", "None")
    parts = {part.strip(" []") for part in text.replace("|", ",").replace("Union[", "").split(",")} - {"None", ""}
    if parts == {"bool"}:
        return "bool"
    if any(part.startswith(("list", "List", "tuple")) for part in parts):
        return "list"
    if "str" in parts or any(part.startswith("Literal") for part in parts):
        return "str"  # argparse keeps the string: `--resume_from_checkpoint true` is the path "true"
    if parts == {"int"}:
        return "int"
    if parts <= {"float", "int"}:
        return "float"
    return "other"


def trl_fields() -> dict[str, Any]:
    """Every key `trl grpo --config` accepts: {"defaults": {key: default}, "kinds": {key: kind}}.

    Cached per TRL/transformers version: importing TRL takes seconds.
    """
    versions = f"trl-{installed_version('trl')}-transformers-{installed_version('transformers')}"
    path = cache_dir() / f"grpo-fields-v2-{versions}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if "torch" in sys.modules:
        fields = compute_trl_fields()  # torch is here already: nothing to keep out
    else:
        from resumedoctor.io.helper_process import HelperError, run_json

        try:
            fields = run_json("resumedoctor.integrations.trl.recipe", {})  # importing TRL imports torch: not in this process
        except HelperError as exc:
            raise TrlUnavailable(f"TRL's arguments could not be read: {exc.reason}") from None
        if not all(isinstance(fields.get(part), dict) for part in ("defaults", "kinds")):
            raise TrlUnavailable("TRL's arguments could not be read: its helper answered without the field table")
    write_entry(path, json.dumps(fields, sort_keys=True))
    return fields


def compute_trl_fields() -> dict[str, Any]:
    """The field table from TRL's dataclasses (imports TRL: run in a helper process)."""
    import dataclasses

    from trl import GRPOConfig, ModelConfig
    from trl.scripts.grpo import GRPOScriptArguments
    from trl.scripts.utils import DatasetMixtureConfig

    defaults: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for cls in (GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig):
        for item in dataclasses.fields(cls):
            if item.default is not dataclasses.MISSING:
                default = item.default
            elif item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = item.default_factory()  # type: ignore[misc]
            else:
                default = None
            defaults.setdefault(item.name, _jsonable(default))
            kinds.setdefault(item.name, field_kind(item.type))
    return {"defaults": defaults, "kinds": kinds}


def _read_text(path: Path) -> str:
    from resumedoctor.io.bounded_read import read_text_bounded

    try:
        return read_text_bounded(path)
    except ReasonError as exc:  # unreadable, too large, not UTF-8, or a FIFO / device / socket
        raise RecipeError(f"cannot read {path}: it {exc.reason}") from None


# A recipe is a few dozen keys; anchors and aliases may repeat a block, never a billion times (billion laughs).
MAX_EXPANDED_NODES = 100_000


def _expanded_size(root) -> int | None:
    """How many nodes the document has with every alias expanded (stops counting past the budget);
    None when an alias refers to a node that contains it (a recursive structure)."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = ([item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), MAX_EXPANDED_NODES + 1)
            continue
        if id(node) in open_nodes:
            return None
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                return None
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _budget_loader():
    """yaml.SafeLoader (what TrlParser's yaml.safe_load uses) that refuses a document whose aliases
    expand past MAX_EXPANDED_NODES, or refer to themselves, before anything is built from it."""
    import yaml

    class BudgetLoader(yaml.SafeLoader):
        def compose_document(self):
            node = super().compose_document()
            size = _expanded_size(node) if node is not None else 0
            if size is None:
                raise RecipeError("an alias refers to a block that contains it (a recursive structure)")
            if size > MAX_EXPANDED_NODES:
                raise RecipeError(f"its aliases expand to more than {MAX_EXPANDED_NODES} values "
                                  "(a \"billion laughs\" document), more than any recipe holds")
            return node

    return BudgetLoader


def _where(mark) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def load_values(path: Path, text: str | None = None) -> dict:
    """The recipe's values as TrlParser sees them: `yaml.safe_load` (YAML 1.1), or RecipeError."""
    import yaml  # a core dependency: the very reader TrlParser uses

    text = _read_text(path) if text is None else text
    try:
        values = yaml.load(text, Loader=_budget_loader())  # noqa: S506 - a SafeLoader with an alias budget
    except RecipeError as exc:
        raise RecipeError(f"{path.name} is refused: {exc.reason}") from None
    except RecursionError:
        raise RecipeError(f"{path.name} is nested too deeply to be a recipe") from None
    except yaml.MarkedYAMLError as exc:
        raise RecipeError(f"{path.name} is not valid YAML{_where(exc.problem_mark)}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path.name} is not valid YAML: {exc}") from None
    except ValueError as exc:  # a value YAML parses but Python cannot build: an int of over 4300 digits
        raise RecipeError(f"{path.name} is not valid YAML: {_too_large(exc)}") from None
    return _mapping(path, values)


def _too_large(exc: ValueError) -> str:
    """Why a value could not be built, short (never the value itself): what TrlParser would fail on too."""
    return "a number is too long to read (over 4300 digits)" if "digits" in str(exc) else "a value cannot be read"


def _mapping(path: Path, values: Any) -> dict:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise RecipeError(f"{path.name} must be a YAML mapping of recipe keys, not {type(values).__name__}")
    return values


def load_yaml(path: Path, text: str | None = None):
    """The round-trip document (comments and order kept) that edits are made on, or RecipeError."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    text = _read_text(path) if text is None else text
    reader = YAML(typ="rt")
    reader.allow_duplicate_keys = True  # PyYAML, and so TrlParser, keeps the last one
    try:
        data = reader.load(text)
    except MarkedYAMLError as exc:
        raise RecipeError(f"{path.name} cannot be edited{_where(exc.problem_mark)}: {exc.problem}") from None
    except YAMLError as exc:
        raise RecipeError(f"{path.name} cannot be edited: {exc}") from None
    except ValueError as exc:
        raise RecipeError(f"{path.name} cannot be edited: {_too_large(exc)}") from None
    except RecursionError:
        raise RecipeError(f"{path.name} is nested too deeply to be a recipe") from None
    if data is None:
        from ruamel.yaml.comments import CommentedMap

        data = CommentedMap()
    if not isinstance(data, dict):
        raise RecipeError(f"{path.name} must be a YAML mapping of recipe keys, not {type(data).__name__}")
    return data


def parse_cli_overrides(args: list[str]) -> dict[str, str]:
    """`--key value` / `--key=value` / `--flag` pairs, as TRL's parser takes them after the recipe."""
    overrides: dict[str, str] = {}
    index = 0
    while index < len(args):
        token = args[index]
        if not token.startswith("--"):
            raise RecipeError(f"unexpected argument {token!r} (overrides are --key value)")
        key, equals, value = token[2:].partition("=")
        if not equals:
            if index + 1 < len(args) and not args[index + 1].startswith("--"):
                value = args[index + 1]
                index += 1
            else:
                value = "true"
        overrides[key.replace("-", "_")] = value
        index += 1
    return overrides


def _coerce(text: str, kind: str) -> Any:
    """A command-line string converted as argparse converts it for a field of this kind."""
    from ruamel.yaml import YAML

    try:
        if kind == "bool":
            return text.lower() in ("1", "true", "yes", "y", "t")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        return text
    if kind == "list":
        return [text]
    if kind == "str":
        return text
    try:
        return YAML(typ="safe").load(text)
    except Exception:  # noqa: BLE001 - a plain string then
        return text


def _as_argparse_converts(value: Any, kind: str) -> Any:
    """A recipe value as the dataclass gets it: argparse converts a string default with the field's type."""
    if isinstance(value, str) and kind in ("bool", "int", "float"):
        return _coerce(value, kind)
    return value


@dataclass
class ResolvedValue:
    value: Any
    source: str  # "cli", "env", "file", "default"


@dataclass
class Recipe:
    path: Path
    data: Any  # ruamel CommentedMap: what fixers edit (a deep copy), dumped back with comments and order
    overrides: dict[str, str] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    _fields: dict[str, Any] | None = None
    values: dict[str, Any] = field(default_factory=dict)  # the file as TrlParser reads it (yaml.safe_load)

    @property
    def fields(self) -> dict[str, Any]:
        """Every accepted key with its default."""
        if self._fields is None:
            self._fields = trl_fields()
        return self._fields["defaults"]

    def kind(self, key: str) -> str:
        self.fields  # noqa: B018 - loads the table
        return self._fields["kinds"].get(key, "other")

    def unknown_keys(self) -> list[str]:
        known = set(self.fields) | RECIPE_ONLY_KEYS
        return [key for key in [*self.values, *self.overrides] if key not in known and key not in REMOVED_KEYS]

    def removed_keys(self) -> list[str]:
        return [key for key in [*self.values, *self.overrides] if key in REMOVED_KEYS]

    def file_value(self, key: str) -> Any:
        """The value the file sets, as TRL's dataclass gets it (None when the file does not set it)."""
        return _as_argparse_converts(self.values.get(key), self.kind(key))

    def resolve(self, key: str) -> ResolvedValue:
        """CLI > environment (the recipe's `env:` block, then the shell) > file > default."""
        default = self.fields.get(key)
        if key in self.overrides:
            return ResolvedValue(_coerce(self.overrides[key], self.kind(key)), "cli")
        env_name = ENV_FIELDS.get(key)
        recipe_env = self.values.get("env") if isinstance(self.values.get("env"), dict) else {}
        if env_name and env_name in recipe_env:
            return ResolvedValue(_coerce(str(recipe_env[env_name]), "bool"), "env")  # TrlParser exports str(value)
        if env_name and env_name in self.environ:
            return ResolvedValue(_coerce(self.environ[env_name], "bool"), "env")
        if key in self.values:
            return ResolvedValue(self.file_value(key), "file")
        return ResolvedValue(default, "default")

    def get(self, key: str) -> Any:
        return self.resolve(key).value


def load_recipe(path: Path, overrides: list[str] | None = None, environ: dict[str, str] | None = None) -> Recipe:
    """The recipe with TRL's field table, or RecipeError (TrlUnavailable when TRL's table cannot be read)."""
    path = Path(path)
    text = _read_text(path)
    values = load_values(path, text)
    recipe = Recipe(path, load_yaml(path, text), parse_cli_overrides(list(overrides or [])),
                    dict(os.environ if environ is None else environ), values=values)
    recipe.fields  # noqa: B018 - every reader needs the table; a broken TRL is one RecipeError here
    return recipe


def dump_yaml(data: Any) -> bytes:
    """Round-trip YAML back to bytes: comments, key order and the file's own indentation kept."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never fold a long value (a path) onto a new line
    mapping, sequence, offset = _indentation(data)
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue().encode("utf-8")


def _indentation(data: Any) -> tuple[int, int, int]:
    """(mapping, sequence, offset) as ruamel's `indent()` takes them, from where the loaded nodes stood.

    ruamel writes one indentation per document (mapping 2, `- item` flush with its key by default);
    the positions it recorded while loading tell what the file used: `key:\n  - item` is offset 2.
    """
    mapping, sequence, offset = None, None, None
    pending = [data]
    while pending and (mapping is None or sequence is None):
        node = pending.pop(0)
        if not isinstance(node, dict) or getattr(node, "lc", None) is None:
            continue
        for key, value in node.items():
            try:
                key_column = node.lc.key(key)[1]
                if isinstance(value, dict) and value and not value.fa.flow_style() and mapping is None:
                    mapping = value.lc.col - key_column
                elif isinstance(value, list) and value and not value.fa.flow_style() and sequence is None:
                    offset = value.lc.col - key_column
                    sequence = value.lc.item(0)[1] - key_column
            except (AttributeError, KeyError, IndexError, TypeError):
                continue
            pending.append(value)
    mapping = mapping if mapping and mapping > 0 else 2
    if sequence is None or offset is None or offset < 0 or sequence <= offset:
        sequence, offset = 2, 0
    return mapping, sequence, offset


if __name__ == "__main__":  # the helper process of trl_fields()
    print(json.dumps(compute_trl_fields(), sort_keys=True))


def reports_to_wandb(report_to: object) -> bool:
    """Does a `report_to` value (a name, "all", or a list of them) include W&B?"""
    names = report_to if isinstance(report_to, list) else [report_to]
    return any(name in ("wandb", "all") for name in names)

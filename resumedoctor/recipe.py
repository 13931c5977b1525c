"""TRL's own recipe (`trl grpo --config RECIPE`), read as TrlParser reads it, with the source of every value.

TrlParser makes the YAML values the defaults of TRL's dataclasses (GRPOScriptArguments, GRPOConfig,
ModelConfig, DatasetMixtureConfig), lets command-line flags override them, and exports the `env:`
section. The valid keys and their defaults come from those dataclasses; importing TRL takes seconds,
so the table is cached per installed TRL and transformers version.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumedoctor.cache import cache_dir, write_atomically
from resumedoctor.errors import ReasonError

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
        from resumedoctor.helper_process import run_json

        fields = run_json("resumedoctor.recipe", {})  # importing TRL imports torch: not in this process
    write_atomically(path, json.dumps(fields, sort_keys=True))
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


def load_yaml(path: Path):
    """Round-trip YAML (comments and order kept), or RecipeError."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read {path}: {exc}") from None
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{path.name} is not valid YAML{where}: {exc.problem}") from None
    except YAMLError as exc:
        raise RecipeError(f"{path.name} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
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


@dataclass
class ResolvedValue:
    value: Any
    source: str  # "cli", "env", "file", "default"


@dataclass
class Recipe:
    path: Path
    data: Any  # ruamel CommentedMap: edited in place by the fixers
    overrides: dict[str, str] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    _fields: dict[str, Any] | None = None

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
        return [key for key in [*self.data, *self.overrides] if key not in known and key not in REMOVED_KEYS]

    def removed_keys(self) -> list[str]:
        return [key for key in [*self.data, *self.overrides] if key in REMOVED_KEYS]

    def resolve(self, key: str) -> ResolvedValue:
        """CLI > environment (the recipe's `env:` block, then the shell) > file > default."""
        default = self.fields.get(key)
        if key in self.overrides:
            return ResolvedValue(_coerce(self.overrides[key], self.kind(key)), "cli")
        env_name = ENV_FIELDS.get(key)
        recipe_env = self.data.get("env") if isinstance(self.data.get("env"), dict) else {}
        if env_name and env_name in recipe_env:
            return ResolvedValue(_coerce(str(recipe_env[env_name]), "bool"), "env")
        if env_name and env_name in self.environ:
            return ResolvedValue(_coerce(self.environ[env_name], "bool"), "env")
        if key in self.data:
            return ResolvedValue(self.data[key], "file")
        return ResolvedValue(default, "default")

    def get(self, key: str) -> Any:
        return self.resolve(key).value


def load_recipe(path: Path, overrides: list[str] | None = None, environ: dict[str, str] | None = None) -> Recipe:
    return Recipe(Path(path), load_yaml(Path(path)), parse_cli_overrides(list(overrides or [])),
                  dict(os.environ if environ is None else environ))


def dump_yaml(data: Any) -> bytes:
    """Round-trip YAML back to bytes, comments and order kept."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never fold a long value (a path) onto a new line
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue().encode("utf-8")


if __name__ == "__main__":  # the helper process of trl_fields()
    print(json.dumps(compute_trl_fields(), sort_keys=True))

"""PEFT's default LoRA target modules per model_type: what `lora_target_modules` unset means.

TRL builds LoraConfig(target_modules=None) when a recipe leaves lora_target_modules unset, and PEFT then
targets its built-in list for the model's model_type. Importing PEFT imports torch: the table is read
once per PEFT version in a helper process and cached.
"""

from __future__ import annotations

import json

from resumedoctor.errors import ReasonError
from resumedoctor.io.cache import cache_dir, write_entry


class PeftUnavailable(ReasonError):
    """PEFT's table could not be read (PEFT not installed, the helper failed)."""


def default_target_modules(model_type: str) -> list[str] | None:
    """PEFT's default LoRA targets for a model_type; None when PEFT has none for it."""
    from resumedoctor.integrations.trl.recipe import installed_version

    version = installed_version("peft")
    if version is None:
        raise PeftUnavailable("PEFT is not installed")
    path = cache_dir() / f"peft-lora-targets-{version}.json"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        from resumedoctor.io.helper_process import HelperError, run_json

        try:
            table = run_json("resumedoctor.integrations.trl.peft_defaults", {})
        except HelperError as exc:
            raise PeftUnavailable(exc.reason) from None
        write_entry(path, json.dumps(table, sort_keys=True))
    targets = table.get(model_type) if isinstance(table, dict) else None
    return [str(name) for name in targets] if isinstance(targets, list) else None


def compute_table() -> dict[str, list[str]]:
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping,
    )

    return {key: list(value) for key, value in mapping.items()}


if __name__ == "__main__":  # the helper process of default_target_modules()
    print(json.dumps(compute_table(), sort_keys=True))

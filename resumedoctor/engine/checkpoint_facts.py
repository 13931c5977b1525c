"""What a checkpoint records about its run, read one way for every family and the core.

The seal, the world size the checkpoint was saved with and the library versions the run recorded:
each read once per run through the run context's memo. They live beside the context rather than in
it because they read the seal (integrations/seal), which sits above the context.
"""

from __future__ import annotations

import re
from pathlib import Path

from resumedoctor.engine.context import RunContext
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.seal.record import SEAL_FILE, read_seal
from resumedoctor.integrations.trl.save_files import RNG_NAME
from resumedoctor.io.bounded_read import TEXT_LIMIT, JsonFileError, read_bytes_bounded

# The model card transformers writes (`- Transformers: 5.24.0`) -> the package it names.
_CARD_PACKAGES = (("TRL", "trl"), ("Transformers", "transformers"), ("Pytorch", "torch"),
                  ("Datasets", "datasets"), ("Tokenizers", "tokenizers"))


def seal_of(ctx: RunContext, folder: Path) -> dict:
    """The checkpoint's seal, read once per run; ValueError when it has none or it cannot be read."""
    return ctx.memo(("seal", folder), lambda: read_seal(folder), "read_seal")


def readable_seal(ctx: RunContext, folder: Path) -> dict | None:
    """The checkpoint's seal when it has one that can be read, else None."""
    if not (Path(folder) / SEAL_FILE).is_file():
        return None
    try:
        return seal_of(ctx, Path(folder))
    except ValueError:
        return None


def saved_world_size(ctx: RunContext, checkpoint: Path) -> int:
    """How many processes saved the checkpoint: the seal's world size when sealed, else one
    rng_state_<rank>.pth per process (1 for a single-process save)."""
    def detect() -> int:
        sealed = (readable_seal(ctx, checkpoint) or {}).get("world_size")
        if isinstance(sealed, int):
            return sealed
        # The highest rank + 1, not the file count: a save that lost a rank's file still had that rank.
        # A process index in the name means a multi-process save (one process writes rng_state.pth).
        ranks = [int(match.group(1)) for path in Path(checkpoint).glob("rng_state_*.pth")
                 if (match := RNG_NAME.match(path.name)) and match.group(1)]
        return max(max(ranks) + 1, 2) if ranks else 1
    return ctx.memo(("world-size", Path(checkpoint)), detect)


def recorded_versions(ctx: RunContext, checkpoint: Path) -> dict[str, str]:
    """Library versions the run recorded: the seal's, config.json's transformers_version, the model card's list."""
    return ctx.memo(("recorded-versions", Path(checkpoint)), lambda: _recorded_versions(ctx, Path(checkpoint)))


def _recorded_versions(ctx: RunContext, checkpoint: Path) -> dict[str, str]:
    versions = dict((readable_seal(ctx, checkpoint) or {}).get("versions") or {})
    try:
        config = ctx.read_json(checkpoint / "config.json")
        if isinstance(config, dict) and config.get("transformers_version"):
            versions.setdefault("transformers", str(config["transformers_version"]))
    except JsonFileError:
        pass
    card = ctx.target.output_dir / "README.md"
    try:
        text = read_bytes_bounded(card, TEXT_LIMIT).decode("utf-8", errors="replace") if card.is_file() else ""
    except ReasonError:
        text = ""
    for name, package in _CARD_PACKAGES:
        match = re.search(rf"^- {name}: (\S+)", text, re.MULTILINE)
        if match:
            versions.setdefault(package, match.group(1))
    return versions

"""User settings: `[tool.resumedoctor]` in pyproject.toml or a `resumedoctor.toml`.

Keys: `select` and `ignore` (codes or code prefixes, like ruff) and `severity` (a table of code or
prefix to error / warning / info); the table `ledger` tells how to read a result ledger (its keys are
checked by integrations/ledger/config.py). The command line's `--select` replaces `select`, `--ignore` adds.
A code or prefix that no registered rule code starts with is refused (`check_known`): a typo must not
switch a check off in silence.

Settings are the user's: they are looked up from the working directory upwards (or named with
`--settings`), never from inside the folder being diagnosed, which may come from anyone. A settings file
shipped inside it is reported (ENV008), not applied.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from resumedoctor.engine.findings import Severity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNOWN_KEYS = {"select", "ignore", "severity", "ledger"}
SETTINGS_FILES = ("resumedoctor.toml", "pyproject.toml")


class SettingsError(Exception):
    """The settings file cannot be read or has a wrong key or value."""


def parse_codes(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """`"CKPT, WANDB001"` or a list of such strings -> ("CKPT", "WANDB001")."""
    if text is None:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    codes = []
    for part in parts:
        for code in str(part).replace(";", ",").split(","):
            code = code.strip().upper()
            if code:
                if not code.isalnum():
                    raise SettingsError(f"not a code or code prefix: {code!r}")
                codes.append(code)
    return tuple(codes)


def check_known(codes: Iterable[str], known: Collection[str], where: str) -> None:
    """Refuse the first code or prefix that no code in `known` (rule codes and family prefixes) starts with."""
    for code in codes:
        if any(candidate.startswith(code) for candidate in known):
            continue
        close = difflib.get_close_matches(code, sorted(known), n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + (close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}") + "?"
        else:
            hint = "no installed check has a code that starts with it; `resumedoctor checks` lists them"
        raise SettingsError(f"{where}: unknown code or prefix {code!r} ({hint})")


def _longest_prefix(code: str, prefixes: Iterable[str]) -> str | None:
    matches = [prefix for prefix in prefixes if code.startswith(prefix)]
    return max(matches, key=len) if matches else None


@dataclass(frozen=True)
class Settings:
    select: tuple[str, ...] = ()  # empty: every code
    ignore: tuple[str, ...] = ()
    severity: dict[str, Severity] = field(default_factory=dict)
    source: Path | None = None
    # `[tool.resumedoctor.ledger]` as written (relative paths are relative to `source`'s folder).
    ledger: dict = field(default_factory=dict)

    def is_enabled(self, code: str) -> bool:
        selected = _longest_prefix(code, self.select) if self.select else ""
        ignored = _longest_prefix(code, self.ignore)
        if selected is None:
            return False
        # The more specific of select and ignore wins (select CKPT, ignore CKPT021: CKPT021 is off).
        return ignored is None or len(selected) > len(ignored)

    def is_ignored(self, code: str) -> bool:
        """Ignored by the user (unlike not selected: --select chooses what is reported, not what matters)."""
        return _longest_prefix(code, self.ignore) is not None

    def severity_for(self, code: str, default: Severity) -> Severity:
        prefix = _longest_prefix(code, self.severity)
        return self.severity[prefix] if prefix is not None else default

    def check_known(self, known: Collection[str]) -> None:
        """Every code or prefix in select, ignore and the severity table must name a registered rule."""
        where = str(self.source) if self.source else "settings"
        check_known(self.select, known, f"{where}: select")
        check_known(self.ignore, known, f"{where}: ignore")
        check_known(self.severity, known, f"{where}: severity")

    def describe(self) -> str:
        """`ignore CKPT, severity CKPT019=info`: what these settings change."""
        parts = [f"{key} {', '.join(codes)}" for key, codes in (("select", self.select), ("ignore", self.ignore)) if codes]
        if self.severity:
            parts.append("severity " + ", ".join(f"{code}={level.value}" for code, level in sorted(self.severity.items())))
        return "; ".join(parts)

    def with_cli(self, select: str | None, ignore: str | None) -> Settings:
        updated = self
        if select:
            updated = replace(updated, select=parse_codes(select))
        if ignore:
            updated = replace(updated, ignore=updated.ignore + parse_codes(ignore))
        return updated


def _settings_from_table(table: dict, source: Path) -> Settings:
    unknown = set(table) - KNOWN_KEYS
    if unknown:
        raise SettingsError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} in resumedoctor settings")
    ledger = table.get("ledger", {})
    if not isinstance(ledger, dict):
        raise SettingsError(f"{source}: 'ledger' must be a table ([tool.resumedoctor.ledger])")
    severity_table = table.get("severity", {})
    if not isinstance(severity_table, dict):
        raise SettingsError(f"{source}: 'severity' must be a table of CODE = \"error|warning|info\"")
    severities: dict[str, Severity] = {}
    for code, level in severity_table.items():
        try:
            severities[code.upper()] = Severity(str(level).lower())
        except ValueError:
            raise SettingsError(f"{source}: severity of {code} must be error, warning or info, not {level!r}") from None
    try:
        return Settings(
            select=parse_codes(table.get("select")),
            ignore=parse_codes(table.get("ignore")),
            severity=severities,
            source=source,
            ledger=ledger,
        )
    except SettingsError as exc:
        raise SettingsError(f"{source}: {exc}") from None


def read_settings_file(path: Path) -> Settings | None:
    """Settings in one file, or None when the file holds no resumedoctor table."""
    from resumedoctor.errors import ReasonError
    from resumedoctor.io.bounded_read import read_text_bounded

    try:
        data = tomllib.loads(read_text_bounded(path))
    except ReasonError as exc:  # unreadable, too large, not UTF-8, or a FIFO / device / socket
        raise SettingsError(f"cannot read {path}: it {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise SettingsError(f"{path} is nested too deeply to be settings") from None
    tool = data.get("tool")
    table = tool.get("resumedoctor") if isinstance(tool, dict) else None
    if table is None and path.name == "resumedoctor.toml":
        table = data
    if table is None:
        return None
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [tool.resumedoctor] must be a table")
    return _settings_from_table(table, path)


def find_settings(start: Path, *, excluding: Iterable[Path] = ()) -> Settings:
    """The nearest settings file from `start` (the working directory) upwards; defaults when none exists.

    Folders inside an `excluding` folder (the diagnosed output_dir) are passed over: a settings file
    there came with the run, not from the user.
    """
    excluded = [Path(os.path.realpath(folder)) for folder in excluding]
    folder = Path(os.path.realpath(start))
    if not folder.is_dir():
        folder = folder.parent
    for candidate_dir in (folder, *folder.parents):
        if any(candidate_dir == skip or skip in candidate_dir.parents for skip in excluded):
            continue
        for name in SETTINGS_FILES:
            candidate = candidate_dir / name
            if candidate.is_file():
                settings = read_settings_file(candidate)
                if settings is not None:
                    return settings
    return Settings()


def diagnosed_folders(path: Path) -> list[Path]:
    """The folder PATH names and, for a `checkpoint-N` folder, the output_dir holding it: not the user's."""
    from resumedoctor.engine.target import CHECKPOINT_NAME

    path = Path(os.path.realpath(path))
    return [path, path.parent] if CHECKPOINT_NAME.match(path.name) else [path]


def user_settings(path: Path) -> Settings:
    """The settings for diagnosing PATH: from the working directory upwards, never from inside PATH."""
    return find_settings(Path.cwd(), excluding=diagnosed_folders(path))


def shipped_settings(folder: Path) -> list[Settings]:
    """The resumedoctor settings in files inside a diagnosed folder (never applied; unreadable ones pass)."""
    found = []
    for name in SETTINGS_FILES:
        try:
            settings = read_settings_file(folder / name) if os.path.lexists(folder / name) else None
        except SettingsError:
            continue
        if settings is not None and (settings.select or settings.ignore or settings.severity):
            found.append(settings)
    return found

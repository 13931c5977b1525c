"""User settings: `[tool.resumedoctor]` in pyproject.toml or a `resumedoctor.toml`.

Keys: `select` and `ignore` (codes or code prefixes, like ruff) and `severity` (a table of code or
prefix to error / warning / info). The command line's `--select` replaces `select`, `--ignore` adds.
A code or prefix that no registered rule code starts with is refused (`check_known`): a typo must not
switch a check off in silence.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from resumedoctor.findings import Severity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNOWN_KEYS = {"select", "ignore", "severity"}


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
        )
    except SettingsError as exc:
        raise SettingsError(f"{source}: {exc}") from None


def read_settings_file(path: Path) -> Settings | None:
    """Settings in one file, or None when the file holds no resumedoctor table."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("resumedoctor")
    if table is None and path.name == "resumedoctor.toml":
        table = data
    if table is None:
        return None
    return _settings_from_table(table, path)


def find_settings(*starts: Path) -> Settings:
    """The nearest settings file above each start folder, in order; defaults when none exists."""
    for start in starts:
        folder = start.resolve()
        if folder.is_file():
            folder = folder.parent
        for candidate_dir in (folder, *folder.parents):
            for name in ("resumedoctor.toml", "pyproject.toml"):
                candidate = candidate_dir / name
                if candidate.is_file():
                    settings = read_settings_file(candidate)
                    if settings is not None:
                        return settings
    return Settings()

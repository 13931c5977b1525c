"""`checks` and `explain`: generated from the registered rules and the fixes their fixers declare, never hand-kept."""

from __future__ import annotations

import io
import textwrap

from resumedoctor.engine.registry import Registry


def catalog(registry: Registry) -> list[dict]:
    """Every family with its rules and, per rule, the fixers and their safety (the rule's `fix`)."""
    registry.load_fixers()  # fills each rule's fix declaration
    entries = []
    for family in registry.families:
        entries.append({
            "check": family.name,
            "prefix": family.prefix,
            "title": family.title,
            "requires": list(family.requires),
            "rules": [
                {
                    "code": rule.code,
                    "name": rule.name,
                    "severity": rule.severity.value,
                    "summary": rule.summary,
                    "fix_availability": rule.fix.availability.value,  # none / sometimes / always (ruff's model)
                    "fixers": [
                        {"name": fixer.name, "safety": fixer.safety.value, "description": fixer.description}
                        for fixer in rule.fix.fixers
                    ],
                }
                for rule in family.rules
            ],
        })
    return entries


def known_codes(registry: Registry) -> list[str]:
    """What --select, --ignore and the settings may name: every rule code and every family prefix."""
    return [family.prefix for family in registry.families] + [rule.code for _, rule in registry.rules()]


def render_catalog_text(entries: list[dict], *, color: bool = False) -> str:
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, width=120, highlight=False)
    for entry in entries:
        table = Table(title=f"{entry['prefix']} · {entry['check']}: {entry['title']}", title_justify="left",
                      show_lines=False, expand=False)
        table.add_column("code", no_wrap=True)
        table.add_column("name", no_wrap=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("fix", no_wrap=True)
        table.add_column("summary")
        for rule in entry["rules"]:
            safeties = sorted({fixer["safety"] for fixer in rule["fixers"]})
            table.add_row(rule["code"], rule["name"], rule["severity"], "/".join(safeties) or "-", rule["summary"])
        console.print(table)
        console.print()
    return buffer.getvalue()


def explain_code(registry: Registry, code: str) -> str | None:
    registry.load_fixers()  # fills each rule's fix declaration
    found = registry.rule(code)
    if found is None:
        return None
    family, rule = found
    lines = [
        f"{rule.code} {rule.name}",
        f"check: {family.name} ({family.prefix})    default severity: {rule.severity.value}",
        "",
        rule.summary,
        "",
        *textwrap.wrap(rule.explanation, width=92),
        "",
    ]
    if rule.fix.fixers:
        lines.append("Fixes:")
        for fixer in rule.fix.fixers:
            flag = "fix --auto" if fixer.safety.value == "safe" else "fix --auto --unsafe"
            lines.append(f"  {fixer.name} ({fixer.safety.value}, {flag}): {fixer.description}")
    else:
        lines.append("Fixes: none; the finding's hint says what to do by hand.")
    return "\n".join(lines) + "\n"

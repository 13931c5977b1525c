"""Report renderers: each takes a Report and knows nothing about the checks behind it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resumedoctor.engine.runner import Report

FORMATS = ("text", "json", "sarif", "junit", "github")


def render(report: Report, fmt: str, *, color: bool = False, width: int | None = None) -> str:
    """The report as text in one of FORMATS (modules imported only when used)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    module = importlib.import_module(f"resumedoctor.report.{fmt}_format")
    if fmt == "text":
        return module.render(report, color=color, width=width)
    return module.render(report)

"""Fixers of the CKPT family (the fix engine and these fixers arrive with `resumedoctor fix`)."""

from __future__ import annotations

from resumedoctor.registry import Fixer

FIXERS: tuple[Fixer, ...] = ()

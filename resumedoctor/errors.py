"""The one exception shape every reader uses: something could not be read, said in one line."""

from __future__ import annotations


class ReasonError(Exception):
    """An input that cannot be read as expected; `reason` is one line for a person."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

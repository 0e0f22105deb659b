"""Errors shared by every stage: a bad input names its field and value."""

from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """A user-supplied spec is invalid.

    ``field`` is a dotted path (``spec.scaling.maxReplicas``) so the message tells the
    user exactly where to look; ``value`` is what they wrote.
    """

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}: {problem} (got {value!r})")

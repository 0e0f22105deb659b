"""Errors shared by every stage: a bad input names its field and value."""

from __future__ import annotations

from pathlib import Path
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


def read_yaml(path: Path | str, field: str, all_documents: bool = False) -> Any:
    """A YAML file's content (a list of its documents with ``all_documents``).

    An unreadable or malformed file is a SpecError naming ``field`` (the option or spec
    key that named the file) and the path, never a traceback."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
        if all_documents:
            return [d for d in yaml.safe_load_all(text) if d is not None]
        return yaml.safe_load(text)
    except OSError as err:
        raise SpecError(field, str(path), f"cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise SpecError(field, str(path), f"is not valid YAML: {err}") from None

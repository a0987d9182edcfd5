"""One error type for bad input: a one-line message naming the field and the fix."""

from __future__ import annotations


class EdgeganError(ValueError):
    """Bad user input or state. ``str(err)`` is one line: ``<field>: <problem>; <fix>``."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"{field}: {problem}" + (f"; {fix}" if fix else "")
        super().__init__(msg.replace("\n", " "))


def require(cond: bool, field: str, problem: str, fix: str = "") -> None:
    """Raise :class:`EdgeganError` unless ``cond`` holds."""
    if not cond:
        raise EdgeganError(field, problem, fix)

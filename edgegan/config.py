"""YAML → dataclasses with defaults; unknown keys and bad values are one-line errors.

Every dataclass field may carry ``metadata={"unit": ..., "help": ...}``; ``from_dict``
checks types (int, float, str, bool, Optional, lists, nested dataclasses, Literal).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edgegan.errors import EdgeganError

T = TypeVar("T")


def _convert(tp: Any, value: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, field)
            except EdgeganError as e:
                errors.append(e)
        raise errors[0] if errors else EdgeganError(field, f"bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise EdgeganError(field, f"unknown value {value!r}",
                               "choose one of " + ", ".join(map(str, args)))
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise EdgeganError(field, f"expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_convert(inner, v, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise EdgeganError(field, f"expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, f"{field}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, field)
    if tp is bool:
        if not isinstance(value, bool):
            raise EdgeganError(field, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EdgeganError(field, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EdgeganError(field, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise EdgeganError(field, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys name themselves in the error."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise EdgeganError(prefix or cls.__name__, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key.replace("-", "_") not in names:
            raise EdgeganError(f"{prefix}.{key}" if prefix else key, "unknown key",
                               "known keys: " + ", ".join(sorted(names)))
    kwargs = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        field = f"{prefix}.{key}" if prefix else key
        kwargs[name] = _convert(hints[name], value, field)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(prefix)
    return obj


def read_yaml(path: str | Path, field: str = "config") -> Any:
    """The parsed content of YAML file ``path`` (``{}`` for an empty file); a missing file or bad
    YAML is a one-line error naming ``field``."""
    p = Path(path)
    if not p.is_file():
        raise EdgeganError(field, f"file '{p}' not found", "give an existing YAML path")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise EdgeganError(field, f"'{p}' is not valid YAML"
                           + (f" (line {line + 1})" if line is not None else "")) from None
    return {} if data is None else data


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a YAML file into dataclass ``cls``."""
    return from_dict(cls, read_yaml(path))


def to_dict(obj: Any) -> dict:
    """Dataclass → plain dict (for checkpoints and run reports)."""
    return dataclasses.asdict(obj)


def check_fields(obj: Any, prefix: str, names: tuple[str, ...], low: float, high: float | None = None,
                 strict_low: bool = False) -> None:
    """One-line errors for fields of ``obj`` outside ``[low, high)`` (``(low, …`` when ``strict_low``).

    The shared range check behind every config dataclass's ``validate``; the field is named
    ``<prefix>.<name>``.
    """
    p = f"{prefix}." if prefix else ""
    for name in names:
        v = getattr(obj, name)
        ok = (v > low if strict_low else v >= low) and (high is None or v < high)
        if not ok:
            lo = f"> {low:g}" if strict_low else f">= {low:g}"
            rng = f"in [{low:g}, {high:g})" if high is not None else lo
            raise EdgeganError(p + name, f"must be {rng}, got {v}")

"""Declared task_kwargs of each task call, checked before any I/O: unknown or bad kwargs become
BadTaskCall naming the execution environment and the call, with a "did you mean" for typos.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

from utilitarian.amr.errors import BadTaskCall


@dataclass(frozen=True)
class Param:
    """One kwarg. kind: str, int, float, bool, str_list, str_map, datetime."""

    name: str
    kind: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()      # older names still accepted (documented as aliases)
    doc: str = ""                      # one line for docs/meters.md


@dataclass(frozen=True)
class Call:
    """A task_call: the function and the kwargs it accepts."""

    name: str
    func: Callable
    params: tuple[Param, ...] = ()
    summary: str = ""


_COMPACT_OFFSET = re.compile(r"([+-]\d\d)(\d\d)\Z")


def _convert(param: Param, value: Any) -> Any:
    kind = param.kind
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be a non-empty string")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError("must be a number")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
    elif kind == "str_list":
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value \
                or not all(isinstance(v, str) and v for v in value):
            raise ValueError("must be a non-empty list of strings")
        value = list(value)
    elif kind == "str_map":
        if not isinstance(value, Mapping) or not value \
                or not all(isinstance(k, str) and isinstance(v, str) and k and v
                           for k, v in value.items()):
            raise ValueError("must be a non-empty table of strings")
        value = dict(value)
    elif kind == "number":             # the platform's int kwargs (seconds), given as any number
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                or value in (float("inf"), float("-inf")):
            raise ValueError("must be a number")
    elif kind == "datetime":
        if isinstance(value, str):
            # Python 3.10's fromisoformat wants "+01:00"; the platform's docs write "+0100".
            text = _COMPACT_OFFSET.sub(r"\1:\2", value.strip().replace("Z", "+00:00"))
            try:
                value = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError("must be an ISO 8601 date and time") from None
        elif not isinstance(value, datetime):
            raise ValueError("must be an ISO 8601 date and time")
    else:  # pragma: no cover - a programming error in a Call declaration
        raise AssertionError(f"unknown param kind {kind}")
    if param.minimum is not None and value < param.minimum:
        raise ValueError(f"must be at least {param.minimum:g}")
    if param.choices and kind == "str_list":
        unknown = [v for v in value if v not in param.choices]
        if unknown:
            hint = difflib.get_close_matches(unknown[0], param.choices, n=1)
            raise ValueError(f"has unknown {', '.join(map(repr, unknown))}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else
                                f"; known: {', '.join(param.choices)}"))
    elif param.choices and value not in param.choices:
        raise ValueError(f"must be one of {', '.join(param.choices)}")
    return value


def bind_kwargs(execution_type: str, call: Call, task_kwargs: Any) -> dict[str, Any]:
    """Validated kwargs with defaults filled in."""
    if task_kwargs is None:
        task_kwargs = {}
    if not isinstance(task_kwargs, Mapping):
        raise BadTaskCall(execution_type, call.name, "task_kwargs must be a table/object")
    declared = {p.name: p for p in call.params}
    aliases = {a: p.name for p in call.params for a in p.aliases}
    renamed: dict[str, Any] = {}
    for key, value in task_kwargs.items():
        name = aliases.get(key, key)
        if name in renamed:
            raise BadTaskCall(execution_type, call.name, f"kwarg {name!r} given twice "
                              f"(as {name!r} and as its alias {key!r})")
        renamed[name] = value
    task_kwargs = renamed
    for key in task_kwargs:
        if key not in declared:
            hint = difflib.get_close_matches(str(key), list(declared) + list(aliases), n=1)
            accepted = ", ".join(declared) or "none"
            raise BadTaskCall(execution_type, call.name, f"unknown kwarg {key!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else f"; accepted: {accepted}"))
    bound: dict[str, Any] = {}
    for param in call.params:
        if param.name not in task_kwargs or task_kwargs[param.name] is None:
            if param.required:
                raise BadTaskCall(execution_type, call.name, f"missing required kwarg {param.name!r}")
            bound[param.name] = param.default
            continue
        try:
            bound[param.name] = _convert(param, task_kwargs[param.name])
        except ValueError as exc:
            raise BadTaskCall(execution_type, call.name, f"kwarg {param.name!r} {exc}") from None
    return bound



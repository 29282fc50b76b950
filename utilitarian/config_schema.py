"""Binds raw TOML tables to frozen dataclasses, collecting every error with its key path.

A field's `metadata` may carry: `min`, `max` (inclusive bounds), `choices`, `check` (a callable
returning an error text or None), `secret` (masked when shown) and `doc`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Callable

from utilitarian.errors import ConfigError

_NONE_TYPE = type(None)


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            min: float | None = None, max: float | None = None, choices: tuple | None = None,
            check: Callable[[Any], str | None] | None = None, secret: bool = False,
            doc: str = "") -> Any:
    """A dataclass field with validation metadata."""
    meta = {"min": min, "max": max, "choices": choices, "check": check, "secret": secret, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Binder:
    """One binding pass over a file: errors accumulate so the operator sees all of them at once."""

    def __init__(self, file: str | None):
        self.file = file
        self.errors: list[ConfigError] = []

    def error(self, key: str, reason: str) -> None:
        self.errors.append(ConfigError(reason, file=self.file, key=key or None))

    def bind(self, cls: type, raw: Any, path: str) -> Any:
        """Return an instance of dataclass `cls` from the table `raw`, or None after errors."""
        if not isinstance(raw, dict):
            self.error(path, f"expected a table, got {_kind(raw)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in raw:
            if key not in fields:
                self.error(_join(path, key), _unknown(key, fields))
        values: dict[str, Any] = {}
        failed = False
        for name, f in fields.items():
            key = _join(path, name)
            if name not in raw:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.error(key, "is required")
                    failed = True
                continue
            before = len(self.errors)
            value = self.convert(hints[name], raw[name], key)
            if len(self.errors) == before:
                self.check_field(f, value, key)
            if len(self.errors) != before:
                failed = True
                continue
            values[name] = value
        if failed:
            return None
        return cls(**values)

    def check_field(self, f: dataclasses.Field, value: Any, key: str) -> None:
        meta = f.metadata
        if value is None:
            return
        lo, hi = meta.get("min"), meta.get("max")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo:
                self.error(key, f"must be >= {lo}, got {value}")
            elif hi is not None and value > hi:
                self.error(key, f"must be <= {hi}, got {value}")
        choices = meta.get("choices")
        if choices and value not in choices:
            self.error(key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        check = meta.get("check")
        if check is not None:
            reason = check(value)
            if reason:
                self.error(key, reason)

    def convert(self, hint: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if hint is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            if value is None and _NONE_TYPE in args:
                return None
            options = [a for a in args if a is not _NONE_TYPE]
            if len(options) == 1:
                return self.convert(options[0], value, key)
            for option in options:  # first option that converts cleanly wins
                trial = Binder(self.file)
                converted = trial.convert(option, value, key)
                if not trial.errors:
                    return converted
            self.error(key, f"expected {_hint_name(hint)}, got {_kind(value)}")
            return None
        if dataclasses.is_dataclass(hint):
            return self.bind(hint, value, key)
        if origin in (list, tuple):
            if not isinstance(value, list):
                self.error(key, f"expected an array, got {_kind(value)}")
                return None
            item = args[0] if args else Any
            items = [self.convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            if not isinstance(value, dict):
                self.error(key, f"expected a table, got {_kind(value)}")
                return None
            item = args[1] if len(args) == 2 else Any
            return {k: self.convert(item, v, _join(key, k)) for k, v in value.items()}
        if hint is bool:
            if not isinstance(value, bool):
                self.error(key, f"expected true or false, got {_kind(value)}")
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.error(key, f"expected a number (seconds are floats), got {_kind(value)}")
                return None
            return float(value)
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.error(key, f"expected an integer, got {_kind(value)}")
                return None
            return value
        if hint is str:
            if not isinstance(value, str):
                self.error(key, f"expected a string, got {_kind(value)}")
            return value
        raise TypeError(f"config schema: unsupported type {hint!r} at {key}")


def _join(path: str, key: str) -> str:
    if not path:
        return _quote(key)
    return f"{path}.{_quote(key)}"


def _quote(key: str) -> str:
    plain = key.replace("_", "").replace("-", "").isalnum()
    return key if plain else f'"{key}"'


def _unknown(key: str, fields: dict) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(fields))}"
    return f"unknown key{hint}"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    return type(value).__name__


def _hint_name(hint: Any) -> str:
    names = [getattr(a, "__name__", str(a)) for a in typing.get_args(hint) if a is not _NONE_TYPE]
    return " or ".join(names)


def masked_items(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    """Flatten a bound config into (key path, value) pairs with secret fields masked."""
    out: list[tuple[str, Any]] = []
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = _join(path, f.name)
            if f.metadata.get("flatten"):  # plugin sections: `amr.x`, not `sections.amr.x`
                for name, section in value.items():
                    if dataclasses.is_dataclass(section):
                        out.extend(masked_items(section, _join(path, name)))
                    elif section:
                        out.append((_join(path, name), section))
            elif f.metadata.get("secret") and value:
                out.append((key, mask_secret(value)))
            elif dataclasses.is_dataclass(value) or isinstance(value, dict) and value and all(
                    dataclasses.is_dataclass(v) for v in value.values()):
                out.extend(masked_items(value, key))
            elif isinstance(value, (list, tuple)) and value and all(dataclasses.is_dataclass(v) for v in value):
                for i, v in enumerate(value):
                    out.extend(masked_items(v, f"{key}[{i}]"))
            else:
                out.append((key, value))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(masked_items(v, _join(path, k)))
    return out


def mask_secret(value: Any) -> str:
    """A secret field as shown: a URL keeps where it points (scheme, user, hosts, path), its
    password and every query value masked; anything else is all mask."""
    from utilitarian.log import MASK, mask_url

    text = str(value)
    return mask_url(text, secret=True) if "://" in text else MASK

"""Typed values of the run config from YAML or `key=value`: each field's value checked against its type
hint (numbers finite, lists, tuples, dataclass entries), and a close match suggested for a typo."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing

from .errors import ConfigError


def coerce(value, hint, name: str):
    """Check `value` against the field's type, converting ints to floats and lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        # `str | list[X]`: a list is the list; anything else the first type's.
        hint = next((t for t in options if typing.get_origin(t) is list and isinstance(value, list)),
                    next(t for t in options if t is not type(None)))
        origin = typing.get_origin(hint)
    if origin is list:  # a YAML list, or one item for a list of one
        (item,) = typing.get_args(hint)
        if dataclasses.is_dataclass(item) and isinstance(value, list):  # data.train_ir's entries
            return [_entry(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"{name}: expected a list of {item.__name__}, got {value!r}")
        return list(value)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(coerce(v, t, name) for v, t in zip(value, args))
    if value is None and hint is str:  # `model.query_prefix=` (or YAML's empty value): the empty text
        return ""
    if hint is float:
        return _finite_float(value, name)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")
    return value


def _entry(value, cls, name: str):
    """A list entry of dataclass `cls`: a mapping of its fields, or the text of its first one (a path)."""
    fields, first = typing.get_type_hints(cls), dataclasses.fields(cls)[0].name
    value = {first: value} if isinstance(value, str) else value
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a {first} or a mapping ({', '.join(fields)}), got {value!r}")
    for key in value:
        if key not in fields:
            raise ConfigError(f"{name}: unknown key '{key}'{suggest(str(key), fields)}")
    return cls(**{key: coerce(v, fields[key], f"{name}.{key}") for key, v in value.items()})


def _finite_float(value, name: str) -> float:
    """ints and numeric strings as floats; inf and nan (YAML's 1e400, .inf, .nan) refused for every option."""
    number = None
    if isinstance(value, float) or isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(f"{name}: expected float, got {value!r}")
    try:
        number = float(number)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return number


def suggest(key: str, valid, section: str | None = None) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1)
    if not match:
        return f" (valid: {', '.join(valid)})"
    return f"; did you mean '{section + '.' if section else ''}{match[0]}'?"

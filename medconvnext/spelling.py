"""How a value and a type are written in a user error: as YAML and ``--set`` spell them (``true``, ``null``,
``[1, 2]``), and in words ("a list of numbers")."""

from __future__ import annotations

import typing
from typing import Any

import yaml

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def type_words(hint: Any) -> str:
    """``float`` -> "a number", ``list[float]`` -> "a list of numbers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args and args[0] in _PLURALS:
        example = "[48, 48, 48]" if args[0] is int else "[1.0, 1.0, 1.0]"
        return f"a list of {_PLURALS[args[0]]} (written as in YAML, e.g. {example})"
    if origin is dict:
        return "a mapping"
    return _TYPE_WORDS.get(hint, f"a valid {hint}")


def yaml_spelling(value: Any, quote: bool = True) -> str:
    """``value`` as it is written in YAML and --set (``true``, ``null``, ``[1, 2]``; tuples as lists), strings
    quoted (``quote``)."""
    if isinstance(value, str) and quote:
        return repr(value)
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()

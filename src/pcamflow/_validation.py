"""attrs validators, and the one place where their failures become pcamflow's messages.

Settings, hyperparameters and tuning ranges declare their checks with :mod:`attrs.validators`
(``in_``, ``ge``, ``gt``, ``le``, ``lt``, ``instance_of``, ``optional``, ``deep_iterable``,
``deep_mapping``, ``min_len``, ``and_``). attrs raises ``ValueError`` or ``TypeError`` in its
own words; a class built with ``field_transformer=checked(SomeError)`` raises ``SomeError``
instead, worded for the reader and starting with the attribute's name::

    num_layers: 19 is not one of 18, 20, 32, 34, 44, 50, 56, 101, 110, 152, 200
    learning_rate: nan is outside (0.0, 1.0]
    quality: 0 is outside 1..100
    epochs: expected an integer, got 2.5

:func:`allowed` describes the same validator objects for the configuration reference, so the
documented bounds are the checked ones.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from attrs import validators as v

from pcamflow.errors import PcamflowError

__all__ = [
    "BOOLEAN",
    "FINITE",
    "INTEGER",
    "MAX_SEED",
    "NUMBER",
    "SCALAR",
    "STRING",
    "allowed",
    "checked",
    "expected",
    "join_key",
    "unwrap",
    "url_template_problem",
]

_NOT_BOOL = v.not_(v.instance_of(bool))
INTEGER = v.and_(v.instance_of(int), _NOT_BOOL)
"""An int, and not a bool (``True`` is an int to Python, never a count to a reader)."""
NUMBER = v.and_(v.instance_of((int, float)), _NOT_BOOL)
"""An int or a float, not a bool."""
SCALAR = v.and_(v.instance_of((str, int, float)), _NOT_BOOL)
"""A string or a number, not a bool."""
BOOLEAN = v.instance_of(bool)
STRING = v.instance_of(str)
MAX_SEED = 2**31 - 1
"""The largest seed: every generator a run seeds (numpy, torch, Optuna's samplers, which add
the trial count) takes it."""
FINITE = v.and_(v.gt(-math.inf), v.lt(math.inf))
"""Neither infinite nor NaN (NaN fails every comparison, so it fails these too)."""

# attrs' validator classes are private; their types come from the public factories
_And = type(INTEGER)
_Bound = type(v.ge(0))
_DeepIterable = type(v.deep_iterable(STRING))
_DeepMapping = type(v.deep_mapping(STRING, STRING))
_In = type(v.in_(()))
_InstanceOf = type(BOOLEAN)
_MinLen = type(v.min_len(1))
_Optional = type(v.optional(STRING))

_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_LOWER = (">", ">=")


def expected(kinds: Sequence[type], value: Any) -> str:
    """``expected an integer, got 'ten'``: the message of a value of the wrong type."""
    names = list(dict.fromkeys(_KIND_NAMES.get(k, f"a {k.__name__}") for k in kinds))
    if "an integer" in names and "a number" in names:
        names.remove("an integer")
    return f"expected {' or '.join(names)}, got {value!r}"


def join_key(path: str, key: Any) -> str:
    """A key path as TOML writes it: ``aws.tags.project``, ``aws.prices."ml.m5.large"``."""
    text = str(key)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}.{text}" if path else text


def url_template_problem(url: str) -> str | None:
    """Why ``url`` is not an ``http(s)://`` URL template holding ``{name}``, or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{url!r} is not an http:// or https:// URL"
    if "{name}" not in url:
        return f"{url!r} holds no {{name}} (the place of the file's name)"
    return None


def unwrap(validator: Any) -> Any:
    """The attrs validator inside a field's validator, as :func:`checked` wraps it."""
    return validator.validator if isinstance(validator, _Checked) else validator


@attrs.frozen
class _Checked:
    """A field's validator whose failures raise ``error`` in pcamflow's words."""

    validator: Any
    error: type[PcamflowError]

    def __call__(self, instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        problem = _failure(self.validator, instance, attribute, value)
        if problem is not None:
            where = attribute.name
            if isinstance(problem, _Keyed):
                where = join_key(where, problem.key)
            raise self.error(f"{where}: {problem}")


def checked(
    error: type[PcamflowError],
) -> Callable[[type, list[attrs.Attribute[Any]]], list[attrs.Attribute[Any]]]:
    """A ``field_transformer`` making every field's validator raise ``error`` with our words.

    Errors of pcamflow that a validator raises itself (a format check) pass unchanged.
    """

    def transform(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
        return [
            f.evolve(validator=_Checked(f.validator, error)) if f.validator is not None else f
            for f in fields
        ]

    return transform


# --- failures -> messages -------------------------------------------------------------------


class _Keyed(str):
    """A problem of one entry of a mapping: the key joins the attribute's path."""

    key: Any

    @classmethod
    def at(cls, key: Any, text: str) -> _Keyed:
        keyed = cls(text)
        keyed.key = key
        return keyed


def _failure(validator: Any, instance: Any, attribute: Any, value: Any) -> str | None:
    """Why ``value`` fails ``validator``, or None when it passes."""
    children = _children(validator)
    if children is not None:
        for child in children:
            problem = _failure(child, instance, attribute, value)
            if problem is not None:
                return _in_context(child, children, value) or problem
        return None
    if isinstance(validator, _Optional):
        return None if value is None else _failure(validator.validator, instance, attribute, value)
    if isinstance(validator, _DeepIterable):
        return _iterable_failure(validator, instance, attribute, value)
    if isinstance(validator, _DeepMapping):
        return _mapping_failure(validator, instance, attribute, value)
    try:
        validator(instance, attribute, value)
    except PcamflowError:
        raise
    except (TypeError, ValueError) as error:
        return _leaf_message(validator, value, error)
    return None


def _children(validator: Any) -> tuple[Any, ...] | None:
    if isinstance(validator, _And):
        return tuple(validator._validators)
    if isinstance(validator, list | tuple):
        return tuple(validator)
    return None


def _leaf_message(validator: Any, value: Any, error: Exception) -> str:
    if isinstance(validator, _InstanceOf):
        kinds = validator.type if isinstance(validator.type, tuple) else (validator.type,)
        return expected(kinds, value)
    if isinstance(validator, _In):
        return f"{value!r} is not one of {', '.join(str(o) for o in validator.options)}"
    if isinstance(validator, _Bound):  # a comparison
        if isinstance(error, TypeError):
            return expected((float,), value)
        if math.isinf(validator.bound):
            return f"{value!r} is not a finite number"
        return f"{value!r} must be {_bound_words(validator)}"
    if isinstance(validator, _MinLen):
        return f"{value!r} must not be empty" if validator.min_length == 1 else (
            f"{value!r} must hold at least {validator.min_length} items")
    if validator is _NOT_BOOL:
        return f"{value!r} is a boolean here, not a number"
    return str(error.args[0]) if error.args else type(error).__name__


def _in_context(child: Any, siblings: Sequence[Any], value: Any) -> str | None:
    """A better message from the siblings: the wanted type, or the interval of two bounds."""
    if child is _NOT_BOOL:
        types = [s for s in siblings if isinstance(s, _InstanceOf)]
        if types:
            kinds = types[0].type if isinstance(types[0].type, tuple) else (types[0].type,)
            return expected(kinds, value)
    interval = _interval(siblings)
    if interval and child in interval and isinstance(value, int | float):
        return f"{value!r} is outside {_interval_words(*interval)}"
    return None


def _interval(validators: Sequence[Any]) -> tuple[Any, Any] | None:
    """The lower and upper bound among ``validators``, when there is exactly one of each."""
    bounds = [x for x in validators if isinstance(x, _Bound) and not math.isinf(x.bound)]
    low = [b for b in bounds if b.compare_op in _LOWER]
    high = [b for b in bounds if b.compare_op not in _LOWER]
    return (low[0], high[0]) if len(low) == 1 and len(high) == 1 else None


def _interval_words(low: Any, high: Any) -> str:
    whole = all(isinstance(b.bound, int) and not isinstance(b.bound, bool) for b in (low, high))
    if whole and low.compare_op == ">=" and high.compare_op == "<=":
        return f"{low.bound}..{high.bound}"
    left = "(" if low.compare_op == ">" else "["
    right = ")" if high.compare_op == "<" else "]"
    return f"{left}{low.bound}, {high.bound}{right}"


def _bound_words(bound: Any) -> str:
    words = {">=": "at least", ">": "greater than", "<=": "at most", "<": "less than"}
    return f"{words[bound.compare_op]} {bound.bound}"


def _iterable_failure(validator: Any, instance: Any, attribute: Any, value: Any) -> str | None:
    if validator.iterable_validator is not None:
        problem = _failure(validator.iterable_validator, instance, attribute, value)
        if problem is not None:
            return problem
    for member in value:
        problem = _failure(validator.member_validator, instance, attribute, member)
        if problem is not None:
            return problem
    return None


def _mapping_failure(validator: Any, instance: Any, attribute: Any, value: Any) -> str | None:
    if validator.mapping_validator is not None:
        problem = _failure(validator.mapping_validator, instance, attribute, value)
        if problem is not None:
            return problem
    for key, item in value.items():
        for check, probe in ((validator.key_validator, key), (validator.value_validator, item)):
            problem = None if check is None else _failure(check, instance, attribute, probe)
            if problem is not None:
                return _Keyed.at(key, problem)
    return None


# --- validators -> documentation ------------------------------------------------------------


def allowed(validator: Any) -> str:
    """What ``validator`` allows, in the reference's words (``1..100``, ``(0.0, 1.0]``, ...).

    Type checks are left out (the reference has a type column); an unknown validator (a
    format check written as a function) is described by the first line of its docstring.
    """
    validator = unwrap(validator)
    if validator is None:
        return ""
    children = _children(validator)
    if children is not None:
        interval = _interval(children)
        parts = [_interval_words(*interval)] if interval else []
        rest = [c for c in children if not interval or c not in interval]
        parts += [allowed(c) for c in rest]
        return ", ".join(dict.fromkeys(p for p in parts if p))
    if isinstance(validator, _Optional):
        return allowed(validator.validator)
    if isinstance(validator, _DeepIterable):
        parts = [allowed(validator.iterable_validator), allowed(validator.member_validator)]
        member = parts[1]
        return ", ".join(p for p in (parts[0], f"each {member}" if member else "") if p)
    if isinstance(validator, _DeepMapping):
        value = allowed(validator.value_validator)
        return f"each value {value}" if value else ""
    if isinstance(validator, _In):
        return "one of " + ", ".join(str(o) for o in validator.options)
    if isinstance(validator, _Bound):
        return "finite" if math.isinf(validator.bound) else _bound_words(validator)
    if isinstance(validator, _MinLen):
        return "not empty" if validator.min_length == 1 else f"{validator.min_length}+ items"
    if isinstance(validator, _InstanceOf) or validator is _NOT_BOOL:
        return ""
    doc = (getattr(validator, "__doc__", None) or "").strip().splitlines()
    first = doc[0].rstrip(".") if doc else ""
    return first[:1].lower() + first[1:]

"""The one cattrs converter of pcamflow: settings, artifacts and fingerprints go through it.

Structuring is strict: an unknown key is an error, never ignored (``forbid_extra_keys``), and
a value must already have its type (``"10"`` is no integer, ``true`` no number, ``"x"`` no
list). Unstructuring gives plain JSON-ready values and is cattrs' own, so fingerprints made
from it (:func:`pcamflow._io.digest`) stay put.

:func:`structure` turns cattrs' detailed errors into one pcamflow error whose lines name the
key path, as a settings file writes it::

    train.epochs: expected an integer, got 'ten'
    train.extensions.dihedrl: unknown setting; did you mean 'dihedral'? (known: ...)

Three field metadata flags shape the mapping: :data:`INLINE` (the field's keys sit in its
parent's table: ``[train]`` holds the hyperparameters), :data:`OMIT` (the field is never
read from the data: a settings file cannot set where it was read from) and :data:`LATE` (a
setting added after run folders existed: it is left out of the unstructured data while at its
default, so that the fingerprints of settings that do not use it stay what they were, and
existing runs do not re-run their stages).
"""

from __future__ import annotations

import contextvars
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import (
    make_dict_structure_fn,
    make_dict_unstructure_fn,
    make_mapping_structure_fn,
    override,
)

from pcamflow._validation import allowed, expected, join_key
from pcamflow.errors import ConfigError, PcamflowError

__all__ = [
    "INLINE",
    "LATE",
    "OMIT",
    "READING",
    "converter",
    "structure",
    "structure_attrs_fn",
]

INLINE = "pcamflow.inline"
"""Field metadata: the field's own keys are written in its parent's table."""
OMIT = "pcamflow.omit"
"""Field metadata: the field is set by code, never from the data."""
LATE = "pcamflow.late"
"""Field metadata: a later setting, left out of the unstructured data while at its default."""

READING: contextvars.ContextVar[str | None] = contextvars.ContextVar("READING", default=None)
"""The file whose data is being structured, for hooks that warn (None: not from a file)."""

converter = cattrs.Converter(forbid_extra_keys=True)

_T = TypeVar("_T")
_NONE = type(None)
_PRIMITIVES = (bool, int, float, str)


# --- strict leaves --------------------------------------------------------------------------


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _primitive_hook(kind: type) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if not _is_kind(value, kind):
            raise TypeError(expected((kind,), value))
        return float(value) if kind is float else value

    return structure


for _kind in _PRIMITIVES:
    converter.register_structure_hook(_kind, _primitive_hook(_kind))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_plain_union(hint: Any) -> bool:
    """A union of plain values (``str | int | float``, ``int | None``)."""
    return _is_union(hint) and all(a in (*_PRIMITIVES, _NONE) for a in typing.get_args(hint))


def _plain_union_hook(hint: Any) -> Any:
    kinds = [a for a in typing.get_args(hint) if a is not _NONE]
    optional = _NONE in typing.get_args(hint)

    def structure(value: Any, _: Any) -> Any:
        if value is None and optional:
            return None
        if not any(_is_kind(value, k) for k in kinds):
            raise TypeError(expected(kinds, value))
        if isinstance(value, int) and int not in kinds and not isinstance(value, bool):
            return float(value)
        return value

    return structure


def _is_literal(hint: Any) -> bool:
    return typing.get_origin(hint) is Literal


def _literal_hook(hint: Any) -> Any:
    # the type is checked here; membership by the field's in_ validator, which also guards
    # direct construction (one message for both)
    kinds = list(dict.fromkeys(type(a) for a in typing.get_args(hint)))

    def structure(value: Any, _: Any) -> Any:
        if not any(_is_kind(value, k) for k in kinds):
            raise TypeError(expected(kinds, value))
        return value

    return structure


def _is_sequence(hint: Any) -> bool:
    args = typing.get_args(hint)
    return typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis


def _sequence_hook(hint: Any) -> Any:
    member = typing.get_args(hint)[0]

    def structure(value: Any, _: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {value!r}")
        out, errors = [], []
        for index, item in enumerate(value):
            try:
                out.append(converter.structure(item, member))
            except Exception as error:  # collected, as cattrs collects a class's fields
                note = IterableValidationNote(f"Structuring {hint} @ index {index}", index, member)
                error.__notes__ = [*getattr(error, "__notes__", []), note]  # type: ignore[attr-defined]
                errors.append(error)
        if errors:
            raise IterableValidationError(f"While structuring {hint}", errors, hint)
        return tuple(out)

    return structure


def _is_mapping(hint: Any) -> bool:
    return typing.get_origin(hint) in (dict, Mapping)


def _mapping_hook(hint: Any) -> Any:
    inner = make_mapping_structure_fn(hint, converter)

    def structure(data: Any, _: Any) -> dict[Any, Any]:
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a table, got {data!r}")
        return inner(data, hint)

    return structure


def structure_attrs_fn(cls: type) -> Any:
    """The strict structuring function of attrs class ``cls`` (honouring INLINE and OMIT)."""
    fields = attrs.fields(cls)
    inner = make_dict_structure_fn(
        cls, converter, **{f.name: override(omit=True) for f in fields if f.metadata.get(OMIT)}
    )
    inline = next((f.name for f in fields if f.metadata.get(INLINE)), None)
    own = {f.name for f in fields if not f.metadata.get(OMIT)} - {inline}

    def structure(data: Any, _: Any) -> Any:
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a table, got {data!r}")
        if inline is not None:
            data = {
                **{k: v for k, v in data.items() if k in own},
                inline: {k: v for k, v in data.items() if k not in own},
            }
        return inner(data, cls)

    return structure


def _has_late_fields(cls: Any) -> bool:
    return attrs.has(cls) and any(f.metadata.get(LATE) for f in attrs.fields(cls))


def _unstructure_late_fn(cls: type) -> Any:
    """cattrs' own unstructuring of ``cls``, but its LATE fields only when not at default."""
    late = {f.name: override(omit_if_default=True) for f in attrs.fields(cls)
            if f.metadata.get(LATE)}
    return make_dict_unstructure_fn(cls, converter, **late)


converter.register_unstructure_hook_factory(_has_late_fields, _unstructure_late_fn)
converter.register_structure_hook_factory(_is_plain_union, _plain_union_hook)
converter.register_structure_hook_factory(_is_literal, _literal_hook)
converter.register_structure_hook_factory(_is_sequence, _sequence_hook)
converter.register_structure_hook_factory(_is_mapping, _mapping_hook)
converter.register_structure_hook_factory(attrs.has, structure_attrs_fn)


# --- errors with key paths -------------------------------------------------------------------


def structure(data: Any, cls: type[_T], error: type[PcamflowError] = ConfigError) -> _T:
    """``data`` structured as ``cls``; any problem raises ``error`` naming each key path.

    Every problem cattrs collected is one line of the message. A pcamflow error raised by a
    validator keeps its class (``HyperparameterError``) when it is the first problem.
    """
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, PcamflowError) as caught:
        problems = _problems(caught, "")
    except (TypeError, ValueError) as caught:  # the top level itself has the wrong shape
        problems = [(caught, f"settings: {caught}")]
    first = problems[0][0]
    kind = type(first) if isinstance(first, error) else error
    raise kind("\n".join(dict.fromkeys(line for _, line in problems))) from None


def _problems(
    caught: BaseException, path: str, also_known: tuple[str, ...] = ()
) -> list[tuple[BaseException, str]]:
    """(problem, message) pairs; ``also_known``: the keys an INLINE field shares its table with."""
    if isinstance(caught, ClassValidationError):
        with_notes, without = caught.group_exceptions()
        out = []
        for inner, note in with_notes:
            field = attrs.fields_dict(caught.cl).get(note.name)
            if isinstance(inner, KeyError) and field is not None:
                choices = allowed(field.validator)
                extra = f" ({choices})" if choices else ""
                out.append((inner, f"{join_key(path, note.name)}: required, but not given{extra}"))
            elif field is not None and field.metadata.get(INLINE):
                out += _problems(inner, path, _keys(caught.cl, but=field.name))
            else:
                out += _problems(inner, join_key(path, note.name))
        for inner in without:
            if isinstance(inner, ForbiddenExtraKeysError):
                out += _unknown_keys(inner, [*_keys(caught.cl), *also_known], path)
            else:
                out += _problems(inner, path)
        return out
    if isinstance(caught, IterableValidationError):
        with_notes, without = caught.group_exceptions()
        listed = typing.get_origin(caught.cl) is tuple or caught.cl in (list, tuple)
        out = []
        for inner, note in with_notes:
            where = f"{path}[{note.index}]" if listed else join_key(path, note.index)
            out += _problems(inner, where)
        for inner in without:
            out += _problems(inner, path)
        return out
    if isinstance(caught, PcamflowError):  # a validator's message starts with its attribute
        return [(caught, f"{path}.{caught}" if path else str(caught))]
    return [(caught, f"{path or 'settings'}: {caught}")]


def _keys(cls: type, but: str = "") -> tuple[str, ...]:
    """The keys a table of ``cls`` may hold."""
    return tuple(f.name for f in attrs.fields(cls) if not f.metadata.get(OMIT) and f.name != but)


def _unknown_keys(
    caught: ForbiddenExtraKeysError, keys: list[str], path: str
) -> list[tuple[BaseException, str]]:
    known = sorted(keys)
    out = []
    for key in sorted(caught.extra_fields):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        line = f"{join_key(path, key)}: unknown setting{hint} (known: {', '.join(known)})"
        out.append((caught, line))
    return out

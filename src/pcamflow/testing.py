"""A conformance check for stage authors, in the manner of scikit-learn's ``check_estimator``.

>>> from pcamflow.testing import check_stage
>>> check_stage(MyTrainer)                      # doctest: +SKIP
>>> check_stage(MyTrainer, context=context)     # doctest: +SKIP  (also runs it)

``check_stage`` raises :class:`StageContractError` naming the first rule the class breaks.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import attrs

from pcamflow.artifacts import Artifact
from pcamflow.config import Settings
from pcamflow.errors import PcamflowError
from pcamflow.plan import Plan
from pcamflow.probes import by_scheme
from pcamflow.stages import STAGE_KINDS, Context, Stage

__all__ = ["StageContractError", "check_stage"]


class StageContractError(PcamflowError, AssertionError):
    """A stage class breaks the stage contract."""


def _fail(cls: type, rule: str) -> StageContractError:
    return StageContractError(f"{cls.__module__}.{cls.__qualname__}: {rule}")


def check_stage(cls: type, context: Context | None = None, **init: Any) -> Artifact | None:
    """Check that ``cls`` honours the stage contract; with a ``context``, also run it.

    The checks: ``cls`` subclasses one of the six abstract stages and is concrete; it can be
    built from ``init`` (no arguments by default); ``validate``, ``run`` and ``plan`` take one
    ``context`` argument and ``provide_services`` takes ``settings`` and ``services``;
    ``produces``, ``requires`` and ``accepts`` are artifact types compatible with its kind;
    ``writes_to`` is a place name or None, ``reads_from`` a frozenset of them or None;
    ``settings_sections`` name tables of :class:`Settings`; its fingerprint is a stable string.
    Given a ``context``, it validates the stage, asks for its plan (a :class:`Plan` or None)
    and its services (a mapping), runs it, then checks the artifact's type, that it exists,
    and that it survives a JSON round trip.

    Args:
        cls: the stage class.
        context: a context to validate and run it in (optional).
        **init: keyword arguments to build the stage with.

    Returns:
        The artifact made, when a context was given.

    Raises:
        StageContractError: the first rule broken.
    """
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise _fail(cls, "is not a subclass of pcamflow.stages.Stage")
    base = STAGE_KINDS.get(cls.kind)
    if base is None or not issubclass(cls, base):
        kinds = ", ".join(c.__name__ for c in STAGE_KINDS.values())
        raise _fail(cls, f"must subclass one of {kinds}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise _fail(cls, f"is abstract; implement {missing}")
    arguments = {"validate": ("context",), "run": ("context",), "plan": ("context",),
                 "provide_services": ("settings", "services")}
    for method, names in arguments.items():
        params = list(inspect.signature(getattr(cls, method)).parameters.values())[1:]
        required = [
            p
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(params) < len(names) or len(required) > len(names):
            shown = " and ".join(f"the {n}" for n in names)
            count = "one argument" if len(names) == 1 else f"{len(names)} arguments"
            raise _fail(cls, f"{method}() must take exactly {count}, {shown}")
    for attr in ("requires", "accepts"):
        value = getattr(cls, attr)
        if not isinstance(value, tuple) or not all(
            isinstance(t, type) and issubclass(t, Artifact) for t in value
        ):
            raise _fail(cls, f"{attr} must be a tuple of Artifact subclasses, got {value!r}")
    if not issubclass(cls.produces, base.produces):
        raise _fail(
            cls,
            f"produces {cls.produces.__name__}; a {cls.kind} must produce "
            f"a {base.produces.__name__}",
        )
    missing_inputs = [
        t.__name__
        for t in base.requires
        if t not in cls.requires and not any(issubclass(r, t) for r in cls.requires)
    ]
    if missing_inputs:
        raise _fail(cls, f"drops required inputs of its kind: {', '.join(missing_inputs)}")
    if not (cls.writes_to is None or isinstance(cls.writes_to, str)):
        raise _fail(cls, f"writes_to must be a place name (\"local\", \"s3\") or None, "
                    f"got {cls.writes_to!r}")
    if not (cls.reads_from is None or (isinstance(cls.reads_from, frozenset)
                                       and all(isinstance(p, str) for p in cls.reads_from))):
        raise _fail(cls, f"reads_from must be a frozenset of place names or None, "
                    f"got {cls.reads_from!r}")
    tables = {f.name for f in attrs.fields(Settings)}
    unknown = [s for s in cls.settings_sections if s not in tables]
    if unknown:
        raise _fail(
            cls, f"settings_sections names unknown tables {unknown}; known: {sorted(tables)}"
        )
    try:
        stage = cls(**init)
    except TypeError as error:
        raise _fail(cls, f"cannot be built with {init or 'no arguments'}: {error}") from None

    probe = context or Context(settings=Settings(), run_dir=_nowhere(), stage_dir=_nowhere())
    first, second = stage.fingerprint(probe), stage.fingerprint(probe)
    if not isinstance(first, str) or not first or first != second:
        raise _fail(cls, "fingerprint() must return the same non-empty string for one context")
    if context is None:
        return None

    stage.validate(context)
    planned = stage.plan(context)
    if planned is not None and not isinstance(planned, Plan):
        raise _fail(cls, f"plan() returned {type(planned).__name__}, not a Plan or None")
    provided = stage.provide_services(context.settings, context.services)
    if not isinstance(provided, Mapping):
        raise _fail(cls, f"provide_services() returned {type(provided).__name__}, not a mapping")
    context.stage_dir.mkdir(parents=True, exist_ok=True)
    artifact = stage.run(context)
    if not isinstance(artifact, cls.produces):
        raise _fail(cls, f"run() returned {type(artifact).__name__}, not {cls.produces.__name__}")
    if not artifact.exists(by_scheme(context.service("probes"))):
        raise _fail(
            cls, f"run() returned an artifact whose locations do not exist: {artifact.locations()}"
        )
    if Artifact.from_json(artifact.to_json()) != artifact:
        raise _fail(cls, "the artifact does not survive a JSON round trip")
    return artifact


def _nowhere() -> Any:
    from pathlib import Path

    return Path("/nonexistent/pcamflow-check-stage")

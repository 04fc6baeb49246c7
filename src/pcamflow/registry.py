"""The stage registry: registered names -> stage classes, filled from entry points.

A registry is an object you create and pass around; there is no global one. Stages come from
the entry-point group ``pcamflow.stages``, where each entry is named ``<kind>.<name>`` and
points at a :class:`~pcamflow.stages.Stage` subclass of that kind. pcamflow's own stages are
registered through the same group, in its own ``pyproject.toml``::

    [project.entry-points."pcamflow.stages"]
    "trainer.local" = "pcamflow.local.training.trainer:LocalTrainer"
    "trainer.mypkg.custom" = "mypkg.stages:CustomTrainer"   # a plugin's

A settings file then names the stage by kind and name (``trainer = "mypkg.custom"``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from pcamflow.errors import DuplicateStageError, PluginLoadError, RegistryError
from pcamflow.stages import STAGE_KINDS, Stage

__all__ = ["ENTRY_POINT_GROUP", "Registration", "Registry"]

ENTRY_POINT_GROUP = "pcamflow.stages"


@attrs.frozen
class Registration:
    """One registered stage.

    Attributes:
        kind: the stage kind (``trainer``, ...).
        name: its name within the kind (``local``).
        cls: the stage class.
        distribution: the distribution that registered it (None: registered in code).
    """

    kind: str
    name: str
    cls: type[Stage]
    distribution: str | None = None


@attrs.define
class Registry:
    """Stage classes by kind and name.

    >>> from pcamflow.stages import Trainer
    >>> class MyTrainer(Trainer):
    ...     def run(self, context): ...
    >>> registry = Registry()
    >>> registry.register("custom", MyTrainer)
    >>> registry.get("trainer", "custom") is MyTrainer
    True
    """

    _entries: dict[tuple[str, str], Registration] = attrs.field(factory=dict, alias="entries")
    failures: dict[str, str] = attrs.field(factory=dict)
    """Entry points that failed to load: entry name -> the error text."""

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> Registry:
        """A registry filled from every installed distribution's entry points."""
        registry = cls()
        registry.load_entry_points(group)
        return registry

    def register(self, name: str, cls: type[Stage], distribution: str | None = None) -> None:
        """Register ``cls`` under ``name`` within its kind.

        Raises:
            RegistryError: ``cls`` is not a concrete stage of a known kind.
            DuplicateStageError: the kind already has a stage of that name.
        """
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise RegistryError(f"{name}: {cls!r} is not a pcamflow Stage subclass")
        if cls.kind not in STAGE_KINDS:
            raise RegistryError(
                f"{name}: {cls.__qualname__} has no stage kind; subclass one of "
                + ", ".join(c.__name__ for c in STAGE_KINDS.values())
            )
        key = (cls.kind, name)
        if key in self._entries and self._entries[key].cls is not cls:
            existing = self._entries[key]
            raise DuplicateStageError(
                f"{cls.kind}.{name}: registered twice, by {_origin(existing)} "
                f"and by {distribution or cls.__module__}"
            )
        self._entries[key] = Registration(cls.kind, name, cls, distribution)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load every entry point of ``group``.

        A plugin that fails to import is recorded in :attr:`failures` (and reported when its
        stage is asked for) without stopping the others. A duplicate name raises.
        """
        for entry in _entry_points(group):
            dist = entry.dist.name if entry.dist else None
            kind, _, name = entry.name.partition(".")
            if kind not in STAGE_KINDS or not name:
                self.failures[entry.name] = (
                    f"entry point {entry.name!r} of {dist or 'an unknown distribution'} is not "
                    f"named '<kind>.<name>' with a kind among {', '.join(STAGE_KINDS)}"
                )
                continue
            try:
                cls = entry.load()
            except Exception as error:  # any import-time failure of a plugin
                self.failures[entry.name] = (
                    f"{entry.value} (from {dist or 'unknown'}) failed to import: "
                    f"{type(error).__name__}: {error}"
                )
                continue
            if not (isinstance(cls, type) and issubclass(cls, Stage)) or cls.kind != kind:
                self.failures[entry.name] = (
                    f"{entry.value} (from {dist or 'unknown'}) is not a {kind} stage class"
                )
                continue
            self.register(name, cls, distribution=dist)

    def get(self, kind: str, name: str) -> type[Stage]:
        """The stage class registered as ``name`` within ``kind``.

        Raises:
            PluginLoadError: a plugin registered that name, but its entry point failed to load
                (the message says why).
            RegistryError: no such stage; the message lists what is registered.
        """
        if kind not in STAGE_KINDS:
            raise RegistryError(f"{kind!r} is not a stage kind; kinds: {', '.join(STAGE_KINDS)}")
        try:
            return self._entries[(kind, name)].cls
        except KeyError:
            pass
        failure = self.failures.get(f"{kind}.{name}")
        if failure:
            raise PluginLoadError(f"{kind} {name!r} could not be loaded: {failure}")
        known = sorted(n for k, n in self._entries if k == kind)
        raise RegistryError(
            f"{kind} {name!r} is not registered; registered {kind}s: {', '.join(known) or 'none'}"
        )

    def __iter__(self) -> Iterator[Registration]:
        order = list(STAGE_KINDS)
        return iter(sorted(self._entries.values(), key=lambda r: (order.index(r.kind), r.name)))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


def _origin(registration: Registration) -> str:
    return registration.distribution or registration.cls.__module__


def _entry_points(group: str) -> Iterable[Any]:
    return importlib.metadata.entry_points(group=group)

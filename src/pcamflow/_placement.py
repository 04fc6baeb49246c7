"""Where stages keep their artifacts, and the pipeline's check that each input can be read.

A stage says where the artifact it makes lives (``writes_to``: ``"local"``, ``"s3"``) and
where it can read its inputs from (``reads_from``); None says nothing and is not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pcamflow.artifacts import Artifact
from pcamflow.stages import Stage

__all__ = ["misplaced", "placement_line"]

_PLACES = {"local": "on this machine", "s3": "in S3"}


def misplaced(steps: Sequence[tuple[str, Stage]]) -> list[tuple[Any, ...]]:
    """``(reader name, reader, maker name, maker, artifact type)`` for each input a stage
    reads from where the stage that makes it does not put it."""
    found = []
    for index, (name, stage) in enumerate(steps):
        if stage.reads_from is None:
            continue
        for need in (*stage.requires, *stage.accepts):
            # the latest earlier stage that makes one is the one Context.input returns
            makers = [(n, s) for n, s in steps[:index] if issubclass(s.produces, need)]
            if not makers:
                continue
            maker_name, maker = makers[-1]
            if maker.writes_to is not None and maker.writes_to not in stage.reads_from:
                found.append((name, stage, maker_name, maker, need))
    return found


def placement_line(
    name: str, stage: Stage, maker_name: str, maker: Stage, need: type[Artifact],
    registry: Any = None,
) -> str:
    """One line on a mismatch; with the registry, the ``[pipeline]`` settings that fix it."""
    wants = " or ".join(_PLACES.get(p, p) for p in sorted(stage.reads_from or ()))
    line = (
        f"stage {name!r} ({type(stage).__name__}) needs its {need.__name__} {wants}, but "
        f"stage {maker_name!r} ({type(maker).__name__}) makes it "
        f"{_PLACES.get(str(maker.writes_to), maker.writes_to)}"
    )
    if registry is None:
        return line
    # the registered stages of each kind that would agree with the other side
    makers = [r.name for r in registry if r.kind == maker.kind
              and r.cls.writes_to in (stage.reads_from or ())]
    readers = [r.name for r in registry if r.kind == stage.kind
               and (r.cls.reads_from is None or maker.writes_to in r.cls.reads_from)]
    fixes = [f"pipeline.{maker.kind} = {n!r}" for n in makers]
    fixes += [f"pipeline.{stage.kind} = {n!r}" for n in readers]
    return line + (f": set {' or '.join(fixes)}" if fixes else "")

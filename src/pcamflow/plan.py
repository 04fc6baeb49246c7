"""What a run would do outside this machine, and what it would cost: each stage says so.

A stage that sends requests to a paid service implements ``plan(context)`` (see
:class:`~pcamflow.stages.Stage`) and returns a :class:`Plan`: the requests it would send
(:class:`PlannedRequest`, one line for many alike) and what they cost (:class:`CostLine`).
:meth:`Pipeline.plan <pcamflow.pipeline.Pipeline.plan>` adds up its stages' plans;
``pcamflow plan`` prints the sum and ``pcamflow run`` asks for ``--yes`` when it spends
anything. Nothing here sends a request.

>>> line = CostLine("train", "ml.p3.2xlarge", 2.0, "instance-hour", 3.825, "us-east-1")
>>> Plan(costs=(line,)).total
7.65
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["CostLine", "Plan", "PlannedRequest", "format_plan", "plan_to_dict"]


@attrs.frozen
class PlannedRequest:
    """One request a stage would send, or ``count`` alike (``PutObject`` x 32,768).

    Attributes:
        stage: the stage's name.
        service: the service (``s3``, ``sagemaker``, ...).
        operation: the API operation (``CreateTrainingJob``).
        params: the request's parameters, exactly as sent (one of them, when ``count`` > 1);
            values known only when the run gets there are placeholders in angle brackets.
        count: how many such requests.
        region: the region the requests go to.
    """

    stage: str
    service: str
    operation: str
    params: dict[str, Any]
    count: int = 1
    region: str | None = None


@attrs.frozen
class CostLine:
    """A quantity of something billed and its unit price.

    Attributes:
        stage: the stage's name.
        item: what is billed (``ml.p3.2xlarge``, ``s3 PutObject``).
        quantity: how much, in ``unit``.
        unit: ``instance-hour``, ``1,000 requests``, ...
        price: USD per unit (None: no price known).
        price_region: the region the price is for (None: not stated).
        note: how the quantity was estimated.
    """

    stage: str
    item: str
    quantity: float
    unit: str
    price: float | None
    price_region: str | None = None
    note: str = ""

    @property
    def cost(self) -> float | None:
        """USD, or None without a price."""
        return None if self.price is None else self.price * self.quantity


@attrs.frozen
class Plan:
    """Requests, costs, notes and warnings of a stage, or the sum over a pipeline's stages.

    Attributes:
        requests: what would be sent.
        costs: what would be billed.
        notes: how figures were estimated.
        warnings: what may fail or surprise (settings a service may refuse at run time).
    """

    requests: tuple[PlannedRequest, ...] = ()
    costs: tuple[CostLine, ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @classmethod
    def combine(cls, plans: Iterable[Plan | None]) -> Plan:
        """The sum of several plans (None: a stage that plans nothing)."""
        parts = [p for p in plans if p is not None]
        return cls(
            requests=tuple(r for p in parts for r in p.requests),
            costs=tuple(c for p in parts for c in p.costs),
            notes=tuple(dict.fromkeys(n for p in parts for n in p.notes)),
            warnings=tuple(dict.fromkeys(w for p in parts for w in p.warnings)),
        )

    @property
    def spends(self) -> bool:
        """Whether anything would be billed: an instance-hour, a request, anything priced."""
        return bool(self.costs)

    @property
    def total(self) -> float | None:
        """The estimated total in USD (None when a price is missing)."""
        costs = [c.cost for c in self.costs]
        return None if any(c is None for c in costs) else float(sum(c or 0.0 for c in costs))

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions the requests go to."""
        return tuple(dict.fromkeys(r.region for r in self.requests if r.region))


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (``pcamflow plan --json``)."""
    return {
        "regions": list(plan.regions),
        "requests": [attrs.asdict(r) for r in plan.requests],
        "costs": [{**attrs.asdict(c), "cost": c.cost} for c in plan.costs],
        "total": plan.total,
        "notes": list(plan.notes),
        "warnings": list(plan.warnings),
    }


def _quantity(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def format_plan(plan: Plan) -> str:
    """The plan as text: each request (its parameters as JSON), then the cost estimate."""
    lines = ["Requests (nothing has been sent):"]
    for planned in plan.requests:
        times = f" x {planned.count:,}" if planned.count > 1 else ""
        where = f" ({planned.region})" if planned.region else ""
        lines.append(f"[{planned.stage}] {planned.service} {planned.operation}{times}{where}")
        body = json.dumps(planned.params, indent=2, sort_keys=True)
        lines += ["    " + line for line in body.splitlines()]
    if not plan.requests:
        lines.append("  none: no stage sends requests")
    lines.append("")
    lines.append("Estimated cost (USD):")
    for cost in plan.costs:
        shown = f"{cost.cost:10.2f}" if cost.cost is not None else "  no price"
        if cost.price is None:
            rate = "no price known"
        else:
            region = cost.price_region or "region not stated"
            rate = f"@ {cost.price:g}/{cost.unit} ({region})"
        note = f"  {cost.note}" if cost.note else ""
        lines.append(f"  {cost.stage:<9} {cost.item:<24} {_quantity(cost.quantity):>12} "
                     f"{cost.unit:<15} {rate:<40} {shown}{note}")
    total = plan.total
    shown_total = f"{total:.2f}" if total is not None else "unknown (prices missing)"
    lines.append(f"  total: {shown_total}" + ("" if plan.costs else " (nothing billed)"))
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)

"""`pcamflow` sub-commands of the SageMaker part: ``plan``."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_plan(args: argparse.Namespace) -> int:
    """Print every AWS request and the cost estimate; with ``--run``, then run (``--yes``)."""
    import attrs

    from pcamflow.config import Settings
    from pcamflow.sagemaker.plan import build_plan, format_plan

    settings = Settings.from_toml(args.config)
    plan = build_plan(settings)
    if args.json:
        print(json.dumps({
            "region": plan.region,
            "requests": [attrs.asdict(r) for r in plan.requests],
            "costs": [{**attrs.asdict(c), "cost": c.cost} for c in plan.costs],
            "total": plan.total,
            "notes": list(plan.notes),
        }, indent=2))
    else:
        print(format_plan(plan))
    if not args.run:
        return 0
    if plan.spends and not args.yes:
        total = f"about {plan.total:.2f} USD" if plan.total is not None else "money"
        print(f"pcamflow: this run would spend {total} on AWS; add --yes to run it",
              file=sys.stderr)
        return 2
    from pcamflow.pipeline import Pipeline
    from pcamflow.registry import Registry
    from pcamflow.sagemaker.clients import AwsClients, services_for

    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    services = services_for(AwsClients.from_settings(settings.aws))
    result = pipeline.run(settings, services=services)
    print(f"run folder: {result.run_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this part's sub-commands to the `pcamflow` parser."""
    p = sub.add_parser(
        "plan",
        help="dry run: print every AWS request a run would make, and its estimated cost",
        description="Print every AWS request the settings' pipeline would make (each checked "
        "against botocore's API model) and an estimated cost from aws.prices. Nothing is sent "
        "unless --run is given; a run that would spend money also needs --yes.",
    )
    p.add_argument("config", help="settings file (TOML)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--run", action="store_true", help="run the pipeline after the plan")
    p.add_argument("--yes", action="store_true", help="confirm a run that spends money")
    p.set_defaults(func=cmd_plan)

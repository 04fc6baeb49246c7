"""The ``pcamflow`` command.

Each sub-command is a small function taking the parsed arguments and returning an exit status;
the work lives in the library. Errors print one line (``pcamflow: error: ...``) and exit 2 for
usage and settings errors, 1 for failures while running; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

from pcamflow.errors import ConfigError, PcamflowError, exit_code

__all__ = ["main"]

log = logging.getLogger("pcamflow")


def _settings(path: str):
    from pcamflow.config import Settings

    return Settings.from_toml(path)


# --- pipeline commands ---------------------------------------------------------------------


def _spend_guard(plan, config: str, yes: bool) -> None:
    """Refuse a run that would spend money unless ``--yes`` was given."""
    if not plan.spends or yes:
        return
    total = f"about {plan.total:.2f} USD" if plan.total is not None else "an unpriced amount"
    raise ConfigError(
        f"{config}: this run starts paid resources or sends billed requests ({total}); see "
        f"them with 'pcamflow plan {config}' and re-run with --yes"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from pcamflow.pipeline import Pipeline
    from pcamflow.registry import Registry

    settings = _settings(args.config)
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    with _services(args, settings) as services:
        # every stage answers for what it would spend: no stage is trusted by its name
        _spend_guard(pipeline.plan(settings, services), args.config, args.yes)
        _run(pipeline, settings, services, force=args.force, from_stage=getattr(args, "from"),
             only=args.only)
    return 0


@contextlib.contextmanager
def _services(args: argparse.Namespace, settings) -> Iterator[dict[str, object]]:
    """The services a command runs with: SageMaker local mode's, with ``--local-mode``."""
    if not getattr(args, "local_mode", False):
        yield {}
        return
    from pcamflow.commands.sagemaker import local_mode

    with local_mode(settings, progress=not args.quiet) as services:
        yield services


def _run(pipeline, settings, services: dict[str, object], **options: object) -> None:
    """Run ``pipeline`` with the run report (and MLflow, with ``[tracking]``); print the result."""
    from pcamflow.commands import report

    observers = report.run_observers(settings)
    result = pipeline.run(settings, services=services, observers=observers, **options)
    print(f"run folder: {result.run_dir}")
    for name, record in result.records.items():
        mark = "ran" if name in result.ran else "complete"
        print(f"  {name:<10} {record.status:<10} {mark:<9} {record.duration_s or 0:8.1f} s")
    report.print_summaries(observers)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print every request the stages would send and the cost; with ``--run``, then run."""
    import json

    from pcamflow.pipeline import Pipeline
    from pcamflow.plan import format_plan, plan_to_dict
    from pcamflow.registry import Registry

    settings = _settings(args.config)
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    with _services(args, settings) as services:
        plan = pipeline.plan(settings, services)
        print(json.dumps(plan_to_dict(plan), indent=2) if args.json else format_plan(plan))
        if not args.run:
            return 0
        if plan.spends and not args.yes:
            total = f"about {plan.total:.2f} USD" if plan.total is not None else "money"
            print(f"pcamflow: this run would spend {total}; add --yes to run it",
                  file=sys.stderr)
            return 2
        _run(pipeline, settings, services)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pcamflow.pipeline import Pipeline
    from pcamflow.registry import Registry

    settings = _settings(args.config)
    if settings.tracking.enabled:  # a run would stop on it before its first stage
        from pcamflow._extras import require

        require("mlflow", "tracking.mlflow_uri")
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    pipeline.validate(settings)  # every stage's own checks, none that needs the network
    print(f"{args.config}: valid; stages: {', '.join(pipeline.names)}")
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from pcamflow.registry import Registry

    registry = Registry.from_entry_points()
    rows = [("NAME", "KIND", "CLASS", "DISTRIBUTION")]
    for reg in registry:
        cls = f"{reg.cls.__module__}:{reg.cls.__qualname__}"
        rows.append((reg.name, reg.kind, cls, reg.distribution or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for name, why in sorted(registry.failures.items()):
        print(f"pcamflow: warning: plugin {name} not loaded: {why}", file=sys.stderr)
    return 0


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``pcamflow`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="pcamflow",
        description="PatchCamelyon from raw HDF5 to a deployed metastasis detector.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="print warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the pipeline a settings file describes; the run "
                       "report is <run_dir>/report.html")
    p.add_argument("config", help="settings file (TOML)")
    p.add_argument("--force", action="store_true", help="run every stage, complete or not")
    p.add_argument("--from", metavar="STAGE", help="run this stage and the ones after it")
    p.add_argument("--only", metavar="STAGE", help="run just this stage")
    p.add_argument("--yes", action="store_true",
                   help="allow a run that starts paid resources or sends billed requests")
    p.add_argument("--local-mode", action="store_true",
                   help="SageMaker local mode: the SageMaker stages run on this machine "
                   "against an emulator of AWS and the built-in algorithm; nothing is spent "
                   "(needs pcamflow[localmode])")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "plan",
        help="dry run: print every request to paid services a run would make, and its cost",
        description="Print every request the settings' pipeline would send to paid services "
        "(each stage says what it would send; AWS requests are checked against botocore's "
        "API model) and an estimated cost. Nothing is sent unless --run is given; a run that "
        "would spend money also needs --yes.",
    )
    p.add_argument("config", help="settings file (TOML)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--run", action="store_true", help="run the pipeline after the plan")
    p.add_argument("--yes", action="store_true", help="confirm a run that spends money")
    p.add_argument("--local-mode", action="store_true",
                   help="SageMaker local mode: the SageMaker stages run on this machine")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("validate", help="check a settings file and run every stage's own "
                       "checks, without running anything or using the network")
    p.add_argument("config", help="settings file (TOML)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("stages", help="list the registered stages")
    p.set_defaults(func=cmd_stages)

    # Commands of the data, local and SageMaker parts register themselves here.
    for register in _command_modules():
        register(sub)
    return parser


def _command_modules() -> list[Callable[[argparse._SubParsersAction], None]]:  # type: ignore[type-arg]
    from pcamflow.commands import data, local, report, sagemaker

    return [data.register, local.register, sagemaker.register, report.register]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        with warnings.catch_warnings():
            # pcamflow logs each deprecation it warns of; on the command line, say it once
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"pcamflow\.")
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pcamflow: interrupted; a re-run resumes where this one stopped", file=sys.stderr)
        return 130
    except PcamflowError as error:
        if args.debug:
            raise
        print(f"pcamflow: error: {error}", file=sys.stderr)
        return exit_code(error)
    except OSError as error:
        if args.debug:
            raise
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        print(f"pcamflow: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

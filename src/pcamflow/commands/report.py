"""`pcamflow` sub-command of the run report: ``report``; and what ``run`` adds to a run (the
report, MLflow tracking when the settings ask for it)."""

from __future__ import annotations

import argparse
from typing import Any

from pcamflow.commands.local import _run_folder


def run_observers(settings: Any) -> list[Any]:
    """The observers ``pcamflow run`` passes to the pipeline (see :mod:`pcamflow.tracking`)."""
    from pcamflow.tracking import observers_for

    return observers_for(settings)


def print_summaries(observers: list[Any]) -> None:
    """The observers' closing lines: where the report is, which MLflow run holds the run."""
    for observer in observers:
        line = observer.summary()
        if line:
            print(line)


def cmd_report(args: argparse.Namespace) -> int:
    from pcamflow.evaluation.run_report import stages_from_settings, write_run_report

    run_dir, settings = _run_folder(args.target)
    stages = stages_from_settings(settings) if settings is not None else None
    print(f"report: {write_run_report(run_dir, stages=stages)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this part's sub-commands to the `pcamflow` parser."""
    p = sub.add_parser(
        "report",
        help="write a run's report.html again from what its stages left",
        description="Write RUN/report.html: every stage's status, time and settings, the data, "
        "the tuning trials, the training curves, the evaluation and the endpoint, on one page "
        "that opens offline. `pcamflow run` writes it at the end of every run.",
    )
    p.add_argument("target", metavar="RUN_DIR_OR_CONFIG", help="a run folder or settings file")
    p.set_defaults(func=cmd_report)

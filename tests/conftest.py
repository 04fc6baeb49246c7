"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcamflow.data.synth import write_synthetic_pcam

# A shell starts a command run in the background (`tox &`) with SIGINT ignored, and Python then
# keeps it ignored: Ctrl-C, simulated (_thread.interrupt_main) or sent to a child process, would
# do nothing, and the tests of what Ctrl-C does would fail. Give the suite a terminal's Ctrl-C:
# Python's handler here, and the default action in the processes the tests start.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

PCAM_COUNTS = {"train": 64, "valid": 32, "test": 32}
"""Patches per split in the ``pcam_dir`` fixture (balanced: half are label 1)."""


@pytest.fixture(scope="session")
def pcam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic PCam folder (``.h5`` files, counts in ``PCAM_COUNTS``), seed 0.

    Shared by the session: treat it as read-only (copy it to change it).
    """
    out = tmp_path_factory.mktemp("pcam")
    write_synthetic_pcam(out, **PCAM_COUNTS, seed=0, progress=False)
    return out


FULL_RUN = """
[pipeline]
run_dir = "{run}"
seed = 0
tuner = "local"
deployer = "local"

[data]
source = "{source}"

[convert]
workers = 1

[tune]
strategy = "Random"
max_jobs = 2
epochs = 1

[tune.ranges.learning_rate]
type = "continuous"
min_value = 0.001
max_value = 0.01
scaling = "Logarithmic"

[train]
num_layers = 20
image_shape = "3,16,16"
resize = 16
epochs = 2
mini_batch_size = 32
optimizer = "adam"
learning_rate = 0.003

[train.extensions]
num_workers = 0

[evaluate]
bootstrap = 50
top_errors = 4

[deploy]
name = "run-report-test"
port = 0
"""

TRACKING = """
[tracking]
mlflow_uri = "{uri}"
experiment = "pcamflow-tests"
tags = {{ purpose = "test" }}
"""


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A whole pipeline run made by ``pcamflow run``, and what the command printed."""

    settings: Path
    run_dir: Path
    stdout: str
    mlflow_uri: str | None


@pytest.fixture(scope="session")
def full_run(pcam_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:
    """Every stage, local and tiny (tune, train, evaluate, deploy), run as a user runs it:
    ``pcamflow explore`` into the run folder, then ``pcamflow run``; logged to an MLflow file
    store when the ``mlflow`` extra is installed. The endpoint is torn down afterwards.

    Shared by the session: treat the run folder as read-only.
    """
    from pcamflow.cli import main

    out = tmp_path_factory.mktemp("full_run")
    run_dir = out / "run"
    text = FULL_RUN.format(run=run_dir, source=pcam_dir)
    uri = None
    if importlib.util.find_spec("mlflow") is not None:
        uri = (out / "mlruns").as_uri()
        text += TRACKING.format(uri=uri)
    settings = out / "settings.toml"
    settings.write_text(text)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["-q", "explore", str(pcam_dir), str(run_dir / "explore")]) == 0
        status = main(["run", str(settings)])
    assert status == 0, printed.getvalue()[-3000:]
    try:
        yield FinishedRun(settings=settings, run_dir=run_dir, stdout=printed.getvalue(),
                          mlflow_uri=uri)
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            main(["teardown", str(run_dir)])

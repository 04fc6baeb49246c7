"""The main job: the whole pcamflow pipeline, offline, on synthetic PCam data it makes itself.

    python examples/demo.py [--settings examples/local.toml] [--fresh]

1. writes synthetic PCam-format HDF5 files (skipped when they are already there);
2. explores them (montages, class balance, channel statistics, duplicates);
3. runs the pipeline of ``examples/local.toml``: convert -> manifests -> tune -> train ->
   evaluate -> deploy (a re-run resumes, skipping complete stages);
4. prints the test metrics and where the run report is (``runs/demo/report.html``: every
   stage, the data, the tuning trials, the training curves, the evaluation, the endpoint);
5. asks the local endpoint about a few test patches through a stock boto3 SageMaker runtime
   client, prints the answers, and tears the endpoint down.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from pcamflow import Pipeline, Registry, Settings
from pcamflow.artifacts import Endpoint, Evaluation, Manifests
from pcamflow.data.explore import explore
from pcamflow.data.manifests import read_manifest, uri_to_path
from pcamflow.data.synth import write_synthetic_pcam
from pcamflow.evaluation import format_metrics_table
from pcamflow.stages import Context
from pcamflow.tracking import observers_for

SIZES = {"train": 2000, "valid": 500, "test": 500}


def ask_endpoint(endpoint: Endpoint, manifests: Manifests, count: int = 6) -> None:
    """Send ``count`` test patches to the endpoint through boto3, as a SageMaker client would."""
    import boto3

    runtime = boto3.client(
        "sagemaker-runtime",
        endpoint_url=endpoint.url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    print(f"\nendpoint {endpoint.name} at {endpoint.url}:")
    for uri, label in read_manifest(manifests.manifests["test"])[:count]:
        path = uri_to_path(uri)
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint.name,
            ContentType="image/jpeg",
            Accept="application/json",
            Body=path.read_bytes(),
        )
        probabilities = answer["Body"].read().decode()
        print(f"  {path.name}  true class {label}  ->  {probabilities}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="examples/local.toml")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()

    settings = Settings.from_toml(args.settings)
    if args.fresh and settings.run_dir.exists():
        shutil.rmtree(settings.run_dir)
    source = Path(settings.data.source)
    if not (source / "camelyonpatch_level_2_split_test_y.h5").exists():
        print(f"writing synthetic PCam to {source} ({SIZES})")
        write_synthetic_pcam(source, seed=settings.pipeline.seed, **SIZES)

    report = explore(source, settings.run_dir / "explore", seed=settings.pipeline.seed)
    print(f"data exploration: {report}")

    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    print(f"pipeline: {' -> '.join(pipeline.names)}")
    # the run report (runs/demo/report.html), and MLflow when the settings have [tracking]
    observers = observers_for(settings)
    result = pipeline.run(settings, observers=observers)

    evaluation = next(a for a in result.artifacts.values() if isinstance(a, Evaluation))
    print("\ntest metrics:")
    print(format_metrics_table(evaluation.metrics))
    print(f"evaluation report: {evaluation.report}")
    for observer in observers:
        if line := observer.summary():
            print(line)

    endpoint = next((a for a in result.artifacts.values() if isinstance(a, Endpoint)), None)
    if endpoint is not None:
        manifests = next(a for a in result.artifacts.values() if isinstance(a, Manifests))
        deployer = pipeline["deploy"]
        context = Context(settings=settings, run_dir=settings.run_dir,
                          stage_dir=settings.run_dir / "deploy", stage_name="deploy")
        try:
            ask_endpoint(endpoint, manifests)
        finally:
            deployer.teardown(endpoint, context)  # type: ignore[attr-defined]
            print(f"endpoint {endpoint.name} torn down")
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job: the whole pcamflow pipeline, offline, on synthetic PCam data it makes itself.

    python examples/demo.py [--settings examples/local.toml] [--fresh]

1. writes synthetic PCam-format HDF5 files (skipped when they are already there), at the
   default difficulty: a good model's test AUC is in the mid 0.90s, as on the real PCam;
2. explores them (montages, class balance, channel statistics, duplicates);
3. runs the pipeline of ``examples/local.toml``: convert -> manifests -> tune -> train ->
   evaluate -> deploy (a re-run resumes, skipping complete stages);
4. prints the test metrics, and what two choices gained: the tuned learning rate against the
   default one (each trained for a tuning trial's epochs, scored on the validation split),
   and test-time augmentation against plain scoring (test AUC and accuracy);
5. asks the local endpoint about a few test patches through a stock boto3 SageMaker runtime
   client, prints the answers, and tears the endpoint down.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
import time
from pathlib import Path

from pcamflow import Pipeline, Registry, Settings
from pcamflow.artifacts import Endpoint, Evaluation, Manifests, TuningResult
from pcamflow.data.explore import explore
from pcamflow.data.manifests import read_manifest, uri_to_path
from pcamflow.data.synth import DEFAULT_DIFFICULTY, write_synthetic_pcam
from pcamflow.evaluation import format_metrics_table
from pcamflow.stages import Context

SIZES = {"train": 2000, "valid": 500, "test": 500}


def synthetic_difficulty(source: Path) -> float | None:
    """The difficulty of the synthetic PCam in ``source`` (None: none there)."""
    import h5py

    path = source / "camelyonpatch_level_2_split_test_y.h5"
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        return float(f.attrs.get("difficulty", 0.0))  # files without it: the easy task


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


def compare_learning_rates(settings: Settings, tuning: TuningResult,
                           manifests: Manifests) -> None:
    """Train with the default learning rate for as long as a tuning trial, and compare."""
    from pcamflow.local.training.trainer import train_model

    default = settings.train.hyperparameters
    epochs = settings.tune.epochs or default.epochs
    print(f"\ntuning trials ({epochs} epoch(s) each), {tuning.objective}:")
    with open(str(tuning.trials), newline="") as handle:
        for row in csv.DictReader(handle):
            print(f"  trial {row['trial']}: learning_rate {float(row['learning_rate']):.5f} "
                  f"{row.get('optimizer', '')}  ->  {row[tuning.objective]}")
    # trained like a trial (same epochs, data and seed), with [train]'s own values
    outcome = train_model(
        manifests, default.with_values(epochs=epochs), settings.train.extensions,
        settings.run_dir / "default-learning-rate", seed=settings.pipeline.seed, progress=False,
    )
    tuned = tuning.best_hyperparameters
    print(f"learning rate, default: {default.learning_rate:.5f} {default.optimizer}  ->  "
          f"validation accuracy {outcome.metrics['validation:accuracy']:.4f}")
    print(f"learning rate, tuned:   {float(tuned['learning_rate']):.5f} "
          f"{tuned.get('optimizer', default.optimizer)}  ->  validation accuracy "
          f"{tuning.best_value:.4f}")


def report_tta_gain(metrics: dict[str, float | None]) -> None:
    """Test AUC and accuracy with and without test-time augmentation (8 dihedral views)."""
    tta = {key.split("/", 1)[1]: value for key, value in metrics.items()
           if key.startswith("tta@") and "/" in key}
    if not tta:
        return
    print("\ntest-time augmentation (mean over the 8 dihedral views):")
    for name in ("roc_auc", "accuracy"):
        plain, augmented = metrics.get(name), tta.get(name)
        if plain is not None and augmented is not None:
            print(f"  {name:<9} plain {plain:.4f}  TTA {augmented:.4f}  gain "
                  f"{augmented - plain:+.4f}")


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
    if synthetic_difficulty(source) != DEFAULT_DIFFICULTY:
        print(f"writing synthetic PCam to {source} ({SIZES}, difficulty {DEFAULT_DIFFICULTY})")
        write_synthetic_pcam(source, seed=settings.pipeline.seed, **SIZES)
        if settings.run_dir.exists():  # its stages were made from the data just replaced
            shutil.rmtree(settings.run_dir)

    report = explore(source, settings.run_dir / "explore", seed=settings.pipeline.seed)
    print(f"data exploration: {report}")

    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    print(f"pipeline: {' -> '.join(pipeline.names)}")
    result = pipeline.run(settings)

    evaluation = next(a for a in result.artifacts.values() if isinstance(a, Evaluation))
    print("\ntest metrics:")
    print(format_metrics_table(evaluation.metrics))
    print(f"report: {evaluation.report}")
    tuning = next((a for a in result.artifacts.values() if isinstance(a, TuningResult)), None)
    manifests = next(a for a in result.artifacts.values() if isinstance(a, Manifests))
    if tuning is not None:
        compare_learning_rates(settings, tuning, manifests)
    report_tta_gain(evaluation.metrics)

    endpoint = next((a for a in result.artifacts.values() if isinstance(a, Endpoint)), None)
    if endpoint is not None:
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

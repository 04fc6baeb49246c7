"""The main job: the whole pcamflow pipeline, offline, on synthetic PCam data it makes itself.

    python examples/demo.py [--settings examples/local.toml] [--fresh]
    python examples/demo.py --settings examples/sagemaker_local.toml --local-mode

1. writes synthetic PCam-format HDF5 files (skipped when they are already there), at the
   default difficulty: a good model's test AUC is in the mid 0.90s, as on the real PCam;
2. explores them (montages, class balance, channel statistics, duplicates);
3. runs the pipeline of the settings: convert -> manifests -> tune -> train -> evaluate ->
   deploy (a re-run resumes, skipping complete stages); with ``--local-mode``, the SageMaker
   stages run in SageMaker local mode on this machine (upload to S3, tuning job, training
   job, batch transform, endpoint), and nothing is sent to AWS;
4. prints the test metrics and where the run report is (``<run folder>/report.html``: every
   stage, the data, the tuning trials, the training curves, the evaluation, the endpoint),
   and what two choices gained: the tuned learning rate against the default one (each
   trained for a tuning trial's epochs, scored on the validation split; local trainer only),
   and test-time augmentation against plain scoring (test AUC and accuracy);
5. asks the endpoint about a few test patches through a stock boto3 SageMaker runtime client,
   prints the answers, and tears the endpoint down.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pcamflow import Pipeline, Registry, Settings
from pcamflow.artifacts import Endpoint, Evaluation, Manifests, TuningResult
from pcamflow.data.explore import explore
from pcamflow.data.manifests import read_manifest, uri_to_path
from pcamflow.data.synth import DEFAULT_DIFFICULTY, write_synthetic_pcam
from pcamflow.evaluation import format_metrics_table
from pcamflow.stages import Context
from pcamflow.tracking import observers_for

SIZES = {"train": 2000, "valid": 500, "test": 500}


def synthetic_difficulty(source: Path) -> float | None:
    """The difficulty of the synthetic PCam in ``source`` (None: none there)."""
    import h5py

    path = source / "camelyonpatch_level_2_split_test_y.h5"
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        return float(f.attrs.get("difficulty", 0.0))  # files without it: the easy task


def test_patches(manifests: Manifests, count: int, s3: Any = None) -> list[tuple[str, bytes, str]]:
    """The first ``count`` test patches of the manifests: (name, JPEG bytes, true class)."""
    listing = manifests.manifests["test"]
    if listing.startswith("s3://"):  # the SageMaker stages keep their manifests in S3
        from pcamflow.sagemaker.s3 import S3Uri

        where = S3Uri.parse(listing)
        lines = s3.get_object(Bucket=where.bucket, Key=where.key)["Body"].read().decode()
        refs = [(json.loads(line)["source-ref"], json.loads(line)["class"])
                for line in lines.splitlines()[:count]]
        return [(uri.rsplit("/", 1)[-1], s3.get_object(
            Bucket=S3Uri.parse(uri).bucket, Key=S3Uri.parse(uri).key)["Body"].read(), label)
                for uri, label in refs]
    out = []
    for uri, label in read_manifest(listing)[:count]:
        path = uri_to_path(uri)
        out.append((path.name, path.read_bytes(), label))
    return out


def ask_endpoint(name: str, url: str, patches: list[tuple[str, bytes, str]]) -> None:
    """Send the patches to the endpoint through boto3, as a SageMaker client would."""
    import boto3

    runtime = boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    print(f"\nendpoint {name} at {url}:")
    for image, body, label in patches:
        answer = runtime.invoke_endpoint(
            EndpointName=name,
            ContentType="image/jpeg",
            Accept="application/json",
            Body=body,
        )
        probabilities = answer["Body"].read().decode()
        print(f"  {image}  true class {label}  ->  {probabilities}")


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
    # the plain figures are at threshold 0.5: compare with TTA's at the same threshold
    tta = {key.split("/", 1)[1]: value for key, value in metrics.items()
           if key.startswith("tta@0.5/")}
    if not tta:
        return
    print("\ntest-time augmentation (mean over the 8 dihedral views), at threshold 0.5:")
    for name in ("roc_auc", "accuracy"):
        plain, augmented = metrics.get(name), tta.get(name)
        if plain is not None and augmented is not None:
            print(f"  {name:<9} plain {plain:.4f}  TTA {augmented:.4f}  gain "
                  f"{augmented - plain:+.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="examples/local.toml")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first")
    parser.add_argument("--local-mode", action="store_true",
                        help="run the SageMaker stages in SageMaker local mode")
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
    # the run report (<run folder>/report.html), and MLflow when the settings have [tracking]
    observers = observers_for(settings)
    with contextlib.ExitStack() as stack:
        services: dict[str, Any] = {}
        if args.local_mode:
            from pcamflow.sagemaker.localmode import LocalMode

            # one torch thread: on a machine shared with other work, more only wait
            local = stack.enter_context(LocalMode(region=settings.aws.region or "us-east-1",
                                                  threads=1))
            services = local.services()
            print(f"SageMaker local mode in {local.region}: nothing is sent to AWS")
        result = pipeline.run(settings, services=services, observers=observers)

        evaluation = next(a for a in result.artifacts.values() if isinstance(a, Evaluation))
        print("\ntest metrics:")
        print(format_metrics_table(evaluation.metrics))
        print(f"evaluation report: {evaluation.report}")
        for observer in observers:
            if line := observer.summary():
                print(line)
        manifests = next(a for a in result.artifacts.values() if isinstance(a, Manifests))
        tuning = next((a for a in result.artifacts.values() if isinstance(a, TuningResult)),
                      None)
        if tuning is not None and not args.local_mode:  # the local trainer's own learning rate
            compare_learning_rates(settings, tuning, manifests)
        report_tta_gain(evaluation.metrics)

        endpoint = next((a for a in result.artifacts.values() if isinstance(a, Endpoint)), None)
        if endpoint is not None:
            deployer = pipeline["deploy"]
            context = Context(settings=settings, run_dir=settings.run_dir,
                              stage_dir=settings.run_dir / "deploy", stage_name="deploy",
                              services=services)
            try:
                if args.local_mode:
                    ask_endpoint(endpoint.name, local.runtime_url,
                                 test_patches(manifests, 6, services["aws"].s3))
                else:
                    ask_endpoint(endpoint.name, str(endpoint.url), test_patches(manifests, 6))
            finally:
                deployer.teardown(endpoint, context)  # type: ignore[attr-defined]
                print(f"endpoint {endpoint.name} torn down")
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

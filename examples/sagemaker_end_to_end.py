"""PCam end to end on SageMaker: plan, confirm, run, try the endpoint, tear it down.

    python examples/sagemaker_end_to_end.py examples/sagemaker.toml          # plan only
    python examples/sagemaker_end_to_end.py examples/sagemaker.toml --yes    # spends money

Needs AWS credentials allowed to do what docs/sagemaker.md lists, and the PCam HDF5 files in
``data.source``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pcamflow import Pipeline, Registry, Settings
from pcamflow.artifacts import Endpoint, Evaluation
from pcamflow.plan import format_plan
from pcamflow.sagemaker.clients import AwsClients, services_for
from pcamflow.sagemaker.deployer import teardown_endpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="examples/sagemaker.toml")
    parser.add_argument("--yes", action="store_true", help="run it (this spends money)")
    parser.add_argument("--keep", action="store_true", help="leave the endpoint running")
    args = parser.parse_args()

    settings = Settings.from_toml(args.config)
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    print(format_plan(pipeline.plan(settings)))
    if not args.yes:
        print("\nplan only; add --yes to run it", file=sys.stderr)
        return 0

    clients = AwsClients.from_settings(settings.aws)
    result = pipeline.run(settings, services=services_for(clients))

    for artifact in result.artifacts.values():
        if isinstance(artifact, Evaluation):
            shown = {k: artifact.metrics.get(k) for k in ("accuracy", "roc_auc", "f1")}
            print(f"test metrics: {shown}; report: {artifact.report}")
    endpoints = [a for a in result.artifacts.values() if isinstance(a, Endpoint)]
    if not endpoints:
        return 0
    endpoint = endpoints[-1]
    runtime = clients.client("sagemaker-runtime")
    image = next(Path(settings.run_dir, "convert").rglob("*.jpg"), None)
    if image is not None:
        answer = runtime.invoke_endpoint(EndpointName=endpoint.name, Body=image.read_bytes(),
                                         ContentType="application/x-image")
        print(f"{image.name}: class probabilities {json.loads(answer['Body'].read())}")
    if args.keep:
        print(f"endpoint {endpoint.name} keeps running (billed): "
              f"pcamflow teardown {settings.run_dir}")
    else:
        for line in teardown_endpoint(endpoint, clients):
            print(f"deleted {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

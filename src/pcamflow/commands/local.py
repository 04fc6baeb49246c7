"""`pcamflow` sub-commands of the local part: ``serve``, ``predict`` and ``teardown``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pcamflow._io import recorded_artifacts
from pcamflow.config import API_KEY_ENV, DeploySettings
from pcamflow.errors import ConfigError, EndpointError

DEFAULTS = DeploySettings()


def _run_folder(target: str) -> tuple[Path, Any]:
    """A run folder, or a settings file's run folder (and the settings)."""
    path = Path(target)
    if path.is_file() and path.suffix == ".toml":
        from pcamflow.config import Settings

        settings = Settings.from_toml(path)
        return settings.run_dir, settings
    if path.is_dir():
        return path, None
    raise ConfigError(f"{target}: expected a run folder or a settings file (.toml)")


def _model_path(target: str) -> str:
    """``target`` itself if it is an archive, else the model its run folder or settings made."""
    if Path(target).is_file() and not target.endswith(".toml"):
        return target
    from pcamflow.artifacts import ModelArtifact

    run_dir, _ = _run_folder(target)
    models = recorded_artifacts(run_dir, ModelArtifact)
    if not models:
        raise ConfigError(f"{target}: no completed stage in {run_dir} made a model")
    return models[-1][1].uri


# --- serve -----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import attrs

    from pcamflow.local.serving.hosting import serve_model

    try:
        options = attrs.evolve(
            DEFAULTS, name=args.name, host=args.host, port=args.port,
            max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
            threads=args.threads, max_body_bytes=args.max_body_bytes,
            max_images=args.max_images, max_pixels=args.max_pixels,
            max_connections=args.max_connections, read_timeout_s=args.read_timeout_s,
        )
    except ConfigError as error:  # the option names are the settings' names
        raise ConfigError(f"--{str(error).replace('_', '-')}") from None
    serve_model(
        _model_path(args.model),
        options,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        url_file=args.url_file,
        log_level="warning" if args.quiet else "info",
    )
    return 0


# --- predict ---------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    from pcamflow.sagemaker.runtime import EndpointClient

    client = EndpointClient.for_target(
        args.target,
        name=args.name,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        region=args.region,
    )
    failed = 0
    for image in args.images:
        try:
            prediction = client.predict(image)
        except OSError as error:
            print(f"{image}\terror: {error.strerror or error}")
            failed += 1
            continue
        except Exception as error:  # botocore's ClientError: the endpoint's own message
            response = getattr(error, "response", None)
            if not isinstance(response, dict):
                raise
            problem = response.get("Error", {})
            print(f"{image}\terror: {problem.get('Code')}: {problem.get('Message')}")
            failed += 1
            continue
        if args.json:
            print(json.dumps({"image": image, "label": prediction.label,
                              "probabilities": list(prediction.probabilities)}))
        else:
            shown = ", ".join(f"{p:.4f}" for p in prediction.probabilities)
            print(f"{image}\tclass {prediction.label}\t"
                  f"confidence {prediction.confidence:.4f}\t[{shown}]")
    return 1 if failed else 0


# --- teardown --------------------------------------------------------------------------------


def cmd_teardown(args: argparse.Namespace) -> int:
    from pcamflow.artifacts import Endpoint

    run_dir, settings = _run_folder(args.target)
    endpoints = recorded_artifacts(run_dir, Endpoint)
    if args.stage:
        endpoints = [(n, e) for n, e in endpoints if n == args.stage]
    if not endpoints:
        print(f"no endpoint recorded in {run_dir / 'run.json'}")
        return 0
    for stage, endpoint in endpoints:
        if endpoint.backend == "local":
            from pcamflow.local.serving.process import stop_endpoint

            stopped = stop_endpoint(endpoint)
            state = "stopped" if stopped else "was not running"
            print(f"{stage}: local endpoint {endpoint.name} ({endpoint.url}) {state}")
        elif endpoint.backend == "sagemaker" and endpoint.resources.get("local_mode"):
            print(f"{stage}: SageMaker endpoint {endpoint.name} ran in local mode and ended "
                  "with it; nothing to delete")
        elif endpoint.backend == "sagemaker":
            _teardown_sagemaker(endpoint, settings)
            print(f"{stage}: SageMaker endpoint {endpoint.name} deleted")
        else:
            raise EndpointError(f"{stage}: unknown endpoint backend {endpoint.backend!r}")
    return 0


def _teardown_sagemaker(endpoint: Any, settings: Any) -> None:
    from pcamflow.sagemaker.clients import AwsClients
    from pcamflow.sagemaker.deployer import teardown_endpoint

    if settings is not None:
        clients = AwsClients.from_settings(settings.aws)
    else:
        import boto3

        clients = AwsClients(boto3.Session(region_name=endpoint.region))
    teardown_endpoint(endpoint, clients)


# --- parser ----------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this part's sub-commands to the `pcamflow` parser."""
    p = sub.add_parser(
        "serve",
        help="serve a model.tar.gz with SageMaker's inference API and a web page",
        description="Serve a model on GET /ping, POST /invocations, "
        "POST /endpoints/NAME/invocations and a web page at /. Stop it with Ctrl-C.",
    )
    p.add_argument("model", help="a model.tar.gz, or a run folder / settings file that made one")
    p.add_argument("--host", default=DEFAULTS.host,
                   help=f"address to bind (default {DEFAULTS.host}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULTS.port,
                   help=f"port (default {DEFAULTS.port}; 0: any free one)")
    p.add_argument("--name", default=DEFAULTS.name,
                   help=f"the endpoint's name (default {DEFAULTS.name})")
    p.add_argument("--api-key", help=f"require this key on every route but /ping (better: set "
                   f"{API_KEY_ENV}, which other users cannot read from the process list)")
    p.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size,
                   help=f"images per forward pass (default {DEFAULTS.max_batch_size})")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULTS.max_wait_ms,
                   help="how long a batch waits for requests on their way "
                   f"(default {DEFAULTS.max_wait_ms:g})")
    p.add_argument("--threads", type=int,
                   help="torch threads for the forward pass (default: one per core)")
    limits = p.add_argument_group("limits on each request and connection")
    limits.add_argument("--max-body-bytes", type=int, default=DEFAULTS.max_body_bytes,
                        help=f"the largest request body (default {DEFAULTS.max_body_bytes:,})")
    limits.add_argument("--max-images", type=int, default=DEFAULTS.max_images,
                        help=f"images in one .npy request (default {DEFAULTS.max_images})")
    limits.add_argument("--max-pixels", type=int, default=DEFAULTS.max_pixels,
                        help="pixels decoded for one request, all its images together "
                        f"(default {DEFAULTS.max_pixels:,})")
    limits.add_argument("--max-connections", type=int, default=DEFAULTS.max_connections,
                        help="connections open at once; beyond, idle ones are closed "
                        f"(default {DEFAULTS.max_connections})")
    limits.add_argument("--read-timeout-s", type=float, default=DEFAULTS.read_timeout_s,
                        help="seconds a client has to send a request's head, then its body "
                        f"(default {DEFAULTS.read_timeout_s:g})")
    p.add_argument("--url-file", help="write the server's URL here once it listens")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "predict",
        help="send images to an endpoint (a local URL or a SageMaker endpoint name)",
        description="Send each image to the endpoint with the boto3 SageMaker runtime client "
        "and print the predicted class and probabilities.",
    )
    p.add_argument("target", help="http://HOST:PORT[/endpoints/NAME], or a SageMaker endpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument("--name", help="the local endpoint's name (default: ask the endpoint)")
    p.add_argument("--api-key", help=f"the local endpoint's API key (default: ${API_KEY_ENV})")
    p.add_argument("--region", help="the AWS region of a SageMaker endpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "teardown",
        help="stop the endpoint a run deployed",
        description="Stop the local endpoint (or delete the SageMaker endpoint) recorded in "
        "a run's run.json.",
    )
    p.add_argument("target", metavar="RUN_DIR_OR_CONFIG", help="a run folder or settings file")
    p.add_argument("--stage", help="only the endpoint of this stage")
    p.set_defaults(func=cmd_teardown)

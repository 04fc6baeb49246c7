"""The SageMaker deployer: model, endpoint config and real-time endpoint; and teardown.

:class:`SageMakerDeployer` creates a SageMaker model from the trained ``model.tar.gz``, an
endpoint config (one variant; data capture when ``aws.endpoint.data_capture_s3_uri`` is set)
and the endpoint named ``deploy.name``, waits until it is ``InService`` and, when
``aws.endpoint.autoscaling_max_instances`` is set, registers target-tracking autoscaling.
:func:`teardown_endpoint` deletes all of it again (``pcamflow teardown``); an endpoint is
billed per instance-hour until then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pcamflow.artifacts import Endpoint, ModelArtifact
from pcamflow.errors import AwsError, ConfigError
from pcamflow.sagemaker._stage import JobStageOptions
from pcamflow.stages import Context, Deployer

__all__ = ["SageMakerDeployer", "teardown_endpoint"]

log = logging.getLogger(__name__)


def deploy_requests(
    context: Context, resolved: Any, model_uri: str
) -> dict[str, Any]:
    """The requests of the deployer stage in ``context``: ``model``, ``endpoint_config``,
    ``endpoint`` and ``scaling`` (Application Auto Scaling's ``(operation, params)`` pairs).

    Both :meth:`SageMakerDeployer.run` and :meth:`SageMakerDeployer.plan` build them here.
    """
    import datetime as dt

    from pcamflow.sagemaker.hosting import (
        endpoint_config_request,
        endpoint_request,
        model_request,
        scaling_requests,
    )
    from pcamflow.sagemaker.requests import job_name

    aws, deploy = context.settings.aws, context.settings.deploy
    when = dt.datetime.now(dt.timezone.utc)
    model_name = job_name(deploy.name, "model", when)
    config_name = job_name(deploy.name, "config", when)
    return {
        "model": model_request(model_name, model_uri, aws, resolved),
        "endpoint_config": endpoint_config_request(
            config_name, model_name, deploy.instance_type, deploy.initial_instance_count, aws,
            resolved),
        "endpoint": endpoint_request(deploy.name, config_name, aws),
        "scaling": scaling_requests(deploy.name, deploy.initial_instance_count, aws),
    }


class SageMakerDeployer(JobStageOptions, Deployer):
    """Deploys the model to a SageMaker real-time endpoint.

    Args:
        progress: show the endpoint's status while it is created.
        ask: asks, on Ctrl-C while the endpoint is created, whether to delete it again.
    """

    writes_to = None  # an endpoint, not a file

    def validate(self, context: Context) -> None:
        from pcamflow.sagemaker.hosting import scaling_requests
        from pcamflow.sagemaker.trainer import check_aws

        check_aws(context.settings, context.services)
        deploy = context.settings.deploy
        scaling_requests(deploy.name, deploy.initial_instance_count, context.settings.aws)
        if context.settings.deploy.api_key_env:
            raise ConfigError(
                "deploy.api_key_env: a SageMaker endpoint is authorised by IAM (SigV4), not by "
                "an API key; remove it or use deployer = 'local'"
            )

    def plan(self, context: Context) -> Any:
        from pcamflow.sagemaker.planning import StagePlanner, planned_resolved, planned_root

        settings = context.settings
        aws, deploy = settings.aws, settings.deploy
        resolved = planned_resolved(settings)
        planner = StagePlanner(context, resolved.region)
        model = context.optional_input(ModelArtifact)
        model_uri = model.uri if model is not None else str(planned_root(
            context, resolved).join("train", "output", "<training job>", "output",
                                    "model.tar.gz"))
        requests = deploy_requests(context, resolved, model_uri)
        planner.request("sagemaker", "DescribeEndpoint", {"EndpointName": deploy.name})
        planner.request("sagemaker", "CreateModel", requests["model"])
        planner.request("sagemaker", "CreateEndpointConfig", requests["endpoint_config"])
        planner.request("sagemaker", "CreateEndpoint", requests["endpoint"])
        for operation, params in requests["scaling"]:
            planner.request("application-autoscaling", operation, params)
        planner.instance_hours(deploy.instance_type, deploy.initial_instance_count,
                               aws.endpoint.endpoint_hours,
                               "aws.endpoint.endpoint_hours; billed until `pcamflow teardown`")
        return planner.plan()

    def run(self, context: Context) -> Endpoint:
        from pcamflow.sagemaker import jobs
        from pcamflow.sagemaker.clients import clients_for, resolve

        settings = context.settings
        aws, deploy = settings.aws, settings.deploy
        model = context.input(ModelArtifact)
        if not model.uri.startswith("s3://"):
            raise ConfigError(
                f"model {model.uri}: deployer 'sagemaker' needs a model in S3 "
                "(trainer = 'sagemaker')"
            )
        clients = clients_for(context)
        _check_free(clients, deploy.name)
        resolved = resolve(clients, aws)
        requests = deploy_requests(context, resolved, model.uri)
        model_name = requests["model"]["ModelName"]
        config_name = requests["endpoint_config"]["EndpointConfigName"]
        resources = {"model": model_name, "endpoint_config": config_name}
        # what this run asks for is deleted if it fails; each is noted before it is asked for,
        # so that a Ctrl-C between the request and its answer leaves nothing behind
        created: dict[str, str] = {}
        try:
            created["model"] = model_name
            jobs.create("model", requests["model"], clients)
            created["endpoint_config"] = config_name
            jobs.create("endpoint_config", requests["endpoint_config"], clients)
            created["endpoint"] = deploy.name
            live = _create_endpoint(requests["endpoint"], clients, created)
            jobs.wait("endpoint", live, poll_s=clients.poll_s(aws), progress=self.progress)
            scaling = _autoscale(clients, deploy.name, requests["scaling"], created)
        except KeyboardInterrupt:
            ask = self.ask or jobs.ask_on_terminal
            if ask(f"Endpoint {deploy.name} is being created (and billed). Delete it?"):
                _delete_created(clients, created)
            else:
                log.warning("endpoint %s left as it is; created: %s", deploy.name, created)
            raise
        except Exception:
            # nothing half-made is left billing: a failed deploy deletes what it created
            log.warning("deploying %s failed; deleting what was created", deploy.name)
            _delete_created(clients, created)
            raise
        if scaling:
            resources["autoscaling"] = scaling
        if clients.local_mode:  # it ends with the process: teardown on AWS must not touch it
            resources["local_mode"] = "true"
        endpoint = Endpoint(name=deploy.name, backend="sagemaker", region=clients.region,
                            resources=resources)
        log.info("endpoint %s is InService in %s", deploy.name, clients.region)
        return endpoint

    def teardown(self, endpoint: Endpoint, context: Context) -> None:
        from pcamflow.sagemaker.clients import clients_for

        teardown_endpoint(endpoint, clients_for(context))


def _create_endpoint(request: dict[str, Any], clients: Any, created: dict[str, str]) -> Any:
    """``CreateEndpoint``; refused, the endpoint is not this run's to delete."""
    from pcamflow.sagemaker import jobs

    try:
        return jobs.create("endpoint", request, clients)
    except AwsError:  # e.g. it exists already: someone else's, so leave it alone
        del created["endpoint"]
        raise


def _check_free(clients: Any, name: str) -> None:
    """Refuse to deploy over an endpoint of the same name (it may be serving)."""
    try:
        found = clients.sagemaker.describe_endpoint(EndpointName=name)
    except Exception as error:  # botocore ClientError: not found is what we want
        if _not_found(error):
            return
        raise AwsError(f"cannot check whether endpoint {name} exists: {error}") from None
    raise AwsError(
        f"deploy.name: endpoint {name} already exists ({found.get('EndpointStatus')}); "
        "tear it down first (pcamflow teardown) or choose another deploy.name"
    )


def _delete_created(clients: Any, created: dict[str, str]) -> None:
    partial = Endpoint(name=created.get("endpoint", ""), backend="sagemaker",
                       resources={k: v for k, v in created.items() if k != "endpoint"})
    teardown_endpoint(partial, clients, wait="endpoint" in created)


def _autoscale(
    clients: Any, name: str, requests: list[tuple[str, dict[str, Any]]], created: dict[str, str]
) -> str | None:
    """Register the scalable target and its policy; the target goes into ``created`` at once,
    so that a failure after it (the policy refused) deregisters it with the rest."""
    if not requests:
        return None
    scaling = clients.client("application-autoscaling")
    resource = ""
    for operation, params in requests:
        method = {"RegisterScalableTarget": scaling.register_scalable_target,
                  "PutScalingPolicy": scaling.put_scaling_policy}[operation]
        try:
            method(**params)
        except Exception as error:  # botocore ClientError
            raise AwsError(f"autoscaling {name}: {operation} failed: {error}") from None
        if operation == "RegisterScalableTarget":
            resource = str(params["ResourceId"])
            created["autoscaling"] = resource
    return resource or None


def _not_found(error: Exception) -> bool:
    """Whether a delete failed because the resource is already gone."""
    response = getattr(error, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    if code in ("ResourceNotFound", "ObjectNotFoundException", "NoSuchEntity"):
        return True
    message = str(error).lower()
    # SageMaker says "Could not find endpoint ..."; Application Auto Scaling "No scalable target"
    gone = ("could not find", "does not exist", "not found", "no scalable target")
    return code == "ValidationException" and any(text in message for text in gone)


def teardown_endpoint(endpoint: Endpoint, clients: Any, *, wait: bool = True) -> list[str]:
    """Delete a SageMaker endpoint, its autoscaling, endpoint config and model.

    Whatever is already gone is skipped, so teardown can be run again safely.

    Args:
        endpoint: the ``Endpoint`` artifact the deployer recorded.
        clients: an :class:`~pcamflow.sagemaker.clients.AwsClients`.
        wait: wait until the endpoint is deleted before deleting its config.

    Returns:
        What was deleted, as ``"<kind> <name>"`` lines.

    Raises:
        AwsError: a deletion failed for another reason than the resource being gone.
    """
    if endpoint.backend != "sagemaker":
        raise ConfigError(
            f"endpoint {endpoint.name}: not a SageMaker endpoint ({endpoint.backend})"
        )
    if endpoint.resources.get("local_mode") and not getattr(clients, "local_mode", False):
        log.info("endpoint %s ran in SageMaker local mode and ended with it: nothing to delete "
                 "on AWS", endpoint.name)
        return []
    sagemaker = clients.sagemaker
    deleted: list[str] = []
    steps: list[tuple[str, str | None, Callable[[str], Any]]] = [
        ("autoscaling", endpoint.resources.get("autoscaling"), lambda rid: clients.client(
            "application-autoscaling").deregister_scalable_target(
                ServiceNamespace="sagemaker", ResourceId=rid,
                ScalableDimension="sagemaker:variant:DesiredInstanceCount")),
        ("endpoint", endpoint.name, lambda n: sagemaker.delete_endpoint(EndpointName=n)),
        ("endpoint config", endpoint.resources.get("endpoint_config"),
         lambda n: sagemaker.delete_endpoint_config(EndpointConfigName=n)),
        ("model", endpoint.resources.get("model"), lambda n: sagemaker.delete_model(ModelName=n)),
    ]
    for kind, name, delete in steps:
        if not name:
            continue
        try:
            delete(name)
        except Exception as error:  # botocore ClientError
            if _not_found(error):
                log.info("%s %s: already gone", kind, name)
                continue
            raise AwsError(f"cannot delete {kind} {name}: {error}") from None
        deleted.append(f"{kind} {name}")
        log.info("deleted %s %s", kind, name)
        if kind == "endpoint" and wait:
            _wait_deleted(sagemaker, name)
    return deleted


def _wait_deleted(sagemaker: Any, name: str) -> None:
    try:
        sagemaker.get_waiter("endpoint_deleted").wait(
            EndpointName=name, WaiterConfig={"Delay": 15, "MaxAttempts": 120}
        )
    except Exception as error:  # botocore WaiterError: say so, go on with the rest
        log.warning("endpoint %s: not confirmed deleted yet (%s)", name, error)

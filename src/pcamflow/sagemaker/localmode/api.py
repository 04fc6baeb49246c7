"""Local mode's part of the SageMaker API, hooked into a boto3 session's event system.

botocore emits ``before-call.<service>.<Operation>`` before it sends a request; a handler that
returns ``(http_response, parsed)`` answers it instead (botocore then raises a
``ClientError`` for an error status, as for any answer). Local mode answers the job
operations itself (training, tuning and transform jobs: create, describe, list, stop, tags)
and checks the hosting requests before moto records them; ``after-call`` handlers give
moto's answers about endpoints their live status, and its describe answers the shape
SageMaker's have. ``sagemaker-runtime`` calls of the session go to the gateway.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from pcamflow.sagemaker.localmode import records
from pcamflow.sagemaker.localmode.rules import (
    Refused,
    check_endpoint_config,
    check_training,
    check_transform,
    check_tuning,
)

__all__ = ["install"]

log = logging.getLogger("pcamflow.sagemaker.localmode")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _answer(status: int, parsed: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from botocore.awsrequest import AWSResponse

    request_id = str(uuid.uuid4())
    parsed["ResponseMetadata"] = {"RequestId": request_id, "HTTPStatusCode": status,
                                  "HTTPHeaders": {"x-amzn-requestid": request_id},
                                  "RetryAttempts": 0}
    return AWSResponse(None, status, {"x-amzn-requestid": request_id}, None), parsed


def _refusal(error: Refused) -> tuple[Any, dict[str, Any]]:
    return _answer(400, {"Error": {"Code": error.code, "Message": error.message}})


def _body(params: dict[str, Any]) -> dict[str, Any]:
    body = params.get("body") or b"{}"
    return dict(json.loads(body.decode("utf-8") if isinstance(body, bytes) else body))


def _not_found(kind: str, name: str) -> Refused:
    # SageMaker's answer to a Describe of a job that does not exist
    return Refused(f'Requested resource not found: {kind} "{name}" does not exist')


def job_handlers(emulator: Any) -> dict[str, Handler]:
    """The operations local mode answers itself, by name."""
    store: records.Store = emulator.store

    def job(kind: str, name: str, label: str) -> records.Job:
        found = store.get(kind, name)
        if found is None:
            raise _not_found(label, name)
        return found

    def create_training(request: dict[str, Any]) -> dict[str, Any]:
        check_training(request)
        for warning in emulator.check_role(str(request.get("RoleArn", ""))):
            emulator.warn(f"training job {request['TrainingJobName']}: {warning}")
        if store.get("training", request["TrainingJobName"]):
            raise Refused(f"Training job names must be unique within an AWS account and "
                          f"region, and a training job with this name already exists "
                          f"({emulator.arn('training-job', request['TrainingJobName'])})",
                          "ResourceInUse")
        created = emulator.add_training_job(request["TrainingJobName"], request)
        emulator.submit(created)
        return {"TrainingJobArn": created.arn}

    def create_tuning(request: dict[str, Any]) -> dict[str, Any]:
        parents = [p["HyperParameterTuningJobName"] for p in
                   (request.get("WarmStartConfig") or {}).get("ParentHyperParameterTuningJobs",
                                                               [])]
        states = {p: (store.get("tuning", p).status if store.get("tuning", p) else None)
                  for p in parents}
        role = str(request.get("TrainingJobDefinition", {}).get("RoleArn", ""))
        for warning in [*check_tuning(request, states), *emulator.check_role(role)]:
            emulator.warn(f"tuning job {request['HyperParameterTuningJobName']}: {warning}")
        name = request["HyperParameterTuningJobName"]
        if store.get("tuning", name):
            raise Refused(f"Hyperparameter tuning job {name} already exists", "ResourceInUse")
        created = store.add(records.Job("tuning", name, emulator.arn(
            "hyper-parameter-tuning-job", name.lower()), request, tags=request.get("Tags", [])))
        emulator.submit(created)
        return {"HyperParameterTuningJobArn": created.arn}

    def create_transform(request: dict[str, Any]) -> dict[str, Any]:
        for warning in check_transform(request):
            emulator.warn(f"transform job {request['TransformJobName']}: {warning}")
        if not emulator.model_exists(request["ModelName"]):
            raise Refused(f"Could not find model \"{emulator.arn('model', request['ModelName'])}"
                          "\".")
        name = request["TransformJobName"]
        if store.get("transform", name):
            raise Refused(f"Transform job {name} already exists", "ResourceInUse")
        created = store.add(records.Job("transform", name, emulator.arn("transform-job", name),
                                        request, tags=request.get("Tags", [])))
        emulator.submit(created)
        return {"TransformJobArn": created.arn}

    def stop(kind: str, key: str, label: str) -> Handler:
        def handler(request: dict[str, Any]) -> dict[str, Any]:
            found = job(kind, request[key], label)
            if found.done:
                raise Refused(f"The request was rejected because the {label} is in status "
                              f"{found.status}.")
            found.stop_requested = True
            if found.status == "InProgress":
                found.move("Stopping", "Stopping" if kind == "training" else None)
            return {}
        return handler

    def list_training(request: dict[str, Any]) -> dict[str, Any]:
        wanted = request.get("StatusEquals")
        jobs = store.jobs("training", lambda j: not wanted or j.status == wanted)
        return {"TrainingJobSummaries": [records.training_summary(j) for j in jobs]}

    def list_trials(request: dict[str, Any]) -> dict[str, Any]:
        tuning = job("tuning", request["HyperParameterTuningJobName"],
                     "hyperparameter tuning job")
        trials = [store.get("training", n) for n in tuning.extra.get("trials", [])]
        return {"TrainingJobSummaries": [records.trial_summary(t, tuning.name)
                                         for t in trials if t is not None]}

    def trials_of(tuning: records.Job) -> list[records.Job]:
        return [t for n in tuning.extra.get("trials", [])
                if (t := store.get("training", n)) is not None]

    def add_tags(request: dict[str, Any]) -> dict[str, Any]:
        found = store.by_arn(request["ResourceArn"])
        assert found is not None
        keys = {t["Key"] for t in request.get("Tags", [])}
        found.tags = [t for t in found.tags if t["Key"] not in keys] + request.get("Tags", [])
        return {"Tags": request.get("Tags", [])}

    def list_tags(request: dict[str, Any]) -> dict[str, Any]:
        found = store.by_arn(request["ResourceArn"])
        assert found is not None
        return {"Tags": list(found.tags)}

    return {
        "CreateTrainingJob": create_training,
        "DescribeTrainingJob": lambda r: records.describe_training(
            job("training", r["TrainingJobName"], "training job")),
        "ListTrainingJobs": list_training,
        "StopTrainingJob": stop("training", "TrainingJobName", "training job"),
        "CreateHyperParameterTuningJob": create_tuning,
        "DescribeHyperParameterTuningJob": lambda r: records.describe_tuning(
            (t := job("tuning", r["HyperParameterTuningJobName"], "hyperparameter tuning job")),
            trials_of(t)),
        "ListHyperParameterTuningJobs": lambda r: {"HyperParameterTuningJobSummaries": [
            records.tuning_summary(t, trials_of(t)) for t in store.jobs("tuning")]},
        "StopHyperParameterTuningJob": stop("tuning", "HyperParameterTuningJobName",
                                            "hyperparameter tuning job"),
        "ListTrainingJobsForHyperParameterTuningJob": list_trials,
        "CreateTransformJob": create_transform,
        "DescribeTransformJob": lambda r: records.describe_transform(
            job("transform", r["TransformJobName"], "transform job")),
        "ListTransformJobs": lambda r: {"TransformJobSummaries": [
            records.transform_summary(j) for j in store.jobs("transform")]},
        "StopTransformJob": stop("transform", "TransformJobName", "transform job"),
        "AddTags": add_tags,
        "ListTags": list_tags,
    }


def install(session: Any, emulator: Any) -> None:
    """Hook local mode into ``session``: every client made from it then talks to local mode."""
    handlers = job_handlers(emulator)
    events = session.events

    def before(operation: str) -> Callable[..., Any]:
        def handler(params: dict[str, Any], **kwargs: Any) -> Any:
            request = _body(params)
            if operation in ("AddTags", "ListTags") and emulator.store.by_arn(
                    request.get("ResourceArn", "")) is None:
                return None  # moto's resource: moto answers
            try:
                return _answer(200, handlers[operation](request))
            except Refused as error:
                return _refusal(error)
        return handler

    for operation in handlers:
        events.register(f"before-call.sagemaker.{operation}", before(operation))

    def check(checker: Callable[[dict[str, Any]], list[str]], label: str) -> Callable[..., Any]:
        def handler(params: dict[str, Any], **kwargs: Any) -> Any:
            request = _body(params)
            try:
                for warning in checker(request):
                    emulator.warn(f"{label}: {warning}")
            except Refused as error:
                return _refusal(error)
            return None  # checked: moto records it
        return handler

    events.register("before-call.sagemaker.CreateEndpointConfig",
                    check(check_endpoint_config, "endpoint config"))
    events.register("before-call.sagemaker.CreateModel", check(emulator.check_model, "model"))
    for operation in ("CreateEndpoint", "DeleteEndpoint"):
        # the request is kept in the call's context for the after-call handler
        events.register(f"before-call.sagemaker.{operation}", _keep_request)
    events.register("after-call.sagemaker.CreateEndpoint", _created_endpoint(emulator))
    events.register("after-call.sagemaker.DescribeEndpoint", _endpoint_status(emulator))
    events.register("after-call.sagemaker.ListEndpoints", _endpoint_statuses(emulator))
    events.register("after-call.sagemaker.DeleteEndpoint", _deleted_endpoint(emulator))
    for operation, keys in {"DescribeModel": ("VpcConfig",),
                            "DescribeEndpointConfig": ("DataCaptureConfig", "VpcConfig")}.items():
        events.register(f"after-call.sagemaker.{operation}", _drop_empty(keys))
    events.register("before-call.sagemaker-runtime.InvokeEndpoint", _to_gateway(emulator))


def _drop_empty(keys: tuple[str, ...]) -> Callable[..., None]:
    # moto answers empty VpcConfig/DataCaptureConfig dicts, which SageMaker leaves out
    def handler(parsed: dict[str, Any], **kwargs: Any) -> None:
        for key in keys:
            if parsed.get(key) == {}:
                del parsed[key]
    return handler


def _keep_request(params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
    context["pcamflow_request"] = _body(params)


def _created_endpoint(emulator: Any) -> Callable[..., None]:
    def handler(http_response: Any, context: dict[str, Any], **kwargs: Any) -> None:
        if http_response.status_code < 300 and "pcamflow_request" in context:
            emulator.deploy(context["pcamflow_request"])
    return handler


def _endpoint_status(emulator: Any) -> Callable[..., None]:
    def handler(parsed: dict[str, Any], **kwargs: Any) -> None:
        state = emulator.endpoints.get(parsed.get("EndpointName", ""))
        if state is None or "EndpointStatus" not in parsed:
            return
        parsed["EndpointStatus"] = state["status"]
        if state.get("failure_reason"):
            parsed["FailureReason"] = state["failure_reason"]
        capture = parsed.get("DataCaptureConfig")
        if capture == {}:
            del parsed["DataCaptureConfig"]
        elif capture and "CaptureStatus" not in capture:
            # DescribeEndpoint answers the capture's summary, not the config moto echoes
            parsed["DataCaptureConfig"] = {
                "EnableCapture": capture.get("EnableCapture", True),
                "CaptureStatus": "Started",
                "CurrentSamplingPercentage": capture.get("InitialSamplingPercentage", 100),
                "DestinationS3Uri": capture.get("DestinationS3Uri", ""),
                **({"KmsKeyId": capture["KmsKeyId"]} if "KmsKeyId" in capture else {}),
            }
    return handler


def _endpoint_statuses(emulator: Any) -> Callable[..., None]:
    def handler(parsed: dict[str, Any], **kwargs: Any) -> None:
        for summary in parsed.get("Endpoints", []):
            state = emulator.endpoints.get(summary.get("EndpointName", ""))
            if state is not None:
                summary["EndpointStatus"] = state["status"]
    return handler


def _deleted_endpoint(emulator: Any) -> Callable[..., None]:
    def handler(http_response: Any, context: dict[str, Any], **kwargs: Any) -> None:
        if http_response.status_code < 300 and "pcamflow_request" in context:
            emulator.undeploy(context["pcamflow_request"]["EndpointName"])
    return handler


def _to_gateway(emulator: Any) -> Callable[..., None]:
    # the session's runtime clients (sagemaker-core's included) reach the gateway
    def handler(params: dict[str, Any], **kwargs: Any) -> None:
        params["url"] = emulator.gateway.url + params["url_path"]
    return handler

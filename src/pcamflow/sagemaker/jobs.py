"""Sending requests through sagemaker-core, and waiting on jobs and endpoints.

:func:`create` turns a request built by :mod:`pcamflow.sagemaker.requests` into the
sagemaker-core resource's ``create`` call. :func:`wait` polls a resource until it is done, with
a progress display; a job that ends ``Failed`` or ``Stopped`` raises
:class:`~pcamflow.errors.JobFailedError` with SageMaker's ``FailureReason``, and Ctrl-C offers
to stop the job (it keeps running, and is billed, otherwise).

A stage records the job it started in its folder (:class:`JobRecord`), so that a run
interrupted while waiting attaches to the same job when run again instead of paying for a
second one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from pcamflow._io import digest
from pcamflow.errors import AwsError, JobFailedError

__all__ = ["KINDS", "JobRecord", "ask_on_terminal", "attach_or_create", "create", "wait"]

log = logging.getLogger(__name__)


@attrs.frozen
class Kind:
    """How one SageMaker resource type is created and watched."""

    resource: str
    request_shape: str
    name_key: str
    status_attr: str
    done: tuple[str, ...]
    failed: tuple[str, ...]
    stop_hint: str = ""


KINDS = {
    "training": Kind("TrainingJob", "CreateTrainingJobRequest", "TrainingJobName",
                     "training_job_status", ("Completed",), ("Failed", "Stopped"),
                     "aws sagemaker stop-training-job --training-job-name {name}"),
    "tuning": Kind("HyperParameterTuningJob", "CreateHyperParameterTuningJobRequest",
                   "HyperParameterTuningJobName", "hyper_parameter_tuning_job_status",
                   ("Completed",), ("Failed", "Stopped"),
                   "aws sagemaker stop-hyper-parameter-tuning-job "
                   "--hyper-parameter-tuning-job-name {name}"),
    "transform": Kind("TransformJob", "CreateTransformJobRequest", "TransformJobName",
                      "transform_job_status", ("Completed",), ("Failed", "Stopped"),
                      "aws sagemaker stop-transform-job --transform-job-name {name}"),
    "model": Kind("Model", "CreateModelInput", "ModelName", "", (), ()),
    "endpoint_config": Kind("EndpointConfig", "CreateEndpointConfigInput",
                            "EndpointConfigName", "", (), ()),
    "endpoint": Kind("Endpoint", "CreateEndpointInput", "EndpointName", "endpoint_status",
                     ("InService",), ("Failed", "OutOfService"),
                     "pcamflow teardown RUN_DIR"),
}


def _resource_class(kind: Kind) -> Any:
    from sagemaker.core import resources

    return getattr(resources, kind.resource)


def _error_text(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping) and "Error" in response:
        return f"{response['Error'].get('Code')}: {response['Error'].get('Message')}"
    return f"{type(error).__name__}: {error}"


def create(kind_name: str, request: Mapping[str, Any], clients: Any) -> Any:
    """Send a ``Create*`` request through sagemaker-core; returns the resource object.

    Raises:
        AwsError: SageMaker refused the request (the message has its error code and text).
    """
    from sagemaker.core.utils.code_injection.codec import transform

    kind = KINDS[kind_name]
    kwargs = transform(dict(request), kind.request_shape)
    log.info("creating %s %s", kind.resource, request[kind.name_key])
    try:
        return _resource_class(kind).create(
            **kwargs, session=clients.session, region=clients.region
        )
    except Exception as error:  # botocore ClientError, pydantic ValidationError
        raise AwsError(
            f"creating {kind.resource} {request[kind.name_key]} failed: {_error_text(error)}"
        ) from None


def get(kind_name: str, name: str, clients: Any) -> Any:
    """The resource called ``name``, described now."""
    kind = KINDS[kind_name]
    cls = _resource_class(kind)
    field = {"HyperParameterTuningJobName": "hyper_parameter_tuning_job_name"}.get(
        kind.name_key, "_".join(w.lower() for w in _split_camel(kind.name_key))
    )
    try:
        return cls.get(**{field: name}, session=clients.session, region=clients.region)
    except Exception as error:  # botocore ClientError (ResourceNotFound ...)
        raise AwsError(f"cannot describe {kind.resource} {name}: {_error_text(error)}") from None


def _split_camel(text: str) -> list[str]:
    import re

    return re.findall(r"[A-Z][a-z0-9]*", text)


def ask_on_terminal(question: str) -> bool:
    """Ask a yes/no question on the terminal; False when there is none to ask on."""
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        return False


def wait(
    kind_name: str,
    resource: Any,
    *,
    poll_s: float = 30.0,
    progress: bool = True,
    describe: Callable[[Any], str] | None = None,
    ask: Callable[[str], bool] = ask_on_terminal,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Poll ``resource`` until it is done; returns it, refreshed.

    Args:
        kind_name: a key of :data:`KINDS`.
        resource: the sagemaker-core resource object.
        poll_s: seconds between polls.
        progress: show a progress display (status, elapsed time, ``describe``'s text).
        describe: extra text for the display, from the refreshed resource.
        ask: asks whether to stop the job on Ctrl-C.
        sleep: waits between polls.

    Raises:
        JobFailedError: it ended in a failed state; the message has SageMaker's reason.
        KeyboardInterrupt: on Ctrl-C, after offering to stop the job.
    """
    from tqdm.auto import tqdm

    kind = KINDS[kind_name]
    name = str(resource.get_name())
    bar = tqdm(total=None, desc=f"{kind.resource} {name}", bar_format="{desc} {elapsed}{postfix}",
               disable=None if progress else True)
    try:
        while True:
            try:
                resource.refresh()
            except Exception as error:  # retried by botocore first; give up only then
                raise AwsError(
                    f"cannot describe {kind.resource} {name}: {_error_text(error)}"
                ) from None
            status = str(getattr(resource, kind.status_attr))
            extra = describe(resource) if describe else ""
            secondary = getattr(resource, "secondary_status", None)
            shown = f"{status}/{secondary}" if isinstance(secondary, str) else status
            bar.set_postfix_str(f" {shown} {extra}".rstrip(), refresh=True)
            if status in kind.done:
                log.info("%s %s: %s", kind.resource, name, status)
                return resource
            if status in kind.failed:
                reason = getattr(resource, "failure_reason", None)
                reason = reason if isinstance(reason, str) and reason else "no reason given"
                raise JobFailedError(f"{kind.resource} {name} ended {status}: {reason}")
            sleep(poll_s)
    except KeyboardInterrupt:
        bar.close()
        _offer_stop(kind, resource, name, ask)
        raise
    finally:
        bar.close()


def _offer_stop(kind: Kind, resource: Any, name: str, ask: Callable[[str], bool]) -> None:
    if not hasattr(resource, "stop"):
        return
    if ask(f"{kind.resource} {name} is still running (and billed). Stop it?"):
        try:
            resource.stop()
            log.warning("stopping %s %s", kind.resource, name)
        except Exception as error:  # report, then let the interrupt go on
            log.error("could not stop %s %s: %s", kind.resource, name, _error_text(error))
    else:
        hint = kind.stop_hint.format(name=name)
        log.warning(
            "%s %s keeps running; a re-run attaches to it, or stop it with: %s",
            kind.resource, name, hint,
        )


@attrs.frozen
class JobRecord:
    """The job a stage started, kept in its folder so a re-run can attach to it.

    Attributes:
        name: the job's name.
        digest: a digest of its request, less the name (a changed request starts a new job).
    """

    name: str
    digest: str

    FILE = "job.json"

    @staticmethod
    def digest_of(request: Mapping[str, Any], name_key: str) -> str:
        """The digest of ``request`` without its name."""
        body = {k: v for k, v in request.items() if k != name_key}
        return digest(body, length=64)

    @classmethod
    def read(cls, folder: Path) -> JobRecord | None:
        """The record in ``folder``, if there is a readable one."""
        try:
            data = json.loads((Path(folder) / cls.FILE).read_text(encoding="utf-8"))
            return cls(name=str(data["name"]), digest=str(data["digest"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, folder: Path) -> None:
        """Write the record (atomically) into ``folder``."""
        from pcamflow._io import atomic_write

        with atomic_write(Path(folder) / self.FILE, encoding="utf-8") as handle:
            json.dump(attrs.asdict(self), handle)


def attach_or_create(
    kind_name: str, request: Mapping[str, Any], clients: Any, folder: Path
) -> Any:
    """The job an earlier, interrupted run started with the same request, or a new one.

    A recorded job that failed or was stopped is not reused.
    """
    kind = KINDS[kind_name]
    digest = JobRecord.digest_of(request, kind.name_key)
    record = JobRecord.read(folder)
    if record is not None and record.digest == digest:
        try:
            resource = get(kind_name, record.name, clients)
        except AwsError:
            resource = None
        if resource is not None and getattr(resource, kind.status_attr) not in kind.failed:
            log.info("attaching to %s %s, started by an earlier run", kind.resource, record.name)
            return resource
    resource = create(kind_name, request, clients)
    JobRecord(name=str(request[kind.name_key]), digest=digest).write(folder)
    return resource

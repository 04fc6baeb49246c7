"""``LocalMode``: SageMaker's built-in Image Classification algorithm, run on this machine.

AWS's own local mode runs framework containers, not the built-in algorithms; this is one for
this algorithm. moto answers the control plane of what it knows (S3, CloudWatch Logs, KMS,
IAM, STS, Application Auto Scaling, and SageMaker's models, endpoint configs and endpoints);
local mode answers the jobs itself and *runs* what the backend creates, on one worker thread:
training and tuning jobs with the local engine, transform jobs and endpoints with the local
inference code. Everything it refuses, it refuses as AWS documents (:mod:`.rules`).

It is bound to one boto3 session (:attr:`LocalMode.session`): every client made from it, the
SageMaker backend's :class:`~pcamflow.sagemaker.clients.AwsClients` and sagemaker-core's
resources included, talks to it. The session runs as a SageMaker execution role, as in a
SageMaker notebook, so an unset ``aws.role_arn`` resolves as it would there. Endpoints answer
on :attr:`LocalMode.runtime_url`, for a stock ``sagemaker-runtime`` client given that URL.

    with LocalMode(region="eu-west-1") as local:
        Pipeline.from_settings(settings, registry).run(settings, services=local.services())
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcamflow.sagemaker.localmode import records
from pcamflow.sagemaker.localmode.rules import Refused

__all__ = ["LocalMode"]

log = logging.getLogger("pcamflow.sagemaker.localmode")

ROLE_NAME = "pcamflow-local-mode-execution-role"
_TRUST = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": '
          '{"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}')


class LocalMode:
    """SageMaker local mode for the built-in Image Classification algorithm.

    Args:
        region: the AWS region it plays.
        work_dir: where it keeps images read for training and models (default: a temporary
            folder, removed on :meth:`stop`).
        progress: show the local engine's progress bars while a job trains.
        threads: torch's intra-op threads while local mode runs (process-wide; restored on
            :meth:`stop`; None: as they are). On a machine shared with other work, 1 avoids
            the oversubscription that makes every thread wait on the others.
    """

    def __init__(self, *, region: str = "us-east-1", work_dir: str | Path | None = None,
                 progress: bool = False, threads: int | None = None) -> None:
        self.region = region
        self.progress = progress
        self.threads = threads
        self._threads_before: int | None = None
        self._temp = None if work_dir else tempfile.TemporaryDirectory(prefix="pcamflow-lm-")
        self.work_dir = Path(work_dir or self._temp.name)  # type: ignore[union-attr]
        self.store = records.Store()
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        self._models: dict[str, Any] = {}
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._mock: Any = None
        self.session: Any = None
        self.gateway: Any = None
        self.account = "123456789012"
        self.role_arn = ""

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> LocalMode:
        """Start moto, the session (as the execution role), the worker and the gateway."""
        import boto3
        import moto

        from pcamflow.sagemaker.localmode.api import install
        from pcamflow.sagemaker.localmode.hosting import Gateway

        if self.threads:
            import torch

            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self._mock = moto.mock_aws()
        self._mock.start()
        try:
            admin = boto3.Session(region_name=self.region)
            self.account = admin.client("sts").get_caller_identity()["Account"]
            iam = admin.client("iam")
            try:
                role = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=_TRUST)["Role"]
            except iam.exceptions.EntityAlreadyExistsException:  # another local mode's moto
                role = iam.get_role(RoleName=ROLE_NAME)["Role"]
            self.role_arn = role["Arn"]
            creds = admin.client("sts").assume_role(
                RoleArn=self.role_arn, RoleSessionName="pcamflow-local-mode")["Credentials"]
            self.session = boto3.Session(
                region_name=self.region, aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"])
            install(self.session, self)
            self.s3 = self.session.client("s3")
            self.logs = self.session.client("logs")
            self.sagemaker = self.session.client("sagemaker")
            self._worker = threading.Thread(target=self._work, name="pcamflow-local-mode",
                                            daemon=True)
            self._worker.start()
            self.gateway = Gateway(self).start()
        except BaseException:
            self.stop()
            raise
        log.info("SageMaker local mode in %s: runtime at %s", self.region, self.gateway.url)
        return self

    def stop(self) -> None:
        """Stop the endpoints, the gateway, the worker (after its job) and moto."""
        for name in list(self.endpoints):
            self.undeploy(name)
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        for job in (j for kind in ("training", "tuning", "transform")
                    for j in self.store.jobs(kind) if not j.done):
            job.stop_requested = True
        if self._worker is not None:
            self._tasks.put(None)
            self._worker.join(timeout=120)
            self._worker = None
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def __enter__(self) -> LocalMode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what users get ------------------------------------------------------------------

    @property
    def runtime_url(self) -> str:
        """The SageMaker runtime's URL (``endpoint_url=`` of a stock ``sagemaker-runtime``)."""
        return str(self.gateway.url)

    def clients(self, max_attempts: int = 4) -> Any:
        """:class:`~pcamflow.sagemaker.clients.AwsClients` on the session, local mode marked."""
        from pcamflow.sagemaker.clients import AwsClients

        clients = AwsClients(self.session, max_attempts=max_attempts,
                             endpoint_urls={"sagemaker-runtime": self.runtime_url})
        clients.local_mode = True
        clients.max_poll_s = 0.5
        return clients

    def services(self) -> dict[str, Any]:
        """The ``services`` for ``Pipeline.run``: the clients and the ``s3://`` probe."""
        from pcamflow.sagemaker.clients import services_for

        return services_for(self.clients())

    def warn(self, message: str) -> None:
        """Record a warning rule's finding (and log it)."""
        self.warnings.append(message)
        log.warning("local mode: %s", message)

    def wait_idle(self, timeout: float = 600.0) -> None:
        """Wait until every job submitted so far has run (for scripts and tests)."""
        done = threading.Event()
        self._tasks.put(done.set)
        if not done.wait(timeout):
            raise TimeoutError(f"local mode still busy after {timeout} s")

    # --- jobs ---------------------------------------------------------------------------

    def arn(self, kind: str, name: str) -> str:
        """The ARN of a SageMaker resource of this account and region."""
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"

    def add_training_job(self, name: str, request: dict[str, Any], *,
                         tuning: records.Job | None = None,
                         tuned: dict[str, str] | None = None) -> records.Job:
        """Record a training job (a tuning job's, with its tuned values)."""
        job = records.Job("training", name, self.arn("training-job", name), dict(request),
                          tags=list(request.get("Tags", [])))
        job.move(secondary="Starting", message="Starting")
        if tuning is not None:
            job.extra.update(tuning_job_arn=tuning.arn, tuned=dict(tuned or {}))
        return self.store.add(job)

    def submit(self, job: records.Job) -> None:
        """Queue ``job`` to run on the worker."""
        from pcamflow.sagemaker.localmode.training import run_training_job
        from pcamflow.sagemaker.localmode.transform import run_transform_job
        from pcamflow.sagemaker.localmode.tuning import run_tuning_job

        runner = {"training": run_training_job, "tuning": run_tuning_job,
                  "transform": run_transform_job}[job.kind]

        def task() -> None:
            if job.stop_requested:
                job.move("Stopped", "Stopped" if job.kind == "training" else None)
                return
            try:
                runner(self, job)
            except Exception as error:  # a bug here must still end the job
                log.exception("local mode: %s %s", job.kind, job.name)
                job.fail(f"InternalServerError: {type(error).__name__}: {error}")

        self._tasks.put(task)

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            task()

    # --- models and endpoints -----------------------------------------------------------

    def model_exists(self, name: str) -> bool:
        """Whether moto knows the SageMaker model ``name``."""
        try:
            self.sagemaker.describe_model(ModelName=name)
        except self.sagemaker.exceptions.ClientError:
            return False
        return True

    def check_role(self, arn: str) -> list[str]:
        """The role warning: ``arn`` should be an IAM role that SageMaker may assume."""
        import json

        try:
            role = self.session.client("iam").get_role(RoleName=arn.rsplit("/", 1)[-1])["Role"]
        except Exception:  # botocore ClientError: NoSuchEntity
            return [f"role {arn} does not exist: SageMaker could not assume it"]
        trust = role.get("AssumeRolePolicyDocument", "")
        if "sagemaker.amazonaws.com" not in (trust if isinstance(trust, str)
                                             else json.dumps(trust)):
            return [f"role {arn} does not trust sagemaker.amazonaws.com: SageMaker could not "
                    "assume it"]
        return []

    def check_model(self, request: dict[str, Any]) -> list[str]:
        """``CreateModel``: only the algorithm's image runs here; its model data should exist."""
        from pcamflow.sagemaker.requests import ALGORITHM
        from pcamflow.sagemaker.s3 import S3Uri

        container = request.get("PrimaryContainer") or {}
        image = str(container.get("Image", ""))
        if f"/{ALGORITHM}:" not in image:
            raise Refused(f"local mode runs the built-in Image Classification algorithm only; "
                          f"the image {image!r} is not it")
        warnings = self.check_role(str(request.get("ExecutionRoleArn", "")))
        data = str(container.get("ModelDataUrl", ""))
        try:
            location = S3Uri.parse(data)
            self.s3.head_object(Bucket=location.bucket, Key=location.key)
        except Exception:  # botocore ClientError (404), or not an s3:// URI
            warnings.append(f"model {request.get('ModelName')}: no model data at {data} "
                            "(SageMaker reports this when the model is used)")
        return warnings

    def loaded_model(self, name: str) -> Any:
        """The SageMaker model ``name``, loaded with the local engine (cached by its data)."""
        from pcamflow.local.model.archive import load_model_archive
        from pcamflow.sagemaker.s3 import S3Uri

        described = self.sagemaker.describe_model(ModelName=name)
        data = described["PrimaryContainer"]["ModelDataUrl"]
        if data not in self._models:
            source = S3Uri.parse(data)
            path = self.work_dir / "models" / f"{len(self._models)}.tar.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.s3.download_file(source.bucket, source.key, str(path))
            except Exception as error:  # botocore ClientError: 404
                raise ValueError(f"Could not find model data at {data}: {error}") from None
            self._models[data] = load_model_archive(path)
        return self._models[data]

    def predictor(self, name: str) -> Callable[[bytes], list[float]]:
        """Body (a JPEG or PNG) -> class probabilities, with the model ``name``."""
        from pcamflow.local.serving.app import make_predictor
        from pcamflow.local.serving.payloads import decode_body

        predict = make_predictor(self.loaded_model(name))

        def answer(body: bytes) -> list[float]:
            images, _ = decode_body(body, "application/x-image")
            return [float(p) for p in predict(images)[0]]

        return answer

    def deploy(self, request: dict[str, Any]) -> None:
        """After ``CreateEndpoint``: load the model and start its container on the worker."""
        from pcamflow.local.serving.app import create_app
        from pcamflow.local.serving.hosting import ServerThread

        name = request["EndpointName"]
        state: dict[str, Any] = {"status": "Creating"}
        self.endpoints[name] = state

        def task() -> None:
            try:
                config = self.sagemaker.describe_endpoint_config(
                    EndpointConfigName=request["EndpointConfigName"])
                variant = config["ProductionVariants"][0]
                model = self.loaded_model(variant["ModelName"])
                server = ServerThread(create_app(model, name=name)).start()
            except Exception as error:  # no model data, not a model archive
                state.update(status="Failed", failure_reason=f"ClientError: Failed to deploy "
                             f"the model: {error}")
                return
            if self.endpoints.get(name) is not state:  # deleted while it was being created
                server.stop()
                return
            state.update(status="InService", url=server.url, server=server,
                         variant=variant["VariantName"])

        self._tasks.put(task)

    def undeploy(self, name: str) -> None:
        """After ``DeleteEndpoint``: stop its container; it answers no more."""
        state = self.endpoints.pop(name, None)
        if state and state.get("server") is not None:
            state["server"].stop()

"""The SageMaker evaluator: the trained model scores the test images on SageMaker.

The trained ``model.tar.gz`` becomes a SageMaker model. By default a batch transform job sends
it each image of the evaluated split (listed in an S3 manifest file, so exactly the
manifest's images) with ``Accept: application/jsonlines``, and writes one answer object per
image, ``{"prediction": [...]}``, as the algorithm documents for batch transform (see
:mod:`pcamflow.sagemaker.predictions`). With ``aws.evaluation.evaluate_via = "endpoint"`` the
model is put behind a temporary endpoint of its own instead, and each image is sent there
(``InvokeEndpoint``), so the scores are always those of the model this stage was given, never
of whatever serves under ``deploy.name``. Either way, what was made for the evaluation (model,
endpoint config, endpoint) is deleted afterwards, and the scores go through
:mod:`pcamflow.evaluation`, the code the local evaluator uses, into the same ``metrics.json``
and report.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pcamflow.artifacts import Evaluation, ImageDataset, Manifests, ModelArtifact
from pcamflow.errors import AwsError, ConfigError
from pcamflow.sagemaker._stage import JobStageOptions
from pcamflow.sagemaker.predictions import positive_score, transform_input_manifest
from pcamflow.sagemaker.s3 import S3Uri
from pcamflow.stages import Context, Evaluator

__all__ = [
    "SageMakerEvaluator",
    "evaluation_requests",
    "positive_score",
    "transform_input_manifest",
]

log = logging.getLogger(__name__)


def evaluation_requests(
    context: Context, resolved: Any, model_uri: str, input_uri: str, output: str,
    when: Any = None,
) -> dict[str, dict[str, Any]]:
    """The SageMaker requests of the evaluator stage in ``context``, by kind.

    ``model`` always; ``transform`` for a batch transform, or ``endpoint_config`` and
    ``endpoint`` for a temporary endpoint (``aws.evaluation.evaluate_via``). Both
    :meth:`SageMakerEvaluator.run` and :meth:`SageMakerEvaluator.plan` build them here.
    """
    import datetime as dt

    from pcamflow.sagemaker.hosting import (
        endpoint_config_request,
        endpoint_request,
        model_request,
        transform_job_request,
    )
    from pcamflow.sagemaker.requests import job_name

    aws = context.settings.aws
    when = when or dt.datetime.now(dt.timezone.utc)
    model_name = job_name(aws.prefix, "eval-model", when)
    requests = {"model": model_request(model_name, model_uri, aws, resolved)}
    if aws.evaluation.evaluate_via == "endpoint":
        config = job_name(aws.prefix, "eval-config", when)
        requests["endpoint_config"] = endpoint_config_request(
            config, model_name, aws.evaluation.transform_instance_type,
            aws.evaluation.transform_instance_count, aws, resolved)
        requests["endpoint"] = endpoint_request(job_name(aws.prefix, "eval", when), config, aws)
    else:
        requests["transform"] = transform_job_request(
            job_name(aws.prefix, "eval", when), model_name, input_uri, output, aws, resolved)
    return requests


class SageMakerEvaluator(JobStageOptions, Evaluator):
    """Scores the model on SageMaker (batch transform or endpoint), reports locally.

    Args:
        progress: show progress.
        ask: asks whether to stop the transform job on Ctrl-C.
    """

    writes_to = "local"  # the report is written here

    def validate(self, context: Context) -> None:
        from pcamflow.sagemaker.trainer import check_aws

        # the settings SageMaker cannot honour first: [aws] problems are found by every stage
        if context.settings.evaluate.tta:
            raise ConfigError(
                "evaluate.tta: test-time augmentation is local-only; the built-in algorithm "
                "scores each image once (set evaluate.tta = false, or evaluator = 'local')"
            )
        check_aws(context.settings, context.services)

    def run(self, context: Context) -> Evaluation:
        from pcamflow.data.manifests import read_manifest
        from pcamflow.sagemaker.clients import clients_for
        from pcamflow.sagemaker.s3 import download_file

        settings = context.settings
        split = settings.evaluate.split
        manifests = context.input(Manifests)
        model = context.input(ModelArtifact)
        clients = clients_for(context)
        source = manifests.manifests.get(split)
        if not source or not source.startswith("s3://"):
            raise ConfigError(
                f"manifests.{split}: evaluator 'sagemaker' needs the manifest in S3, got "
                f"{source!r}; set pipeline.manifest_builder = 'sagemaker'"
            )
        local = download_file(
            clients.s3, S3Uri.parse(source), context.stage_dir / f"{split}.manifest"
        )
        entries = read_manifest(local)
        refs = [ref for ref, _ in entries]
        labels = [label for _, label in entries]
        if settings.aws.evaluation.evaluate_via == "endpoint":
            scores = self._via_endpoint(context, clients, model, refs)
        else:
            scores = self._via_transform(context, clients, model, refs)
        return _report(context, labels, scores, refs, model)

    def plan(self, context: Context) -> Any:
        from pcamflow.sagemaker.planning import (
            StagePlanner,
            planned_counts,
            planned_resolved,
            planned_root,
        )
        from pcamflow.sagemaker.s3 import put_params

        settings = context.settings
        aws = settings.aws
        resolved = planned_resolved(settings)
        planner = StagePlanner(context, resolved.region)
        root = planned_root(context, resolved)
        base = root.join(context.stage_name or "evaluate")
        model = context.optional_input(ModelArtifact)
        model_uri = model.uri if model is not None else str(
            root.join("train", "output", "<training job>", "output", "model.tar.gz"))
        counts, estimated = planned_counts(context)
        if estimated:
            planner.notes.append(estimated)
        images = counts.get(settings.evaluate.split, 0)
        manifests = context.optional_input(Manifests)
        source = (manifests.manifests.get(settings.evaluate.split) if manifests else None) or str(
            root.join("manifests", f"{settings.evaluate.split}.manifest"))
        listing = S3Uri.parse(source)
        planner.billed("s3", "GetObject", {"Bucket": listing.bucket, "Key": listing.key}, 1,
                       "the evaluated manifest")
        requests = evaluation_requests(
            context, resolved, model_uri, str(base.join("transform-input.manifest")),
            str(base.join("transform-output")))
        planner.request("sagemaker", "CreateModel", requests["model"])
        kms = resolved.kms_key_id
        image = {"Bucket": resolved.bucket, "Key": "<image>"}
        if "transform" in requests:
            planner.billed("s3", "PutObject", put_params(
                resolved.bucket, base.join("transform-input.manifest").key, kms), 1,
                "the transform's manifest file")
            planner.request("sagemaker", "CreateTransformJob", requests["transform"])
            planner.billed("s3", "GetObject", image, images, "the transform reads each image")
            out = base.join("transform-output", "<relative key>.out")
            planner.billed("s3", "PutObject", {"Bucket": out.bucket, "Key": out.key}, images,
                           "the transform writes an answer per image")
            if kms:
                planner.billed("kms", "GenerateDataKey", {"KeyId": kms, "KeySpec": "AES_256"},
                               images + 1)
            planner.billed("s3", "ListObjectsV2", {"Bucket": out.bucket,
                                                   "Prefix": base.join("transform-output").key},
                           max(1, -(-images // 1000)), "finding the answers")
            planner.billed("s3", "GetObject", {"Bucket": out.bucket, "Key": out.key}, images,
                           "reading the answers")
            planner.request("sagemaker", "DeleteModel",
                            {"ModelName": requests["model"]["ModelName"]})
            what = "the transform"
        else:
            name = requests["endpoint"]["EndpointName"]
            planner.request("sagemaker", "CreateEndpointConfig", requests["endpoint_config"])
            planner.request("sagemaker", "CreateEndpoint", requests["endpoint"])
            planner.billed("s3", "GetObject", image, images, "reading each image")
            planner.request("sagemaker-runtime", "InvokeEndpoint", {
                "EndpointName": name, "Body": "<image>", "ContentType": "application/x-image",
                "Accept": "application/json"}, images)
            planner.request("sagemaker", "DeleteEndpoint", {"EndpointName": name})
            planner.request("sagemaker", "DeleteEndpointConfig", {
                "EndpointConfigName": requests["endpoint_config"]["EndpointConfigName"]})
            planner.request("sagemaker", "DeleteModel",
                            {"ModelName": requests["model"]["ModelName"]})
            what = "the temporary endpoint"
        planner.instance_hours(aws.evaluation.transform_instance_type,
                               aws.evaluation.transform_instance_count, 1.0,
                               f"{what}, assumed to take an hour")
        return planner.plan()

    def _via_transform(
        self, context: Context, clients: Any, model: ModelArtifact, refs: list[str]
    ) -> list[float]:
        from pcamflow.sagemaker import jobs
        from pcamflow.sagemaker.clients import resolve
        from pcamflow.sagemaker.predictions import locate_outputs, read_scores
        from pcamflow.sagemaker.s3 import run_root, upload_file

        aws = context.settings.aws
        _check_model(model)
        resolved = resolve(clients, aws)
        base = run_root(context, resolved.bucket).join(context.stage_name or "evaluate")
        prefix, keys = transform_input_manifest(refs)
        listing = context.stage_dir / "transform-input.manifest"
        listing.write_text(json.dumps([{"prefix": prefix}, *keys]), encoding="utf-8")
        input_uri = upload_file(clients.s3, listing, base.join("transform-input.manifest"),
                                kms_key_id=resolved.kms_key_id)
        output = base.join("transform-output")
        requests = evaluation_requests(context, resolved, model.uri, str(input_uri), str(output))
        model_name = requests["model"]["ModelName"]
        jobs.create("model", requests["model"], clients)
        try:
            job = jobs.create("transform", requests["transform"], clients)
            jobs.wait("transform", job, poll_s=clients.poll_s(aws), progress=self.progress,
                      **({"ask": self.ask} if self.ask else {}))
        finally:
            _delete_model(clients, model_name)
        targets = locate_outputs(clients.s3, output, keys)
        return read_scores(clients.s3, targets, aws.upload_workers, self.progress)

    def _via_endpoint(
        self, context: Context, clients: Any, model: ModelArtifact, refs: list[str]
    ) -> list[float]:
        """Score on a temporary endpoint of ``model``, deleted afterwards whatever happens."""
        from pcamflow.artifacts import Endpoint
        from pcamflow.sagemaker import jobs
        from pcamflow.sagemaker.clients import resolve
        from pcamflow.sagemaker.deployer import _create_endpoint, teardown_endpoint

        aws = context.settings.aws
        _check_model(model)
        resolved = resolve(clients, aws)
        requests = evaluation_requests(context, resolved, model.uri, "", "")
        name = requests["endpoint"]["EndpointName"]
        created: dict[str, str] = {}  # noted before each request: see the deployer
        try:
            created["model"] = requests["model"]["ModelName"]
            jobs.create("model", requests["model"], clients)
            created["endpoint_config"] = requests["endpoint_config"]["EndpointConfigName"]
            jobs.create("endpoint_config", requests["endpoint_config"], clients)
            created["endpoint"] = name
            live = _create_endpoint(requests["endpoint"], clients, created)
            jobs.wait("endpoint", live, poll_s=clients.poll_s(aws), progress=self.progress)
            return _invoke_each(clients, name, refs, aws, self.progress)
        finally:
            temporary = Endpoint(name=created.get("endpoint", ""), backend="sagemaker",
                                 resources={k: v for k, v in created.items() if k != "endpoint"})
            try:
                teardown_endpoint(temporary, clients, wait="endpoint" in created)
            except AwsError as error:  # say what is left billing; the scores are done
                log.error("the evaluation's temporary endpoint was not all deleted: %s", error)


def _check_model(model: ModelArtifact) -> None:
    if not model.uri.startswith("s3://"):
        raise ConfigError(
            f"model {model.uri}: evaluator 'sagemaker' needs a model in S3 (trainer = 'sagemaker')"
        )


def _invoke_each(
    clients: Any, endpoint: str, refs: list[str], aws: Any, progress: bool
) -> list[float]:
    from tqdm.auto import tqdm

    from pcamflow.sagemaker.s3 import S3Uri, read_object

    runtime = clients.client("sagemaker-runtime")

    def score(ref: str) -> float:
        body = read_object(clients.s3, S3Uri.parse(ref))
        try:
            answer = runtime.invoke_endpoint(EndpointName=endpoint, Body=body,
                                             ContentType="application/x-image",
                                             Accept="application/json")
        except Exception as error:  # botocore ClientError: ModelError, ValidationError
            raise AwsError(f"endpoint {endpoint} failed on {ref}: {error}") from None
        return positive_score(answer["Body"].read(), f"endpoint {endpoint} on {ref}")

    with ThreadPoolExecutor(max_workers=min(8, aws.upload_workers)) as pool:
        return list(tqdm(pool.map(score, refs), total=len(refs), desc=f"invoke {endpoint}",
                         disable=None if progress else True))


def _delete_model(clients: Any, name: str) -> None:
    try:
        clients.sagemaker.delete_model(ModelName=name)
    except Exception as error:  # leave a note; the evaluation itself is done
        log.warning("could not delete SageMaker model %s: %s", name, error)


def _report(
    context: Context, labels: list[int], scores: list[float], refs: list[str],
    model: ModelArtifact,
) -> Evaluation:
    from pcamflow.evaluation import evaluate_scores, flatten_metrics, write_report

    settings = context.settings
    document = evaluate_scores(
        labels, scores, bootstrap=settings.evaluate.bootstrap, seed=settings.pipeline.seed,
        info={"model": model.uri, "split": settings.evaluate.split, "backend": "sagemaker",
              "training_job": model.job_name},
    )
    images = _local_images(context, refs)
    report = write_report(
        context.stage_dir / "report", labels=labels, scores=scores, image_paths=images,
        metrics=document, title=f"pcamflow evaluation ({settings.evaluate.split}, SageMaker)",
        top_errors=settings.evaluate.top_errors,
    )
    return Evaluation(
        metrics=flatten_metrics(document),
        report=str(report),
        metrics_file=str(Path(report).parent / "metrics.json"),
    )


def _local_images(context: Context, refs: list[str]) -> list[str] | None:
    """Local copies of the images, when the converter left them on this machine."""
    dataset = context.optional_input(ImageDataset)
    if dataset is None or not dataset.local_root or not dataset.root.startswith("s3://"):
        return None
    root = dataset.root.rstrip("/") + "/"
    if not all(r.startswith(root) for r in refs):
        return None
    return [str(Path(dataset.local_root) / r[len(root):]) for r in refs]

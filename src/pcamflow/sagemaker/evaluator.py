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
from pcamflow.stages import Context, Evaluator

__all__ = ["SageMakerEvaluator", "positive_score", "transform_input_manifest"]

log = logging.getLogger(__name__)


class SageMakerEvaluator(JobStageOptions, Evaluator):
    """Scores the model on SageMaker (batch transform or endpoint), reports locally.

    Args:
        progress: show progress.
        ask: asks whether to stop the transform job on Ctrl-C.
    """

    def validate(self, context: Context) -> None:
        from pcamflow.sagemaker.trainer import check_aws

        check_aws(context.settings)
        if context.settings.evaluate.tta:
            raise ConfigError(
                "evaluate.tta: test-time augmentation is local-only; the built-in algorithm "
                "scores each image once (set evaluate.tta = false, or evaluator = 'local')"
            )

    def run(self, context: Context) -> Evaluation:
        from pcamflow.data.manifests import read_manifest
        from pcamflow.sagemaker.clients import clients_for
        from pcamflow.sagemaker.s3 import S3Uri, download_file

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

    def _via_transform(
        self, context: Context, clients: Any, model: ModelArtifact, refs: list[str]
    ) -> list[float]:
        from pcamflow.sagemaker import jobs
        from pcamflow.sagemaker.clients import resolve
        from pcamflow.sagemaker.hosting import model_request, transform_job_request
        from pcamflow.sagemaker.predictions import locate_outputs, read_scores
        from pcamflow.sagemaker.requests import job_name
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
        model_name = job_name(aws.prefix, "eval-model")
        jobs.create("model", model_request(model_name, model.uri, aws, resolved), clients)
        try:
            request = transform_job_request(
                job_name(aws.prefix, "eval"), model_name, str(input_uri), str(output), aws,
                resolved,
            )
            job = jobs.create("transform", request, clients)
            jobs.wait("transform", job, poll_s=aws.poll_s, progress=self.progress,
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
        from pcamflow.sagemaker.deployer import teardown_endpoint
        from pcamflow.sagemaker.hosting import (
            endpoint_config_request,
            endpoint_request,
            model_request,
        )
        from pcamflow.sagemaker.requests import job_name

        aws = context.settings.aws
        _check_model(model)
        resolved = resolve(clients, aws)
        name = job_name(aws.prefix, "eval")
        model_name, config_name = f"{name}-model", f"{name}-config"
        created: dict[str, str] = {}
        try:
            jobs.create("model", model_request(model_name, model.uri, aws, resolved), clients)
            created["model"] = model_name
            jobs.create("endpoint_config", endpoint_config_request(
                config_name, model_name, aws.evaluation.transform_instance_type,
                aws.evaluation.transform_instance_count, aws, resolved,
            ), clients)
            created["endpoint_config"] = config_name
            live = jobs.create("endpoint", endpoint_request(name, config_name, aws), clients)
            created["endpoint"] = name
            jobs.wait("endpoint", live, poll_s=aws.poll_s, progress=self.progress)
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

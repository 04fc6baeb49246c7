"""Running a batch transform job over S3 objects with the algorithm's inference.

The inputs are the objects a ``ManifestFile`` lists (its ``prefix`` plus each relative key)
or those under an ``S3Prefix``. Each is one request to the model, as ``SplitType = None``
makes it ("uses the entire input file in a single request", *Use Batch Transform*); its
answer, in the documented format for the job's ``Accept``, is put at
``<S3OutputPath>/<key relative to the input prefix>.out`` with the output's KMS key. An object
that fails (not an image, larger than ``MaxPayloadInMB``) gets no answer, the others are
still written, and the job ends ``Failed`` naming it (*TransformOutput*: "uploads only the
output for successfully processed objects ... marks the job as failed").
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pcamflow.sagemaker.localmode.hosting import format_answer
from pcamflow.sagemaker.localmode.records import Job

__all__ = ["run_transform_job", "transform_inputs"]

log = logging.getLogger("pcamflow.sagemaker.localmode")


def transform_inputs(s3: Any, source: dict[str, Any]) -> list[tuple[str, str]]:
    """``(s3:// URI, key relative to the input prefix)`` of each input object, in order.

    Raises:
        ValueError: the data source cannot be read (the message says why).
    """
    from pcamflow.sagemaker.s3 import S3Uri, existing_objects

    uri = S3Uri.parse(source["S3Uri"])
    if source.get("S3DataType") == "ManifestFile":
        try:
            body = s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
            items = json.loads(body)
            prefix = items[0]["prefix"]
            keys = [str(k) for k in items[1:]]
        except Exception as error:  # botocore ClientError, or not the documented shape
            raise ValueError(f"cannot read the manifest file {uri}: {error}") from None
        return [(prefix + key, key) for key in keys]
    if source.get("S3DataType", "S3Prefix") == "S3Prefix":
        listed = existing_objects(s3, uri) if not uri.key.endswith("/") else existing_objects(
            s3, S3Uri(uri.bucket, uri.key.rstrip("/")))
        base = uri.key.rstrip("/") + "/" if uri.key else ""
        return [(f"s3://{uri.bucket}/{key}", key[len(base):]) for key in sorted(listed)]
    raise ValueError(f"S3DataType {source.get('S3DataType')} is not supported for transform")


def run_transform_job(emulator: Any, job: Job) -> None:
    """Run ``job`` to its end; its record says how it ended."""
    from pcamflow.sagemaker.algorithm import INFERENCE_CONTENT_TYPES
    from pcamflow.sagemaker.s3 import S3Uri

    job.move("InProgress")
    request = job.request
    try:
        predict = emulator.predictor(request["ModelName"])
        inputs = transform_inputs(emulator.s3, request["TransformInput"]["DataSource"]
                                  ["S3DataSource"])
    except Exception as error:  # no model data, an unreadable manifest
        job.fail(f"ClientError: {error}")
        return
    content = str(request["TransformInput"].get("ContentType", "")).split(";")[0].strip()
    if content not in INFERENCE_CONTENT_TYPES:
        job.fail(f"ClientError: the algorithm takes {', '.join(INFERENCE_CONTENT_TYPES)}; got "
                 f"ContentType {content or 'None'}")
        return
    output = request["TransformOutput"]
    accept = output.get("Accept")
    target = S3Uri.parse(output["S3OutputPath"])
    key_id = output.get("KmsKeyId")
    encryption = ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_id} if key_id
                  else {"ServerSideEncryption": "AES256"})
    limit = int(request.get("MaxPayloadInMB", 6)) * 1024 * 1024
    failed: list[str] = []
    for number, (uri, relative) in enumerate(inputs):
        if job.stop_requested:
            job.move("Stopped")
            return
        source = S3Uri.parse(uri)
        try:
            body = emulator.s3.get_object(Bucket=source.bucket, Key=source.key)["Body"].read()
            if len(body) > limit:
                raise ValueError(f"{len(body)} bytes is over MaxPayloadInMB "
                                 f"({request.get('MaxPayloadInMB', 6)})")
            answer, _ = format_answer(predict(body), accept)
        except Exception as error:  # an image the model cannot read: this object fails
            log.info("transform %s: %s failed: %s", job.name, uri, error)
            failed.append(f"{uri}: {error}")
            continue
        key = target.join(relative + ".out")
        emulator.s3.put_object(Bucket=key.bucket, Key=key.key, Body=answer, **encryption)
        job.extra["done"] = number + 1
    if failed:
        job.fail(f"ClientError: {len(failed)} of {len(inputs)} objects failed, e.g. {failed[0]}")
    else:
        job.move("Completed")

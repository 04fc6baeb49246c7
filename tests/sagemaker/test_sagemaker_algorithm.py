"""What AWS documents about the algorithm, and reading its answers in both documented shapes."""

from __future__ import annotations

from typing import Any

import pytest
from documented import BATCH_ANSWER, REALTIME_ANSWER, TRANSFORM_OUTPUT_EXAMPLE
from sm_helpers import BUCKET

from pcamflow.errors import AwsError, ConfigError
from pcamflow.sagemaker.algorithm import (
    check_training_instance,
    depth_warnings,
    has_instance_storage,
    instance_family,
    parse_prediction,
)
from pcamflow.sagemaker.predictions import locate_outputs, positive_score
from pcamflow.sagemaker.s3 import S3Uri


def test_both_documented_answer_shapes_are_read() -> None:
    assert parse_prediction(BATCH_ANSWER) == [0.1, 0.9]
    assert parse_prediction(REALTIME_ANSWER.encode()) == [0.1, 0.9]
    assert positive_score(BATCH_ANSWER, "x") == pytest.approx(0.9)


@pytest.mark.parametrize("body", [
    "", "{}", '{"predictions": [0.1, 0.9]}', "[]", '["a", "b"]', "[0.1]\n[0.2]", "not json",
])
def test_other_answers_are_errors_naming_where(body: str) -> None:
    with pytest.raises(AwsError, match=r"s3://b/k\.out: expected two class probabilities"):
        positive_score(body, "s3://b/k.out")


@pytest.mark.parametrize(("instance_type", "family", "nvme"), [
    ("ml.p3.2xlarge", "p3", False), ("ml.p2.xlarge", "p2", False),
    ("ml.g4dn.xlarge", "g4dn", True), ("ml.g5.2xlarge", "g5", True),
    ("ml.p3dn.24xlarge", "p3dn", True), ("ml.m5d.large", "m5d", True),
    ("ml.c5d.xlarge", "c5d", True), ("ml.m5.large", "m5", False), ("ml.c5.xlarge", "c5", False),
    ("ml.p4d.24xlarge", "p4d", True), ("ml.m6id.large", "m6id", True),
])
def test_instance_families_and_local_storage(instance_type: str, family: str,
                                             nvme: bool) -> None:
    assert instance_family(instance_type) == family
    assert has_instance_storage(instance_type) is nvme


def test_training_instances_are_the_documented_gpu_families() -> None:
    for ok in ("ml.p2.xlarge", "ml.p3.16xlarge", "ml.g4dn.xlarge", "ml.g5.xlarge"):
        check_training_instance(ok)
    for refused in ("ml.m5.large", "ml.c5.2xlarge", "ml.g6.xlarge", "ml.inf1.xlarge", "cpu"):
        with pytest.raises(ConfigError, match="trains on GPU instances only"):
            check_training_instance(refused)


def test_depth_warnings_follow_the_mxnet_builder() -> None:
    assert depth_warnings(20, "3,48,48")  # the CIFAR family above 28 px
    assert depth_warnings(18, "3,28,28")  # an ImageNet depth at 28 px or less
    assert not depth_warnings(20, "3,28,28")
    assert not depth_warnings(18, "3,96,96")
    assert not depth_warnings(50, "3,28,28")  # (50 - 2) % 6 == 0: MXNet builds it


def test_outputs_are_found_at_the_relative_key_or_by_file_name(aws: Any) -> None:
    output = S3Uri(BUCKET, "out")
    aws.s3.put_object(Bucket=BUCKET, Key="out/0/a.jpg.out", Body=BATCH_ANSWER)
    # the layout of the API reference's own example: a folder level differs
    source, target = TRANSFORM_OUTPUT_EXAMPLE
    assert source.rsplit("/", 1)[-1] + ".out" == target.rsplit("/", 1)[-1]
    aws.s3.put_object(Bucket=BUCKET, Key="out/test/b.jpg.out", Body=BATCH_ANSWER)
    found = locate_outputs(aws.s3, output, ["0/a.jpg", "1/b.jpg"])
    assert [str(f) for f in found] == [f"s3://{BUCKET}/out/0/a.jpg.out",
                                       f"s3://{BUCKET}/out/test/b.jpg.out"]
    with pytest.raises(AwsError, match=r"no answer for 1 of 2 images, e\.g\. s3://.*/c\.jpg\.out"):
        locate_outputs(aws.s3, output, ["0/a.jpg", "0/c.jpg"])

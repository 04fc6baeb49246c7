"""Example payloads exactly as AWS's documentation shows them, each with its page.

Tests use these where an output of SageMaker must be read and the emulator is not the one
making it; everything else comes from the emulator (``pcamflow.sagemaker.localmode``).
"""

from __future__ import annotations

IC_PAGE = "https://docs.aws.amazon.com/sagemaker/latest/dg/image-classification.html"

BATCH_ANSWER = '{"prediction": [0.1, 0.9]}\n'
"""A batch transform answer with ``accept: application/jsonlines``: "Image Classification -
MXNet", *Inference with the Image Classification Algorithm* (``{"prediction": [prob_0, prob_1,
...]}``, one line per image), with the example's probabilities filled in for two classes."""

REALTIME_ANSWER = "[0.1, 0.9]"
"""A real-time answer with ``accept: application/json``: the same page, "The output is the
probability values for all classes encoded in JSON format"."""

TRANSFORM_OUTPUT_EXAMPLE = (
    "s3://bucket-name/input-name-prefix/dataset01/data.csv",
    "s3://bucket-name/output-name-prefix/input-name-prefix/data.csv.out",
)
"""Input object -> output object, the example of ``TransformOutput.S3OutputPath``:
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_TransformOutput.html"""

MANIFEST_FILE_EXAMPLE = [
    {"prefix": "s3://customer_bucket/some/prefix/"},
    "relative/path/to/custdata-1",
    "relative/path/custdata-2",
]
"""A ``ManifestFile`` data source: ``S3DataSource.S3Uri``,
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_S3DataSource.html"""

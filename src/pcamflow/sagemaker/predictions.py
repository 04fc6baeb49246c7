"""Reading the algorithm's predictions back: batch-transform outputs and endpoint answers.

A batch transform writes, for each input object, an object named after it with ``.out``
appended, "in a corresponding subfolder" of the output path (``TransformOutput.S3OutputPath``,
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_TransformOutput.html). For a
manifest-file input that is the image's key relative to the manifest's prefix; the page's own
example drops a folder level, so :func:`locate_outputs` looks for the relative key first and
falls back to the one ``.out`` object of the image's file name under the output path. Each
answer is parsed in either documented shape (:func:`pcamflow.sagemaker.algorithm.parse_prediction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pcamflow.errors import AwsError, ConfigError
from pcamflow.sagemaker.algorithm import parse_prediction
from pcamflow.sagemaker.s3 import S3Uri

__all__ = ["locate_outputs", "positive_score", "read_scores", "transform_input_manifest"]


def positive_score(body: bytes | str, where: str) -> float:
    """The class-1 probability in an answer of the algorithm (a list or a JSON Lines record).

    Raises:
        AwsError: the answer is neither documented shape, or has fewer than two classes.
    """
    try:
        probabilities = parse_prediction(body)
        return probabilities[1]
    except (ValueError, IndexError):
        shown = body[:80] if isinstance(body, str) else body[:80].decode(errors="replace")
        raise AwsError(
            f"{where}: expected two class probabilities, as a JSON list or a JSON Lines "
            f'record {{"prediction": [...]}}, got {shown!r}'
        ) from None


def transform_input_manifest(refs: Sequence[str]) -> tuple[str, list[str]]:
    """The S3 manifest file of a batch transform: the common prefix and relative keys.

    Returns:
        (prefix, relative keys), such that ``prefix + key`` is each ``s3://`` reference.
    """
    if not refs:
        raise ConfigError("the evaluated manifest is empty")
    if not all(r.startswith("s3://") for r in refs):
        raise ConfigError(
            "evaluator 'sagemaker' needs s3:// source-refs; set pipeline.manifest_builder = "
            "'sagemaker'"
        )
    first = refs[0]
    prefix = first[: first.rfind("/") + 1]
    for ref in refs:
        while not ref.startswith(prefix):
            prefix = prefix[: prefix.rstrip("/").rfind("/") + 1]
    if prefix.count("/") < 3:  # s3://bucket/ at least
        raise ConfigError("the evaluated images are not all in one S3 bucket")
    return prefix, [r[len(prefix):] for r in refs]


def locate_outputs(s3: Any, output: S3Uri, keys: Sequence[str]) -> list[S3Uri]:
    """Where the transform put the answer for each relative input key.

    Raises:
        AwsError: an answer is missing (the message names the object looked for).
    """
    from pcamflow.sagemaker.s3 import existing_objects

    listed = existing_objects(s3, output)
    by_name: dict[str, list[str]] = {}
    for key in listed:
        if key.endswith(".out"):
            by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    found, missing = [], []
    for relative in keys:
        expected = output.join(relative + ".out")
        if expected.key in listed:
            found.append(expected)
            continue
        alike = by_name.get(relative.rsplit("/", 1)[-1] + ".out", [])
        if len(alike) == 1:
            found.append(S3Uri(output.bucket, alike[0]))
        else:
            missing.append(str(expected))
    if missing:
        raise AwsError(
            f"the batch transform wrote no answer for {len(missing)} of {len(keys)} images, "
            f"e.g. {missing[0]}"
        )
    return found


def read_scores(s3: Any, targets: Sequence[S3Uri], workers: int, progress: bool) -> list[float]:
    """The class-1 probability in each answer object, read many at once."""
    from tqdm.auto import tqdm

    from pcamflow.sagemaker.s3 import read_object

    def one(target: S3Uri) -> float:
        return positive_score(read_object(s3, target), str(target))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(tqdm(pool.map(one, targets), total=len(targets), desc="read predictions",
                         disable=None if progress else True))

"""What AWS documents about the built-in Image Classification algorithm and its instances.

Each fact names the page it comes from, so that a check built on it can say why:

- the algorithm trains on GPU instances only (P2, P3, G4dn and G5 families), and serves on CPU
  or GPU ("Image Classification - MXNet", *EC2 Instance Recommendation*,
  https://docs.aws.amazon.com/sagemaker/latest/dg/image-classification.html#IC-instances);
- instance types with local NVMe storage take no ``VolumeKmsKeyId`` (their volumes are
  encrypted by a hardware module): ``ResourceConfig``, ``HyperParameterTuningResourceConfig``,
  ``TransformResources`` and ``CreateEndpointConfig.KmsKeyId`` say so; which types have it is
  in EC2's *Instance store volumes* (a ``d`` in the type's attributes, ``m5d``, ``g4dn``, and
  the families listed in :data:`NVME_FAMILIES`);
- inference takes ``image/jpeg``, ``image/png`` and ``application/x-image`` and answers a JSON
  list of class probabilities, or, for batch transform with ``Accept: application/jsonlines``,
  one JSON Lines record ``{"prediction": [...]}`` (*Inference with the Image Classification
  Algorithm*, same page);
- the small-image depths 20, 32, 44, 56 and 110 are the CIFAR family ("Image Classification
  Hyperparameters", ``num_layers``); the MXNet ResNet builder the algorithm is based on builds
  them only for images of 28 pixels or less, and the ImageNet depths 18, 34 and 101 only above
  that (``example/image-classification/symbols/resnet.py``). That last rule is read from the
  source, not from AWS's pages, so it is a warning, not an error.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pcamflow.errors import ConfigError

__all__ = [
    "BATCH_ACCEPT",
    "INFERENCE_CONTENT_TYPES",
    "NVME_FAMILIES",
    "TRAINING_FAMILIES",
    "check_training_instance",
    "depth_warnings",
    "has_instance_storage",
    "instance_family",
    "parse_prediction",
]

TRAINING_FAMILIES = ("p2", "p3", "p3dn", "g4dn", "g5")
"""GPU families the algorithm trains on (P2, P3, G4dn and G5; ``p3dn`` is a P3)."""
INFERENCE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
BATCH_ACCEPT = "application/jsonlines"
"""The batch transform answer type the algorithm's page documents: ``{"prediction": [...]}``."""
NVME_FAMILIES = frozenset({"g5", "g6", "g6e", "p5", "p5e", "p5en", "trn1", "trn1n", "trn2"})
"""Families with instance store volumes though their names carry no ``d``."""
SMALL_IMAGE_DEPTHS = (20, 32, 44, 56, 110)
CIFAR_MAX_SIZE = 28
"""The MXNet ResNet builder's limit: images of at most this height get the CIFAR network."""

_FAMILY = re.compile(r"^(?:ml\.)?([a-z]+)(\d+)([a-z-]*)\.")


def instance_family(instance_type: str) -> str:
    """``ml.g4dn.xlarge`` -> ``g4dn`` (empty for a name of another shape)."""
    match = _FAMILY.match(instance_type)
    return "".join(match.groups()) if match else ""


def has_instance_storage(instance_type: str) -> bool:
    """Whether ``instance_type`` has local NVMe storage (no ``VolumeKmsKeyId`` allowed)."""
    match = _FAMILY.match(instance_type)
    if not match:
        return False
    family = "".join(match.groups())
    return "d" in match.group(3) or family in NVME_FAMILIES


def check_training_instance(
    instance_type: str, setting: str = "aws.training.instance_type"
) -> None:
    """Refuse a training instance type the algorithm cannot train on.

    Raises:
        ConfigError: not one of the GPU families of :data:`TRAINING_FAMILIES`.
    """
    if instance_family(instance_type) in TRAINING_FAMILIES:
        return
    families = ", ".join(f.upper() for f in TRAINING_FAMILIES if f != "p3dn")
    raise ConfigError(
        f"{setting}: {instance_type!r} cannot train the built-in Image Classification "
        f"algorithm, which trains on GPU instances only ({families} families, e.g. "
        "ml.p3.2xlarge or ml.g4dn.xlarge); CPU instances are fine for the transform and the "
        "endpoint"
    )


def depth_warnings(num_layers: int, image_shape: str, where: str = "train") -> list[str]:
    """Warnings for a depth the algorithm's MXNet ResNet builder does not build at this size."""
    height = int(image_shape.split(",")[1])
    if num_layers in SMALL_IMAGE_DEPTHS and height > CIFAR_MAX_SIZE:
        return [
            f"{where}.num_layers: {num_layers} is a small-image (CIFAR) depth, which the "
            f"algorithm's MXNet ResNet builds only for images of {CIFAR_MAX_SIZE} px or less; "
            f"image_shape {image_shape!r} is {height} px high: the job may fail on SageMaker. "
            "Use 18, 34, 50, 101, 152 or 200, or image_shape of at most 28 px"
        ]
    if num_layers in (18, 34, 101) and height <= CIFAR_MAX_SIZE:
        return [
            f"{where}.num_layers: {num_layers} is an ImageNet depth, which the algorithm's "
            f"MXNet ResNet does not build for images of {CIFAR_MAX_SIZE} px or less "
            f"(image_shape {image_shape!r}): the job may fail on SageMaker. Use 20, 32, 44, "
            "56 or 110 at this size"
        ]
    return []


def parse_prediction(body: bytes | str) -> list[float]:
    """The class probabilities in an answer of the algorithm, in either documented shape.

    ``application/json`` answers a JSON list; ``application/jsonlines`` answers one line,
    ``{"prediction": [...]}``.

    Raises:
        ValueError: the body is neither.
    """
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected one JSON value or JSON Lines record, got {len(lines)} lines")
    value: Any = json.loads(lines[0])
    if isinstance(value, dict):
        if set(value) != {"prediction"}:
            raise ValueError(f"expected a 'prediction' key, got {sorted(value)}")
        value = value["prediction"]
    if not isinstance(value, list) or not value or not all(
        isinstance(p, int | float) and not isinstance(p, bool) for p in value
    ):
        raise ValueError("expected a non-empty list of class probabilities")
    return [float(p) for p in value]

"""The rules local mode holds a request to, each with the AWS page it comes from.

An *error* rule is documented by AWS. What the SageMaker API checks is refused when the
request is sent, with a ``ValidationException`` in AWS's wording (:class:`Refused`); what the
algorithm's container checks when it starts fails the job, ``Failed`` with a
``FailureReason`` starting ``ClientError:`` (:class:`AlgorithmError`). A *warning* rule is
inferred (from the algorithm's MXNet source, or from how SageMaker behaves rather than what its
pages say): the request goes through, and the warning is logged, written to the job's log and
kept in :attr:`LocalMode.warnings <pcamflow.sagemaker.localmode.LocalMode.warnings>`.
``docs/sagemaker.md`` lists the same table (a test holds the two together).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from pcamflow.errors import HyperparameterError
from pcamflow.sagemaker.algorithm import (
    BATCH_ACCEPT,
    TRAINING_FAMILIES,
    depth_warnings,
    has_instance_storage,
    instance_family,
)

__all__ = [
    "RULES",
    "AlgorithmError",
    "Refused",
    "Rule",
    "check_algorithm",
    "check_endpoint_config",
    "check_training",
    "check_transform",
    "check_tuning",
]

_IC = "https://docs.aws.amazon.com/sagemaker/latest/dg/image-classification.html"
_API = "https://docs.aws.amazon.com/sagemaker/latest/APIReference/"
_DG = "https://docs.aws.amazon.com/sagemaker/latest/dg/"
_MXNET = ("https://github.com/apache/mxnet/blob/master/example/image-classification/"
          "symbols/resnet.py")


@attrs.frozen
class Rule:
    """One rule: what it says, how it is enforced, and where AWS says so.

    Attributes:
        id: a short name.
        severity: ``error`` (documented) or ``warning`` (inferred).
        text: the rule.
        page: the AWS documentation page(s), or the source, it comes from.
        enforced: how local mode holds a request to it.
    """

    id: str
    severity: str
    text: str
    page: str
    enforced: str = "refused: ValidationException"


_FAILS = "job fails: ClientError"
_WARNS = "warning: logged, in the job log"

RULES = (
    Rule("training-instance", "error", "Training runs on the GPU families P2, P3, G4dn and G5 "
         "only (CPU instances serve inference)", f"{_IC}#IC-instances", _FAILS),
    Rule("volume-key-format", "error", "`ResourceConfig.VolumeKmsKeyId` (training, tuning) is a "
         "KMS key ID or key ARN, not an alias", f"{_API}API_ResourceConfig.html"),
    Rule("volume-key-local-storage", "error", "No `VolumeKmsKeyId` (training, tuning, "
         "transform) or endpoint-config `KmsKeyId` on instance types with local NVMe storage",
         f"{_API}API_ResourceConfig.html, API_TransformResources.html, "
         "API_CreateEndpointConfig.html"),
    Rule("channels", "error", "Training needs a `train` and a `validation` channel",
         f"{_IC}#IC-inputoutput", _FAILS),
    Rule("pipe-content-type", "error", "Pipe mode takes `application/x-recordio`, or images "
         "through an augmented manifest", f"{_IC}#IC-inputoutput", _FAILS),
    Rule("record-wrapper", "error", "An augmented-manifest channel sets `RecordWrapperType` to "
         "`RecordIO`", f"{_IC}#IC-augmented-manifest-training", _FAILS),
    Rule("attribute-names", "error", "An augmented manifest's `AttributeNames` are two, the "
         "image reference first, then the label", f"{_IC}#IC-augmented-manifest-training",
         _FAILS),
    Rule("fully-replicated", "error", "RecordIO in Pipe mode needs `S3DataDistributionType = "
         "FullyReplicated`", f"{_IC}#IC-inputoutput", _FAILS),
    Rule("hyperparameters", "error", "Hyperparameters are the algorithm's, with their allowed "
         "values; `num_classes` and `num_training_samples` are required",
         f"{_DG}IC-Hyperparameter.html", _FAILS),
    Rule("spot-wait", "error", "With managed spot training, `MaxWaitTimeInSeconds` is at least "
         "`MaxRuntimeInSeconds`", f"{_API}API_StoppingCondition.html"),
    Rule("job-name", "error", "Job names match `^[a-zA-Z0-9](-*[a-zA-Z0-9])*`: 63 characters at "
         "most, 32 for a tuning job", f"{_API}API_CreateTrainingJob.html, "
         "API_CreateHyperParameterTuningJob.html"),
    Rule("objective", "error", "The tuning objective is `validation:accuracy`, maximised",
         f"{_DG}IC-tuning.html"),
    Rule("grid", "error", "A Grid tuning job takes categorical ranges only; "
         "`MaxNumberOfTrainingJobs`, if set, equals the number of combinations",
         f"{_DG}automatic-model-tuning-how-it-works.html"),
    Rule("hyperband-early-stopping", "error", "Hyperband needs `TrainingJobEarlyStoppingType = "
         "Off`; `StrategyConfig` goes with Hyperband only",
         f"{_API}API_HyperParameterTuningJobConfig.html"),
    Rule("warm-start", "error", "A warm start's parent tuning jobs exist and have ended",
         f"{_DG}automatic-model-tuning-warm-start.html"),
    Rule("tuning-early-stopping", "error", "`Auto` early stopping stops a training job whose "
         "objective after an epoch is worse than the median of the earlier jobs' running "
         "averages up to that epoch", f"{_DG}automatic-model-tuning-early-stopping.html",
         "behaviour: the job is Stopped"),
    Rule("payload", "error", "Built-in algorithms do not take `MaxPayloadInMB = 0`; an object "
         "larger than `MaxPayloadInMB` fails the transform", f"{_DG}batch-transform.html",
         "refused (0); the object fails the job"),
    Rule("transform-output", "error", "Each input object's answer is `<S3OutputPath>/<key "
         "relative to the input prefix>.out`, written only when it succeeded",
         f"{_API}API_TransformOutput.html", "behaviour: the output layout"),
    Rule("answer-format", "error", "Inference takes `image/jpeg`, `image/png`, "
         "`application/x-image`; answers a JSON list (`application/json`) or "
         "`{\"prediction\": [...]}` (`application/jsonlines`)", f"{_IC}#IC-inference",
         "behaviour: the answers; other bodies fail"),
    Rule("invoke-errors", "error", "`InvokeEndpoint` of a missing endpoint is a "
         "`ValidationError`; a container's 4xx/5xx is a `ModelError` (424)",
         f"{_API}API_runtime_InvokeEndpoint.html", "runtime: ValidationError, ModelError"),
    Rule("depth-size", "warning", "Depths 20, 32, 44, 56, 110 build for images of 28 px or "
         "less, 18, 34, 101 above that (MXNet's ResNet builder)", _MXNET, _WARNS),
    Rule("resize", "warning", "`resize` applies to `application/x-image` channels",
         f"{_DG}IC-Hyperparameter.html", _WARNS),
    Rule("tunable", "warning", "The tunable hyperparameters are beta_1, beta_2, eps, gamma, "
         "learning_rate, mini_batch_size, momentum, optimizer, weight_decay",
         f"{_DG}IC-tuning.html", _WARNS),
    Rule("accept", "warning", "An `Accept` other than JSON or JSON Lines is undocumented; "
         "JSON is answered", f"{_IC}#IC-inference", _WARNS),
    Rule("role", "warning", "The execution role exists and trusts `sagemaker.amazonaws.com`",
         f"{_DG}sagemaker-roles.html", _WARNS),
)
"""Every rule local mode holds requests to."""

TUNABLE = ("beta_1", "beta_2", "eps", "gamma", "learning_rate", "mini_batch_size", "momentum",
           "optimizer", "weight_decay")
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_KEY_ID = re.compile(r"^(mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                     r"[0-9a-f]{12})$")
_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/.+$")


class Refused(Exception):
    """A request AWS would refuse: answered as ``code`` (``ValidationException``)."""

    def __init__(self, message: str, code: str = "ValidationException") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class AlgorithmError(Exception):
    """What the algorithm refuses when its job starts: the job fails with this reason."""

    def __init__(self, message: str) -> None:
        super().__init__(f"ClientError: {message}")
        self.reason = f"ClientError: {message}"


def _constraint(value: Any, where: str, constraint: str) -> Refused:
    # AWS's wording for a field that breaks a constraint
    return Refused(f"1 validation error detected: Value '{value}' at '{where}' failed to "
                   f"satisfy constraint: {constraint}")


def _check_name(name: str, where: str, limit: int) -> None:
    if not _NAME.match(name) or len(name) > limit:
        raise _constraint(name, where, f"Member must satisfy regular expression pattern: "
                          f"^[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,{limit - 1}}}")


def _check_resources(resources: Mapping[str, Any], where: str, *, training: bool) -> None:
    instance = str(resources.get("InstanceType", ""))
    key = resources.get("VolumeKmsKeyId")
    if key is None:
        return
    if has_instance_storage(instance):
        raise Refused(f"Volume KMS key can't be specified for instance type {instance}: its "
                      "local storage is encrypted by a hardware module. Remove "
                      f"{where}.VolumeKmsKeyId")
    if training and not (_KEY_ID.match(key) or _KEY_ARN.match(key)):
        raise _constraint(key, f"{where[0].lower()}{where[1:]}.volumeKmsKeyId",
                          "Member must be a KMS key ID or key ARN")


def check_training(definition: Mapping[str, Any], *, tuning: bool = False) -> None:
    """What the SageMaker API checks in a ``CreateTrainingJob`` request (or a tuning job's
    training definition) when it is sent.

    Raises:
        Refused: a documented rule is broken.
    """
    if not tuning:
        _check_name(str(definition.get("TrainingJobName", "")), "trainingJobName", 63)
    _check_resources(definition.get("ResourceConfig", {}), "ResourceConfig", training=True)
    stopping = definition.get("StoppingCondition", {})
    if definition.get("EnableManagedSpotTraining"):
        wait = stopping.get("MaxWaitTimeInSeconds")
        if wait is None or wait < stopping.get("MaxRuntimeInSeconds", 86400):
            raise Refused("MaxWaitTimeInSeconds must be at least MaxRuntimeInSeconds for "
                          "managed spot training")
    elif "MaxWaitTimeInSeconds" in stopping:
        raise Refused("MaxWaitTimeInSeconds is only for managed spot training "
                      "(EnableManagedSpotTraining)")


def _check_channels(channels: list[Mapping[str, Any]], mode: str, resize: bool,
                    warnings: list[str]) -> None:
    names = {c.get("ChannelName") for c in channels}
    missing = sorted({"train", "validation"} - names)
    if missing:
        raise AlgorithmError(f"The algorithm needs the channels train and validation; "
                             f"missing: {', '.join(missing)}")
    for channel in channels:
        name = channel.get("ChannelName")
        source = channel.get("DataSource", {}).get("S3DataSource", {})
        content = str(channel.get("ContentType", "")).split(";")[0].strip()
        augmented = source.get("S3DataType") == "AugmentedManifestFile"
        channel_mode = channel.get("InputMode", mode)
        if channel_mode == "Pipe" and content != "application/x-recordio" and not (
                augmented and content in ("image/png", "image/jpeg", "application/x-image")):
            raise AlgorithmError(f"Channel {name}: content type {content or 'None'} is not "
                                 "supported in Pipe mode; use application/x-recordio")
        if augmented:
            if channel.get("RecordWrapperType") != "RecordIO":
                raise AlgorithmError(f"Channel {name}: with an augmented manifest, "
                                     "RecordWrapperType must be RecordIO")
            attributes = source.get("AttributeNames") or []
            if len(attributes) != 2:
                raise AlgorithmError(f"Channel {name}: AttributeNames must name the image "
                                     f"reference and the label, in that order; got "
                                     f"{attributes}")
        if (content == "application/x-recordio" and channel_mode == "Pipe"
                and source.get("S3DataDistributionType", "FullyReplicated") != "FullyReplicated"):
            raise AlgorithmError(f"Channel {name}: RecordIO in Pipe mode needs "
                                 "S3DataDistributionType FullyReplicated")
        if resize and content != "application/x-image":
            warnings.append(f"resize: applies to application/x-image channels; channel {name} "
                            f"is {content} (what the algorithm does then is not documented)")


def check_algorithm(definition: Mapping[str, Any], hyperparameters: Mapping[str, str]) -> Any:
    """What the algorithm checks when a training job starts.

    Returns:
        (the typed hyperparameters, the warnings).

    Raises:
        AlgorithmError: a documented rule is broken: the job fails with its reason.
    """
    from pcamflow.hyperparameters import Hyperparameters

    instance = str(definition.get("ResourceConfig", {}).get("InstanceType", ""))
    if instance_family(instance) not in TRAINING_FAMILIES:
        raise AlgorithmError(f"Instance type {instance} is not supported by the algorithm; it "
                             "trains on GPU instances only (ml.p2, ml.p3, ml.g4dn and ml.g5 "
                             "families)")
    for required in ("num_classes", "num_training_samples"):
        if required not in hyperparameters:
            raise AlgorithmError(f"Missing required hyperparameter: {required}")
    try:
        hp = Hyperparameters.from_sagemaker(dict(hyperparameters))
    except HyperparameterError as error:
        raise AlgorithmError(f"Hyperparameter validation failed: {error}") from None
    warnings: list[str] = []
    mode = definition.get("AlgorithmSpecification", {}).get("TrainingInputMode", "File")
    _check_channels(definition.get("InputDataConfig", []), mode, hp.resize is not None,
                    warnings)
    warnings += depth_warnings(hp.num_layers, hp.image_shape)
    return hp, warnings


def check_tuning(request: Mapping[str, Any], parent_states: Mapping[str, str | None]) -> list[str]:
    """Check a ``CreateHyperParameterTuningJob`` request.

    Args:
        request: the request.
        parent_states: warm-start parent name -> its status (None: no such tuning job).

    Returns:
        The warnings.

    Raises:
        Refused: a documented rule is broken.
    """
    _check_name(str(request.get("HyperParameterTuningJobName", "")),
                "hyperParameterTuningJobName", 32)
    config = request.get("HyperParameterTuningJobConfig", {})
    objective = config.get("HyperParameterTuningJobObjective") or {}
    if (objective.get("MetricName"), objective.get("Type")) != ("validation:accuracy",
                                                                 "Maximize"):
        raise Refused(f"The objective metric {objective.get('MetricName')} "
                      f"({objective.get('Type')}) is not one the algorithm image-classification "
                      "emits; use validation:accuracy, Maximize")
    ranges = config.get("ParameterRanges") or {}
    strategy = config.get("Strategy")
    if strategy == "Grid":
        if ranges.get("ContinuousParameterRanges") or ranges.get("IntegerParameterRanges"):
            raise Refused("Grid search supports only categorical parameter ranges")
        size = 1
        for entry in ranges.get("CategoricalParameterRanges", []):
            size *= len(entry.get("Values", []))
        asked = config.get("ResourceLimits", {}).get("MaxNumberOfTrainingJobs")
        if asked is not None and asked != size:
            raise Refused(f"MaxNumberOfTrainingJobs ({asked}) must equal the number of distinct "
                          f"categorical combinations ({size}) for Grid search")
    if strategy == "Hyperband" and config.get("TrainingJobEarlyStoppingType", "Off") != "Off":
        raise Refused("TrainingJobEarlyStoppingType must be OFF to use the Hyperband strategy")
    if strategy != "Hyperband" and config.get("StrategyConfig"):
        raise Refused("StrategyConfig can be given only with the Hyperband strategy")
    for parent, state in parent_states.items():
        if state is None:
            raise Refused(f"Could not find parent hyper parameter tuning job '{parent}'")
        if state not in ("Completed", "Stopped", "Failed"):
            raise Refused(f"Parent hyper parameter tuning job '{parent}' is {state}; parent "
                          "jobs must have ended")
    names = tuple(entry["Name"] for kind in ranges.values() for entry in kind)
    check_training(request.get("TrainingJobDefinition", {}), tuning=True)
    warnings: list[str] = []
    static = request.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {})
    for name in names:
        if name not in TUNABLE:
            warnings.append(f"tuning: {name} is not among the tunable hyperparameters of the "
                            "algorithm (IC-tuning page); SageMaker may refuse to tune it")
        if name in static:
            warnings.append(f"tuning: {name} is both static and tuned")
    return warnings


def check_transform(request: Mapping[str, Any]) -> list[str]:
    """Check a ``CreateTransformJob`` request (the model's existence is checked apart)."""
    _check_name(str(request.get("TransformJobName", "")), "transformJobName", 63)
    _check_resources(request.get("TransformResources", {}), "TransformResources",
                     training=False)
    if request.get("MaxPayloadInMB") == 0:
        raise Refused("MaxPayloadInMB 0 (streaming) is not supported by built-in algorithms")
    accept = request.get("TransformOutput", {}).get("Accept")
    if accept and accept not in ("application/json", BATCH_ACCEPT):
        return [f"transform: Accept {accept} is not documented for the algorithm; answering "
                "application/json"]
    return []


def check_endpoint_config(request: Mapping[str, Any]) -> list[str]:
    """Check a ``CreateEndpointConfig`` request."""
    if request.get("KmsKeyId"):
        for variant in request.get("ProductionVariants", []):
            instance = str(variant.get("InstanceType", ""))
            if has_instance_storage(instance):
                raise Refused(f"KmsKeyId can't be specified: production variant "
                              f"{variant.get('VariantName')} uses {instance}, whose local "
                              "storage is encrypted by a hardware module")
    return []

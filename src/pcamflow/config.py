"""Settings: one TOML file -> frozen attrs classes, validated when built.

Each table of the file is one class: ``[pipeline]`` says where the run lives and which
registered implementation runs each stage; ``[data]``, ``[convert]``, ``[manifests]``,
``[tune]``, ``[train]``, ``[evaluate]``, ``[deploy]`` and ``[aws]`` configure the stages.
An unknown key, a value of the wrong type or a value outside what is allowed raises
:class:`~pcamflow.errors.ConfigError` naming the key path::

    train.num_layers: 19 is not one of 18, 20, 32, 34, 44, 50, 56, 101, 110, 152, 200

Relative paths are taken from the current directory. Variants are made with
:func:`attrs.evolve`, which validates again.
"""

from __future__ import annotations

import difflib
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pcamflow.errors import ConfigError, HyperparameterError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions, TuningRange

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "API_KEY_ENV",
    "AwsSettings",
    "ConvertSettings",
    "DataSettings",
    "DeploySettings",
    "EvaluateSettings",
    "ManifestSettings",
    "PipelineSettings",
    "Settings",
    "TrainSettings",
    "TuneSettings",
]


def _check(predicate: Any, expected: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not predicate(value):
            raise ConfigError(f"{attribute.name}: {value!r} {expected}")

    return check


def _choice(*allowed: str) -> Any:
    return _check(lambda v: v in allowed, "is not one of " + ", ".join(allowed))


_POSITIVE = _check(lambda v: v >= 1, "must be at least 1")
_NON_NEGATIVE = _check(lambda v: v >= 0, "must not be negative")


@attrs.frozen(kw_only=True)
class PipelineSettings:
    """``[pipeline]``: the run folder, the seed, and the implementation of each stage.

    Each stage key holds a registered stage name (``local``, ``sagemaker``, a plugin's name),
    or ``"none"`` to leave the stage out.

    Attributes:
        run_dir: the run folder (``run.json`` and every stage's outputs).
        seed: the random seed of every stage (shuffles, synthetic data, training).
        converter: the DataConverter: PCam HDF5 -> JPEG tree.
        manifest_builder: the ManifestBuilder: JPEG tree -> manifests.
        tuner: the Tuner (``none``: train with ``[train]`` as given).
        trainer: the Trainer.
        evaluator: the Evaluator.
        deployer: the Deployer (``none``: no endpoint).
    """

    run_dir: str = "runs/pcamflow"
    seed: int = 0
    converter: str = "local"
    manifest_builder: str = "local"
    tuner: str = "none"
    trainer: str = "local"
    evaluator: str = "local"
    deployer: str = "none"

    def stage_names(self) -> dict[str, str]:
        """Stage kind -> registered name, in pipeline order, without those set to ``none``."""
        kinds = ("converter", "manifest_builder", "tuner", "trainer", "evaluator", "deployer")
        return {k: getattr(self, k) for k in kinds if getattr(self, k) not in ("none", "")}


@attrs.frozen(kw_only=True)
class DataSettings:
    """``[data]``: where the PCam HDF5 files are.

    Attributes:
        source: folder with ``camelyonpatch_level_2_split_*_{x,y}.h5`` (or ``.h5.gz``).
        splits: the splits to use.
        cache_dir: where ``.h5.gz`` files are decompressed (None: beside the source).
        verify_checksums: check files named like real PCam against the published checksums.
    """

    source: str = "data/pcam"
    splits: tuple[str, ...] = attrs.field(
        default=("train", "valid", "test"),
        converter=tuple,
        validator=_check(
            lambda v: v and set(v) <= {"train", "valid", "test"},
            "must be a non-empty list of train, valid, test",
        ),
    )
    cache_dir: str | None = None
    verify_checksums: bool = True


@attrs.frozen(kw_only=True)
class ConvertSettings:
    """``[convert]``: HDF5 -> JPEG conversion.

    Attributes:
        quality: JPEG quality, 1..100.
        workers: worker processes (None: one per core).
        output: the image tree's root (None: ``<run_dir>/convert/images``).
    """

    quality: int = attrs.field(
        default=95, validator=_check(lambda v: 1 <= v <= 100, "is outside 1..100")
    )
    workers: int | None = attrs.field(default=None, validator=_POSITIVE)
    output: str | None = None


@attrs.frozen(kw_only=True)
class ManifestSettings:
    """``[manifests]``: augmented manifests and ``.lst`` files.

    Attributes:
        shuffle: shuffle the lines (deterministically, by the pipeline's seed).
        max_per_class: keep at most this many images per class and split (quick runs).
        check_images: check that every referenced image exists.
    """

    shuffle: bool = True
    max_per_class: int | None = attrs.field(default=None, validator=_POSITIVE)
    check_images: bool = True


@attrs.frozen(kw_only=True)
class TuneSettings:
    """``[tune]``: hyperparameter tuning, as a SageMaker tuning job defines it.

    Attributes:
        strategy: ``Bayesian``, ``Random``, ``Grid`` or ``Hyperband``.
        max_jobs: training jobs in all.
        max_parallel_jobs: training jobs at once.
        objective: the metric to maximise.
        early_stopping: ``Off`` or ``Auto`` (stop poor trials early).
        warm_start_from: an earlier study (local: its folder; SageMaker: a tuning job name).
        epochs: epochs per trial (None: ``train.epochs``).
        ranges: hyperparameter name -> range (``[tune.ranges.learning_rate]``).
    """

    strategy: str = attrs.field(
        default="Bayesian", validator=_choice("Bayesian", "Random", "Grid", "Hyperband")
    )
    max_jobs: int = attrs.field(default=4, validator=_POSITIVE)
    max_parallel_jobs: int = attrs.field(default=1, validator=_POSITIVE)
    objective: str = attrs.field(
        default="validation:accuracy", validator=_choice("validation:accuracy")
    )
    early_stopping: str = attrs.field(default="Off", validator=_choice("Off", "Auto"))
    warm_start_from: str | None = None
    epochs: int | None = attrs.field(default=None, validator=_POSITIVE)
    ranges: dict[str, TuningRange] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.max_parallel_jobs > self.max_jobs:
            raise ConfigError(
                f"max_parallel_jobs: {self.max_parallel_jobs} is greater than "
                f"max_jobs ({self.max_jobs})"
            )
        if self.strategy == "Grid":
            for name, rng in self.ranges.items():
                if rng.type == "continuous":
                    raise ConfigError(
                        f"ranges.{name}: the Grid strategy takes only "
                        "integer and categorical ranges"
                    )
        if self.strategy == "Hyperband" and self.early_stopping != "Off":
            # as in SageMaker: Hyperband stops poor trials itself
            raise ConfigError(
                "early_stopping: must be Off with the Hyperband strategy, which stops poor "
                "trials itself"
            )


@attrs.frozen(kw_only=True)
class TrainSettings:
    """``[train]``: the algorithm's hyperparameters; ``[train.extensions]``: local-only ones."""

    hyperparameters: Hyperparameters = attrs.field(factory=Hyperparameters)
    extensions: LocalExtensions = attrs.field(factory=LocalExtensions)


@attrs.frozen(kw_only=True)
class EvaluateSettings:
    """``[evaluate]``: scoring the model on the test split.

    Attributes:
        split: the split to score.
        tta: also score with test-time augmentation over the 8 dihedral views.
        bootstrap: bootstrap resamples for the 95% intervals (0: none).
        batch_size: images per forward pass.
        top_errors: how many most-confident errors to show per kind.
    """

    split: str = attrs.field(default="test", validator=_choice("train", "valid", "test"))
    tta: bool = False
    bootstrap: int = attrs.field(default=1000, validator=_NON_NEGATIVE)
    batch_size: int = attrs.field(default=128, validator=_POSITIVE)
    top_errors: int = attrs.field(default=16, validator=_NON_NEGATIVE)


API_KEY_ENV = "PCAMFLOW_API_KEY"
"""The environment variable a local endpoint server reads its API key from."""


@attrs.frozen(kw_only=True)
class DeploySettings:
    """``[deploy]``: the prediction endpoint.

    These are also the defaults of ``pcamflow serve``, whose options have the same names.

    Attributes:
        name: the endpoint's name.
        host: the local server's address (127.0.0.1 unless told otherwise).
        port: the local server's port (8080, as SageMaker's containers; 0: any free port).
        api_key_env: environment variable holding an API key the server requires (None: none).
        max_batch_size: requests batched into one forward pass.
        max_wait_ms: how long a request waits for others to batch with.
        threads: torch threads of the local server's forward pass (None: one per core).
        max_body_bytes: the local server's largest request body (SageMaker's is 6 MB).
        max_images: the most images in one batch-form (``.npy``) request.
        max_pixels: the most pixels decoded for one request, all its images together.
        max_connections: open connections; beyond, idle and slow ones are closed first.
        read_timeout_s: seconds a client has to send a request's head, and then its body.
        instance_type: the SageMaker endpoint's instance type.
        initial_instance_count: the SageMaker endpoint's instances.
    """

    name: str = "pcamflow"
    host: str = "127.0.0.1"
    port: int = attrs.field(
        default=8080, validator=_check(lambda v: 0 <= v <= 65535, "is not a port")
    )
    api_key_env: str | None = None
    max_batch_size: int = attrs.field(default=32, validator=_POSITIVE)
    max_wait_ms: float = attrs.field(default=5.0, validator=_NON_NEGATIVE)
    threads: int | None = attrs.field(default=None, validator=_POSITIVE)
    # the local server's limits on hostile input (docs/serving.md, "Limits")
    max_body_bytes: int = attrs.field(default=6 * 1024 * 1024, validator=_POSITIVE)
    max_images: int = attrs.field(default=64, validator=_POSITIVE)
    max_pixels: int = attrs.field(default=1024 * 1024, validator=_POSITIVE)
    max_connections: int = attrs.field(default=64, validator=_POSITIVE)
    read_timeout_s: float = attrs.field(
        default=10.0, validator=_check(lambda v: 0 < v < 1e6, "is outside 0..1e6 seconds")
    )
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = attrs.field(default=1, validator=_POSITIVE)


@attrs.frozen(kw_only=True)
class AwsSettings:
    """``[aws]``: account-wide settings of the SageMaker backend.

    Attributes:
        region: the AWS region (None: the SDK's default).
        role_arn: the SageMaker execution role (None: the role of the SageMaker notebook or
            Studio session this runs in).
        bucket: the S3 bucket (None: SageMaker's default bucket, ``sagemaker-<region>-<account>``).
        prefix: the key prefix of everything pcamflow writes.
        instance_type: training instance type.
        instance_count: training instances.
        volume_size_gb: training volume size.
        max_runtime_s: a training job's limit.
        use_spot: managed spot training.
        max_wait_s: spot training's limit, waiting included.
        checkpoint_s3_uri: where spot training checkpoints.
        kms_key_id: KMS key for S3 objects and job volumes (None: SSE-S3).
        subnets: VPC subnets of jobs and endpoints.
        security_group_ids: VPC security groups of jobs and endpoints.
        tags: tags put on every resource.
        prices: instance type -> USD per hour, for ``pcamflow plan``'s estimate.
        profile: the AWS credentials profile (None: the default credential chain).
        max_attempts: attempts per AWS request, throttling retried (botocore's standard mode).
        upload_workers: S3 uploads at once.
        poll_s: seconds between status checks of a running job or endpoint.
        transform_instance_type: the batch transform's instance type (evaluation).
        transform_instance_count: the batch transform's instances.
        evaluate_via: ``transform`` (a batch transform job) or ``endpoint`` (invoke the
            endpoint named ``deploy.name``, which must be InService).
        estimated_runtime_s: the expected length of one training job, for the cost
            estimate (None: ``max_runtime_s``, the most it can cost).
        endpoint_hours: hours an endpoint is assumed to run, for the cost estimate.
        data_capture_s3_uri: capture endpoint requests and answers here (None: off).
        data_capture_percent: the share of requests captured, 1..100.
        autoscaling_max_instances: scale the endpoint up to this many instances (None: off).
        autoscaling_target_invocations: invocations per instance per minute to scale at.
    """

    region: str | None = None
    role_arn: str | None = None
    bucket: str | None = None
    prefix: str = "pcamflow"
    instance_type: str = "ml.p3.2xlarge"
    instance_count: int = attrs.field(default=1, validator=_POSITIVE)
    volume_size_gb: int = attrs.field(default=50, validator=_POSITIVE)
    max_runtime_s: int = attrs.field(default=86400, validator=_POSITIVE)
    use_spot: bool = False
    max_wait_s: int | None = attrs.field(default=None, validator=_POSITIVE)
    checkpoint_s3_uri: str | None = None
    kms_key_id: str | None = None
    subnets: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    security_group_ids: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    tags: dict[str, str] = attrs.field(factory=dict)
    prices: dict[str, float] = attrs.field(factory=dict)
    profile: str | None = None
    max_attempts: int = attrs.field(default=8, validator=_POSITIVE)
    upload_workers: int = attrs.field(
        default=16, validator=_check(lambda v: 1 <= v <= 128, "is outside 1..128")
    )
    poll_s: float = attrs.field(default=30.0, validator=_NON_NEGATIVE)
    transform_instance_type: str = "ml.m5.xlarge"
    transform_instance_count: int = attrs.field(default=1, validator=_POSITIVE)
    evaluate_via: str = attrs.field(default="transform", validator=_choice("transform", "endpoint"))
    estimated_runtime_s: int | None = attrs.field(default=None, validator=_POSITIVE)
    endpoint_hours: float = attrs.field(default=24.0, validator=_NON_NEGATIVE)
    data_capture_s3_uri: str | None = None
    data_capture_percent: int = attrs.field(
        default=100, validator=_check(lambda v: 1 <= v <= 100, "is outside 1..100")
    )
    autoscaling_max_instances: int | None = attrs.field(default=None, validator=_POSITIVE)
    autoscaling_target_invocations: float = attrs.field(
        default=100.0, validator=_check(lambda v: v > 0, "must be positive")
    )

    def __attrs_post_init__(self) -> None:
        if self.use_spot and self.max_wait_s is not None and self.max_wait_s < self.max_runtime_s:
            raise ConfigError(
                f"max_wait_s: {self.max_wait_s} is less than max_runtime_s "
                f"({self.max_runtime_s}); spot training's wait includes the run"
            )
        for name in ("checkpoint_s3_uri", "data_capture_s3_uri"):
            value = getattr(self, name)
            if value is not None and not value.startswith("s3://"):
                raise ConfigError(f"{name}: {value!r} is not an s3:// URI")
        if self.bucket is not None and (self.bucket.startswith("s3://") or "/" in self.bucket):
            raise ConfigError(
                f"bucket: {self.bucket!r} must be a bare bucket name (no s3://, no /)"
            )


@attrs.frozen(kw_only=True)
class Settings:
    """All settings of one run, one attribute per TOML table."""

    pipeline: PipelineSettings = attrs.field(factory=PipelineSettings)
    data: DataSettings = attrs.field(factory=DataSettings)
    convert: ConvertSettings = attrs.field(factory=ConvertSettings)
    manifests: ManifestSettings = attrs.field(factory=ManifestSettings)
    tune: TuneSettings = attrs.field(factory=TuneSettings)
    train: TrainSettings = attrs.field(factory=TrainSettings)
    evaluate: EvaluateSettings = attrs.field(factory=EvaluateSettings)
    deploy: DeploySettings = attrs.field(factory=DeploySettings)
    aws: AwsSettings = attrs.field(factory=AwsSettings)
    source: str | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        for name, rng in self.tune.ranges.items():
            try:
                rng.check_against(name, self.train.hyperparameters)
            except HyperparameterError as error:
                raise ConfigError(f"tune.ranges.{error}") from None

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return Path(self.pipeline.run_dir)

    @classmethod
    def from_toml(cls, path: str | Path) -> Settings:
        """Read settings from a TOML file.

        Raises:
            ConfigError: the file is missing or not TOML, or a setting is invalid (the message
                names the file and the key path).
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: settings file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read settings file ({error})") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
        try:
            return cls.from_dict(data, source=str(path))
        except ConfigError as error:
            raise type(error)(f"{path}: {error}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> Settings:
        """Build settings from a dict shaped like the TOML file (tables as nested dicts)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"settings must be a table, got {type(data).__name__}")
        data = dict(data)
        train = data.get("train")
        if isinstance(train, Mapping):
            train = dict(train)
            extensions = train.pop("extensions", {})
            data["train"] = {"hyperparameters": train, "extensions": extensions}
        return _build(cls, {**data, "source": source}, "")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a TOML-shaped dict (``None`` values left out)."""
        out = _unbuild(self)
        out.pop("source", None)
        train = out.pop("train")
        out["train"] = {**train["hyperparameters"], "extensions": train["extensions"]}
        return out


# --- strict structuring with key paths -----------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _shown(path: str) -> str:
    # [train] holds the hyperparameters directly: train.hyperparameters.x is shown as train.x
    return path.replace("train.hyperparameters", "train")


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_shown(path) or 'settings'}: expected a table, got {data!r}")
    fields = {f.name: f for f in attrs.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{_shown(_join(path, key))}: unknown setting{hint} "
                f"(known: {', '.join(sorted(fields))})"
            )
    kwargs = {key: _value(hints[key], value, _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as error:  # validators name the attribute; prefix the table's path
        raise type(error)(f"{_shown(path)}.{error}" if path else str(error)) from None


def _value(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    shown = _shown(path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _value(option, value, path)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if attrs.has(hint):
        return _build(hint, value, path)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{shown}: expected a table, got {value!r}")
        return {str(k): _value(args[1], v, _join(path, str(k))) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{shown}: expected a list, got {value!r}")
        return tuple(_value(args[0], v, path) for v in value)
    checks: dict[Any, tuple[Any, str]] = {
        bool: (lambda v: isinstance(v, bool), "true or false"),
        int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
        str: (lambda v: isinstance(v, str), "a string"),
    }
    if hint in checks:
        ok, expected = checks[hint]
        if not ok(value):
            raise ConfigError(f"{shown}: expected {expected}, got {value!r}")
        return float(value) if hint is float else value
    if hint is typing.Any or isinstance(value, hint):
        return value
    raise ConfigError(f"{shown}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _unbuild(obj: Any) -> Any:
    if attrs.has(type(obj)):
        return {
            f.name: _unbuild(getattr(obj, f.name))
            for f in attrs.fields(type(obj))
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, dict):
        return {k: _unbuild(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [_unbuild(v) for v in obj]
    return obj

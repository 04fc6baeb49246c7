"""Settings: one TOML file -> frozen attrs classes, validated when built.

Each table of the file is one class: ``[pipeline]`` says where the run lives and which
registered implementation runs each stage; ``[data]``, ``[convert]``, ``[manifests]``,
``[tune]``, ``[train]``, ``[evaluate]``, ``[deploy]`` and ``[aws]`` (with ``[aws.network]``,
``[aws.training]``, ``[aws.evaluation]`` and ``[aws.endpoint]``, in
:mod:`pcamflow.aws_settings`) configure the stages; ``[tracking]`` says where a run is logged
for comparison with others (MLflow), and changes no stage's output.
The file is structured by pcamflow's one cattrs converter (:mod:`pcamflow._structure`); the
checks are :mod:`attrs.validators` on the fields, so building a class in code checks the same.
An unknown key, a value of the wrong type or a value outside what is allowed raises
:class:`~pcamflow.errors.ConfigError` naming the key path, one line per problem::

    train.num_layers: 19 is not one of 18, 20, 32, 34, 44, 50, 56, 101, 110, 152, 200

Relative paths are taken from the current directory. Variants are made with
:func:`attrs.evolve`, which validates again.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs.validators import deep_iterable, ge, gt, in_, le, lt, min_len, optional

from pcamflow._structure import INLINE, LATE, OMIT, READING, converter, structure
from pcamflow._validation import (
    FINITE,
    INTEGER,
    MAX_SEED,
    NUMBER,
    checked,
    url_template_problem,
)
from pcamflow.aws_settings import (
    AwsEndpointSettings,
    AwsEvaluationSettings,
    AwsNetworkSettings,
    AwsSettings,
    AwsTrainingSettings,
)
from pcamflow.errors import ConfigError, HyperparameterError, TuningRangeError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.tuning_ranges import TuningRange

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "API_KEY_ENV",
    "ZENODO_URL",
    "AwsEndpointSettings",
    "AwsEvaluationSettings",
    "AwsNetworkSettings",
    "AwsSettings",
    "AwsTrainingSettings",
    "ConvertSettings",
    "DataSettings",
    "DeploySettings",
    "EvaluateSettings",
    "ManifestSettings",
    "PipelineSettings",
    "Settings",
    "TrackingSettings",
    "TrainSettings",
    "TuneSettings",
]

Split = Literal["train", "valid", "test"]
Strategy = Literal["Bayesian", "Random", "Grid", "Hyperband"]
Objective = Literal["validation:accuracy"]
TuneEarlyStopping = Literal["Off", "Auto"]

_COUNT = [INTEGER, ge(1)]
_AT_LEAST_0 = [INTEGER, ge(0)]
_checked = checked(ConfigError)


def _choices(hint: Any) -> Any:
    return in_(typing.get_args(hint))


@attrs.frozen(kw_only=True, field_transformer=_checked)
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
    seed: int = attrs.field(default=0, validator=[INTEGER, ge(0), le(MAX_SEED)])
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


ZENODO_URL = "https://zenodo.org/records/2546921/files/{name}?download=1"
"""PCam's files on Zenodo (record 2546921, its canonical source); ``{name}``: a file name."""


def _url_template(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """An http(s) URL holding ``{name}``."""
    problem = url_template_problem(value)
    if problem is not None:
        raise ConfigError(f"{attribute.name}: {problem}")


@attrs.frozen(kw_only=True, field_transformer=_checked)
class DataSettings:
    """``[data]``: where the PCam HDF5 files are, and where they come from.

    Attributes:
        source: folder with ``camelyonpatch_level_2_split_*_{x,y}.h5`` (or ``.h5.gz``).
        splits: the splits to use.
        cache_dir: where ``.h5.gz`` files are decompressed (None: beside the source).
        verify_checksums: check files named like real PCam against the published checksums.
        download: fetch the splits' files into ``source`` first (the converter stage does;
            files already there and verified are not fetched again).
        download_url: where each file is (``{name}``: its name): Zenodo, or your mirror.
        download_workers: files downloaded at once.
        download_timeout: seconds without data before a connection counts as dropped (it is
            then resumed, a few times).
    """

    source: str = "data/pcam"
    splits: tuple[Split, ...] = attrs.field(
        default=("train", "valid", "test"),
        converter=tuple,
        validator=deep_iterable(_choices(Split), min_len(1)),
    )
    cache_dir: str | None = None
    verify_checksums: bool = True
    download: bool = attrs.field(default=False, metadata={LATE: True})
    download_url: str = attrs.field(default=ZENODO_URL, validator=_url_template,
                                    metadata={LATE: True})
    download_workers: int = attrs.field(default=3, validator=[INTEGER, ge(1), le(16)],
                                        metadata={LATE: True})
    download_timeout: float = attrs.field(default=60.0, validator=[NUMBER, FINITE, gt(0)],
                                          metadata={LATE: True})


@attrs.frozen(kw_only=True, field_transformer=_checked)
class ConvertSettings:
    """``[convert]``: HDF5 -> JPEG conversion.

    Attributes:
        quality: JPEG quality.
        workers: worker processes (None: one per core).
        output: the image tree's root (None: ``<run_dir>/convert/images``).
        reconvert: when a split's images in the output were made from other data or at
            another quality, replace them (false: stop with an error naming the change).
    """

    quality: int = attrs.field(default=95, validator=[INTEGER, ge(1), le(100)])
    workers: int | None = attrs.field(default=None, validator=optional(_COUNT))
    output: str | None = None
    reconvert: bool = attrs.field(default=False, metadata={LATE: True})


@attrs.frozen(kw_only=True, field_transformer=_checked)
class ManifestSettings:
    """``[manifests]``: augmented manifests and ``.lst`` files.

    Attributes:
        shuffle: shuffle the lines (deterministically, by the pipeline's seed).
        max_per_class: keep at most this many images per class and split (quick runs).
        check_images: check that every referenced image exists.
    """

    shuffle: bool = True
    max_per_class: int | None = attrs.field(default=None, validator=optional(_COUNT))
    check_images: bool = True


@attrs.frozen(kw_only=True, field_transformer=_checked)
class TuneSettings:
    """``[tune]``: hyperparameter tuning, as a SageMaker tuning job defines it.

    Attributes:
        strategy: how trials are chosen.
        max_jobs: training jobs in all.
        max_parallel_jobs: training jobs at once.
        objective: the metric to maximise.
        early_stopping: ``Auto`` stops poor trials early.
        warm_start_from: an earlier study (local: its folder; SageMaker: a tuning job name).
        epochs: epochs per trial (None: ``train.epochs``).
        ranges: hyperparameter name -> range (``[tune.ranges.learning_rate]``).
    """

    strategy: Strategy = attrs.field(default="Bayesian", validator=_choices(Strategy))
    max_jobs: int = attrs.field(default=4, validator=_COUNT)
    max_parallel_jobs: int = attrs.field(default=1, validator=_COUNT)
    objective: Objective = attrs.field(default="validation:accuracy", validator=_choices(Objective))
    early_stopping: TuneEarlyStopping = attrs.field(
        default="Off", validator=_choices(TuneEarlyStopping)
    )
    warm_start_from: str | None = None
    epochs: int | None = attrs.field(default=None, validator=optional(_COUNT))
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

    hyperparameters: Hyperparameters = attrs.field(
        factory=Hyperparameters, metadata={INLINE: True}
    )
    extensions: LocalExtensions = attrs.field(factory=LocalExtensions)


@attrs.frozen(kw_only=True, field_transformer=_checked)
class EvaluateSettings:
    """``[evaluate]``: scoring the model on the test split.

    Attributes:
        split: the split to score.
        tta: also score with test-time augmentation over the 8 dihedral views.
        bootstrap: bootstrap resamples for the 95% intervals (0: none).
        batch_size: images per forward pass.
        top_errors: how many most-confident errors to show per kind.
    """

    split: Split = attrs.field(default="test", validator=_choices(Split))
    tta: bool = False
    bootstrap: int = attrs.field(default=1000, validator=_AT_LEAST_0)
    batch_size: int = attrs.field(default=128, validator=_COUNT)
    top_errors: int = attrs.field(default=16, validator=_AT_LEAST_0)


API_KEY_ENV = "PCAMFLOW_API_KEY"
"""The environment variable a local endpoint server reads its API key from."""


@attrs.frozen(kw_only=True, field_transformer=_checked)
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
    port: int = attrs.field(default=8080, validator=[INTEGER, ge(0), le(65535)])
    api_key_env: str | None = None
    max_batch_size: int = attrs.field(default=32, validator=_COUNT)
    max_wait_ms: float = attrs.field(default=5.0, validator=[NUMBER, FINITE, ge(0)])
    threads: int | None = attrs.field(default=None, validator=optional(_COUNT))
    # the local server's limits on hostile input (docs/serving.md, "Limits")
    max_body_bytes: int = attrs.field(default=6 * 1024 * 1024, validator=_COUNT)
    max_images: int = attrs.field(default=64, validator=_COUNT)
    max_pixels: int = attrs.field(default=1024 * 1024, validator=_COUNT)
    max_connections: int = attrs.field(default=64, validator=_COUNT)
    read_timeout_s: float = attrs.field(default=10.0, validator=[NUMBER, gt(0), lt(1e6)])
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = attrs.field(default=1, validator=_COUNT)


@attrs.frozen(kw_only=True, field_transformer=_checked)
class TrackingSettings:
    """``[tracking]``: log each run to MLflow (needs the ``mlflow`` extra).

    Attributes:
        mlflow_uri: the MLflow tracking URI: ``file:/path/mlruns``, ``sqlite:///mlflow.db``,
            ``http(s)://host``, or a SageMaker managed MLflow server's ARN (with the
            ``sagemaker-mlflow`` package). Unset: no tracking.
        experiment: the MLflow experiment the run is logged in (created when missing).
        run_name: the MLflow run's name (unset: the run folder's name).
        tags: tags put on every MLflow run of this file.
        log_model: upload the model archive as an artifact of the run (a model in S3 is
            recorded by its URI either way).
    """

    mlflow_uri: str | None = attrs.field(default=None, validator=optional(min_len(1)))
    experiment: str = attrs.field(default="pcamflow", validator=min_len(1))
    run_name: str | None = attrs.field(default=None, validator=optional(min_len(1)))
    tags: dict[str, str] = attrs.field(factory=dict)
    log_model: bool = True

    @property
    def enabled(self) -> bool:
        """Whether runs are logged to MLflow."""
        return self.mlflow_uri is not None


@attrs.frozen(kw_only=True)
class Settings:
    """All settings of one run, one attribute per TOML table.

    ``source`` is the file they were read from (set by :meth:`from_toml`, never by a key).
    """

    pipeline: PipelineSettings = attrs.field(factory=PipelineSettings)
    data: DataSettings = attrs.field(factory=DataSettings)
    convert: ConvertSettings = attrs.field(factory=ConvertSettings)
    manifests: ManifestSettings = attrs.field(factory=ManifestSettings)
    tune: TuneSettings = attrs.field(factory=TuneSettings)
    train: TrainSettings = attrs.field(factory=TrainSettings)
    evaluate: EvaluateSettings = attrs.field(factory=EvaluateSettings)
    deploy: DeploySettings = attrs.field(factory=DeploySettings)
    aws: AwsSettings = attrs.field(factory=AwsSettings)
    tracking: TrackingSettings = attrs.field(factory=TrackingSettings)
    source: str | None = attrs.field(default=None, eq=False, metadata={OMIT: True})

    def __attrs_post_init__(self) -> None:
        for name, rng in self.tune.ranges.items():
            try:
                rng.check_against(name, self.train.hyperparameters)
            except HyperparameterError as error:
                raise TuningRangeError(f"tune.ranges.{error}") from None

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return Path(self.pipeline.run_dir)

    @classmethod
    def from_toml(cls, path: str | Path) -> Settings:
        """Read settings from a TOML file.

        Raises:
            ConfigError: the file is missing or not TOML, or a setting is invalid (each line
                of the message names the file and the key path).
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
            lines = str(error).splitlines()
            raise type(error)("\n".join(f"{path}: {line}" for line in lines)) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> Settings:
        """Build settings from a dict shaped like the TOML file (tables as nested dicts).

        Raises:
            ConfigError: a setting is unknown, mistyped or invalid (one line per problem).
        """
        reading = READING.set(source)
        try:
            settings = structure(data, cls)
        finally:
            READING.reset(reading)
        return settings if source is None else attrs.evolve(settings, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a TOML-shaped dict (``None`` values left out)."""
        out = _plain(converter.unstructure(self))
        out.pop("source", None)
        train = out.pop("train")
        out["train"] = {**train["hyperparameters"], "extensions": train["extensions"]}
        return typing.cast(dict[str, Any], out)


def _plain(value: Any) -> Any:
    """Unstructured settings as TOML writes them: lists, and no ``None`` values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

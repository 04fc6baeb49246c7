"""The hyperparameter contract of SageMaker's built-in Image Classification algorithm.

:class:`Hyperparameters` models every hyperparameter the algorithm takes, with its default and
allowed values, validated when built. The SageMaker trainer sends
:meth:`Hyperparameters.to_sagemaker` to the algorithm; the local trainer implements the same
meaning in PyTorch. What only the local backend can do lives apart, in
:class:`LocalExtensions`, so that it is never silently dropped.

>>> hp = Hyperparameters(num_layers=20, epochs=3, num_training_samples=1000)
>>> hp.to_sagemaker()["num_layers"]
'20'
>>> Hyperparameters.from_sagemaker(hp.to_sagemaker()) == hp
True
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from attrs.validators import ge, gt, in_, le, lt, optional

from pcamflow._validation import BOOLEAN, INTEGER, MAX_SEED, NUMBER, STRING, checked
from pcamflow.errors import HyperparameterError

__all__ = [
    "AUGMENTATION_TYPES",
    "NUM_LAYERS",
    "OPTIMIZERS",
    "AugmentationType",
    "DataPath",
    "Device",
    "Hyperparameters",
    "KvStore",
    "LocalExtensions",
    "Optimizer",
    "PrecisionDtype",
    "kind_of",
]

NUM_LAYERS = (18, 20, 32, 34, 44, 50, 56, 101, 110, 152, 200)
"""ResNet depths the algorithm offers: ImageNet-style 18..200 and the small-image set 20..110."""
SMALL_IMAGE_LAYERS = (20, 32, 44, 56, 110)
PRETRAINED_LAYERS = (18, 34, 50, 101, 152, 200)
"""Depths that have a pretrained network (transfer learning)."""
MAX_CLASSES = 2**31 - 1
"""The most classes a classifier may have (a 32-bit label; beyond it torch cannot size a layer)."""
MAX_EPOCHS = 1_000_000
"""The most epochs a run may ask for: far beyond any real run, and small enough that every
epoch's random seed (``seed * 1000 + epoch``) fits the 64-bit seeds torch and numpy take."""

Optimizer = Literal["sgd", "adam", "rmsprop", "nag"]
AugmentationType = Literal["crop", "crop_color", "crop_color_transform"]
PrecisionDtype = Literal["float32", "float16"]
KvStore = Literal["dist_sync", "dist_async"]
Device = Literal["auto", "cpu", "cuda"]
DataPath = Literal["auto", "cache", "stream"]
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
AUGMENTATION_TYPES: tuple[str, ...] = typing.get_args(AugmentationType)
PRECISION_DTYPES: tuple[str, ...] = typing.get_args(PrecisionDtype)
KV_STORES: tuple[str, ...] = typing.get_args(KvStore)
DEVICES: tuple[str, ...] = typing.get_args(Device)
DATA_PATHS: tuple[str, ...] = typing.get_args(DataPath)


def _image_shape(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """``channels,height,width``: 1 or 3 channels, at least 8x8."""
    parts = value.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise HyperparameterError(
            f"image_shape: {value!r} is not 'channels,height,width' (e.g. '3,96,96')"
        )
    channels, height, width = (int(p) for p in parts)
    if channels not in (1, 3) or height < 8 or width < 8:
        raise HyperparameterError(
            f"image_shape: {value!r} needs 1 or 3 channels and a height and width of at least 8"
        )


def _steps(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """Comma-separated, strictly increasing positive epochs (``"10,20"``)."""
    parts = [p.strip() for p in value.split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise HyperparameterError(
            f"lr_scheduler_step: {value!r} is not a comma-separated list of positive epochs "
            "(e.g. '10,20')"
        )
    numbers = [int(p) for p in parts]
    if numbers != sorted(set(numbers)):
        raise HyperparameterError(f"lr_scheduler_step: {value!r} must be strictly increasing")


_COUNT = [INTEGER, ge(1)]
_FLAG = [INTEGER, in_((0, 1))]
_FRACTION = [NUMBER, ge(0.0), le(1.0)]
_DECAY = [NUMBER, ge(0.0), lt(1.0)]  # a moment's decay of 1 never forgets: torch refuses it


@attrs.frozen(kw_only=True, field_transformer=checked(HyperparameterError))
class Hyperparameters:
    """Every hyperparameter of the built-in Image Classification algorithm.

    Names, defaults and allowed values follow AWS's "Image Classification Hyperparameters" page;
    ``image_shape`` defaults to PCam's ``3,96,96`` and ``num_classes`` (required by the
    algorithm) to PCam's 2; every other default is the algorithm's own, ``num_layers=152``
    included. Values are typed here and turned into the algorithm's strings by
    :meth:`to_sagemaker`. Beyond the single-value checks, a value set is rejected when
    ``checkpoint_frequency`` exceeds ``epochs``, ``resize`` is smaller than the height or width
    of ``image_shape`` (the algorithm's training would fail), ``top_k`` exceeds
    ``num_classes``, or ``use_pretrained_model=1`` asks for a depth that has no pretrained
    network (only 18, 34, 50, 101, 152 and 200 have one). Two bounds are tighter than AWS's
    page, so that what passes here also trains: ``beta_1`` and ``beta_2`` stay below 1 (a
    moment decay of 1 divides by zero in Adam's bias correction, and torch refuses it), and
    ``num_classes`` is at most 2**31 - 1. NaN fails every range.
    """

    num_classes: int = attrs.field(default=2, validator=[INTEGER, ge(1), le(MAX_CLASSES)])
    num_training_samples: int | None = attrs.field(default=None, validator=optional(_COUNT))
    image_shape: str = attrs.field(default="3,96,96", validator=[STRING, _image_shape])
    num_layers: int = attrs.field(default=152, validator=[INTEGER, in_(NUM_LAYERS)])
    epochs: int = attrs.field(default=30, validator=[*_COUNT, le(MAX_EPOCHS)])
    mini_batch_size: int = attrs.field(default=32, validator=_COUNT)
    learning_rate: float = attrs.field(default=0.1, validator=[NUMBER, gt(0.0), le(1.0)])
    lr_scheduler_step: str | None = attrs.field(default=None, validator=optional([STRING, _steps]))
    lr_scheduler_factor: float = attrs.field(default=0.1, validator=_FRACTION)
    optimizer: Optimizer = attrs.field(default="sgd", validator=in_(OPTIMIZERS))
    momentum: float = attrs.field(default=0.9, validator=_FRACTION)
    weight_decay: float = attrs.field(default=0.0001, validator=_FRACTION)
    beta_1: float = attrs.field(default=0.9, validator=_DECAY)
    beta_2: float = attrs.field(default=0.999, validator=_DECAY)
    eps: float = attrs.field(default=1e-8, validator=_FRACTION)
    gamma: float = attrs.field(default=0.9, validator=_FRACTION)
    augmentation_type: AugmentationType | None = attrs.field(
        default=None, validator=optional(in_(AUGMENTATION_TYPES))
    )
    resize: int | None = attrs.field(default=None, validator=optional(_COUNT))
    top_k: int | None = attrs.field(default=None, validator=optional([INTEGER, ge(2)]))
    early_stopping: bool = attrs.field(default=False, validator=BOOLEAN)
    early_stopping_min_epochs: int = attrs.field(default=10, validator=_COUNT)
    early_stopping_patience: int = attrs.field(default=5, validator=_COUNT)
    early_stopping_tolerance: float = attrs.field(default=0.0, validator=_FRACTION)
    checkpoint_frequency: int | None = attrs.field(default=None, validator=optional(_COUNT))
    precision_dtype: PrecisionDtype = attrs.field(
        default="float32", validator=in_(PRECISION_DTYPES)
    )
    use_pretrained_model: int = attrs.field(default=0, validator=_FLAG)
    use_weighted_loss: int = attrs.field(default=0, validator=_FLAG)
    multi_label: int = attrs.field(default=0, validator=_FLAG)
    kv_store: KvStore | None = attrs.field(default=None, validator=optional(in_(KV_STORES)))

    def __attrs_post_init__(self) -> None:
        if self.checkpoint_frequency is not None and self.checkpoint_frequency > self.epochs:
            raise HyperparameterError(
                f"checkpoint_frequency: {self.checkpoint_frequency} is greater than "
                f"epochs ({self.epochs})"
            )
        if self.resize is not None and self.resize < max(self.height, self.width):
            raise HyperparameterError(
                f"resize: {self.resize} is smaller than the height or width of image_shape "
                f"({self.image_shape}); images are resized first, then cropped to image_shape"
            )
        if self.use_pretrained_model == 1 and self.num_layers not in PRETRAINED_LAYERS:
            shown = ", ".join(str(n) for n in PRETRAINED_LAYERS)
            raise HyperparameterError(
                f"use_pretrained_model: no pretrained network has num_layers={self.num_layers}; "
                f"transfer learning takes one of {shown}"
            )
        if self.top_k is not None and self.top_k > self.num_classes:
            raise HyperparameterError(
                f"top_k: {self.top_k} is greater than num_classes ({self.num_classes})"
            )

    @property
    def channels(self) -> int:
        """The number of image channels in ``image_shape``."""
        return int(self.image_shape.split(",")[0])

    @property
    def height(self) -> int:
        """The image height in ``image_shape``."""
        return int(self.image_shape.split(",")[1])

    @property
    def width(self) -> int:
        """The image width in ``image_shape``."""
        return int(self.image_shape.split(",")[2])

    @property
    def scheduler_steps(self) -> tuple[int, ...]:
        """``lr_scheduler_step`` as epochs."""
        if not self.lr_scheduler_step:
            return ()
        return tuple(int(p) for p in self.lr_scheduler_step.split(","))

    def to_sagemaker(self) -> dict[str, str]:
        """The hyperparameters as the algorithm takes them: a dict of strings, unset ones left out.

        Raises:
            HyperparameterError: ``num_training_samples`` is not set yet.
        """
        if self.num_training_samples is None:
            raise HyperparameterError(
                "num_training_samples: not set; it is filled from the train manifest's count"
            )
        out: dict[str, str] = {}
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, bool):
                out[field.name] = "True" if value else "False"
            else:
                out[field.name] = str(value)
        return out

    @classmethod
    def from_sagemaker(cls, values: Mapping[str, str]) -> Hyperparameters:
        """Read the algorithm's dict of strings back into typed hyperparameters.

        Raises:
            HyperparameterError: an unknown name or a value of the wrong type.
        """
        fields = {f.name: f for f in attrs.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, text in values.items():
            if name not in fields:
                raise HyperparameterError(f"{name}: not a hyperparameter of the algorithm")
            if str(text).strip() == "" and fields[name].default is None:
                continue  # an empty string leaves an optional hyperparameter unset
            kwargs[name] = _parse(name, str(text).strip(), fields[name].default)
        return cls(**kwargs)

    def with_values(self, **changes: Any) -> Hyperparameters:
        """A copy with some values changed (strings are parsed), validated again."""
        fields = {f.name: f for f in attrs.fields(type(self))}
        parsed = {}
        for name, value in changes.items():
            if name not in fields:
                raise HyperparameterError(f"{name}: not a hyperparameter of the algorithm")
            parsed[name] = (
                _parse(name, value, fields[name].default) if isinstance(value, str) else value
            )
        return attrs.evolve(self, **parsed)


def kind_of(name: str) -> type:
    """The Python type of hyperparameter ``name``'s values (``int``, ``float``, ``bool``, ``str``).

    Raises:
        HyperparameterError: ``name`` is not a hyperparameter of the algorithm.
    """
    try:
        return _KIND[name]
    except KeyError:
        raise HyperparameterError(f"{name}: not a hyperparameter of the algorithm") from None


def _kind(hint: Any) -> type:
    if typing.get_origin(hint) is not Literal:  # X | None -> X
        hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    return typing.cast(type, hint)


_KIND = {f.name: _kind(f.type) for f in attrs.fields(attrs.resolve_types(Hyperparameters))}


def _parse(name: str, text: str, default: Any) -> Any:
    kind = kind_of(name)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if kind is float:
            return float(text)
    except ValueError:
        raise HyperparameterError(
            f"{name}: {text!r} is not a valid {kind.__name__}"
        ) from None
    return text


@attrs.frozen(kw_only=True, field_transformer=checked(HyperparameterError))
class LocalExtensions:
    """What the local backend adds for PCam beyond the algorithm's hyperparameters.

    The SageMaker backend cannot honour those that change what is learned and rejects a run
    that sets them (see :meth:`non_default`); the others only say how the local trainer reads
    data and where it runs, so they never stop a SageMaker run.

    Attributes:
        dihedral: augment with the 8 rot90/flip views (tissue has no orientation).
        stain_jitter: standard deviation of the HED stain jitter (0 turns it off).
        seed: the random seed of training (None: the pipeline's seed).
        weights_file: local weights to start from when ``use_pretrained_model=1``.
        num_workers: DataLoader worker processes when streaming, decoding threads when caching
            (None: streaming, one per core less the one the training loop needs, at most 4,
            and none on a single core; caching, one per core).
        device: where to train (``auto``: CUDA when present).
        data_path: ``cache``: decode each split once into a uint8 array on disk and read
            batches from it; ``stream``: decode the JPEGs every epoch (data too large to
            decode once); ``auto``: cache when the decoded splits take at most half the free
            disk and fit in the available memory.
        cache_dir: where decoded caches go (None: ``cache/`` in the stage folder); a folder
            shared by the tuner, the trainer and the evaluator decodes each split once.
        nproc_per_node: training processes on this machine (more than 1: DistributedDataParallel
            under torchrun, one GPU each on a GPU machine).
    """

    dihedral: bool = attrs.field(default=False, validator=BOOLEAN)
    stain_jitter: float = attrs.field(default=0.0, validator=_FRACTION)
    seed: int | None = attrs.field(
        default=None, validator=optional([INTEGER, ge(0), le(MAX_SEED)])
    )
    weights_file: str | None = attrs.field(default=None, validator=optional(STRING))
    num_workers: int | None = attrs.field(
        default=None, validator=optional([INTEGER, ge(0), le(64)])
    )
    device: Device = attrs.field(default="auto", validator=in_(DEVICES))
    data_path: DataPath = attrs.field(default="auto", validator=in_(DATA_PATHS))
    cache_dir: str | None = attrs.field(default=None, validator=optional(STRING))
    nproc_per_node: int = attrs.field(default=1, validator=[INTEGER, ge(1), le(1024)])

    def non_default(self) -> dict[str, Any]:
        """The extensions set to other than their default (those that change training)."""
        training = ("dihedral", "stain_jitter", "weights_file")
        return {
            f.name: getattr(self, f.name)
            for f in attrs.fields(type(self))
            if f.name in training and getattr(self, f.name) != f.default
        }

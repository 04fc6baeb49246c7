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

from collections.abc import Collection, Mapping
from typing import Any

import attrs

from pcamflow.errors import HyperparameterError

__all__ = [
    "AUGMENTATION_TYPES",
    "NUM_LAYERS",
    "OPTIMIZERS",
    "Hyperparameters",
    "LocalExtensions",
    "TuningRange",
]

NUM_LAYERS = (18, 20, 32, 34, 44, 50, 56, 101, 110, 152, 200)
"""ResNet depths the algorithm offers: ImageNet-style 18..200 and the small-image set 20..110."""
SMALL_IMAGE_LAYERS = (20, 32, 44, 56, 110)
PRETRAINED_LAYERS = (18, 34, 50, 101, 152, 200)
"""Depths that have a pretrained network (transfer learning)."""
OPTIMIZERS = ("sgd", "adam", "rmsprop", "nag")
AUGMENTATION_TYPES = ("crop", "crop_color", "crop_color_transform")
PRECISION_DTYPES = ("float32", "float16")
KV_STORES = ("dist_sync", "dist_async")


def _one_of(allowed: Collection[Any]) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value not in allowed:
            shown = ", ".join(str(a) for a in allowed)
            raise HyperparameterError(f"{attribute.name}: {value!r} is not one of {shown}")

    return check


def _within(low: float | None, high: float | None, *, strict_low: bool = False) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        too_low = low is not None and (value <= low if strict_low else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            lo = "(" if strict_low else "["
            raise HyperparameterError(
                f"{attribute.name}: {value!r} is outside {lo}{low if low is not None else '-inf'}, "
                f"{high if high is not None else 'inf'}]"
            )

    return check


def _typed(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Check the value's type against the field's kind (bools are not numbers here)."""
    kind = _KIND.get(attribute.name, str)
    if value is None:
        return
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise HyperparameterError(
            f"{attribute.name}: {value!r} is not a{'n' if kind is int else ''} {kind.__name__}"
        )


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 1:
        raise HyperparameterError(f"{attribute.name}: {value!r} must be a positive integer")


def _flag(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in (0, 1):
        raise HyperparameterError(f"{attribute.name}: {value!r} must be 0 or 1")


def _image_shape(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
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


def _steps(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    parts = [p.strip() for p in value.split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise HyperparameterError(
            f"lr_scheduler_step: {value!r} is not a comma-separated list of positive epochs "
            "(e.g. '10,20')"
        )
    numbers = [int(p) for p in parts]
    if numbers != sorted(set(numbers)):
        raise HyperparameterError(f"lr_scheduler_step: {value!r} must be strictly increasing")


_FLOAT01 = _within(0.0, 1.0)


def _add_type_checks(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    """Check every field's type first, so a range check never meets a wrong type."""
    out = []
    for field in fields:
        checks = [_typed] + ([field.validator] if field.validator else [])
        out.append(field.evolve(validator=attrs.validators.and_(*checks)))
    return out


@attrs.frozen(kw_only=True, field_transformer=_add_type_checks)
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
    network (only 18, 34, 50, 101, 152 and 200 have one).
    """

    num_classes: int = attrs.field(default=2, validator=_positive)
    num_training_samples: int | None = attrs.field(default=None, validator=_positive)
    image_shape: str = attrs.field(default="3,96,96", validator=_image_shape)
    num_layers: int = attrs.field(default=152, validator=_one_of(NUM_LAYERS))
    epochs: int = attrs.field(default=30, validator=_positive)
    mini_batch_size: int = attrs.field(default=32, validator=_positive)
    learning_rate: float = attrs.field(default=0.1, validator=_within(0.0, 1.0, strict_low=True))
    lr_scheduler_step: str | None = attrs.field(default=None, validator=_steps)
    lr_scheduler_factor: float = attrs.field(default=0.1, validator=_FLOAT01)
    optimizer: str = attrs.field(default="sgd", validator=_one_of(OPTIMIZERS))
    momentum: float = attrs.field(default=0.9, validator=_FLOAT01)
    weight_decay: float = attrs.field(default=0.0001, validator=_FLOAT01)
    beta_1: float = attrs.field(default=0.9, validator=_FLOAT01)
    beta_2: float = attrs.field(default=0.999, validator=_FLOAT01)
    eps: float = attrs.field(default=1e-8, validator=_FLOAT01)
    gamma: float = attrs.field(default=0.9, validator=_FLOAT01)
    augmentation_type: str | None = attrs.field(default=None, validator=_one_of(AUGMENTATION_TYPES))
    resize: int | None = attrs.field(default=None, validator=_positive)
    top_k: int | None = attrs.field(default=None, validator=_within(2, None))
    early_stopping: bool = False
    early_stopping_min_epochs: int = attrs.field(default=10, validator=_positive)
    early_stopping_patience: int = attrs.field(default=5, validator=_positive)
    early_stopping_tolerance: float = attrs.field(default=0.0, validator=_FLOAT01)
    checkpoint_frequency: int | None = attrs.field(default=None, validator=_positive)
    precision_dtype: str = attrs.field(default="float32", validator=_one_of(PRECISION_DTYPES))
    use_pretrained_model: int = attrs.field(default=0, validator=_flag)
    use_weighted_loss: int = attrs.field(default=0, validator=_flag)
    multi_label: int = attrs.field(default=0, validator=_flag)
    kv_store: str | None = attrs.field(default=None, validator=_one_of(KV_STORES))

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


_KIND = {name: kind for kind, names in {
    int: ("num_classes", "num_training_samples", "num_layers", "epochs", "mini_batch_size",
          "resize", "top_k", "early_stopping_min_epochs", "early_stopping_patience",
          "checkpoint_frequency", "use_pretrained_model", "use_weighted_loss", "multi_label"),
    float: ("learning_rate", "lr_scheduler_factor", "momentum", "weight_decay", "beta_1",
            "beta_2", "eps", "gamma", "early_stopping_tolerance"),
    bool: ("early_stopping",),
}.items() for name in names}


def _parse(name: str, text: str, default: Any) -> Any:
    kind = _KIND.get(name, str)
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


@attrs.frozen(kw_only=True)
class LocalExtensions:
    """What the local backend adds for PCam beyond the algorithm's hyperparameters.

    The SageMaker backend cannot honour these and rejects a run that sets them (see
    :meth:`non_default`).

    Attributes:
        dihedral: augment with the 8 rot90/flip views (tissue has no orientation).
        stain_jitter: standard deviation of the HED stain jitter (0 turns it off).
        seed: the random seed of training (None: the pipeline's seed).
        weights_file: local weights to start from when ``use_pretrained_model=1``.
        num_workers: DataLoader worker processes (None: one per core, at most 4).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    dihedral: bool = False
    stain_jitter: float = attrs.field(default=0.0, validator=_within(0.0, 1.0))
    seed: int | None = None
    weights_file: str | None = None
    num_workers: int | None = attrs.field(default=None, validator=_within(0, 64))
    device: str = attrs.field(default="auto", validator=_one_of(("auto", "cpu", "cuda")))

    def non_default(self) -> dict[str, Any]:
        """The extensions set to other than their default (those that change training)."""
        training = ("dihedral", "stain_jitter", "weights_file")
        return {
            f.name: getattr(self, f.name)
            for f in attrs.fields(type(self))
            if f.name in training and getattr(self, f.name) != f.default
        }


# --- Tuning ranges -------------------------------------------------------------------------

RANGE_TYPES = ("continuous", "integer", "categorical")
SCALINGS = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")


@attrs.frozen(kw_only=True)
class TuningRange:
    """One hyperparameter's search range, in SageMaker's three kinds.

    Attributes:
        type: ``continuous``, ``integer`` or ``categorical``.
        min_value: the low end (continuous and integer).
        max_value: the high end (continuous and integer).
        values: the choices (categorical), as given in the settings.
        scaling: ``Auto``, ``Linear``, ``Logarithmic`` or ``ReverseLogarithmic``.
    """

    type: str = attrs.field(validator=_one_of(RANGE_TYPES))
    min_value: float | None = None
    max_value: float | None = None
    values: tuple[str | int | float, ...] = attrs.field(default=(), converter=tuple)
    scaling: str = attrs.field(default="Auto", validator=_one_of(SCALINGS))

    def __attrs_post_init__(self) -> None:
        if self.type == "categorical":
            if not self.values:
                raise HyperparameterError("values: a categorical range needs at least one value")
            if self.min_value is not None or self.max_value is not None:
                raise HyperparameterError("min_value/max_value: not allowed in a categorical range")
            if len({str(v) for v in self.values}) != len(self.values):
                raise HyperparameterError(f"values: {list(self.values)!r} repeats a value")
            if self.scaling != "Auto":
                raise HyperparameterError(
                    f"scaling: {self.scaling} is for continuous and integer ranges; "
                    "a categorical range has no scaling"
                )
            return
        if self.values:
            raise HyperparameterError(f"values: not allowed in a {self.type} range")
        if self.min_value is None or self.max_value is None:
            raise HyperparameterError(f"min_value/max_value: a {self.type} range needs both")
        if self.min_value > self.max_value:
            raise HyperparameterError(
                f"min_value: {self.min_value} is greater than max_value {self.max_value}"
            )
        if self.type == "integer" and not (
            float(self.min_value).is_integer() and float(self.max_value).is_integer()
        ):
            raise HyperparameterError("min_value/max_value: an integer range needs whole numbers")
        if self.scaling in ("Logarithmic", "ReverseLogarithmic") and self.min_value <= 0:
            raise HyperparameterError(
                f"scaling: {self.scaling} needs min_value > 0 (got {self.min_value})"
            )
        if self.scaling == "ReverseLogarithmic" and self.type != "continuous":
            raise HyperparameterError(
                "scaling: ReverseLogarithmic is for continuous ranges only (as in SageMaker)"
            )
        if self.scaling == "ReverseLogarithmic" and self.max_value >= 1:
            raise HyperparameterError(
                f"scaling: ReverseLogarithmic needs max_value < 1 (got {self.max_value})"
            )

    def check_against(self, name: str, base: Hyperparameters) -> None:
        """Check that every value this range can take is valid for hyperparameter ``name``.

        Raises:
            HyperparameterError: ``name`` is no hyperparameter, or an end or value is invalid.
        """
        if name not in {f.name for f in attrs.fields(Hyperparameters)}:
            raise HyperparameterError(f"{name}: not a hyperparameter of the algorithm")
        if name in ("num_classes", "num_training_samples", "image_shape"):
            raise HyperparameterError(f"{name}: fixed by the data, it cannot be tuned")
        if self.type == "categorical":
            probes = list(self.values)
        else:
            if self.type == "continuous" and _KIND.get(name) is not float:
                raise HyperparameterError(
                    f"{name}: a continuous range needs a float hyperparameter; "
                    "use an integer or categorical range"
                )
            probes = [self.min_value, self.max_value]
            if self.type == "integer":
                low, high = int(self.min_value or 0), int(self.max_value or 0)
                # every whole number in a short range is tried, so that a range over a
                # hyperparameter with a fixed set of values (num_layers) cannot reach a gap
                probes = list(range(low, high + 1)) if high - low <= 512 else [low, high]
        for value in probes:
            try:
                base.with_values(**{name: str(value) if self.type == "categorical" else value})
            except HyperparameterError as error:
                hint = (
                    "; use a categorical range of the allowed values"
                    if self.type == "integer" and value not in (probes[0], probes[-1])
                    else ""
                )
                raise HyperparameterError(
                    f"{name}: range value {value!r} is invalid ({error}){hint}"
                ) from None

    def to_sagemaker(self, name: str) -> dict[str, Any]:
        """The range as a ``ParameterRanges`` entry of a tuning job."""
        if self.type == "categorical":
            return {"Name": name, "Values": [str(v) for v in self.values]}
        if self.type == "integer":
            low, high = str(int(self.min_value or 0)), str(int(self.max_value or 0))
        else:
            low, high = str(self.min_value), str(self.max_value)
        return {"Name": name, "MinValue": low, "MaxValue": high, "ScalingType": self.scaling}

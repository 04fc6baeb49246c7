"""Hyperparameter tuning ranges, in SageMaker's three kinds.

A :class:`TuningRange` is one ``[tune.ranges.NAME]`` table: continuous, integer or categorical,
with SageMaker's scalings. It checks itself when built (raising
:class:`~pcamflow.errors.TuningRangeError`) and, with :meth:`TuningRange.check_against`, that
every value it can take is a valid value of its hyperparameter.

>>> rng = TuningRange(type="integer", min_value=16, max_value=64)
>>> rng.to_sagemaker("mini_batch_size")["MaxValue"]
'64'
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import attrs
from attrs.validators import deep_iterable, in_, optional

from pcamflow._validation import FINITE, NUMBER, SCALAR, checked
from pcamflow.errors import HyperparameterError, TuningRangeError
from pcamflow.hyperparameters import Hyperparameters, kind_of

__all__ = ["RANGE_TYPES", "SCALINGS", "RangeType", "Scaling", "TuningRange"]

RangeType = Literal["continuous", "integer", "categorical"]
Scaling = Literal["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"]
RANGE_TYPES: tuple[str, ...] = typing.get_args(RangeType)
SCALINGS: tuple[str, ...] = typing.get_args(Scaling)


@attrs.frozen(kw_only=True, field_transformer=checked(TuningRangeError))
class TuningRange:
    """One hyperparameter's search range, in SageMaker's three kinds.

    Attributes:
        type: the kind of range (required).
        min_value: the low end (continuous and integer).
        max_value: the high end (continuous and integer).
        values: the choices (categorical), as given in the settings.
        scaling: how values are spread over a continuous or integer range (``Auto``: as
            SageMaker chooses).
    """

    type: RangeType = attrs.field(validator=in_(RANGE_TYPES))
    min_value: float | None = attrs.field(default=None, validator=optional([NUMBER, FINITE]))
    max_value: float | None = attrs.field(default=None, validator=optional([NUMBER, FINITE]))
    values: tuple[str | int | float, ...] = attrs.field(
        default=(), converter=tuple, validator=deep_iterable(SCALAR)
    )
    scaling: Scaling = attrs.field(default="Auto", validator=in_(SCALINGS))

    def __attrs_post_init__(self) -> None:
        if self.type == "categorical":
            if not self.values:
                raise TuningRangeError("values: a categorical range needs at least one value")
            if self.min_value is not None or self.max_value is not None:
                raise TuningRangeError("min_value/max_value: not allowed in a categorical range")
            if len({str(v) for v in self.values}) != len(self.values):
                raise TuningRangeError(f"values: {list(self.values)!r} repeats a value")
            if self.scaling != "Auto":
                raise TuningRangeError(
                    f"scaling: {self.scaling} is for continuous and integer ranges; "
                    "a categorical range has no scaling"
                )
            return
        if self.values:
            raise TuningRangeError(f"values: not allowed in a {self.type} range")
        if self.min_value is None or self.max_value is None:
            raise TuningRangeError(f"min_value/max_value: a {self.type} range needs both")
        if self.min_value > self.max_value:
            raise TuningRangeError(
                f"min_value: {self.min_value} is greater than max_value {self.max_value}"
            )
        if self.type == "integer" and not (
            float(self.min_value).is_integer() and float(self.max_value).is_integer()
        ):
            raise TuningRangeError("min_value/max_value: an integer range needs whole numbers")
        if self.scaling in ("Logarithmic", "ReverseLogarithmic") and self.min_value <= 0:
            raise TuningRangeError(
                f"scaling: {self.scaling} needs min_value > 0 (got {self.min_value})"
            )
        if self.scaling == "ReverseLogarithmic" and self.type != "continuous":
            raise TuningRangeError(
                "scaling: ReverseLogarithmic is for continuous ranges only (as in SageMaker)"
            )
        if self.scaling == "ReverseLogarithmic" and self.max_value >= 1:
            raise TuningRangeError(
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
            if self.type == "continuous" and kind_of(name) is not float:
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

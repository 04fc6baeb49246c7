"""Tuning ranges -> Optuna distributions, samplers and pruners (SageMaker's strategies).

=============  ===========================================================================
SageMaker      Optuna
=============  ===========================================================================
Bayesian       ``TPESampler`` (``constant_liar`` when trials run in parallel)
Random         ``RandomSampler``
Grid           ``GridSampler`` over every value of the integer and categorical ranges
Hyperband      ``TPESampler`` + ``HyperbandPruner`` over epochs (resource = epoch)
early stop     ``MedianPruner``: a trial stops when its objective is below the median of
Auto           earlier trials at the same epoch, as SageMaker's automatic early stopping
=============  ===========================================================================

Scaling: ``Linear`` samples uniformly, ``Logarithmic`` uniformly in log space,
``ReverseLogarithmic`` uniformly in the log of ``1 - x`` (fine steps near 1, for momentum-like
values), and ``Auto`` picks ``Logarithmic`` when the range is positive and spans at least two
orders of magnitude, else ``Linear``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import optuna

from pcamflow.errors import ConfigError
from pcamflow.hyperparameters import Hyperparameters
from pcamflow.tuning_ranges import TuningRange

__all__ = [
    "MAX_GRID",
    "PrunerSpec",
    "algorithm_strings",
    "apply_params",
    "distributions",
    "effective_scaling",
    "grid_size",
    "grid_space",
    "make_pruner",
    "make_sampler",
]

MAX_GRID = 10_000
"""The largest grid the Grid strategy accepts."""


def effective_scaling(rng: TuningRange) -> str:
    """The scaling a range is sampled with (``Auto`` resolved)."""
    if rng.scaling != "Auto" or rng.type == "categorical":
        return rng.scaling
    low, high = float(rng.min_value or 0), float(rng.max_value or 0)
    return "Logarithmic" if low > 0 and high / low >= 100 else "Linear"


def distributions(ranges: Mapping[str, TuningRange]) -> dict[str, Any]:
    """One Optuna distribution per range; reverse-logarithmic ranges sample ``1 - x``."""
    out: dict[str, Any] = {}
    for name, rng in sorted(ranges.items()):
        scaling = effective_scaling(rng)
        if rng.type == "categorical":
            out[name] = optuna.distributions.CategoricalDistribution([str(v) for v in rng.values])
        elif rng.type == "integer":
            low, high = int(rng.min_value or 0), int(rng.max_value or 0)
            out[name] = optuna.distributions.IntDistribution(
                low, high, log=scaling == "Logarithmic"
            )
        elif scaling == "ReverseLogarithmic":
            low, high = float(rng.min_value or 0), float(rng.max_value or 0)
            out[name] = optuna.distributions.FloatDistribution(1 - high, 1 - low, log=True)
        else:
            low, high = float(rng.min_value or 0), float(rng.max_value or 0)
            out[name] = optuna.distributions.FloatDistribution(
                low, high, log=scaling == "Logarithmic"
            )
    return out


def grid_space(ranges: Mapping[str, TuningRange]) -> dict[str, list[Any]]:
    """Every value of each integer and categorical range, for the Grid strategy.

    Raises:
        ConfigError: a continuous range, or a grid of more than :data:`MAX_GRID` points.
    """
    space: dict[str, list[Any]] = {}
    for name, rng in sorted(ranges.items()):
        if rng.type == "continuous":
            raise ConfigError(
                f"tune.ranges.{name}: the Grid strategy takes only integer and categorical ranges"
            )
        if rng.type == "categorical":
            space[name] = [str(v) for v in rng.values]
        else:
            space[name] = list(range(int(rng.min_value or 0), int(rng.max_value or 0) + 1))
    size = 1
    for values in space.values():
        size *= len(values)
    if size > MAX_GRID:
        raise ConfigError(
            f"tune.ranges: the grid has {size} points, more than {MAX_GRID}; narrow the ranges "
            "or use the Bayesian or Random strategy"
        )
    return space


def grid_size(ranges: Mapping[str, TuningRange]) -> int:
    """The number of points of the Grid strategy's grid."""
    size = 1
    for values in grid_space(ranges).values():
        size *= len(values)
    return size


def _value(rng: TuningRange, internal: Any) -> Any:
    if rng.type == "categorical":
        return str(internal)
    if rng.type == "integer":
        return int(internal)
    if effective_scaling(rng) == "ReverseLogarithmic":
        return 1.0 - float(internal)
    return float(internal)


def apply_params(
    base: Hyperparameters, ranges: Mapping[str, TuningRange], params: Mapping[str, Any]
) -> Hyperparameters:
    """``base`` with the sampled ``params`` (Optuna's internal values) applied.

    Raises:
        HyperparameterError: the combination is invalid (the trial fails, as a SageMaker
            training job given it would).
    """
    changes = {name: _value(ranges[name], params[name]) for name in ranges if name in params}
    return base.with_values(**changes)


def algorithm_strings(hyperparameters: Hyperparameters, names: Any) -> dict[str, str]:
    """The named hyperparameters as the algorithm's strings (as ``to_sagemaker`` writes them)."""
    out: dict[str, str] = {}
    for name in sorted(names):
        value = getattr(hyperparameters, name)
        if value is None:
            continue
        out[name] = ("True" if value else "False") if isinstance(value, bool) else str(value)
    return out


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus its habit of stopping the study from ``after_trial``.

    The tuner asks and tells trials itself and stops after ``min(max_jobs, grid size)``
    counted trials; ``Study.stop`` is only allowed inside ``Study.optimize``.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_sampler(
    strategy: str,
    ranges: Mapping[str, TuningRange],
    *,
    seed: int,
    max_jobs: int,
    parallel: bool,
) -> Any:
    """The Optuna sampler of a SageMaker strategy."""
    if strategy == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "Grid":
        return _GridSampler(grid_space(ranges), seed=seed)
    # Bayesian and Hyperband: TPE; a few random trials first, fewer on a small budget
    startup = max(2, min(10, max_jobs // 3))
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, constant_liar=parallel
    )


@attrs.frozen
class PrunerSpec:
    """How trials are stopped early: picklable, so trial processes build the same pruner.

    Attributes:
        kind: ``none``, ``median`` (early stopping Auto) or ``hyperband``.
        max_resource: epochs of a full trial (Hyperband's largest budget).
    """

    kind: str = "none"
    max_resource: int = 1

    @classmethod
    def from_settings(cls, strategy: str, early_stopping: str, epochs: int) -> PrunerSpec:
        """The pruner the tuning settings ask for."""
        if strategy == "Hyperband":
            return cls("hyperband", max(1, epochs))
        if early_stopping == "Auto":
            return cls("median", max(1, epochs))
        return cls("none", max(1, epochs))


def make_pruner(spec: PrunerSpec) -> Any:
    """The Optuna pruner of ``spec``."""
    if spec.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=spec.max_resource, reduction_factor=3
        )
    if spec.kind == "median":
        # steps count finished epochs: the first two trials always run whole, and no trial
        # is judged on its first epoch alone
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    return optuna.pruners.NopPruner()


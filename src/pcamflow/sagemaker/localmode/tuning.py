"""Running a hyperparameter tuning job: its strategy, limits and early stopping.

The job runs its training jobs one at a time (within any ``MaxParallelTrainingJobs``), each a
full training job of its own (listed by ``ListTrainingJobsForHyperParameterTuningJob``, named
``<tuning job>-<nnn>-<8 hex>`` as SageMaker names them), its hyperparameters the static ones
plus the values the strategy chose:

- ``Grid``: every combination of the categorical ranges, in order;
- ``Random``: values drawn independently in the ranges, on their scale;
- ``Bayesian``: Optuna's TPE sampler, told each finished job's objective (a stand-in for
  SageMaker's own Bayesian optimisation, whose model is not published);
- ``Hyperband``: random values; each job runs ``MaxResource`` epochs and is stopped at the
  rungs ``MinResource * 3**k`` unless its objective is among the best third of the jobs that
  reached that rung (asynchronous successive halving, the published core of Hyperband).

The objective is the last ``Epoch[N] Validation-accuracy=...`` value in each job's log; with
``TrainingJobEarlyStoppingType = Auto`` a job stops when, after an epoch, its objective is
below the median of the earlier jobs' running averages up to that epoch (as the
"Stop Training Jobs Early" page describes). The best training job is the completed job with
the highest objective.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import statistics
from typing import Any

from pcamflow.sagemaker.localmode.records import Job
from pcamflow.sagemaker.localmode.training import EarlyStop, run_training_job

__all__ = ["hyperband_stop", "median_stop", "run_tuning_job", "trial_name"]

_ETA = 3


def trial_name(tuning_name: str, number: int, values: dict[str, str]) -> str:
    """SageMaker's name of a tuning job's training job: ``<tuning>-<nnn>-<8 hex>``."""
    tag = hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:8]
    return f"{tuning_name}-{number:03d}-{tag}"


class _Space:
    """The tuning job's ranges, as Optuna distributions and as the API's strings."""

    def __init__(self, ranges: dict[str, list[dict[str, Any]]]) -> None:
        import optuna

        self.kinds: dict[str, str] = {}
        self.distributions: dict[str, Any] = {}
        self.categories: dict[str, list[str]] = {}
        for entry in ranges.get("ContinuousParameterRanges", []):
            low, high = float(entry["MinValue"]), float(entry["MaxValue"])
            scaling = entry.get("ScalingType", "Auto")
            name = entry["Name"]
            self.kinds[name] = f"continuous:{scaling}"
            if scaling == "ReverseLogarithmic":  # sampled as 1 - x on a log scale
                self.distributions[name] = optuna.distributions.FloatDistribution(
                    1 - high, 1 - low, log=True)
            else:
                self.distributions[name] = optuna.distributions.FloatDistribution(
                    low, high, log=scaling == "Logarithmic")
        for entry in ranges.get("IntegerParameterRanges", []):
            name = entry["Name"]
            self.kinds[name] = "integer"
            self.distributions[name] = optuna.distributions.IntDistribution(
                int(entry["MinValue"]), int(entry["MaxValue"]),
                log=entry.get("ScalingType") == "Logarithmic")
        for entry in ranges.get("CategoricalParameterRanges", []):
            name = entry["Name"]
            self.kinds[name] = "categorical"
            self.categories[name] = [str(v) for v in entry["Values"]]
            self.distributions[name] = optuna.distributions.CategoricalDistribution(
                self.categories[name])

    def strings(self, params: dict[str, Any]) -> dict[str, str]:
        out = {}
        for name, value in params.items():
            kind = self.kinds[name]
            if kind == "continuous:ReverseLogarithmic":
                value = 1 - value
            out[name] = str(int(value)) if kind == "integer" else str(value)
        return out

    def grid(self) -> list[dict[str, str]]:
        names = sorted(self.categories)
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(self.categories[n] for n in names))]


def median_stop(curves: list[list[float]], epoch: int, value: float) -> bool:
    """``Auto`` early stopping: whether a job whose objective after ``epoch`` is ``value``
    stops, given the objective curves of the jobs before it.

    "Compute the running average of the objective metric for all previous training jobs up
    to the same epoch, and then compute the median of all of the running averages. If the
    value ... for the current training job is worse (lower when maximizing) than the median
    value ..., SageMaker stops the current training job." (Stop Training Jobs Early)
    """
    averages = [statistics.fmean(c[: epoch + 1]) for c in curves if len(c) > epoch]
    return bool(averages) and value < statistics.median(averages)


def hyperband_stop(rungs: dict[int, list[float]], epochs_done: int, value: float,
                   min_resource: int) -> bool:
    """Hyperband's stop at a rung (``min_resource * 3**k`` epochs): whether a job whose
    objective there is ``value`` stops, its value added to those of the rung."""
    if epochs_done < min_resource or not math.log(epochs_done / min_resource, _ETA).is_integer():
        return False
    reached = rungs.setdefault(epochs_done, [])
    reached.append(value)
    if len(reached) < _ETA:
        return False
    keep = max(1, len(reached) // _ETA)
    return value < sorted(reached, reverse=True)[keep - 1]


def _objective(trial: Job) -> float | None:
    for metric in trial.extra.get("final_metrics", []):
        if metric["MetricName"] == "validation:accuracy":
            return float(metric["Value"])
    return None


def run_tuning_job(emulator: Any, job: Job) -> None:
    """Run ``job`` to its end: its trials, then its best training job."""
    import optuna

    config = job.request["HyperParameterTuningJobConfig"]
    definition = job.request["TrainingJobDefinition"]
    strategy = config["Strategy"]
    space = _Space(config.get("ParameterRanges") or {})
    limits = config.get("ResourceLimits", {})
    grid = space.grid() if strategy == "Grid" else []
    total = len(grid) if strategy == "Grid" else int(limits.get("MaxNumberOfTrainingJobs", 1))
    seed = int(config.get("RandomSeed", int(hashlib.sha256(job.name.encode()).hexdigest(), 16)
                          % 2**31))
    sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, total // 2)))
               if strategy == "Bayesian" else optuna.samplers.RandomSampler(seed=seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    early = config.get("TrainingJobEarlyStoppingType", "Off") == "Auto"
    hyperband = (config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {}
    curves: list[list[float]] = []  # objective per epoch of each finished trial
    rungs: dict[int, list[float]] = {}
    job.move("InProgress")
    for number in range(1, total + 1):
        if job.stop_requested:
            break
        asked = None
        if grid:
            values = grid[number - 1]
        else:
            asked = study.ask(space.distributions)
            values = space.strings(asked.params)
        trial = emulator.add_training_job(
            trial_name(job.name, number, values),
            {**definition, "HyperParameters": {**definition.get("StaticHyperParameters", {}),
                                              **values}},
            tuning=job, tuned=values)
        job.extra.setdefault("trials", []).append(trial.name)
        seen: list[float] = []

        def hook(trial_job: Job, epoch: int, metrics: dict[str, float],
                 seen: list[float] = seen) -> None:
            value = float(metrics["validation:accuracy"])
            seen.append(value)
            if job.stop_requested:
                raise EarlyStop
            if early and median_stop(curves, epoch, value):
                raise EarlyStop
            if hyperband and hyperband_stop(rungs, epoch + 1, value,
                                            int(hyperband.get("MinResource", 1))):
                raise EarlyStop

        run_training_job(emulator, trial, on_epoch=hook)
        value = _objective(trial)
        trial.extra["objective"] = value
        if seen:
            curves.append(seen)
        if asked is not None:
            if value is None:
                study.tell(asked, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(asked, value)
    trials = [emulator.store.get("training", n) for n in job.extra.get("trials", [])]
    finished = [t for t in trials if t is not None and t.status == "Completed"
                and t.extra.get("objective") is not None]
    if finished:
        job.extra["best"] = max(finished, key=lambda t: (t.extra["objective"], -t.created
                                                         .timestamp()))
    if job.stop_requested:
        job.move("Stopped")
    elif not finished:
        job.fail("All training jobs failed or were stopped: no training job reported the "
                 "objective metric validation:accuracy")
    else:
        job.move("Completed")

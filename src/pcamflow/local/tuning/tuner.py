"""The local Tuner stage: SageMaker's tuning strategies with Optuna, each trial a local training.

Settings (``[tune]``) are those of a SageMaker tuning job: strategy, ``max_jobs``,
``max_parallel_jobs``, early stopping, warm start and the ranges; the objective is
``validation:accuracy``, maximised. The result is a :class:`~pcamflow.artifacts.TuningResult`
whose ``best_hyperparameters`` (the tuned ones, as the algorithm's strings) the Trainer stage
then trains with. The study is kept in ``study.db`` in the stage folder, so a killed run
resumes without repeating finished trials. Optuna and PyTorch are imported only when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcamflow.artifacts import Manifests, TuningResult
from pcamflow.errors import ConfigError, HyperparameterError
from pcamflow.stages import Context, Tuner

__all__ = ["LocalTuner"]


class LocalTuner(Tuner):
    """Tune the algorithm's hyperparameters on this machine with Optuna.

    Args:
        train_fn: the function that trains one trial, with the signature of
            :func:`pcamflow.local.training.trainer.train_model` (None: that function). With
            ``max_parallel_jobs > 1`` it must be importable by name (trials run in worker
            processes).
        progress: show a progress bar of the trials.
    """

    reads_from = frozenset({"local"})

    def __init__(self, train_fn: Callable[..., Any] | None = None, *, progress: bool = True):
        self.train_fn = train_fn
        self.progress = progress

    def validate(self, context: Context) -> None:
        """Check the ranges, the per-trial epochs and the warm-start study before any trial.

        Raises:
            ConfigError: no ranges, per-trial settings that make every trial invalid, a grid
                too large, or a warm-start study that is not there.
        """
        tune = context.settings.tune
        if not tune.ranges:
            raise ConfigError("tune.ranges: no hyperparameter ranges to tune; add at least one")
        base = context.settings.train.hyperparameters
        if tune.epochs is not None:
            try:
                base.with_values(epochs=tune.epochs)
            except HyperparameterError as error:
                raise ConfigError(f"tune.epochs: {tune.epochs} does not fit [train] ({error})"
                                  ) from None
        if tune.strategy == "Grid":
            from pcamflow.local.tuning.search import grid_size

            grid_size(tune.ranges)
        if tune.warm_start_from:
            parent = Path(tune.warm_start_from)
            db = parent / "study.db" if parent.is_dir() else parent
            if not db.is_file():
                raise ConfigError(
                    f"tune.warm_start_from: {parent} holds no study.db of an earlier study"
                )
            if db.resolve() == (context.stage_dir / "study.db").resolve():
                raise ConfigError(
                    f"tune.warm_start_from: {parent} is this stage's own study; name an "
                    "earlier one"
                )
        manifests = context.optional_input(Manifests)
        if manifests is not None:
            for split in ("train", "valid"):
                if split not in manifests.manifests:
                    raise ConfigError(
                        f"tuning needs a {split} manifest; the manifests have "
                        f"{', '.join(sorted(manifests.manifests)) or 'none'}"
                    )

    def run(self, context: Context) -> TuningResult:
        """Run or resume the study and return the best hyperparameters found."""
        from pcamflow.local.tuning.tune import tune

        manifests = context.input(Manifests)
        return tune(context.settings, manifests, Path(context.stage_dir),
                    train_fn=self.train_fn, progress=self.progress)

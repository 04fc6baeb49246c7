"""The local Trainer: the algorithm's ResNet trained in PyTorch from the same hyperparameters.

:func:`train_model` reads the train and validation manifests, decodes their JPEGs once into a
uint8 cache (or streams them, see ``train.extensions.data_path``), trains with the algorithm's
optimizer, schedule and augmentation, prints the algorithm's metric lines
(``Epoch[0] Validation-accuracy=0.912345``, see :mod:`pcamflow.metric_lines`), checkpoints each
epoch (and resumes from the last checkpoint after a kill), and writes ``model.tar.gz``. Under
``torchrun`` it trains in every process with DistributedDataParallel
(:mod:`pcamflow.local.training.distributed`). :class:`LocalTrainer` is the pipeline stage
around it; with ``train.extensions.nproc_per_node`` above 1 it runs ``torchrun`` itself. It
keeps the lines it prints in ``training.log`` (as a SageMaker job's log keeps them) and writes
``history.json``, the per-epoch metrics parsed from them, which the run report and experiment
tracking read for either backend.

This module imports torch only inside functions, so listing stages stays fast.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pcamflow._io import atomic_write
from pcamflow._structure import converter
from pcamflow.artifacts import Manifests, ModelArtifact, TuningResult
from pcamflow.errors import ConfigError, DataError, HyperparameterError, TrainingError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.metric_lines import HISTORY_FILE, parse_metric_lines
from pcamflow.stages import Context, Trainer

__all__ = [
    "LOG_FILE",
    "LocalTrainer",
    "TrainOutcome",
    "check_local",
    "read_spec",
    "train_distributed",
    "train_model",
    "tuned",
]

LOG_FILE = "training.log"
"""The lines the local Trainer stage printed, kept in its stage folder across resumed runs."""
SPEC_FILE = "distributed.json"


@attrs.frozen
class TrainOutcome:
    """The result of :func:`train_model`.

    Attributes:
        archive: the ``model.tar.gz`` written.
        metrics: the kept model's metrics (``train:accuracy``, ``validation:accuracy``, ...).
        history: one dict of metrics per epoch run.
    """

    archive: Path
    metrics: dict[str, float]
    history: list[dict[str, Any]]


def check_local(hp: Hyperparameters, ext: LocalExtensions) -> None:
    """Reject what the local backend cannot honour, before any work.

    Raises:
        HyperparameterError: ``multi_label=1`` (manifests hold one class per image) or
            ``use_pretrained_model=1`` without ``extensions.weights_file``.
        ConfigError: the weights file is missing, ``device="cuda"`` without CUDA, or more
            processes per node than GPUs when training on GPUs.
    """
    if hp.multi_label:
        raise HyperparameterError(
            "multi_label: 1 is not supported by the local trainer (one class per image)"
        )
    if hp.use_pretrained_model:
        if not ext.weights_file:
            raise HyperparameterError(
                "use_pretrained_model: 1 needs pretrained weights, which are not available "
                "offline; set train.extensions.weights_file to a local .safetensors file"
            )
        if not Path(ext.weights_file).is_file():
            raise ConfigError(f"train.extensions.weights_file: {ext.weights_file} not found")
    if ext.device == "cuda" or (ext.device == "auto" and ext.nproc_per_node > 1):
        import torch

        if ext.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.extensions.device: 'cuda' but no CUDA device is available")
        gpus = torch.cuda.device_count()
        if gpus and ext.nproc_per_node > gpus:
            raise ConfigError(
                f"train.extensions.nproc_per_node: {ext.nproc_per_node} processes, but this "
                f"machine has {gpus} GPU(s); one process trains on each GPU"
            )


def tuned(hp: Hyperparameters, tuning: TuningResult | None) -> Hyperparameters:
    """``hp`` with a tuning result's best values applied (``hp`` itself without one).

    Raises:
        HyperparameterError: the tuned values do not fit the other hyperparameters.
    """
    if tuning is None:
        return hp
    try:
        return hp.with_values(**tuning.best_hyperparameters)
    except HyperparameterError as error:
        raise HyperparameterError(f"tuned hyperparameters: {error}") from None


def train_model(
    manifests: Manifests,
    hyperparameters: Hyperparameters,
    extensions: LocalExtensions,
    out_dir: Path,
    *,
    seed: int = 0,
    epoch_callback: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train the algorithm's ResNet on the manifests' train split, validating on ``valid``.

    Args:
        manifests: the train and valid manifests (``manifests.manifests["train"]`` ...).
        hyperparameters: the algorithm's hyperparameters; ``num_training_samples`` is filled
            from the train manifest when None.
        extensions: the local extensions (dihedral, stain jitter, seed, weights file, ...).
        out_dir: where ``model.tar.gz`` and ``checkpoints/`` go, and the decoded cache
            (``cache/``) unless ``extensions.cache_dir`` names another folder. A run whose
            checkpoint is there (same hyperparameters and data) resumes after its last
            finished epoch.
        seed: the random seed, unless ``extensions.seed`` is set.
        epoch_callback: called after each epoch's validation with ``(epoch, metrics)``; what
            it raises (e.g. ``optuna.TrialPruned``) stops training and propagates. Under
            ``torchrun`` it is called in every process, with the same metrics.
        progress: show a progress bar.
        log: called with each line training prints (the metric lines among them) instead of
            ``print``.

    Raises:
        HyperparameterError: a hyperparameter the local backend cannot honour.
        DataError: a manifest is missing or malformed; ImageError names a missing or
            corrupt image.
        DivergedError: the loss became NaN or infinite.
    """
    from pcamflow.local.training.dataset import read_entries
    from pcamflow.local.training.engine import run_training

    check_local(hyperparameters, extensions)
    for split in ("train", "valid"):
        if split not in manifests.manifests:
            have = sorted(manifests.manifests)
            raise DataError(f"manifests: no {split!r} manifest (have {have})")
    train = read_entries(manifests.manifests["train"])
    valid = read_entries(manifests.manifests["valid"])
    labels = {label for _, label in train} | {label for _, label in valid}
    if max(labels) >= hyperparameters.num_classes or min(labels) < 0:
        raise DataError(
            f"{manifests.manifests['train']}: class labels {sorted(labels)} do not fit "
            f"num_classes={hyperparameters.num_classes}"
        )
    if hyperparameters.num_training_samples is None:
        hyperparameters = attrs.evolve(hyperparameters, num_training_samples=len(train))
    result = run_training(
        train, valid, hyperparameters, extensions, Path(out_dir),
        seed=seed, epoch_callback=epoch_callback, progress=progress, log=log,
    )
    return TrainOutcome(archive=result.archive, metrics=result.metrics, history=result.history)


def _spec(manifests: Manifests, hp: Hyperparameters, ext: LocalExtensions, out_dir: Path,
          seed: int) -> dict[str, Any]:
    return {"manifests": manifests.to_dict(), "hyperparameters": hp.to_sagemaker(),
            "extensions": converter.unstructure(ext), "out_dir": str(out_dir), "seed": seed}


def read_spec(spec: Mapping[str, Any]) -> tuple[Manifests, Hyperparameters, LocalExtensions,
                                                Path, int]:
    """The arguments of :func:`train_model` that :func:`train_distributed` wrote down."""
    from pcamflow._structure import structure

    return (Manifests.from_dict(spec["manifests"]),
            Hyperparameters.from_sagemaker(spec["hyperparameters"]),
            structure(spec["extensions"], LocalExtensions), Path(spec["out_dir"]),
            int(spec["seed"]))


def train_distributed(
    manifests: Manifests,
    hyperparameters: Hyperparameters,
    extensions: LocalExtensions,
    out_dir: Path,
    *,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """:func:`train_model` in ``extensions.nproc_per_node`` processes on this machine.

    It runs ``torchrun --standalone --nproc-per-node N -m pcamflow.local.train --spec FILE``
    (the spec, ``distributed.json`` in ``out_dir``, holds the arguments), waits for it, and
    then reads the outcome back from the finished checkpoint. The lines the processes print
    (rank 0's metric lines among them) go to ``log`` when given, else to standard output.

    Raises:
        TrainingError: a process failed or was killed; the epochs finished before are kept in
            ``out_dir/checkpoints``, and running again resumes after the last of them.
    """
    from pcamflow.local.training.distributed import torchrun_command

    out_dir = Path(out_dir)
    if hyperparameters.num_training_samples is None:
        from pcamflow.local.training.dataset import read_entries

        count = len(read_entries(manifests.manifests["train"]))
        hyperparameters = attrs.evolve(hyperparameters, num_training_samples=count)
    spec = out_dir / SPEC_FILE
    with atomic_write(spec, encoding="utf-8") as handle:
        json.dump(_spec(manifests, hyperparameters, extensions, out_dir, seed), handle, indent=1)
    command = torchrun_command(extensions.nproc_per_node,
                               ["--spec", str(spec), *([] if progress else ["--no-progress"])])
    say = log or (lambda line: print(line, flush=True))
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            say(line.rstrip("\n"))
    if process.returncode != 0:
        raise TrainingError(
            f"distributed training in {extensions.nproc_per_node} processes failed (torchrun "
            f"exit status {process.returncode}; its report is above); finished epochs are kept "
            f"in {out_dir / 'checkpoints'}, and running again resumes after the last of them"
        )
    # every epoch is checkpointed: this reads the outcome back without training again
    return train_model(manifests, hyperparameters, attrs.evolve(extensions, nproc_per_node=1),
                       out_dir, seed=seed, progress=False)


class LocalTrainer(Trainer):
    """Trains the algorithm's ResNet locally in PyTorch (CUDA when present); with
    ``train.extensions.nproc_per_node`` above 1, in that many processes under ``torchrun``."""

    writes_to = "local"
    reads_from = frozenset({"local"})

    def __init__(self, *, progress: bool = True) -> None:
        self.progress = progress

    def _hyperparameters(self, context: Context) -> Hyperparameters:
        return tuned(context.settings.train.hyperparameters,
                     context.optional_input(TuningResult))

    def validate(self, context: Context) -> None:
        """Check the hyperparameters (tuned ones included) and extensions before any work."""
        check_local(self._hyperparameters(context), context.settings.train.extensions)
        manifests = context.optional_input(Manifests)
        if manifests is not None:
            missing = {"train", "valid"} - set(manifests.manifests)
            if missing:
                raise DataError(f"manifests: no {', '.join(sorted(missing))} manifest to train on")

    def run(self, context: Context) -> ModelArtifact:
        manifests = context.input(Manifests)
        hp = self._hyperparameters(context)
        log_path = context.stage_dir / LOG_FILE
        earlier = log_path.read_text(encoding="utf-8") if log_path.exists() else ""
        printed: list[str] = []
        context.stage_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log_file:

            def say(line: str) -> None:
                print(line, flush=True)
                printed.append(line)
                log_file.write(line + "\n")
                log_file.flush()  # a kill keeps every line printed so far

            ext = context.settings.train.extensions
            train = train_distributed if ext.nproc_per_node > 1 else train_model
            outcome = train(manifests, hp, ext, context.stage_dir,
                            seed=context.settings.pipeline.seed, progress=self.progress, log=say)
        epochs = [int(entry["epoch"]) for entry in outcome.history]
        history = epoch_history(epochs, earlier, printed)
        with atomic_write(context.stage_dir / HISTORY_FILE, encoding="utf-8") as handle:
            json.dump(history, handle, indent=1)
        if hp.num_training_samples is None:
            from pcamflow.local.training.dataset import read_entries

            count = len(read_entries(manifests.manifests["train"]))
            hp = attrs.evolve(hp, num_training_samples=count)
        return ModelArtifact(
            uri=str(outcome.archive), hyperparameters=hp.to_sagemaker(), metrics=outcome.metrics
        )


def epoch_history(
    epochs: Sequence[int], earlier: str, printed: Sequence[str]
) -> list[dict[str, Any]]:
    """The metric lines of each trained epoch, parsed: this run's lines, or for an epoch that a
    resumed run took from its checkpoint, the lines an earlier run left in the log."""
    now = {entry["epoch"]: entry for entry in parse_metric_lines("\n".join(printed))}
    before = {entry["epoch"]: entry for entry in parse_metric_lines(earlier)}
    return [now.get(epoch) or before[epoch] for epoch in epochs if epoch in now or epoch in before]

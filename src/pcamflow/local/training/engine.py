"""The training loop behind :func:`pcamflow.local.training.trainer.train_model` (imports torch).

One function, :func:`run_training`, runs in every process of a run (one, or each rank under
``torchrun``): it opens the data (:mod:`.sources`), builds or resumes the model, optimizer and
schedule, trains epoch after epoch (:mod:`.loop`), and on rank 0 prints the metric lines,
checkpoints each epoch and writes ``model.tar.gz``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from pcamflow._io import digest
from pcamflow.errors import ConfigError, TrainingError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.model.archive import ModelMeta, save_model_archive
from pcamflow.local.model.resnet import architecture_name, build_model
from pcamflow.local.training.augment import Augmenter
from pcamflow.local.training.checkpoint import CheckpointDir
from pcamflow.local.training.distributed import (
    Distribution,
    average_buffers,
    check_kv_store,
    parallel,
    process_group,
    share,
)
from pcamflow.local.training.loop import Inputs, train_epoch, validate
from pcamflow.local.training.optim import (
    StepSchedule,
    build_optimizer,
    build_schedule,
    load_pretrained,
)
from pcamflow.local.training.sources import cache_folder, channel_stats, open_data
from pcamflow.metric_lines import metric_line

__all__ = [
    "RunResult",
    "StepSchedule",
    "build_optimizer",
    "build_schedule",
    "load_pretrained",
    "pick_device",
    "run_training",
]

Entries = Sequence[tuple[Path, int]]
# settings that change how fast a run goes, not what it learns: a checkpoint outlives them
_DATA_PATH_SETTINGS = ("num_workers", "device", "data_path", "cache_dir", "nproc_per_node")


def pick_device(setting: str) -> torch.device:
    """``auto``: CUDA when present; ``cuda`` insists on it."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.extensions.device: 'cuda' but no CUDA device is available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _fingerprint(hp: Hyperparameters, ext: LocalExtensions, seed: int, entries: Entries) -> str:
    payload = {
        "hp": hp.to_sagemaker(),
        "ext": {k: v for k, v in attrs.asdict(ext).items() if k not in _DATA_PATH_SETTINGS},
        "seed": seed,
        "n": len(entries),
        "first": [str(p) for p, _ in entries[:3]],
    }
    return digest(payload)


@attrs.frozen
class RunResult:
    """What :func:`run_training` returns."""

    archive: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]


def run_training(
    train: Entries,
    valid: Entries,
    hp: Hyperparameters,
    ext: LocalExtensions,
    out_dir: Path,
    *,
    seed: int = 0,
    epoch_callback: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train, checkpointing each epoch and resuming from the last checkpoint; see train_model.

    Under ``torchrun`` every process calls it; rank 0 alone prints, checkpoints and writes the
    archive, and ``epoch_callback`` is called in every process with the same metrics.
    """
    dist = Distribution.from_environ()
    check_kv_store(hp, dist)
    device = dist.device(ext.device)
    with process_group(dist, device):
        return _train(train, valid, hp, ext, Path(out_dir), dist=dist, device=device,
                      seed=ext.seed if ext.seed is not None else seed,
                      epoch_callback=epoch_callback, progress=progress,
                      say=(log or (lambda line: print(line, flush=True))) if dist.is_main
                      else (lambda line: None))


def _start(hp: Hyperparameters, ext: LocalExtensions, device: torch.device) -> tuple[
        torch.nn.Module, torch.optim.Optimizer, StepSchedule]:
    model = build_model(hp.num_layers, hp.num_classes, channels=hp.channels)
    if hp.use_pretrained_model:
        load_pretrained(model, ext.weights_file)
    model.to(device)
    if device.type == "cuda":  # NHWC convolutions use the tensor cores best
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(hp, model.parameters(), fused=device.type == "cuda")
    # built before the optimizer's state is loaded, as torch asks: building sets the rate
    return model, optimizer, build_schedule(hp, optimizer)


def _train(train: Entries, valid: Entries, hp: Hyperparameters, ext: LocalExtensions,
           out_dir: Path, *, dist: Distribution, device: torch.device, seed: int,
           epoch_callback: Callable[[int, dict[str, float]], None] | None, progress: bool,
           say: Callable[[str], None]) -> RunResult:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
    ckpt = CheckpointDir(out_dir / "checkpoints")
    fingerprint = _fingerprint(hp, ext, seed, train)
    state = share(ckpt.read_state(fingerprint) if dist.is_main else None, dist)
    finished = state is not None and (state["done"] or state["epoch"] + 1 >= hp.epochs)
    data = None if finished else open_data(
        train, valid, hp, ext, cache_dir=cache_folder(ext, out_dir), seed=seed, device=device,
        dist=dist, progress=progress)
    torch.manual_seed(seed)
    model, optimizer, schedule = _start(hp, ext, device)
    if state is None:
        assert data is not None
        mean, std = (channel_stats(train, hp, seed, data.caches.get("train"))
                     if dist.is_main else (None, None))
        state = share({"fingerprint": fingerprint, "epoch": -1, "history": [], "best": None,
                       "best_epoch": None, "stale": 0, "done": False, "mean": mean,
                       "std": std}, dist)
    else:
        extra = ckpt.load(state, model)
        optimizer.load_state_dict(extra["optimizer"])
        if "schedule" in extra:
            schedule.load_state_dict(extra["schedule"])
        else:  # a checkpoint written before schedules were saved: rebuild it at its epoch
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", hp.learning_rate)
            schedule = build_schedule(hp, optimizer, last_epoch=state["epoch"])
        torch.set_rng_state(extra["rng"])
        if not finished:
            say(f"Resuming from the checkpoint of epoch {state['epoch']} in {ckpt.folder}")

    net: torch.nn.Module = model
    if dist.distributed:
        net = parallel(model, device)
    augmenter = Augmenter(hp.augmentation_type, dihedral=ext.dihedral,
                          stain_jitter=ext.stain_jitter)
    inputs = Inputs((hp.channels, hp.height, hp.width), state["mean"], state["std"],
                    augmenter, seed, device, channels_last=device.type == "cuda")
    half = hp.precision_dtype == "float16"
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=half and device.type == "cuda")

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=amp_dtype, enabled=half)

    def step(x: torch.Tensor, labels: torch.Tensor, loss_scale: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            logits = net(x)
            loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss_sum * loss_scale).backward()
        scaler.step(optimizer)
        scaler.update()
        return logits, loss_sum

    global_batch = dist.global_batch(hp)
    for epoch in range(state["epoch"] + 1, hp.epochs):
        if state["done"] or data is None:
            break
        began, cpu_began = time.monotonic(), time.process_time()
        lr = schedule.get_last_lr()[0]

        def diverged(batch: int, value: float, epoch: int = epoch, lr: float = lr) -> str:
            return (f"training diverged: the loss became {value} at epoch {epoch}, batch "
                    f"{batch} (learning_rate {lr:g}, optimizer {hp.optimizer}); lower "
                    f"learning_rate or check the data. Completed epochs stay in {ckpt.folder}")

        sums = train_epoch(net, step, data.train, inputs, n=len(train), global_batch=global_batch,
                           seed=seed, epoch=epoch, dist=dist, top_k=hp.top_k,
                           diverged_message=diverged, desc=f"epoch {epoch + 1}/{hp.epochs}",
                           progress=progress)
        schedule.step()
        train_time, train_cpu = time.monotonic() - began, time.process_time() - cpu_began
        seen = max(sums.images, 1)
        metrics = {"train:accuracy": sums.correct / seen,
                   "train:cross_entropy": sums.loss_sum / seen}
        if hp.top_k:
            metrics[f"train:top_k_accuracy_{hp.top_k}"] = sums.top_k_correct / seen
        average_buffers(model, dist)
        metrics["validation:accuracy"] = validate(model, data.valid, inputs, n=len(valid),
                                                  batch=hp.mini_batch_size, dist=dist,
                                                  autocast=autocast)
        elapsed = time.monotonic() - began
        _report(say, epoch, metrics, hp.top_k, elapsed)
        _stop_or_go(state, hp, epoch, metrics["validation:accuracy"], say)
        if dist.is_main:
            if state["best_epoch"] == epoch:
                ckpt.save_weights("best.safetensors", model)
            if hp.checkpoint_frequency and (epoch + 1) % hp.checkpoint_frequency == 0:
                ckpt.save_weights(f"model-{epoch + 1:04d}.safetensors", model)
        state["history"].append({"epoch": epoch, "lr": lr, "time_s": round(elapsed, 3),
                                 "train_time_s": round(train_time, 3),
                                 "train_cpu_s": round(train_cpu, 3),
                                 "train_images": sums.images, "processes": dist.world_size,
                                 **metrics})
        state["epoch"] = epoch
        if dist.is_main:
            ckpt.save(model, {"optimizer": optimizer.state_dict(),
                              "schedule": schedule.state_dict(),
                              "rng": torch.get_rng_state()}, state)
        if epoch_callback is not None:
            epoch_callback(epoch, dict(metrics))
    return _finish(model, hp, ext, state, ckpt, out_dir, write=dist.is_main)


def _report(say: Callable[[str], None], epoch: int, metrics: dict[str, float],
            top_k: int | None, elapsed: float) -> None:
    say(metric_line(epoch, "Train", "accuracy", metrics["train:accuracy"]))
    say(metric_line(epoch, "Train", "cross-entropy", metrics["train:cross_entropy"]))
    if top_k:
        say(metric_line(epoch, "Train", f"top_k_accuracy_{top_k}",
                        metrics[f"train:top_k_accuracy_{top_k}"]))
    say(f"Epoch[{epoch}] Time cost={elapsed:.3f}")
    say(metric_line(epoch, "Validation", "accuracy", metrics["validation:accuracy"]))


def _stop_or_go(state: dict[str, Any], hp: Hyperparameters, epoch: int, accuracy: float,
                say: Callable[[str], None]) -> None:
    """Keep the best epoch and apply the algorithm's early stopping."""
    best = state["best"]
    improved = best is None or (
        accuracy > best and (best == 0 or (accuracy - best) / best > hp.early_stopping_tolerance)
    )
    if best is None or accuracy > best:
        state["best"], state["best_epoch"] = accuracy, epoch
    state["stale"] = 0 if improved else state["stale"] + 1
    if (hp.early_stopping and epoch + 1 >= hp.early_stopping_min_epochs
            and state["stale"] >= hp.early_stopping_patience):
        say(f"Epoch[{epoch}] Early stopping: no improvement for {state['stale']} epochs")
        state["done"] = True


def _finish(model: torch.nn.Module, hp: Hyperparameters, ext: LocalExtensions,
            state: dict[str, Any], ckpt: CheckpointDir, out_dir: Path, *,
            write: bool) -> RunResult:
    """Load the best epoch's weights and (``write``) save them as ``model.tar.gz``."""
    if state["best_epoch"] is None:
        raise TrainingError(f"{ckpt.folder}: no epoch finished, nothing to save")
    archive = out_dir / "model.tar.gz"
    if write:
        ckpt.load_weights("best.safetensors", model)
        meta = ModelMeta(
            architecture=architecture_name(hp.num_layers), num_layers=hp.num_layers,
            num_classes=hp.num_classes, classes=tuple(str(i) for i in range(hp.num_classes)),
            image_shape=(hp.channels, hp.height, hp.width), resize=hp.resize,
            mean=state["mean"], std=state["std"], hyperparameters=hp.to_sagemaker(),
            extensions=ext.non_default(),
        )
        extras = {f"checkpoints/{p.name}": p
                  for p in sorted(ckpt.folder.glob("model-*.safetensors"))}
        save_model_archive(archive, model, meta, extra_files=extras)
    kept = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    final = {k: float(v) for k, v in kept.items() if ":" in k}
    final["best_epoch"] = float(state["best_epoch"])
    final["epochs_run"] = float(len(state["history"]))
    return RunResult(archive=archive, metrics=final, history=list(state["history"]))

"""The training loop behind :func:`pcamflow.local.training.trainer.train_model` (imports torch)."""

from __future__ import annotations

import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import MultiStepLR
from tqdm.auto import tqdm

from pcamflow._io import digest
from pcamflow.errors import ConfigError, DivergedError, HyperparameterError, TrainingError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.model.archive import ModelMeta, save_model_archive
from pcamflow.local.model.resnet import architecture_name, build_model, classifier_prefix
from pcamflow.local.training.augment import Augmenter
from pcamflow.local.training.checkpoint import CheckpointDir
from pcamflow.local.training.dataset import ManifestImages, default_workers, make_loader
from pcamflow.metric_lines import metric_line

__all__ = [
    "StepSchedule",
    "build_optimizer",
    "build_schedule",
    "load_pretrained",
    "pick_device",
    "run_training",
]

Entries = Sequence[tuple[Path, int]]
_STATS_SAMPLE = 256


def pick_device(setting: str) -> torch.device:
    """``auto``: CUDA when present; ``cuda`` insists on it."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.extensions.device: 'cuda' but no CUDA device is available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def build_optimizer(hp: Hyperparameters, params: Any) -> torch.optim.Optimizer:
    """The algorithm's optimizer with its hyperparameters (weight decay for sgd/nag only)."""
    lr = hp.learning_rate
    if hp.optimizer in ("sgd", "nag"):
        nesterov = hp.optimizer == "nag" and hp.momentum > 0
        return torch.optim.SGD(params, lr=lr, momentum=hp.momentum,
                               weight_decay=hp.weight_decay, nesterov=nesterov)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(hp.beta_1, hp.beta_2), eps=hp.eps)
    if hp.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=hp.gamma, eps=hp.eps)
    raise HyperparameterError(f"optimizer: {hp.optimizer!r} is not one of sgd, adam, rmsprop, nag")


def load_pretrained(model: torch.nn.Module, weights_file: str | None) -> None:
    """Start from local pretrained weights; the top fully connected layer stays random."""
    if not weights_file:
        raise HyperparameterError(
            "use_pretrained_model: 1 needs pretrained weights, which are not available offline; "
            "set train.extensions.weights_file to a local .safetensors (or weights-only .pt) file"
        )
    path = Path(weights_file)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors / unpickler errors of several types
        raise ConfigError(
            f"train.extensions.weights_file: {path} cannot be loaded as weights ({error})"
        ) from None
    state = {k: v for k, v in state.items() if not k.startswith(classifier_prefix())}
    own = {k for k in model.state_dict() if not k.startswith(classifier_prefix())}
    missing = own - set(state)
    if missing:
        raise ConfigError(
            f"train.extensions.weights_file: {path} does not fit {type(model).__name__} "
            f"(missing {sorted(missing)[:3]}...)"
        )
    model.load_state_dict(state, strict=False)


def _fingerprint(hp: Hyperparameters, ext: LocalExtensions, seed: int, entries: Entries) -> str:
    payload = {
        "hp": hp.to_sagemaker(),
        "ext": {k: v for k, v in attrs.asdict(ext).items() if k not in ("num_workers", "device")},
        "seed": seed,
        "n": len(entries),
        "first": [str(p) for p, _ in entries[:3]],
    }
    return digest(payload)


def _channel_stats(entries: Entries, shape: tuple[int, int, int], resize: int | None,
                   seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of a sample of the training images."""
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(entries))[:_STATS_SAMPLE]
    data = ManifestImages([entries[i] for i in pick], shape, resize)
    batch = torch.stack([data[i][0] for i in range(len(data))]).float() / 255.0
    mean = batch.mean(dim=(0, 2, 3))
    std = batch.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


class StepSchedule(MultiStepLR):
    """torch's ``MultiStepLR``, its rates computed in closed form.

    ``MultiStepLR`` multiplies the current rate by ``gamma`` at each milestone, which drifts a
    bit or two from ``learning_rate * factor ** n`` (the algorithm's multi-factor schedule);
    computing each epoch's rate from the base rate keeps it exactly that.
    """

    def get_lr(self) -> list[float]:  # type: ignore[override]
        passed = bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base * self.gamma**passed for base in self.base_lrs]


def build_schedule(
    hp: Hyperparameters, optimizer: torch.optim.Optimizer, last_epoch: int = -1
) -> StepSchedule:
    """The algorithm's schedule: the rate times ``lr_scheduler_factor`` after each listed epoch.

    Step it once per finished epoch; epoch ``e`` trains at
    ``learning_rate * lr_scheduler_factor ** (number of lr_scheduler_step epochs <= e)``.
    ``last_epoch``: the last finished epoch when resuming without a saved schedule state.
    """
    return StepSchedule(optimizer, milestones=list(hp.scheduler_steps),
                        gamma=hp.lr_scheduler_factor, last_epoch=last_epoch)


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
    """Train, checkpointing each epoch and resuming from the last checkpoint; see train_model."""
    say = log or (lambda line: print(line, flush=True))
    seed = ext.seed if ext.seed is not None else seed
    device = pick_device(ext.device)
    shape = (hp.channels, hp.height, hp.width)
    out_dir = Path(out_dir)
    ckpt = CheckpointDir(out_dir / "checkpoints")
    fingerprint = _fingerprint(hp, ext, seed, train)
    state = ckpt.read_state(fingerprint)

    torch.manual_seed(seed)
    model = build_model(hp.num_layers, hp.num_classes, channels=hp.channels)
    if hp.use_pretrained_model:
        load_pretrained(model, ext.weights_file)
    model.to(device)
    optimizer = build_optimizer(hp, model.parameters())
    # built before the optimizer's state is loaded, as torch asks: building sets the rate
    schedule = build_schedule(hp, optimizer)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    augmenter = Augmenter(hp.augmentation_type, dihedral=ext.dihedral,
                          stain_jitter=ext.stain_jitter, generator=aug_gen)

    if state is None:
        mean, std = _channel_stats(train, shape, hp.resize, seed)
        state = {"fingerprint": fingerprint, "epoch": -1, "history": [], "best": None,
                 "best_epoch": None, "stale": 0, "done": False, "mean": mean, "std": std}
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
        aug_gen.set_state(extra["aug_rng"])
        say(f"Resuming from the checkpoint of epoch {state['epoch']} in {ckpt.folder}")
    mean_t = torch.tensor(state["mean"], device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(state["std"], device=device).view(1, -1, 1, 1)

    workers = default_workers() if ext.num_workers is None else ext.num_workers
    train_set = ManifestImages(train, shape, hp.resize, random_crop=augmenter.crops, seed=seed)
    valid_set = ManifestImages(valid, shape, hp.resize)
    batch = hp.mini_batch_size
    drop_last = len(train) > batch  # a 1-image batch breaks batch normalisation
    half = hp.precision_dtype == "float16"
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=half and device.type == "cuda")
    pin = device.type == "cuda"

    def prepare(images: torch.Tensor, augment: bool) -> torch.Tensor:
        images = images.to(device, non_blocking=True).float().div_(255.0)
        if augment:
            images = augmenter(images)
        return (images - mean_t) / std_t

    start = state["epoch"] + 1
    for epoch in range(start, hp.epochs):
        if state["done"]:
            break
        began = time.monotonic()
        train_set.epoch = epoch
        loader = make_loader(train_set, batch, shuffle=True, workers=workers,
                             seed=seed * 1000 + epoch, drop_last=drop_last, pin_memory=pin)
        model.train()
        correct = seen = 0
        loss_sum = 0.0
        topk_correct = 0
        lr = schedule.get_last_lr()[0]
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{hp.epochs}", unit="batch", leave=False,
                   disable=None if progress else True, file=sys.stderr)
        for step, (images, labels) in enumerate(bar):
            inputs = prepare(images, True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=half):
                logits = model(inputs)
                loss = F.cross_entropy(logits.float(), labels)
            if not torch.isfinite(loss):
                raise DivergedError(
                    f"training diverged: the loss became {float(loss.detach())} at epoch "
                    f"{epoch}, batch {step} (learning_rate {lr:g}, optimizer {hp.optimizer}); "
                    f"lower learning_rate or check the data. Completed epochs stay in {ckpt.folder}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                n = labels.shape[0]
                seen += n
                loss_sum += float(loss) * n
                correct += int((logits.argmax(1) == labels).sum())
                if hp.top_k:
                    top = logits.topk(min(hp.top_k, logits.shape[1]), dim=1).indices
                    topk_correct += int((top == labels[:, None]).any(1).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        bar.close()
        schedule.step()
        train_time = time.monotonic() - began
        metrics = {"train:accuracy": correct / max(seen, 1),
                   "train:cross_entropy": loss_sum / max(seen, 1)}
        if hp.top_k:
            metrics[f"train:top_k_accuracy_{hp.top_k}"] = topk_correct / max(seen, 1)
        metrics["validation:accuracy"] = evaluate(model, valid_set, batch, workers, prepare,
                                                  half, amp_dtype, device)
        elapsed = time.monotonic() - began
        say(metric_line(epoch, "Train", "accuracy", metrics["train:accuracy"]))
        say(metric_line(epoch, "Train", "cross-entropy", metrics["train:cross_entropy"]))
        if hp.top_k:
            say(metric_line(epoch, "Train", f"top_k_accuracy_{hp.top_k}",
                            metrics[f"train:top_k_accuracy_{hp.top_k}"]))
        say(f"Epoch[{epoch}] Time cost={elapsed:.3f}")
        say(metric_line(epoch, "Validation", "accuracy", metrics["validation:accuracy"]))

        accuracy = metrics["validation:accuracy"]
        best = state["best"]
        tolerance = hp.early_stopping_tolerance
        improved = best is None or (
            accuracy > best and (best == 0 or (accuracy - best) / best > tolerance)
        )
        if best is None or accuracy > best:
            ckpt.save_weights("best.safetensors", model)
            state["best"], state["best_epoch"] = accuracy, epoch
        state["stale"] = 0 if improved else state["stale"] + 1
        if hp.checkpoint_frequency and (epoch + 1) % hp.checkpoint_frequency == 0:
            ckpt.save_weights(f"model-{epoch + 1:04d}.safetensors", model)
        if (hp.early_stopping and epoch + 1 >= hp.early_stopping_min_epochs
                and state["stale"] >= hp.early_stopping_patience):
            say(f"Epoch[{epoch}] Early stopping: no improvement for {state['stale']} epochs")
            state["done"] = True
        state["history"].append({"epoch": epoch, "lr": lr,
                                 "time_s": round(elapsed, 3),
                                 "train_time_s": round(train_time, 3), **metrics})
        state["epoch"] = epoch
        extra = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "rng": torch.get_rng_state(), "aug_rng": aug_gen.get_state()}
        ckpt.save(model, extra, state)
        if epoch_callback is not None:
            epoch_callback(epoch, dict(metrics))

    if state["best_epoch"] is None:
        raise TrainingError(f"{ckpt.folder}: no epoch finished, nothing to save")
    ckpt.load_weights("best.safetensors", model)
    meta = ModelMeta(
        architecture=architecture_name(hp.num_layers), num_layers=hp.num_layers,
        num_classes=hp.num_classes, classes=tuple(str(i) for i in range(hp.num_classes)),
        image_shape=shape, resize=hp.resize, mean=state["mean"], std=state["std"],
        hyperparameters=hp.to_sagemaker(), extensions=ext.non_default(),
    )
    extras = {f"checkpoints/{p.name}": p for p in sorted(ckpt.folder.glob("model-*.safetensors"))}
    archive = save_model_archive(out_dir / "model.tar.gz", model, meta, extra_files=extras)
    kept = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    final = {k: float(v) for k, v in kept.items() if ":" in k}
    final["best_epoch"] = float(state["best_epoch"])
    final["epochs_run"] = float(len(state["history"]))
    return RunResult(archive=archive, metrics=final, history=list(state["history"]))


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: ManifestImages, batch: int, workers: int,
             prepare: Callable[[torch.Tensor, bool], torch.Tensor], half: bool,
             amp_dtype: torch.dtype, device: torch.device) -> float:
    """Accuracy of ``model`` on ``dataset`` (centre crops, no augmentation)."""
    model.eval()
    loader = make_loader(dataset, batch, shuffle=False, workers=workers, seed=0,
                         pin_memory=device.type == "cuda")
    correct = total = 0
    for images, labels in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=half):
            logits = model(prepare(images, False))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += labels.shape[0]
    return correct / max(total, 1)

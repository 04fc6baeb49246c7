"""The algorithm's optimizers and learning-rate schedule, and pretrained weights, in torch."""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import MultiStepLR

from pcamflow.errors import ConfigError, HyperparameterError
from pcamflow.hyperparameters import Hyperparameters
from pcamflow.local.model.resnet import classifier_prefix

__all__ = ["StepSchedule", "build_optimizer", "build_schedule", "load_pretrained"]


def build_optimizer(hp: Hyperparameters, params: Any, *, fused: bool = False
                    ) -> torch.optim.Optimizer:
    """The algorithm's optimizer with its hyperparameters (weight decay for sgd/nag only).

    ``fused``: torch's fused CUDA kernels for sgd, nag and adam, which also take mixed
    precision's gradient scaling without a host synchronisation each step.
    """
    lr = hp.learning_rate
    extra: dict[str, Any] = {"fused": True} if fused else {}
    if hp.optimizer in ("sgd", "nag"):
        nesterov = hp.optimizer == "nag" and hp.momentum > 0
        return torch.optim.SGD(params, lr=lr, momentum=hp.momentum,
                               weight_decay=hp.weight_decay, nesterov=nesterov, **extra)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(hp.beta_1, hp.beta_2), eps=hp.eps,
                                **extra)
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

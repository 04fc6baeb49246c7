"""Training checkpoints that survive a kill: written atomically, loaded without unpickling.

A checkpoint is three files in the checkpoint folder: ``epoch-NNNN.model.safetensors`` (the
model), ``epoch-NNNN.optimizer.pt`` (optimizer, learning-rate schedule and random-generator
states: tensors, numbers, lists and dicts only, loaded with ``torch.load(..., weights_only=True)``)
and ``state.json`` (epoch, history, best accuracy, the run's fingerprint). ``state.json`` is
written last and names the epoch the other two belong to, so a kill at any moment leaves either
the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pcamflow._io import atomic_path
from pcamflow.errors import TrainingError

__all__ = ["CheckpointDir"]


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


class CheckpointDir:
    """The checkpoint folder of one training run."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    def read_state(self, fingerprint: str) -> dict[str, Any] | None:
        """The saved state if it belongs to a run with ``fingerprint``, else None."""
        if not self.state_file.exists():
            return None
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a broken pointer: start again rather than fail
        if state.get("fingerprint") != fingerprint:
            return None
        return state

    def save(
        self,
        module: torch.nn.Module,
        extra: dict[str, Any],
        state: dict[str, Any],
    ) -> None:
        """Save the model, the optimizer/generator tensors and then the state pointer."""
        self.folder.mkdir(parents=True, exist_ok=True)
        epoch = state["epoch"]
        weights = self.folder / f"epoch-{epoch:04d}.model.safetensors"
        others = self.folder / f"epoch-{epoch:04d}.optimizer.pt"
        _atomic(weights, lambda tmp: save_file(_state_dict(module), tmp))
        _atomic(others, lambda tmp: torch.save(extra, tmp))
        text = json.dumps({**state, "weights": weights.name, "optimizer": others.name}, indent=1)
        _atomic(self.state_file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        for old in self.folder.glob("epoch-*.*"):  # keep only what the pointer names
            if old.name not in (weights.name, others.name):
                old.unlink(missing_ok=True)

    def load(self, state: dict[str, Any], module: torch.nn.Module) -> dict[str, Any]:
        """Load the checkpoint ``state`` names into ``module``; return the optimizer extras."""
        try:
            module.load_state_dict(load_file(self.folder / state["weights"]))
            return torch.load(self.folder / state["optimizer"], weights_only=True)
        except (OSError, RuntimeError, KeyError) as error:
            raise TrainingError(
                f"{self.folder}: cannot resume from the checkpoint ({error}); "
                "delete the folder to start again"
            ) from None

    def save_weights(self, name: str, module: torch.nn.Module) -> Path:
        """Save the model's weights alone as ``name`` (best model, periodic checkpoints)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        _atomic(path, lambda tmp: save_file(_state_dict(module), tmp))
        return path

    def load_weights(self, name: str, module: torch.nn.Module) -> None:
        """Load weights saved by :meth:`save_weights`."""
        module.load_state_dict(load_file(self.folder / name))

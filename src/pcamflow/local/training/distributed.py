"""Training over several processes, GPUs and machines with torch.distributed.

The local trainer runs under ``torchrun`` (``python -m torch.distributed.run``): each process
trains a replica of the model in DistributedDataParallel, NCCL between GPUs and gloo between
CPU processes, and averages the gradients after every batch, which is the algorithm's
``kv_store = "dist_sync"``. ``mini_batch_size`` keeps the algorithm's meaning (AWS's "Image
Classification Hyperparameters" page): "In a single-machine multi-GPU setting, each GPU handles
``mini_batch_size``/num_gpu training samples. For the multi-machine training in dist_sync mode,
the actual batch size is ``mini_batch_size``*number of machines". So one step trains on
``mini_batch_size * machines`` images, split evenly over all the processes.

``dist_async`` (asynchronous parameter-server updates) has no counterpart in torch's
DistributedDataParallel, which is synchronous: with more than one machine it is refused.
The page says the setting "is not applicable to single machine training", so one machine
ignores it, as the algorithm does.

:class:`Distribution` reads this process's place from the variables ``torchrun`` sets;
:func:`torchrun_command` is how the pipeline's trainer starts ``nproc_per_node`` processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import torch
import torch.distributed as torch_dist

from pcamflow.errors import ConfigError, HyperparameterError
from pcamflow.hyperparameters import Hyperparameters

__all__ = [
    "Distribution",
    "average_buffers",
    "check_kv_store",
    "parallel",
    "process_group",
    "share",
    "sum_over_ranks",
    "torchrun_command",
]

_TIMEOUT = dt.timedelta(minutes=30)  # a first epoch may wait on another rank's cache build


@attrs.frozen
class Distribution:
    """Where this process stands in a distributed run (one process: rank 0 of 1).

    Attributes:
        rank: this process's rank, 0..world_size-1.
        world_size: processes in all.
        local_rank: this process's rank on its machine (its GPU's index).
        local_world_size: processes on this machine.
        machines: machines in all.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    machines: int = 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Distribution:
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and
        ``GROUP_WORLD_SIZE`` (machines) as ``torchrun`` sets them; none set: one process.

        Raises:
            ConfigError: a variable is not a whole number, or they do not fit together.
        """
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env:
            return cls()
        values = {}
        for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                              ("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1"))):
            text = env.get(name, default)
            if not text.strip().isdigit():
                raise ConfigError(f"environment {name}={text!r}: expected a whole number")
            values[name] = int(text)
        world, local = values["WORLD_SIZE"], values["LOCAL_WORLD_SIZE"]
        machines_text = env.get("GROUP_WORLD_SIZE", "")
        machines = int(machines_text) if machines_text.isdigit() else max(1, world // local)
        if not (0 <= values["RANK"] < world and 0 <= values["LOCAL_RANK"] < local <= world):
            raise ConfigError(
                f"environment RANK={values['RANK']}, WORLD_SIZE={world}, "
                f"LOCAL_RANK={values['LOCAL_RANK']}, LOCAL_WORLD_SIZE={local} do not fit "
                "together; start distributed training with torchrun"
            )
        return cls(rank=values["RANK"], world_size=world, local_rank=values["LOCAL_RANK"],
                   local_world_size=local, machines=machines)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    def global_batch(self, hp: Hyperparameters) -> int:
        """Images per step over all processes: ``mini_batch_size`` times the machines."""
        return hp.mini_batch_size * self.machines

    def device(self, setting: str) -> torch.device:
        """This process's device for ``train.extensions.device`` (its own GPU under torchrun)."""
        if setting == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.extensions.device: 'cuda' but no CUDA device is available")
        if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank if self.distributed else
                            torch.cuda.current_device())


def check_kv_store(hp: Hyperparameters, dist: Distribution) -> None:
    """Refuse ``kv_store = "dist_async"`` over several machines (see the module's notes)."""
    if hp.kv_store == "dist_async" and dist.machines > 1:
        raise HyperparameterError(
            f"kv_store: 'dist_async' (asynchronous updates) cannot be honoured by the local "
            f"trainer on {dist.machines} machines: torch's DistributedDataParallel averages "
            "gradients synchronously; use 'dist_sync' or leave kv_store unset"
        )


@contextlib.contextmanager
def process_group(dist: Distribution, device: torch.device) -> Iterator[None]:
    """Join the run's process group (NCCL on GPUs, gloo on CPUs) for the block's duration."""
    if not dist.distributed or torch_dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch_dist.init_process_group(backend, timeout=_TIMEOUT)
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


def sum_over_ranks(values: torch.Tensor, dist: Distribution) -> torch.Tensor:
    """``values`` summed over every process (in place)."""
    if dist.distributed:
        torch_dist.all_reduce(values)
    return values


def share(value: Any, dist: Distribution) -> Any:
    """Rank 0's ``value`` (JSON-like: dicts, lists, numbers, strings), in every process."""
    if not dist.distributed:
        return value
    box = [value if dist.is_main else None]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def average_buffers(module: torch.nn.Module, dist: Distribution) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the processes.

    Each process normalises its own part of a batch, as each GPU does in the algorithm; the
    running statistics kept for prediction are then their mean, as MXNet keeps them.
    """
    if not dist.distributed:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            torch_dist.all_reduce(buffer)
            buffer.div_(dist.world_size)


def parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel, each process keeping its own batch-norm buffers
    between the epochs' averages (:func:`average_buffers`)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # torch 2.13 names the option forward_sync_buffers; earlier releases broadcast_buffers
    keep = ("forward_sync_buffers" if "forward_sync_buffers" in
            inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers")
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True, **{keep: False})


def torchrun_command(nproc_per_node: int, module_args: list[str]) -> list[str]:
    """The ``torchrun`` command running ``python -m pcamflow.local.train`` on this machine."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc_per_node}", "-m", "pcamflow.local.train", *module_args,
    ]

"""Distributed training: two CPU processes on gloo under torchrun, against one process.

The reference is one process with the same global batch (16) and seed. Each of the two
processes normalises its own half of every batch (batch normalisation is per device, as in the
algorithm on several GPUs), so the reference's batch-norm layers normalise the same two halves
separately; without that, batch statistics of 8 images instead of 16 alone move the weights by
about three quarters of the training update on this data. With it, what remains is rounding
(one thread per process against two): about 0.5% of the update, measured. The tolerance is 2%.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pcamflow.artifacts import Manifests, ModelArtifact
from pcamflow.config import Settings
from pcamflow.errors import ConfigError, HyperparameterError
from pcamflow.hyperparameters import Hyperparameters
from pcamflow.local.model.resnet import build_model
from pcamflow.local.train import main as train_main
from pcamflow.local.training import engine
from pcamflow.local.training.distributed import Distribution, check_kv_store
from pcamflow.local.training.trainer import LocalTrainer, train_model
from pcamflow.metric_lines import parse_metric_lines
from pcamflow.stages import Context

RANKED = Path(__file__).with_name("_ranked_train.py")
TRAIN = {"num_layers": 20, "image_shape": "3,32,32", "resize": 32, "epochs": 2,
         "mini_batch_size": 16, "optimizer": "sgd", "learning_rate": 0.005, "momentum": 0.9,
         "augmentation_type": "crop"}
EXTENSIONS = {"dihedral": True, "data_path": "cache", "device": "cpu", "num_workers": 1}
TOLERANCE = 0.02  # of the norm of the update (final weights - initial weights)


def _settings_file(folder: Path, extensions: dict | None = None) -> Path:
    def toml(value: object) -> str:
        return json.dumps(value) if not isinstance(value, bool) else str(value).lower()

    lines = ["[pipeline]", f"run_dir = {toml(str(folder / 'run'))}", "seed = 0", "[train]"]
    lines += [f"{k} = {toml(v)}" for k, v in TRAIN.items()]
    lines += ["[train.extensions]"]
    lines += [f"{k} = {toml(v)}" for k, v in {**EXTENSIONS, **(extensions or {})}.items()]
    path = folder / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class _HalvesBatchNorm(nn.BatchNorm2d):
    """Batch normalisation over each half of a training batch, as two processes see it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        return torch.cat([super(_HalvesBatchNorm, self).forward(half) for half in x.chunk(2)])


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    return load_file(out / "checkpoints" / state["weights"])


def _difference(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """|weights - reference| / |reference - initial weights|, over the trained parameters."""
    torch.manual_seed(0)
    initial = build_model(20, 2).state_dict()
    names = [k for k in reference if reference[k].is_floating_point() and "running" not in k]
    diff = sum(float(((weights[k] - reference[k]) ** 2).sum()) for k in names) ** 0.5
    update = sum(float(((reference[k] - initial[k]) ** 2).sum()) for k in names) ** 0.5
    return diff / update


@pytest.fixture(scope="module")
def reference(small_pcam: tuple[Manifests, dict], tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, torch.Tensor]:
    """The final weights of one process training on the same batches, seed and data."""
    out = tmp_path_factory.mktemp("one-process")
    settings = Settings.from_toml(_settings_file(out))

    def build(*args: object, **kwargs: object) -> nn.Module:
        model = build_model(*args, **kwargs)  # type: ignore[arg-type]
        for module in model.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = _HalvesBatchNorm
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "build_model", build)
        train_model(small_pcam[0], settings.train.hyperparameters, settings.train.extensions,
                    out / "train", progress=False)
    return _final_weights(out / "train")


def _torchrun(folder: Path, record: Path, *extra: str) -> subprocess.Popen:
    record.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(RANKED), "--record", str(record), *extra,
               str(_settings_file(folder)), "--manifests", str(folder / "manifests.json"),
               "--out", str(folder / "train"), "--no-progress"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _passes(record: Path, rank: int) -> list[list[list[int]]]:
    lines = (record / f"rank-{rank}.jsonl").read_text().splitlines()
    return [json.loads(line)["shards"] for line in lines]


def test_two_processes_train_like_one(small_pcam: tuple[Manifests, dict], tmp_path: Path,
                                      reference: dict[str, torch.Tensor]) -> None:
    (tmp_path / "manifests.json").write_text(small_pcam[0].to_json())
    run = _torchrun(tmp_path, tmp_path / "record")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    # the metric lines are printed once, by rank 0
    assert [p["epoch"] for p in parse_metric_lines(out)] == [0, 1]
    assert out.count("Epoch[1] Validation-accuracy=") == 1
    # every training image is seen exactly once an epoch, by one of the two processes
    n = small_pcam[0].counts["train"]
    ranks = [_passes(tmp_path / "record", r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == TRAIN["epochs"]
    for epoch in range(TRAIN["epochs"]):
        seen = [i for r in ranks for shard in r[epoch] for i in shard]
        assert sorted(seen) == list(range(n))
        assert all(len(shard) == TRAIN["mini_batch_size"] // 2 for r in ranks
                   for shard in r[epoch])
    history = json.loads((tmp_path / "train" / "checkpoints" / "state.json").read_text())
    assert [h["train_images"] for h in history["history"]] == [n, n]
    assert [h["processes"] for h in history["history"]] == [2, 2]
    assert _difference(_final_weights(tmp_path / "train"), reference) < TOLERANCE


def test_a_rank_killed_mid_epoch_fails_the_run_and_it_resumes(
    small_pcam: tuple[Manifests, dict], tmp_path: Path, reference: dict[str, torch.Tensor],
    capfd: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "manifests.json").write_text(small_pcam[0].to_json())
    record = tmp_path / "record"
    run = _torchrun(tmp_path, record, "--stall", "1:1")  # rank 1, second epoch, first batch
    deadline = time.monotonic() + 240
    while not (record / "stalled").exists():
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "rank 1 never reached its second epoch"
        time.sleep(0.05)
    os.kill(int((record / "stalled").read_text()), signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    assert run.returncode != 0
    assert "local_rank: 1" in err and "SIGKILL" in err  # torchrun names the dead process
    assert [p["epoch"] for p in parse_metric_lines(out)] == [0]
    state = json.loads((tmp_path / "train" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 0 and not (tmp_path / "train" / "model.tar.gz").exists()

    # the pipeline's trainer, two processes on this machine, takes the run up again
    settings = Settings.from_toml(_settings_file(tmp_path, {"nproc_per_node": 2}))
    context = Context(settings=settings, run_dir=tmp_path, stage_dir=tmp_path / "train",
                      artifacts={"Manifests": small_pcam[0]}, stage_name="train")
    capfd.readouterr()
    artifact = LocalTrainer(progress=False).run(context)
    resumed = capfd.readouterr().out
    assert resumed.count("Resuming from the checkpoint of epoch 0") == 1
    assert [p["epoch"] for p in parse_metric_lines(resumed)] == [1]
    assert isinstance(artifact, ModelArtifact) and artifact.exists()
    assert artifact.metrics["epochs_run"] == 2.0
    assert _difference(_final_weights(tmp_path / "train"), reference) < TOLERANCE


def test_torchrun_places_are_read_and_checked() -> None:
    assert Distribution.from_environ({}) == Distribution()
    two = Distribution.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                     "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2"})
    assert (two.rank, two.machines, two.is_main, two.distributed) == (3, 2, False, True)
    hp = Hyperparameters(mini_batch_size=64)
    # the algorithm's meaning: mini_batch_size per machine, split over its devices
    assert two.global_batch(hp) == 128 and Distribution().global_batch(hp) == 64
    with pytest.raises(ConfigError, match="RANK=5, WORLD_SIZE=4"):
        Distribution.from_environ({"RANK": "5", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="LOCAL_RANK='x'"):
        Distribution.from_environ({"WORLD_SIZE": "2", "LOCAL_RANK": "x"})


def test_kv_store_dist_async_is_refused_across_machines_only() -> None:
    hp = Hyperparameters(kv_store="dist_async")
    one_machine = Distribution(rank=0, world_size=4, local_world_size=4, machines=1)
    check_kv_store(hp, one_machine)  # "not applicable to single machine training"
    check_kv_store(Hyperparameters(kv_store="dist_sync"), Distribution(world_size=4, machines=2))
    with pytest.raises(HyperparameterError, match=r"kv_store: 'dist_async'.*2 machines"):
        check_kv_store(hp, Distribution(world_size=4, local_world_size=2, machines=2))


def test_the_entry_point_names_what_is_missing(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings_file(tmp_path)
    assert train_main([str(settings), "--no-progress"]) == 2
    assert "no finished manifests stage" in capsys.readouterr().err
    assert train_main(["--spec", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot read the training spec" in capsys.readouterr().err

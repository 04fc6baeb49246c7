"""Checkpoints: the folder's contract, and resume that changes nothing but where training starts."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import load_file

from pcamflow.artifacts import Manifests
from pcamflow.errors import TrainingError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.model.archive import load_model_archive
from pcamflow.local.training.checkpoint import CheckpointDir
from pcamflow.local.training.trainer import train_model

# Adam's moments and the learning-rate schedule (the optimizer's saved state) shape the weights of
# epoch 1, so a resume that loses them ends with other weights.
FAST = Hyperparameters(num_layers=20, image_shape="3,16,16", resize=16, epochs=2,
                       mini_batch_size=16, optimizer="adam", learning_rate=0.003,
                       lr_scheduler_step="1", lr_scheduler_factor=0.5)
SERIAL = LocalExtensions(num_workers=0, device="cpu")


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _state(epoch: int, fingerprint: str = "run-a") -> dict:
    return {"fingerprint": fingerprint, "epoch": epoch, "history": [{"epoch": epoch}]}


def test_a_saved_checkpoint_is_read_back_for_its_own_run_only(tmp_path: Path) -> None:
    ckpt = CheckpointDir(tmp_path / "checkpoints")
    assert ckpt.state_file == tmp_path / "checkpoints" / "state.json"
    assert ckpt.read_state("run-a") is None  # nothing saved yet
    module = _module()
    ckpt.save(module, {"optimizer": {"lr": 0.5}, "rng": torch.arange(4)}, _state(3))

    state = ckpt.read_state("run-a")
    assert state == {"fingerprint": "run-a", "epoch": 3, "history": [{"epoch": 3}],
                     "weights": "epoch-0003.model.safetensors",
                     "optimizer": "epoch-0003.optimizer.pt"}
    assert ckpt.read_state("run-b") is None  # another run's checkpoint is not resumed
    fresh = torch.nn.Linear(3, 2)
    extra = ckpt.load(state, fresh)
    assert extra["optimizer"] == {"lr": 0.5} and torch.equal(extra["rng"], torch.arange(4))
    for name, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)


def test_only_the_newest_checkpoint_is_kept(tmp_path: Path) -> None:
    ckpt = CheckpointDir(tmp_path)
    ckpt.save(_module(), {"n": 1}, _state(0))
    ckpt.save_weights("best.safetensors", _module())
    ckpt.save(_module(), {"n": 2}, _state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.safetensors", "epoch-0001.model.safetensors", "epoch-0001.optimizer.pt",
        "state.json"]
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1


def test_a_broken_state_file_starts_again(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"fingerprint": "run-a", "epo')
    assert CheckpointDir(tmp_path).read_state("run-a") is None


@pytest.mark.parametrize("missing", ["weights", "optimizer"])
def test_a_checkpoint_with_a_missing_file_is_a_training_error_naming_the_folder(
    tmp_path: Path, missing: str
) -> None:
    ckpt = CheckpointDir(tmp_path)
    ckpt.save(_module(), {"n": 1}, _state(0))
    state = ckpt.read_state("run-a")
    assert state is not None
    (tmp_path / state[missing]).unlink()
    with pytest.raises(TrainingError, match=rf"^{tmp_path}: cannot resume from the checkpoint "
                                            r"\(.*\); delete the folder to start again$"):
        ckpt.load(state, torch.nn.Linear(3, 2))


def test_weights_saved_alone_load_back(tmp_path: Path) -> None:
    ckpt = CheckpointDir(tmp_path / "new")
    module = _module()
    path = ckpt.save_weights("best.safetensors", module)
    assert path == tmp_path / "new" / "best.safetensors"
    assert torch.equal(load_file(path)["weight"], module.weight.detach())
    other = torch.nn.Linear(3, 2)
    ckpt.load_weights("best.safetensors", other)
    assert torch.equal(other.weight, module.weight) and torch.equal(other.bias, module.bias)


class _Stop(Exception):
    pass


def _stop_after_epoch_0(epoch: int, metrics: dict) -> None:
    if epoch == 0:
        raise _Stop  # after epoch 0 is checkpointed, as a kill would leave it


def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_model_archive(out_dir / "model.tar.gz").module.state_dict()


def _metrics(history: list[dict]) -> list[dict]:
    """The history without its timings (which differ from run to run)."""
    return [{k: v for k, v in entry.items() if "time" not in k and not k.endswith("_s")}
            for entry in history]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == []  # bit-identical on CPU


@pytest.fixture(scope="module")
def whole(small_pcam: tuple[Manifests, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """An uninterrupted run of FAST: its history and final weights."""
    out = tmp_path_factory.mktemp("whole")
    outcome = train_model(small_pcam[0], FAST, SERIAL, out, progress=False)
    return outcome.history, _weights(out)


def test_an_interrupted_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    small_pcam: tuple[Manifests, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    whole: tuple,
) -> None:
    manifests = small_pcam[0]
    with pytest.raises(_Stop):
        train_model(manifests, FAST, SERIAL, tmp_path / "resumed",
                    epoch_callback=_stop_after_epoch_0, progress=False)
    capsys.readouterr()
    resumed = train_model(manifests, FAST, SERIAL, tmp_path / "resumed", progress=False)
    assert "Resuming from the checkpoint of epoch 0" in capsys.readouterr().out
    assert _metrics(resumed.history) == _metrics(whole[0])
    _assert_same(_weights(tmp_path / "resumed"), whole[1])


def test_another_runs_checkpoint_is_not_resumed(
    small_pcam: tuple[Manifests, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    whole: tuple,
) -> None:
    manifests = small_pcam[0]
    other = attrs.evolve(FAST, learning_rate=0.001)
    with pytest.raises(_Stop):  # leaves a checkpoint of epoch 0 with the other learning rate
        train_model(manifests, other, SERIAL, tmp_path / "shared",
                    epoch_callback=_stop_after_epoch_0, progress=False)
    capsys.readouterr()
    ran = train_model(manifests, FAST, SERIAL, tmp_path / "shared", progress=False)
    assert "Resuming" not in capsys.readouterr().out
    assert [h["epoch"] for h in ran.history] == [0, 1]
    assert _metrics(ran.history) == _metrics(whole[0])
    _assert_same(_weights(tmp_path / "shared"), whole[1])


def test_a_checkpoint_goes_into_a_new_nested_folder_and_never_unpickles(tmp_path: Path) -> None:
    import pickle

    ckpt = CheckpointDir(tmp_path / "a" / "b")
    ckpt.save(_module(), {"n": 1}, _state(0))
    ckpt.save(_module(), {"n": 2}, _state(0))  # the same epoch again: the folder exists
    assert CheckpointDir(tmp_path / "c" / "d").save_weights("w.safetensors", _module()).exists()
    state = ckpt.read_state("run-a")
    assert state is not None and ckpt.load(state, torch.nn.Linear(3, 2)) == {"n": 2}
    torch.save({"n": _Stop()}, tmp_path / "a" / "b" / state["optimizer"])  # a pickled object
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load(state, torch.nn.Linear(3, 2))

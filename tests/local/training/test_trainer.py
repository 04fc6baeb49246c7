"""The local trainer: metric lines, checkpoints and resume, bad input, and model quality."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pcamflow.artifacts import Manifests, ModelArtifact, TuningResult
from pcamflow.config import Settings
from pcamflow.errors import ConfigError, DataError, DivergedError, HyperparameterError, ImageError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.model.archive import load_model_archive
from pcamflow.local.model.resnet import build_model
from pcamflow.local.training import trainer as trainer_module
from pcamflow.local.training.engine import build_optimizer, build_schedule
from pcamflow.local.training.trainer import LocalTrainer, train_model
from pcamflow.metric_lines import parse_metric_lines
from pcamflow.stages import Context

FAST = Hyperparameters(num_layers=20, image_shape="3,32,32", resize=32, epochs=2,
                       mini_batch_size=16, optimizer="adam", learning_rate=0.003)
SERIAL = LocalExtensions(num_workers=0, device="cpu")


def test_trains_prints_metric_lines_and_writes_an_archive(
    small_pcam: tuple[Manifests, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests, _ = small_pcam
    hp = attrs.evolve(FAST, augmentation_type="crop_color_transform", checkpoint_frequency=1,
                      lr_scheduler_step="1", lr_scheduler_factor=0.5)
    ext = attrs.evolve(SERIAL, dihedral=True, stain_jitter=0.05, num_workers=1)
    seen: list[tuple[int, dict]] = []
    outcome = train_model(manifests, hp, ext, tmp_path, seed=3,
                          epoch_callback=lambda e, m: seen.append((e, m)), progress=False)
    out = capsys.readouterr().out
    assert "Epoch[0] Train-accuracy=" in out and "Epoch[1] Validation-accuracy=" in out
    parsed = parse_metric_lines(out)
    assert [p["epoch"] for p in parsed] == [0, 1] == [e for e, _ in seen]
    assert [p["validation:accuracy"] for p in parsed] == [
        round(h["validation:accuracy"], 6) for h in outcome.history
    ]
    assert all("validation:accuracy" in m for _, m in seen)
    assert [h["lr"] for h in outcome.history] == [0.003, 0.0015]
    assert 0 <= outcome.metrics["validation:accuracy"] <= 1
    assert outcome.metrics["validation:accuracy"] == max(h["validation:accuracy"]
                                                         for h in outcome.history)
    model = load_model_archive(outcome.archive)
    assert model.meta.hyperparameters["num_training_samples"] == str(manifests.counts["train"])
    assert model.meta.extensions == {"dihedral": True, "stain_jitter": 0.05}
    assert model.meta.image_shape == (3, 32, 32) and model.meta.resize == 32
    import tarfile

    with tarfile.open(outcome.archive) as tar:  # checkpoint_frequency=1 keeps both epochs
        assert {"checkpoints/model-0001.safetensors", "checkpoints/model-0002.safetensors"} <= set(
            tar.getnames())


def test_parse_metric_lines_reads_algorithm_logs() -> None:
    log = (
        "[11/25/2026 10:00:00 INFO 1] Epoch[0] Batch [20]\tSpeed: 120.1 samples/sec\n"
        "[11/25/2026 10:00:05 INFO 1] Epoch[0] Train-accuracy=0.712500\n"
        "[11/25/2026 10:00:05 INFO 1] Epoch[0] Train-top_k_accuracy_5=0.99\n"
        "[11/25/2026 10:00:05 INFO 1] Epoch[0] Time cost=12.3\n"
        "[11/25/2026 10:00:07 INFO 1] Epoch[0] Validation-accuracy=0.687500\n"
        "Epoch[1] Train-accuracy=0.8\nEpoch[1] Validation-accuracy=nan\n"
    )
    assert parse_metric_lines(log) == [
        {"epoch": 0, "train:accuracy": 0.7125, "train:top_k_accuracy_5": 0.99,
         "validation:accuracy": 0.6875},
        {"epoch": 1, "train:accuracy": 0.8, "validation:accuracy": pytest.approx(float("nan"),
                                                                                nan_ok=True)},
    ]
    assert parse_metric_lines("no metrics here") == []


def _epoch_rates(hp: Hyperparameters, epochs: int, saved: dict | None = None) -> list[float]:
    """The rate of each epoch as training sees it: the optimizer's, stepped once an epoch."""
    optimizer = build_optimizer(hp, [torch.nn.Parameter(torch.zeros(1))])
    schedule = build_schedule(hp, optimizer)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_learning_rate_schedule_and_optimizers() -> None:
    hp = Hyperparameters(learning_rate=0.1, lr_scheduler_step="2,4", lr_scheduler_factor=0.5,
                         epochs=6)
    assert _epoch_rates(hp, 6) == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert _epoch_rates(attrs.evolve(hp, lr_scheduler_step=None), 3) == [0.1, 0.1, 0.1]
    params = [torch.nn.Parameter(torch.zeros(1))]
    nag = build_optimizer(attrs.evolve(hp, optimizer="nag", momentum=0.8), params)
    assert nag.defaults["nesterov"] and nag.defaults["momentum"] == 0.8
    adam = build_optimizer(attrs.evolve(hp, optimizer="adam", beta_1=0.8, eps=1e-6), params)
    assert adam.defaults["betas"] == (0.8, 0.999) and adam.defaults["weight_decay"] == 0
    rms = build_optimizer(attrs.evolve(hp, optimizer="rmsprop", gamma=0.95), params)
    assert rms.defaults["alpha"] == 0.95


def test_the_schedule_is_exactly_learning_rate_times_factor_to_the_steps_passed() -> None:
    steps = (1, 2, 3, 5, 8)
    hp = Hyperparameters(learning_rate=0.003, lr_scheduler_step=",".join(map(str, steps)),
                         lr_scheduler_factor=0.3, epochs=10)
    expected = [0.003 * 0.3 ** sum(epoch >= s for s in steps) for epoch in range(10)]
    assert _epoch_rates(hp, 10) == expected  # exact: no drift from repeated multiplication


def test_the_schedule_state_saved_weights_only_continues_the_schedule(tmp_path: Path) -> None:
    hp = Hyperparameters(learning_rate=0.003, lr_scheduler_step="2,3,5",
                         lr_scheduler_factor=0.3, epochs=7)
    optimizer = build_optimizer(hp, [torch.nn.Parameter(torch.zeros(1))])
    schedule = build_schedule(hp, optimizer)
    for _ in range(3):
        optimizer.step()
        schedule.step()
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()},
               tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert _epoch_rates(hp, 3) + _epoch_rates(hp, 4, saved) == _epoch_rates(hp, 7)


@pytest.mark.parametrize("written_by", ["this version", "an older version"])
def test_a_resumed_run_continues_the_schedule(small_pcam: tuple[Manifests, dict],
                                              tmp_path: Path, written_by: str) -> None:
    class Stop(Exception):
        pass

    def stop(epoch: int, metrics: dict) -> None:
        raise Stop

    hp = attrs.evolve(FAST, lr_scheduler_step="1", lr_scheduler_factor=0.5)
    with pytest.raises(Stop):
        train_model(small_pcam[0], hp, SERIAL, tmp_path, epoch_callback=stop, progress=False)
    if written_by == "an older version":  # its checkpoints held no schedule state
        state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
        path = tmp_path / "checkpoints" / state["optimizer"]
        extra = torch.load(path, weights_only=True)
        del extra["schedule"]
        for group in extra["optimizer"]["param_groups"]:
            del group["initial_lr"]
        torch.save(extra, path)
    outcome = train_model(small_pcam[0], hp, SERIAL, tmp_path, progress=False)
    assert [h["lr"] for h in outcome.history] == [0.003, 0.0015]


def test_early_stopping_stops_when_validation_stalls(
    small_pcam: tuple[Manifests, dict], tmp_path: Path
) -> None:
    manifests, _ = small_pcam
    # a relative tolerance of 100% is never beaten: training stops once min_epochs have run
    hp = attrs.evolve(FAST, epochs=5, early_stopping=True, early_stopping_min_epochs=2,
                      early_stopping_patience=1, early_stopping_tolerance=1.0)
    outcome = train_model(manifests, hp, SERIAL, tmp_path, progress=False)
    assert len(outcome.history) == 2


def test_epoch_callback_can_stop_training(small_pcam: tuple[Manifests, dict],
                                          tmp_path: Path) -> None:
    class Pruned(Exception):
        pass

    def prune(epoch: int, metrics: dict) -> None:
        raise Pruned(epoch)

    with pytest.raises(Pruned):
        train_model(small_pcam[0], FAST, SERIAL, tmp_path, epoch_callback=prune, progress=False)
    assert (tmp_path / "checkpoints" / "state.json").exists()  # the epoch's work is kept


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_bad_image_in_manifest_is_named(small_pcam: tuple[Manifests, dict], tmp_path: Path,
                                        damage: str, pcam_tools: tuple) -> None:
    write_manifests = pcam_tools[1]
    splits = small_pcam[1]
    x, y = splits["train"]
    bad = write_manifests(tmp_path / "images", {"train": (x[:20], y[:20]),
                                                "valid": splits["valid"]})
    lines = Path(bad.manifests["train"]).read_text().splitlines()
    victim = Path(json.loads(lines[7])["source-ref"].removeprefix("file://"))
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(ImageError, match=victim.name):
        train_model(bad, FAST, SERIAL, tmp_path / "train", progress=False)


def test_malformed_manifest_is_a_data_error(small_pcam: tuple[Manifests, dict],
                                            tmp_path: Path) -> None:
    broken = tmp_path / "train.manifest"
    broken.write_text('{"source-ref": "file:///x.jpg"}\n')
    manifests = attrs.evolve(small_pcam[0], manifests={**small_pcam[0].manifests,
                                                       "train": str(broken)})
    with pytest.raises(DataError, match=r"train\.manifest"):
        train_model(manifests, FAST, SERIAL, tmp_path / "out", progress=False)


def test_nan_loss_stops_with_a_clear_error(small_pcam: tuple[Manifests, dict],
                                           tmp_path: Path) -> None:
    weights = build_model(18, 2).state_dict()
    weights["stem.0.weight"] = torch.full_like(weights["stem.0.weight"], float("nan"))
    path = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    hp = attrs.evolve(FAST, num_layers=18, use_pretrained_model=1, epochs=1)
    ext = attrs.evolve(SERIAL, weights_file=str(path))
    with pytest.raises(DivergedError, match="loss became nan at epoch 0"):
        train_model(small_pcam[0], hp, ext, tmp_path / "out", progress=False)


def _context(tmp_path: Path, settings: Settings, *artifacts: object) -> Context:
    return Context(settings=settings, run_dir=tmp_path, stage_dir=tmp_path / "train",
                   artifacts={type(a).__name__: a for a in artifacts}, stage_name="train")


@pytest.mark.parametrize(
    ("train", "error", "named"),
    [
        ({"multi_label": 1}, HyperparameterError, "multi_label"),
        ({"num_layers": 18, "use_pretrained_model": 1}, HyperparameterError,
         "use_pretrained_model"),
        ({"num_layers": 18, "use_pretrained_model": 1,
          "extensions": {"weights_file": "/nonexistent.safetensors"}}, ConfigError,
         "weights_file"),
    ],
)
def test_validate_rejects_what_cannot_run_locally(tmp_path: Path, train: dict, error: type,
                                                  named: str) -> None:
    settings = Settings.from_dict({"train": train})
    with pytest.raises(error, match=named):
        LocalTrainer().validate(_context(tmp_path, settings))
    assert not (tmp_path / "train").exists()  # nothing was done


def test_validate_checks_tuned_hyperparameters(tmp_path: Path) -> None:
    settings = Settings.from_dict({"train": {"num_layers": 20, "epochs": 3}})
    tuned = TuningResult(best_hyperparameters={"checkpoint_frequency": "5"})
    with pytest.raises(HyperparameterError, match="checkpoint_frequency"):
        LocalTrainer().validate(_context(tmp_path, settings, tuned))


def test_local_trainer_stage_uses_tuned_values(small_pcam: tuple[Manifests, dict],
                                               tmp_path: Path) -> None:
    settings = Settings.from_dict({
        "pipeline": {"seed": 1},
        "train": {"num_layers": 20, "image_shape": "3,32,32", "resize": 32, "epochs": 1,
                  "mini_batch_size": 16, "extensions": {"num_workers": 0}},
    })
    tuned = TuningResult(best_hyperparameters={"optimizer": "adam", "learning_rate": "0.002"})
    stage = LocalTrainer(progress=False)
    context = _context(tmp_path, settings, small_pcam[0], tuned)
    stage.validate(context)
    artifact = stage.run(context)
    assert isinstance(artifact, ModelArtifact) and artifact.exists()
    assert artifact.hyperparameters["optimizer"] == "adam"
    assert artifact.hyperparameters["learning_rate"] == "0.002"
    assert artifact.hyperparameters["num_training_samples"] == "48"
    assert "validation:accuracy" in artifact.metrics


def test_the_trainer_stage_writes_its_metric_lines_as_history_json_across_a_resume(
    small_pcam: tuple[Manifests, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_dict({
        "train": {"num_layers": 20, "image_shape": "3,16,16", "resize": 16, "epochs": 2,
                  "mini_batch_size": 16, "optimizer": "adam", "learning_rate": 0.003,
                  "extensions": {"num_workers": 0}},
    })
    stage = LocalTrainer(progress=False)
    context = _context(tmp_path, settings, small_pcam[0])

    def interrupted(*args: object, **kwargs: object) -> None:
        # Ctrl-C as epoch 1 reports, once epoch 0 is checkpointed
        if str(args[0]).startswith("Epoch[1]"):
            raise KeyboardInterrupt
        print(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "print", interrupted, raising=False)
    with pytest.raises(KeyboardInterrupt):
        stage.run(context)
    monkeypatch.delattr(trainer_module, "print")
    history_file = context.stage_dir / "history.json"
    assert not history_file.exists()
    first = capsys.readouterr().out

    stage.run(context)
    second = capsys.readouterr().out
    assert "Resuming from the checkpoint of epoch 0" in second
    assert [entry["epoch"] for entry in parse_metric_lines(second)] == [1]
    history = json.loads(history_file.read_text())
    assert history == parse_metric_lines(first + second)  # epoch 0 from the first run's log
    kept = json.loads((context.stage_dir / "checkpoints" / "state.json").read_text())["history"]
    assert [e["epoch"] for e in history] == [e["epoch"] for e in kept] == [0, 1]
    for parsed, state in zip(history, kept, strict=True):
        assert parsed["validation:accuracy"] == round(state["validation:accuracy"], 6)
        assert parsed["train:cross_entropy"] == round(state["train:cross_entropy"], 6)


_CHILD = """
import sys, time
from pathlib import Path
from pcamflow.artifacts import Manifests
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.training.trainer import train_model

manifests = Manifests.from_json(Path(sys.argv[1]).read_text())
marker = Path(sys.argv[3]) if len(sys.argv) > 3 else None

def stall(epoch, metrics):
    if marker is not None and epoch == 0:
        marker.write_text("checkpointed")
        time.sleep(600)  # killed here

hp = Hyperparameters(num_layers=20, image_shape="3,32,32", resize=32, epochs=2,
                     mini_batch_size=16, optimizer="adam", learning_rate=0.003,
                     lr_scheduler_step="1", lr_scheduler_factor=0.5)
outcome = train_model(manifests, hp, LocalExtensions(num_workers=1), Path(sys.argv[2]),
                      epoch_callback=stall, progress=False)
print("HISTORY", len(outcome.history))
print("RATES", *[h["lr"] for h in outcome.history])
"""


@pytest.mark.slow
def test_training_killed_with_sigkill_resumes_and_finishes(
    small_pcam: tuple[Manifests, dict], tmp_path: Path
) -> None:
    spec = tmp_path / "manifests.json"
    spec.write_text(small_pcam[0].to_json())
    out, marker = tmp_path / "train", tmp_path / "marker"
    cmd = [sys.executable, "-c", _CHILD, str(spec), str(out)]
    child = subprocess.Popen([*cmd, str(marker)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert child.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    first = child.communicate()[0]
    assert child.returncode == -signal.SIGKILL
    assert [p["epoch"] for p in parse_metric_lines(first)] == [0]
    assert not (out / "model.tar.gz").exists()

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "Resuming from the checkpoint of epoch 0" in second
    assert [p["epoch"] for p in parse_metric_lines(second)] == [1]
    assert "HISTORY 2" in second
    assert "RATES 0.003 0.0015" in second  # the schedule goes on where the killed run left it
    assert load_model_archive(out / "model.tar.gz").meta.num_layers == 20


def _colour_features(x: np.ndarray) -> np.ndarray:
    pixels = x.astype(np.float64) / 255.0
    return np.concatenate([pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2))], axis=1)


@pytest.mark.slow
def test_quality_beats_the_colour_baseline_on_synthetic_pcam(tmp_path: Path,
                                                              pcam_tools: tuple) -> None:
    synthetic_splits, write_manifests = pcam_tools
    # the easy task (difficulty 0): a short training must all but solve it
    splits = synthetic_splits(tmp_path, 256, 64, 128, seed=7, difficulty=0.0)
    manifests = write_manifests(tmp_path / "images", {k: splits[k] for k in ("train", "valid")})
    hp = attrs.evolve(FAST, epochs=3)
    outcome = train_model(manifests, hp, attrs.evolve(SERIAL, dihedral=True), tmp_path / "m",
                          seed=0, progress=False)
    x_test, y_test = splits["test"]
    scores = load_model_archive(outcome.archive).predict_images(x_test)[:, 1]
    model_auc = roc_auc_score(y_test, scores)
    baseline = LogisticRegression(max_iter=1000).fit(_colour_features(splits["train"][0]),
                                                     splits["train"][1])
    baseline_auc = roc_auc_score(y_test, baseline.predict_proba(_colour_features(x_test))[:, 1])
    assert baseline_auc <= 0.75, f"colour statistics alone give AUC {baseline_auc:.3f}"
    assert model_auc >= 0.95, f"the trained model reaches only AUC {model_auc:.3f}"

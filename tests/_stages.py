"""Small, fast stages over real files, for testing the pipeline runner."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pcamflow import atomic_write
from pcamflow.artifacts import ImageDataset, Manifests, ModelArtifact
from pcamflow.stages import Context, DataConverter, ManifestBuilder, Trainer


def calls(run_dir: Path) -> list[str]:
    """The stage names that ran, in order, as the stages logged them."""
    log = Path(run_dir) / "calls.log"
    return log.read_text().split() if log.exists() else []


def _log(context: Context) -> None:
    with open(context.run_dir / "calls.log", "a") as handle:
        handle.write(context.stage_name + "\n")


class FileConverter(DataConverter):
    def run(self, context: Context) -> ImageDataset:
        _log(context)
        root = context.stage_dir / "images"
        (root / "train" / "0").mkdir(parents=True, exist_ok=True)
        (root / "train" / "0" / "train_000000.jpg").write_bytes(b"\xff\xd8stand-in\xff\xd9")
        return ImageDataset(root=str(root), counts={"train": {"0": 1}})


class FileManifests(ManifestBuilder):
    def run(self, context: Context) -> Manifests:
        _log(context)
        images = context.input(ImageDataset)
        path = context.stage_dir / "train.manifest"
        line = {"source-ref": f"file://{images.root}/train/0/train_000000.jpg", "class": "0"}
        with atomic_write(path) as handle:
            handle.write(json.dumps(line) + "\n")
        return Manifests(
            manifests={"train": str(path)}, counts={"train": 1}, image_root=images.root
        )


class FlakyTrainer(Trainer):
    """Fails halfway (after writing part of its output) while ``run_dir/fail-train`` exists."""

    def run(self, context: Context) -> ModelArtifact:
        _log(context)
        context.input(Manifests)
        target = context.stage_dir / "model.tar.gz"
        if (context.run_dir / "fail-train").exists():
            with atomic_write(target, "wb") as handle:
                handle.write(b"half a model")
                raise RuntimeError("disk full halfway through the model")
        if (context.run_dir / "interrupt-train").exists():
            raise KeyboardInterrupt
        if (context.run_dir / "slow-train").exists():
            time.sleep(60)
        with atomic_write(target, "wb") as handle:
            handle.write(b"model bytes")
        epochs = context.settings.train.hyperparameters.epochs
        return ModelArtifact(uri=str(target), hyperparameters={"epochs": str(epochs)})


def pipeline():
    from pcamflow.pipeline import Pipeline

    return Pipeline(
        [("convert", FileConverter()), ("manifests", FileManifests()), ("train", FlakyTrainer())]
    )

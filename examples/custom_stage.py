"""pcamflow as a library: a pipeline built in Python, with one stage replaced by your own.

    python examples/custom_stage.py [WORKDIR]

``QuickManifests`` subclasses the local ManifestBuilder: it builds the manifests as usual, then
keeps only a balanced subset of the training lines (validation and test stay whole), for quick
experiments on a laptop. The rest of the pipeline is pcamflow's own local stages.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import attrs

from pcamflow import Manifests, Pipeline, Settings, atomic_write
from pcamflow.data.convert import LocalConverter
from pcamflow.data.manifests import LocalManifestBuilder, read_manifest
from pcamflow.data.synth import write_synthetic_pcam
from pcamflow.errors import ConfigError
from pcamflow.local.evaluation.evaluator import LocalEvaluator
from pcamflow.local.training.trainer import LocalTrainer
from pcamflow.stages import Context


class QuickManifests(LocalManifestBuilder):
    """The local manifests, with the training split cut to ``per_class`` images per class."""

    def __init__(self, per_class: int = 300) -> None:
        super().__init__()
        self.per_class = per_class

    def options(self) -> dict[str, int]:
        # part of the stage's fingerprint: changing per_class re-runs this stage and later ones
        return {"per_class": self.per_class}

    def validate(self, context: Context) -> None:
        super().validate(context)
        if self.per_class < 1:
            raise ConfigError(f"QuickManifests.per_class: {self.per_class} must be at least 1")

    def run(self, context: Context) -> Manifests:
        full = super().run(context)
        kept: list[tuple[str, int]] = []
        seen: collections.Counter[int] = collections.Counter()
        for uri, label in read_manifest(full.manifests["train"]):
            if seen[label] < self.per_class:
                seen[label] += 1
                kept.append((uri, label))
        path = Path(context.stage_dir) / "train-quick.manifest"
        with atomic_write(path) as handle:
            for uri, label in kept:
                handle.write(json.dumps({"source-ref": uri, "class": str(label)}) + "\n")
        return attrs.evolve(
            full,
            manifests={**full.manifests, "train": str(path)},
            counts={**full.counts, "train": len(kept)},
        )


def main(workdir: str | Path = "runs/custom-stage", *, sizes: dict[str, int] | None = None,
         per_class: int = 300, epochs: int = 3) -> dict[str, float | None]:
    """Make synthetic data, run the pipeline with QuickManifests, return the test metrics."""
    workdir = Path(workdir)
    sizes = sizes or {"train": 1200, "valid": 300, "test": 300}
    source = workdir / "pcam"
    if not (source / "camelyonpatch_level_2_split_test_y.h5").exists():
        write_synthetic_pcam(source, seed=0, **sizes)

    settings = Settings.from_dict(
        {
            "pipeline": {"run_dir": str(workdir / "run"), "seed": 0},
            "data": {"source": str(source)},
            "train": {"num_layers": 20, "image_shape": "3,48,48", "resize": 48,
                      "epochs": epochs, "mini_batch_size": 32, "optimizer": "adam",
                      "learning_rate": 0.002, "extensions": {"dihedral": True}},
            "evaluate": {"bootstrap": 200},
        }
    )
    pipeline = Pipeline(
        [
            ("convert", LocalConverter()),
            ("manifests", QuickManifests(per_class=per_class)),
            ("train", LocalTrainer()),
            ("evaluate", LocalEvaluator()),
        ]
    )
    result = pipeline.run(settings)
    metrics = result["evaluate"].metrics  # type: ignore[attr-defined]
    print(f"trained on {result['manifests'].counts['train']} images; "  # type: ignore[attr-defined]
          f"test accuracy {metrics['accuracy']:.3f}, ROC AUC {metrics['roc_auc']:.3f}")
    return metrics


if __name__ == "__main__":
    main(*sys.argv[1:2])

"""The image counts a plan uses: a finished run's, counted in data.source, or PCam's sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
from sm_helpers import BUCKET, settings_for

from pcamflow.artifacts import Manifests
from pcamflow.pipeline import Pipeline
from pcamflow.registry import Registry
from pcamflow.sagemaker.planning import (
    StagePlanner,
    planned_counts,
    planned_manifests,
    planned_resolved,
    source_counts,
)
from pcamflow.stages import Context, ManifestBuilder

ESTIMATED = "image counts are estimates ({}; no finished manifests stage yet)"


def _labels(folder: Path, **sizes: int) -> Path:
    """PCam label files (``camelyonpatch_level_2_split_<split>_y.h5``, key ``y``) of ``sizes``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, size in sizes.items():
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as handle:
            handle["y"] = np.zeros((size, 1, 1, 1), dtype=np.uint8)
    return folder


def _context(settings: Any, artifacts: dict[str, Any] | None = None) -> Context:
    return Context(settings=settings, run_dir=settings.run_dir,
                   stage_dir=settings.run_dir / "train", artifacts=artifacts or {},
                   stage_name="train")


def test_a_finished_manifests_stage_gives_its_counts(tmp_path: Path) -> None:
    manifests = Manifests(manifests={"train": "s3://b/train.manifest"},
                          counts={"train": 1234, "valid": 56, "test": 78})
    settings = settings_for(tmp_path, data={"source": str(tmp_path / "nowhere")})
    assert planned_counts(_context(settings, {"manifests": manifests})) == (
        {"train": 1234, "valid": 56, "test": 78}, None)


def test_without_one_the_counts_are_read_from_the_label_files(tmp_path: Path) -> None:
    source = _labels(tmp_path / "pcam", train=40, valid=7, test=9)
    settings = settings_for(tmp_path, data={"source": str(source)})
    assert source_counts(settings) == ({"train": 40, "valid": 7, "test": 9}, True)
    empty = Manifests(manifests={"train": "s3://b/train.manifest"}, counts={})
    assert planned_counts(_context(settings, {"manifests": empty})) == (
        {"train": 40, "valid": 7, "test": 9}, ESTIMATED.format("counted in data.source"))
    capped = settings_for(tmp_path, data={"source": str(source)},
                          manifests={"max_per_class": 4})
    assert planned_counts(_context(capped))[0] == {"train": 8, "valid": 7, "test": 8}


def test_without_label_files_the_counts_are_pcams(tmp_path: Path) -> None:
    source = _labels(tmp_path / "pcam", valid=7)  # the other splits' files are missing
    (source / "camelyonpatch_level_2_split_test_y.h5").write_bytes(b"not HDF5")
    settings = settings_for(tmp_path, data={"source": str(source)})
    assert source_counts(settings) == ({"train": 262_144, "valid": 7, "test": 32_768}, False)
    nothing = settings_for(tmp_path, data={"source": str(tmp_path / "nowhere"),
                                           "splits": ["train", "test"]})
    assert planned_counts(_context(nothing)) == (
        {"train": 262_144, "test": 32_768}, ESTIMATED.format("PCam's split sizes"))


class _S3Manifests(ManifestBuilder):
    """Manifests already in S3, as a plugin stage might hand them on."""

    requires = ()

    def run(self, context: Context) -> Manifests:
        return Manifests(manifests={s: f"s3://pcamflow-test-bucket/m/{s}.manifest"
                                    for s in ("train", "valid", "test")},
                         counts={"train": 20, "valid": 6, "test": 8})


def test_the_plan_of_a_run_takes_the_counts_its_manifests_stage_recorded(
    aws_env: Any, tmp_path: Path
) -> None:
    registry = Registry.from_entry_points()
    registry.register("s3-test", _S3Manifests)
    stages = {"converter": "none", "manifest_builder": "s3-test", "trainer": "none",
              "evaluator": "none"}
    settings = settings_for(tmp_path, pipeline=stages)
    assert Pipeline.from_settings(settings, registry).run(settings).ran == ("manifests",)
    training = settings_for(tmp_path, pipeline={**stages, "trainer": "sagemaker"})
    plan = Pipeline.from_settings(training, registry).plan(training)
    create = next(r for r in plan.requests if r.operation == "CreateTrainingJob")
    assert create.params["HyperParameters"]["num_training_samples"] == "20"
    assert not any("estimates" in note for note in plan.notes)


def test_the_manifests_planned_are_the_runs_or_where_the_run_will_put_them(
    tmp_path: Path
) -> None:
    source = _labels(tmp_path / "pcam", train=40, valid=7, test=9)
    settings = settings_for(tmp_path, data={"source": str(source)})
    resolved = planned_resolved(settings)
    context = _context(settings)
    planner = StagePlanner(context, resolved.region)
    manifests, counts = planned_manifests(context, resolved, planner)
    assert counts == manifests.counts == {"train": 40, "valid": 7, "test": 9}
    run = f"s3://{BUCKET}/{settings.aws.prefix}/{settings.run_dir.resolve().name}-<run id>"
    assert manifests.manifests == {split: f"{run}/manifests/{split}.manifest"
                                   for split in ("train", "valid", "test")}
    assert planner.notes == [ESTIMATED.format("counted in data.source")]

    finished = Manifests(manifests={"train": "s3://b/m/train.manifest"}, counts={"train": 12})
    context = _context(settings, {"manifests": finished})
    planner = StagePlanner(context, resolved.region)
    assert planned_manifests(context, resolved, planner) == (finished, {"train": 12})
    assert planner.notes == []

"""The local converter and manifest builder as pipeline stages, and the data commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcamflow.artifacts import ImageDataset, Manifests
from pcamflow.cli import main
from pcamflow.config import Settings
from pcamflow.data.convert import LocalConverter
from pcamflow.data.manifests import LocalManifestBuilder, read_manifest
from pcamflow.pipeline import Pipeline
from pcamflow.registry import Registry
from pcamflow.testing import check_stage


def _settings(pcam_dir: Path, run_dir: Path, **tables: dict) -> Settings:
    return Settings.from_dict({
        "pipeline": {"run_dir": str(run_dir), "seed": 4, "trainer": "none",
                     "evaluator": "none"},
        "data": {"source": str(pcam_dir)},
        **tables,
    })


def test_stages_honour_the_contract() -> None:
    check_stage(LocalConverter)
    check_stage(LocalManifestBuilder)
    registry = Registry.from_entry_points()
    assert registry.get("converter", "local") is LocalConverter
    assert registry.get("manifest_builder", "local") is LocalManifestBuilder


def test_pipeline_converts_then_builds_manifests(pcam_dir: Path, tmp_path: Path) -> None:
    settings = _settings(pcam_dir, tmp_path / "run", convert={"workers": 1},
                         manifests={"max_per_class": 6})
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    result = pipeline.run(settings)
    dataset = result.records["convert"].load_artifact()
    manifests = result.records["manifests"].load_artifact()
    assert isinstance(dataset, ImageDataset) and isinstance(manifests, Manifests)
    assert Path(dataset.root) == (tmp_path / "run" / "convert" / "images").resolve()
    assert dataset.total() == 128
    assert manifests.counts == {"train": 12, "valid": 12, "test": 12}
    assert Path(manifests.manifests["train"]).parent == (tmp_path / "run" / "manifests").resolve()
    assert all(uri.startswith("file://") for uri, _ in read_manifest(manifests.manifests["test"]))
    again = pipeline.run(settings)  # complete: nothing runs again
    assert again.ran == ()


def test_converter_validate_names_the_setting(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "nowhere", tmp_path / "run")
    with pytest.raises(Exception, match=r"data.source: .*nowhere is not a folder"):
        Pipeline.from_settings(settings, Registry.from_entry_points()).run(settings)


def test_cli_synth_convert_explore(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, images, report = tmp_path / "pcam", tmp_path / "images", tmp_path / "report"
    assert main(["-q", "synth", str(src), "--train", "20", "--valid", "8", "--test", "8",
                 "--seed", "2", "--gzip"]) == 0
    assert (src / "camelyonpatch_level_2_split_train_x.h5.gz").exists()
    assert main(["-q", "convert", str(src), str(images), "--workers", "2"]) == 0
    assert "train       20 images (class 0: 10, class 1: 10)" in capsys.readouterr().out
    assert main(["-q", "explore", str(src), str(report), "--per-class", "4"]) == 0
    stats = json.loads((report / "stats.json").read_text())
    assert stats["splits"]["valid"]["counts"] == {"0": 4, "1": 4}


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "camelyonpatch_level_2_split_train_x.h5" in err[0]

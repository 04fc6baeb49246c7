"""The examples run as a user would run them (on tiny data)."""

import importlib.util
from pathlib import Path

import pytest

from pcamflow.pipeline import read_run_record

EXAMPLES = Path(__file__).parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_custom_stage_example_runs_a_pipeline_with_a_user_subclass(tmp_path, capsys):
    example = load("custom_stage")
    metrics = example.main(tmp_path, sizes={"train": 160, "valid": 40, "test": 40},
                           per_class=50, epochs=1)
    out = capsys.readouterr().out
    assert "trained on 100 images" in out
    assert 0.0 <= metrics["accuracy"] <= 1.0
    manifest = tmp_path / "run" / "manifests" / "train-quick.manifest"
    assert len(manifest.read_text().splitlines()) == 100
    # a second run finds every stage complete and runs none again
    before = read_run_record(tmp_path / "run")
    example.main(tmp_path, sizes={"train": 160, "valid": 40, "test": 40}, per_class=50, epochs=1)
    assert read_run_record(tmp_path / "run") == before


def test_the_sagemaker_local_example_plans_without_warnings():
    """The settings of `tox -e demo-sagemaker` break no rule the algorithm documents."""
    pytest.importorskip("sagemaker.core")
    from pcamflow import Settings
    from pcamflow.pipeline import Pipeline
    from pcamflow.registry import Registry

    settings = Settings.from_toml(EXAMPLES / "sagemaker_local.toml")
    plan = Pipeline.from_settings(settings, Registry.from_entry_points()).plan(settings)
    assert plan.warnings == ()
    operations = [r.operation for r in plan.requests]
    for wanted in ("PutObject", "CreateHyperParameterTuningJob", "CreateTrainingJob",
                   "CreateTransformJob", "CreateEndpoint"):
        assert wanted in operations

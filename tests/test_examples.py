"""The examples run as a user would run them (on tiny data)."""

import importlib.util
from pathlib import Path

import pytest

from pcamflow.errors import ConfigError
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


def _validate_stages(settings, tmp_path) -> list[str]:
    """Each stage's own checks, as a run makes them before any work; the problems found."""
    from pcamflow.pipeline import Pipeline
    from pcamflow.registry import Registry
    from pcamflow.stages import Context

    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    problems = []
    for name in pipeline.names:
        context = Context(settings=settings, run_dir=tmp_path, stage_dir=tmp_path / name,
                          stage_name=name)
        try:
            pipeline[name].validate(context)
        except ConfigError as error:
            problems.append(str(error))
    return problems


def test_the_real_pcam_configuration_validates_for_both_backends(tmp_path, pcam_dir):
    import attrs

    from pcamflow.config import Settings

    settings = Settings.from_toml(EXAMPLES / "pcam.toml")
    settings = attrs.evolve(settings, data=attrs.evolve(settings.data, source=str(pcam_dir)))
    hp = settings.train.hyperparameters
    assert (hp.image_shape, hp.resize, hp.num_layers) == ("3,96,96", None, 18)  # full size
    assert hp.lr_scheduler_step and settings.train.extensions.dihedral and settings.evaluate.tta
    assert _validate_stages(settings, tmp_path) == []
    on_aws = attrs.evolve(settings, pipeline=attrs.evolve(
        settings.pipeline, converter="sagemaker", manifest_builder="sagemaker",
        trainer="sagemaker", evaluator="sagemaker"))
    # the two local-only extras are refused by name, never dropped ...
    problems = _validate_stages(on_aws, tmp_path)
    assert len(problems) == 2
    assert "train.extensions.dihedral" in problems[0] and "evaluate.tta" in problems[1]
    # ... and without them the file is a SageMaker run: its [train] is the algorithm's
    plain = attrs.evolve(on_aws, train=attrs.evolve(on_aws.train, extensions=attrs.evolve(
        on_aws.train.extensions, dihedral=False)), evaluate=attrs.evolve(on_aws.evaluate,
                                                                          tta=False))
    assert _validate_stages(plain, tmp_path) == []

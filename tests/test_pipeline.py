import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from _stages import FileConverter, FileManifests, FlakyTrainer, calls, pipeline
from pcamflow import Pipeline, Settings
from pcamflow.artifacts import ModelArtifact
from pcamflow.errors import (
    ConfigError,
    MissingInputError,
    PipelineDefinitionError,
    PlacementError,
    StageNameNotUniqueError,
)
from pcamflow.pipeline import RunObserver, read_run_record


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "run")}})


def with_train(settings: Settings, **changes) -> Settings:
    hp = attrs.evolve(settings.train.hyperparameters, **changes)
    return attrs.evolve(settings, train=attrs.evolve(settings.train, hyperparameters=hp))


def test_a_full_run_records_every_stage_and_a_rerun_skips_them(settings):
    result = pipeline().run(settings)
    assert result.ran == ("convert", "manifests", "train")
    record = json.loads((settings.run_dir / "run.json").read_text())
    stages = record["stages"]
    assert [stages[n]["status"] for n in ("convert", "manifests", "train")] == ["completed"] * 3
    for stage in stages.values():
        assert stage["fingerprint"] and stage["started"] and stage["ended"]
        assert stage["duration_s"] >= 0 and stage["error"] is None
    assert isinstance(result["train"], ModelArtifact)
    assert Path(result["train"].uri).read_bytes() == b"model bytes"

    again = pipeline().run(settings)
    assert again.ran == ()
    assert calls(settings.run_dir) == ["convert", "manifests", "train"]


def test_a_run_gets_an_id_that_its_reruns_keep_and_another_folder_does_not_share(
    settings, tmp_path
):
    from pcamflow._io import run_id

    assert run_id(settings.run_dir) is None
    pipeline().run(settings)
    first = run_id(settings.run_dir)
    assert first and json.loads((settings.run_dir / "run.json").read_text())["run_id"] == first
    pipeline().run(settings, force=True)
    assert run_id(settings.run_dir) == first
    other = Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "elsewhere" / "run")}})
    pipeline().run(other)
    assert run_id(other.run_dir) not in (None, first)


def test_a_stage_failing_halfway_leaves_no_artifact_and_the_rerun_resumes_there(settings):
    (settings.run_dir).mkdir(parents=True)
    (settings.run_dir / "fail-train").touch()
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline().run(settings)
    records = read_run_record(settings.run_dir)
    assert records["convert"].status == "completed"
    assert records["manifests"].status == "completed"
    assert records["train"].status == "failed"
    assert "disk full halfway" in records["train"].error
    assert records["train"].artifact is None
    train_dir = settings.run_dir / "train"
    assert not (train_dir / "model.tar.gz").exists()
    assert not list(train_dir.glob("*.tmp")), "the half-written file was left behind"

    (settings.run_dir / "fail-train").unlink()
    result = pipeline().run(settings)
    assert result.ran == ("train",)
    assert read_run_record(settings.run_dir)["train"].status == "completed"


def test_an_interrupted_stage_is_recorded_and_resumed(settings):
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "interrupt-train").touch()
    with pytest.raises(KeyboardInterrupt):
        pipeline().run(settings)
    assert read_run_record(settings.run_dir)["train"].status == "interrupted"
    (settings.run_dir / "interrupt-train").unlink()
    assert pipeline().run(settings).ran == ("train",)


def test_a_real_process_interrupted_with_ctrl_c_records_interrupted(settings, tmp_path):
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "slow-train").touch()
    script = tmp_path / "run_it.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from _stages import pipeline\n"
        "from pcamflow import Settings\n"
        f"settings = Settings.from_dict({{'pipeline': {{'run_dir': {str(settings.run_dir)!r}}}}})\n"
        "pipeline().run(settings)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = (
            read_run_record(settings.run_dir) if (settings.run_dir / "run.json").exists() else {}
        )
        if "train" in records and records["train"].status == "running":
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the training stage never started")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert read_run_record(settings.run_dir)["train"].status == "interrupted"
    (settings.run_dir / "slow-train").unlink()
    assert pipeline().run(settings).ran == ("train",)


def test_changing_a_stage_setting_reruns_that_stage_and_keeps_the_ones_before(settings):
    pipeline().run(settings)
    changed = with_train(settings, epochs=7)
    result = pipeline().run(changed)
    assert result.ran == ("train",)
    assert result["train"].hyperparameters == {"epochs": "7"}


def test_changing_an_upstream_setting_reruns_downstream(settings):
    pipeline().run(settings)
    changed = attrs.evolve(settings, data=attrs.evolve(settings.data, source="elsewhere"))
    assert pipeline().run(changed).ran == ("convert", "manifests", "train")


def test_a_deleted_artifact_makes_its_stage_incomplete(settings):
    result = pipeline().run(settings)
    Path(result["train"].uri).unlink()
    assert pipeline().run(settings).ran == ("train",)


def test_force_from_and_only(settings):
    pipeline().run(settings)
    assert pipeline().run(settings, force=True).ran == ("convert", "manifests", "train")
    assert pipeline().run(settings, from_stage="manifests").ran == ("manifests", "train")
    assert pipeline().run(settings, only="manifests").ran == ("manifests",)


def test_only_needs_its_inputs_from_an_earlier_run(settings):
    with pytest.raises(MissingInputError, match="--only train: needs a complete Manifests"):
        pipeline().run(settings, only="train")
    assert not (settings.run_dir / "train").exists()


def test_unknown_stage_names_in_options_are_errors(settings):
    with pytest.raises(PipelineDefinitionError, match="--from 'nope': no such stage"):
        pipeline().run(settings, from_stage="nope")


def test_the_pipeline_is_checked_when_built():
    with pytest.raises(StageNameNotUniqueError, match="'convert' is used twice"):
        Pipeline([("convert", FileConverter()), ("convert", FileConverter())])
    with pytest.raises(MissingInputError, match="needs a Manifests"):
        Pipeline([("convert", FileConverter()), ("train", FlakyTrainer())])
    with pytest.raises(MissingInputError, match="needs a ImageDataset"):
        Pipeline([("manifests", FileManifests())])
    with pytest.raises(PipelineDefinitionError, match="str is not a pcamflow Stage"):
        Pipeline([("convert", "FileConverter")])


class LocalFiles(FileConverter):
    writes_to = "local"


class InTheCloud(FileManifests):
    """Reads its images from and writes its manifests to an object store, as S3 stages do."""

    writes_to = "s3"
    reads_from = frozenset({"s3"})


class ReadsLocal(FlakyTrainer):
    reads_from = frozenset({"local"})


def test_a_stage_whose_input_is_made_where_it_cannot_read_it_is_refused_when_built():
    with pytest.raises(PlacementError) as caught:
        Pipeline([("convert", LocalFiles()), ("manifests", InTheCloud()),
                  ("train", ReadsLocal())])
    lines = str(caught.value).splitlines()
    assert lines == [
        "stage 'manifests' (InTheCloud) needs its ImageDataset in S3, but stage 'convert' "
        "(LocalFiles) makes it on this machine",
        "stage 'train' (ReadsLocal) needs its Manifests on this machine, but stage "
        "'manifests' (InTheCloud) makes it in S3",
    ]
    assert [(m[0], m[2]) for m in caught.value.mismatches] == [
        ("manifests", "convert"), ("train", "manifests")]
    # a stage that says nothing of places is not checked, and agreeing places pass
    Pipeline([("convert", FileConverter()), ("manifests", InTheCloud()), ("train", ReadsLocal())
              ][:2])
    Pipeline([("convert", LocalFiles()), ("manifests", FileManifests()), ("train", ReadsLocal())])


def test_from_settings_names_the_settings_that_fix_a_placement(settings):
    from pcamflow.registry import Registry

    class CloudFiles(FileConverter):
        writes_to = "s3"

    class LocalManifests(FileManifests):
        writes_to = "local"  # and reads from anywhere

    registry = Registry()
    for name, cls in [("files", LocalFiles), ("cloud-files", CloudFiles), ("cloud", InTheCloud),
                      ("local-manifests", LocalManifests), ("reads-local", ReadsLocal)]:
        registry.register(name, cls)
    mixed = attrs.evolve(settings, pipeline=attrs.evolve(
        settings.pipeline, converter="files", manifest_builder="cloud", trainer="reads-local",
        evaluator="none"))
    with pytest.raises(PlacementError) as caught:
        Pipeline.from_settings(mixed, registry)
    assert str(caught.value).splitlines() == [
        "the pipeline's stages keep their artifacts in different places:",
        "  stage 'manifests' (InTheCloud) needs its ImageDataset in S3, but stage 'convert' "
        "(LocalFiles) makes it on this machine: set pipeline.converter = 'cloud-files' or "
        "pipeline.manifest_builder = 'local-manifests'",
        "  stage 'train' (ReadsLocal) needs its Manifests on this machine, but stage "
        "'manifests' (InTheCloud) makes it in S3: set pipeline.manifest_builder = "
        "'local-manifests'",
    ]


def test_validate_reports_every_stage_problem_once(settings):
    class NoRegion(FlakyTrainer):
        def validate(self, context):
            raise ConfigError("aws.region: not set")

    class NoRegionEither(FileManifests):
        def validate(self, context):
            raise ConfigError("aws.region: not set")

    class NoTta(FlakyTrainer):
        def validate(self, context):
            raise ConfigError("evaluate.tta: local-only")

    with pytest.raises(ConfigError) as caught:
        Pipeline([("convert", FileConverter()), ("manifests", NoRegionEither()),
                  ("train", NoRegion()), ("again", NoTta())]).validate(settings)
    assert str(caught.value).splitlines() == [
        "2 problems:",
        "  aws.region: not set (stages manifests, train)",
        "  evaluate.tta: local-only (stage again)",
    ]
    # one problem is raised as the stage raised it
    with pytest.raises(MissingInputError, match="only one"):
        class Lonely(FlakyTrainer):
            def validate(self, context):
                raise MissingInputError("only one")

        Pipeline([("convert", FileConverter()), ("manifests", FileManifests()),
                  ("train", Lonely())]).validate(settings)


def test_validate_runs_for_every_stage_before_any_work(settings):
    class Picky(FlakyTrainer):
        def validate(self, context):
            raise PipelineDefinitionError("train.epochs: refused by this test")

    steps = [("convert", FileConverter()), ("manifests", FileManifests()), ("train", Picky())]
    with pytest.raises(PipelineDefinitionError, match="refused"):
        Pipeline(steps).run(settings)
    assert calls(settings.run_dir) == []


def test_a_stage_returning_the_wrong_artifact_fails_clearly(settings):
    class Wrong(FlakyTrainer):
        def run(self, context):
            return context.input(FileConverter.produces)

    steps = [("convert", FileConverter()), ("manifests", FileManifests()), ("train", Wrong())]
    with pytest.raises(
        PipelineDefinitionError, match="returned ImageDataset, expected ModelArtifact"
    ):
        Pipeline(steps).run(settings)
    assert read_run_record(settings.run_dir)["train"].status == "failed"


def test_run_json_is_never_left_half_written(settings):
    pipeline().run(settings)
    leftovers = [p for p in settings.run_dir.iterdir() if p.name.startswith(".run.json")]
    assert leftovers == []
    assert os.path.getsize(settings.run_dir / "run.json") > 0


class Recorder(RunObserver):
    """Writes down what the runner tells it."""

    def __init__(self, fail_in: str | None = None) -> None:
        self.events: list[tuple] = []
        self.fail_in = fail_in

    def _note(self, *event) -> None:
        self.events.append(event)
        if self.fail_in == event[0]:
            raise OSError(f"observer broke in {event[0]}")

    def run_started(self, run_dir, settings, stages) -> None:
        self._note("run_started", dict(stages))

    def stage_ended(self, name, record, ran) -> None:
        self._note("stage_ended", name, record.status, ran)

    def run_ended(self, result, error) -> None:
        self._note("run_ended", result.ran, type(error).__name__ if error else None)


KINDS = {"convert": "converter", "manifests": "manifest_builder", "train": "trainer"}


def test_observers_hear_of_every_stage_ran_or_found_complete(settings):
    first = Recorder()
    pipeline().run(settings, observers=[first])
    assert first.events == [
        ("run_started", KINDS),
        ("stage_ended", "convert", "completed", True),
        ("stage_ended", "manifests", "completed", True),
        ("stage_ended", "train", "completed", True),
        ("run_ended", ("convert", "manifests", "train"), None),
    ]
    again = Recorder()
    pipeline().run(settings, observers=[again], from_stage="train")
    assert again.events == [
        ("run_started", KINDS),
        ("stage_ended", "convert", "completed", False),
        ("stage_ended", "manifests", "completed", False),
        ("stage_ended", "train", "completed", True),
        ("run_ended", ("train",), None),
    ]


def test_observers_hear_of_a_failed_stage_and_the_end_of_the_run(settings):
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "fail-train").touch()
    observer = Recorder()
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline().run(settings, observers=[observer])
    assert observer.events[-2:] == [
        ("stage_ended", "train", "failed", True),
        ("run_ended", ("convert", "manifests", "train"), "RuntimeError"),
    ]


def test_an_observer_that_breaks_after_the_start_costs_no_work(settings, caplog):
    broken, other = Recorder(fail_in="stage_ended"), Recorder()
    result = pipeline().run(settings, observers=[broken, other])
    assert result.ran == ("convert", "manifests", "train")
    assert len(other.events) == 5  # the next observer still hears everything
    assert "Recorder.stage_ended failed: OSError: observer broke in stage_ended" in caplog.text


def test_an_observer_that_cannot_start_stops_the_run_before_any_stage(settings):
    with pytest.raises(OSError, match="observer broke in run_started"):
        pipeline().run(settings, observers=[Recorder(fail_in="run_started")])
    assert calls(settings.run_dir) == []


def test_run_json_records_each_stages_kind_and_the_settings_it_ran_with(settings):
    changed = with_train(settings, epochs=3)
    pipeline().run(changed)
    records = read_run_record(settings.run_dir)
    assert {name: r.kind for name, r in records.items()} == KINDS
    assert records["train"].settings == {"train": changed.to_dict()["train"]}
    assert records["train"].settings["train"]["epochs"] == 3
    assert records["convert"].settings == {
        "data": changed.to_dict()["data"], "convert": changed.to_dict()["convert"]}

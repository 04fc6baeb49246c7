from typing import ClassVar

import pytest

from _plugin import example_plugin
from _stages import FileConverter, FileManifests
from pcamflow import Settings
from pcamflow.artifacts import ImageDataset, ModelArtifact
from pcamflow.stages import Context, Stage, Trainer
from pcamflow.testing import StageContractError, check_stage

SolidColourConverter = example_plugin().SolidColourConverter


def test_a_good_stage_passes_and_runs_in_a_context(tmp_path):
    settings = Settings.from_dict({"pipeline": {"run_dir": str(tmp_path)}})
    context = Context(
        settings=settings, run_dir=tmp_path, stage_dir=tmp_path / "convert", stage_name="convert"
    )
    artifact = check_stage(SolidColourConverter, context=context, per_class=2)
    assert isinstance(artifact, ImageDataset)
    assert artifact.total() == 2 * 2 * 3
    assert check_stage(FileManifests) is None


class NoKind(Stage):
    def run(self, context): ...


class Abstract(Trainer):
    pass


class WrongOutput(Trainer):
    produces = ImageDataset

    def run(self, context): ...


class TwoArguments(Trainer):
    def run(self, context, extra): ...


class BadSection(Trainer):
    settings_sections = ("training",)

    def run(self, context): ...


class NeedsArguments(Trainer):
    def __init__(self, size):
        self.size = size

    def run(self, context): ...


class PlanWithoutContext(Trainer):
    def run(self, context): ...

    def plan(self): ...


class ServicesWithoutSettings(Trainer):
    def run(self, context): ...

    def provide_services(self, services): ...


class PlaceAsString(Trainer):
    reads_from = "s3"  # a string, where a set of places is meant

    def run(self, context): ...


class PlaceAsSet(Trainer):
    writes_to: ClassVar = {"s3"}

    def run(self, context): ...


class PlansADict(FileConverter):
    def plan(self, context):
        return {"requests": []}


class LiesAboutOutput(FileConverter):
    def run(self, context):
        return ImageDataset(root=str(context.stage_dir / "not-there"))


@pytest.mark.parametrize(
    ("cls", "rule"),
    [
        (int, "is not a subclass of pcamflow.stages.Stage"),
        (NoKind, "must subclass one of DataConverter"),
        (Abstract, "is abstract; implement run"),
        (WrongOutput, "produces ImageDataset; a trainer must produce a ModelArtifact"),
        (TwoArguments, "run() must take exactly one argument"),
        (BadSection, "settings_sections names unknown tables ['training']"),
        (NeedsArguments, "cannot be built with no arguments"),
        (PlanWithoutContext, "plan() must take exactly one argument, the context"),
        (ServicesWithoutSettings,
         "provide_services() must take exactly 2 arguments, the settings and the services"),
        (PlaceAsString, "reads_from must be a frozenset of place names or None, got 's3'"),
        (PlaceAsSet, "writes_to must be a place name"),
    ],
)
def test_a_broken_stage_is_named_with_the_rule_it_breaks(cls, rule):
    with pytest.raises(StageContractError) as caught:
        check_stage(cls)
    assert rule in str(caught.value)
    assert cls.__qualname__ in str(caught.value)


def test_running_checks_the_artifact_exists(tmp_path):
    context = Context(settings=Settings(), run_dir=tmp_path, stage_dir=tmp_path / "c")
    with pytest.raises(StageContractError, match="locations do not exist"):
        check_stage(LiesAboutOutput, context=context)
    assert ModelArtifact(uri=str(tmp_path / "x")).exists() is False


def test_running_checks_what_plan_returns(tmp_path):
    context = Context(settings=Settings(), run_dir=tmp_path, stage_dir=tmp_path / "c")
    with pytest.raises(StageContractError, match="plan\\(\\) returned dict, not a Plan or None"):
        check_stage(PlansADict, context=context)

import pytest

from _plugin import example_plugin
from pcamflow import Registry
from pcamflow.errors import DuplicateStageError, PluginLoadError, RegistryError
from pcamflow.stages import Trainer

SolidColourConverter = example_plugin().SolidColourConverter


def test_the_installed_plugin_registers_through_its_entry_point():
    registry = Registry.from_entry_points()
    assert registry.get("converter", "example.solid") is SolidColourConverter
    entry = next(r for r in registry if r.name == "example.solid")
    assert (entry.kind, entry.distribution) == ("converter", "pcamflow-example-plugin")


def test_a_broken_plugin_is_reported_by_name_and_the_others_still_load():
    registry = Registry.from_entry_points("pcamflow.stages.test_broken")
    assert registry.get("converter", "example.solid") is SolidColourConverter
    assert "trainer.example.broken" in registry.failures
    with pytest.raises(PluginLoadError) as caught:
        registry.get("trainer", "example.broken")
    message = str(caught.value)
    assert "pcamflow_example_plugin.broken:BrokenTrainer" in message
    assert "broken on purpose" in message
    assert "pcamflow-example-plugin" in message
    assert "not named '<kind>.<name>'" in registry.failures["nokind"]


def test_a_duplicate_name_raises_naming_both_sides():
    registry = Registry.from_entry_points()
    with pytest.raises(DuplicateStageError, match=r"converter\.example\.solid: registered twice"):
        registry.load_entry_points("pcamflow.stages.test_duplicates")


def test_registering_in_code():
    class Mine(Trainer):
        def run(self, context): ...

    registry = Registry()
    registry.register("mine", Mine)
    assert registry.get("trainer", "mine") is Mine
    assert ("trainer", "mine") in registry and len(registry) == 1
    registry.register("mine", Mine)  # the same class again is harmless
    with pytest.raises(DuplicateStageError):
        registry.register("mine", type("Other", (Mine,), {}))


def test_unknown_names_list_what_is_registered():
    registry = Registry.from_entry_points()
    with pytest.raises(
        RegistryError,
        match=r"converter 'nope' is not registered; registered converters: .*example\.solid",
    ):
        registry.get("converter", "nope")
    with pytest.raises(RegistryError, match="'painter' is not a stage kind"):
        registry.get("painter", "local")
    with pytest.raises(RegistryError, match="not a pcamflow Stage subclass"):
        Registry().register("x", object)  # type: ignore[arg-type]


# --- entry points as importlib.metadata makes them (EntryPoint(name, value, group)) ----------


def _registry_of(monkeypatch, *entries):
    """A registry loaded from ``entries`` (name, value) as the only ones installed."""
    from importlib.metadata import EntryPoint

    from pcamflow import registry as registry_module

    points = [EntryPoint(name, value, "pcamflow.stages") for name, value in entries]
    monkeypatch.setattr(registry_module, "_entry_points", lambda group: points)
    return Registry.from_entry_points()


def test_an_entry_whose_class_is_of_another_kind_is_a_failure_naming_it(monkeypatch):
    registry = _registry_of(
        monkeypatch, ("trainer.solid", "pcamflow_example_plugin:SolidColourConverter"),
        ("trainer.plan", "pcamflow.plan:Plan"),  # a class, but no stage at all
        ("converter.solid", "pcamflow_example_plugin:SolidColourConverter"))
    assert [r.name for r in registry] == ["solid"]  # the entries after a failure still load
    assert registry.failures["trainer.plan"] == (
        "pcamflow.plan:Plan (from unknown) is not a trainer stage class")
    assert registry.failures["trainer.solid"] == (
        "pcamflow_example_plugin:SolidColourConverter (from unknown) is not a trainer stage class")
    with pytest.raises(PluginLoadError, match=r"^trainer 'solid' could not be loaded: "
                                              r"pcamflow_example_plugin:SolidColourConverter"):
        registry.get("trainer", "solid")


def test_a_plugin_failing_with_any_error_is_recorded_and_the_others_load(monkeypatch, tmp_path):
    (tmp_path / "crashing_plugin.py").write_text("raise ZeroDivisionError('division by zero')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = _registry_of(
        monkeypatch, ("trainer.crash", "crashing_plugin:Trainer"),
        ("trainer.missing", "pcamflow_example_plugin:NoSuchTrainer"),
        ("converter.solid", "pcamflow_example_plugin:SolidColourConverter"),
        ("painter.solid", "pcamflow_example_plugin:SolidColourConverter"))
    assert registry.get("converter", "solid") is SolidColourConverter
    assert registry.failures["trainer.crash"] == (
        "crashing_plugin:Trainer (from unknown) failed to import: "
        "ZeroDivisionError: division by zero")
    assert registry.failures["trainer.missing"].startswith(
        "pcamflow_example_plugin:NoSuchTrainer (from unknown) failed to import: AttributeError")
    assert registry.failures["painter.solid"] == (
        "entry point 'painter.solid' of an unknown distribution is not named '<kind>.<name>' "
        "with a kind among converter, manifest_builder, tuner, trainer, evaluator, deployer")


def test_an_entry_with_a_kind_and_no_name_is_a_failure(monkeypatch):
    registry = _registry_of(monkeypatch, ("converter.", "pcamflow_example_plugin:GreyConverter"))
    assert "is not named '<kind>.<name>'" in registry.failures["converter."]
    assert len(registry) == 0


def test_registry_errors_name_everything_exactly():
    class Mine(Trainer):
        def run(self, context): ...

    registry = Registry()
    with pytest.raises(RegistryError) as caught:
        registry.get("painter", "x")
    assert str(caught.value) == ("'painter' is not a stage kind; kinds: converter, "
                                 "manifest_builder, tuner, trainer, evaluator, deployer")
    with pytest.raises(RegistryError) as caught:
        registry.get("trainer", "x")
    assert str(caught.value) == "trainer 'x' is not registered; registered trainers: none"
    registry.register("b", Mine)
    registry.register("a", type("Also", (Mine,), {}), distribution="dist-a")
    with pytest.raises(RegistryError) as caught:
        registry.get("trainer", "x")
    assert str(caught.value) == "trainer 'x' is not registered; registered trainers: a, b"
    assert [(r.kind, r.name, r.distribution) for r in registry] == [
        ("trainer", "a", "dist-a"), ("trainer", "b", None)]
    with pytest.raises(DuplicateStageError) as caught:
        registry.register("b", type("Other", (Mine,), {}), distribution="dist-c")
    assert str(caught.value) == f"trainer.b: registered twice, by {__name__} and by dist-c"
    with pytest.raises(DuplicateStageError) as caught:
        registry.register("a", type("Other", (Mine,), {"__module__": "other.plugin"}))
    assert str(caught.value) == "trainer.a: registered twice, by dist-a and by other.plugin"
    from pcamflow.stages import Stage

    with pytest.raises(RegistryError) as caught:
        registry.register("bare", type("Bare", (Stage,), {}))
    assert str(caught.value) == ("bare: Bare has no stage kind; subclass one of DataConverter, "
                                 "ManifestBuilder, Tuner, Trainer, Evaluator, Deployer")

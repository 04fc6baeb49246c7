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

"""The hyperparameter contract at its edges: exact bounds and messages, the algorithm's strings.

Bounds and defaults are those of AWS's "Image Classification Hyperparameters" page, with the
two documented tightenings (beta_1/beta_2 below 1).
"""

from __future__ import annotations

import pytest

from pcamflow.errors import HyperparameterError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions, kind_of


def _error(**values: object) -> str:
    with pytest.raises(HyperparameterError) as caught:
        Hyperparameters(**values)
    return str(caught.value)


@pytest.mark.parametrize("shape", ["1,8,8", "3,8,8", "3, 96 ,96", "1,224,8"])
def test_the_smallest_and_grey_image_shapes_are_taken(shape: str) -> None:
    hp = Hyperparameters(image_shape=shape)
    channels, height, width = (int(p) for p in shape.split(","))
    assert (hp.channels, hp.height, hp.width) == (channels, height, width)


@pytest.mark.parametrize("shape", ["2,96,96", "3,7,96", "3,96,7", "0,96,96"])
def test_a_shape_outside_the_bounds_is_refused(shape: str) -> None:
    assert _error(image_shape=shape) == (
        f"image_shape: {shape!r} needs 1 or 3 channels and a height and width of at least 8")


@pytest.mark.parametrize("shape", ["3,96", "3,96,96,1", "3,96,x", "x,96,96", "3,-9,96"])
def test_a_shape_that_is_not_three_numbers_is_refused(shape: str) -> None:
    assert _error(image_shape=shape) == (
        f"image_shape: {shape!r} is not 'channels,height,width' (e.g. '3,96,96')")


def test_scheduler_steps() -> None:
    assert Hyperparameters(lr_scheduler_step="1").scheduler_steps == (1,)
    assert Hyperparameters(lr_scheduler_step="10, 20,30").scheduler_steps == (10, 20, 30)
    assert Hyperparameters().scheduler_steps == ()
    for bad in ("0", "10,x", "", "10,,20", "-1"):
        assert _error(lr_scheduler_step=bad) == (
            f"lr_scheduler_step: {bad!r} is not a comma-separated list of positive epochs "
            "(e.g. '10,20')")
    for bad in ("20,10", "10,10"):
        assert _error(lr_scheduler_step=bad) == (
            f"lr_scheduler_step: {bad!r} must be strictly increasing")


def test_the_cross_checks_hold_at_their_bounds() -> None:
    assert Hyperparameters(epochs=4, checkpoint_frequency=4).checkpoint_frequency == 4
    assert _error(epochs=4, checkpoint_frequency=5) == (
        "checkpoint_frequency: 5 is greater than epochs (4)")
    assert Hyperparameters(image_shape="3,32,48", resize=48).resize == 48
    assert _error(image_shape="3,32,48", resize=47) == (
        "resize: 47 is smaller than the height or width of image_shape (3,32,48); images are "
        "resized first, then cropped to image_shape")
    assert _error(image_shape="3,48,32", resize=47).startswith("resize: 47 is smaller")
    assert Hyperparameters(num_classes=3, top_k=3).top_k == 3
    assert _error(num_classes=3, top_k=4) == "top_k: 4 is greater than num_classes (3)"
    assert Hyperparameters(use_pretrained_model=1, num_layers=18).num_layers == 18
    assert Hyperparameters(use_pretrained_model=0, num_layers=20).num_layers == 20
    assert _error(use_pretrained_model=1, num_layers=20) == (
        "use_pretrained_model: no pretrained network has num_layers=20; transfer learning "
        "takes one of 18, 34, 50, 101, 152, 200")


def test_the_algorithms_strings_for_booleans_and_unset_values() -> None:
    sent = Hyperparameters(num_training_samples=5, early_stopping=False).to_sagemaker()
    assert sent["early_stopping"] == "False" and "resize" not in sent
    assert Hyperparameters(num_training_samples=5, early_stopping=True).to_sagemaker()[
        "early_stopping"] == "True"
    with pytest.raises(HyperparameterError) as caught:
        Hyperparameters().to_sagemaker()
    assert str(caught.value) == ("num_training_samples: not set; it is filled from the train "
                                 "manifest's count")


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("True", True), ("1", True), ("false", False), ("FALSE", False),
    ("0", False)])
def test_booleans_are_read_from_the_algorithms_spellings(text: str, value: bool) -> None:
    assert Hyperparameters.from_sagemaker({"early_stopping": text}).early_stopping is value
    assert Hyperparameters().with_values(early_stopping=text).early_stopping is value


def test_strings_are_read_by_each_hyperparameters_kind() -> None:
    hp = Hyperparameters.from_sagemaker({
        "epochs": "12.0", "learning_rate": " 0.05 ", "optimizer": "adam", "resize": "",
        "lr_scheduler_step": "3,6", "top_k": "2"})
    assert (hp.epochs, hp.learning_rate, hp.optimizer) == (12, 0.05, "adam")
    assert hp.resize is None and hp.lr_scheduler_step == "3,6" and hp.top_k == 2
    changed = hp.with_values(epochs="7", mini_batch_size=64, augmentation_type="crop")
    assert (changed.epochs, changed.mini_batch_size, changed.augmentation_type) == (
        7, 64, "crop")
    for name, text, kind in (("epochs", "7.5", "int"), ("early_stopping", "yes", "bool"),
                             ("learning_rate", "fast", "float"), ("epochs", "", "int")):
        with pytest.raises(HyperparameterError) as caught:
            Hyperparameters.from_sagemaker({name: text})
        assert str(caught.value) == f"{name}: {text!r} is not a valid {kind}"
    with pytest.raises(HyperparameterError) as caught:
        Hyperparameters().with_values(dropout="0.5")
    assert str(caught.value) == "dropout: not a hyperparameter of the algorithm"


def test_each_hyperparameter_has_its_kind() -> None:
    assert [kind_of(n) for n in ("num_classes", "resize", "learning_rate", "early_stopping",
                                 "optimizer", "lr_scheduler_step", "augmentation_type",
                                 "precision_dtype", "top_k", "kv_store")] == [
        int, int, float, bool, str, str, str, str, int, str]
    with pytest.raises(HyperparameterError) as caught:
        kind_of("dropout")
    assert str(caught.value) == "dropout: not a hyperparameter of the algorithm"


def test_only_the_extensions_that_change_training_are_non_default() -> None:
    assert LocalExtensions(num_workers=2, device="cpu", data_path="cache",
                           cache_dir="/c", seed=4, nproc_per_node=2).non_default() == {}
    assert LocalExtensions(dihedral=True, stain_jitter=0.05,
                           weights_file="w.safetensors").non_default() == {
        "dihedral": True, "stain_jitter": 0.05, "weights_file": "w.safetensors"}

"""The hyperparameter contract: AWS's defaults and ranges, and every invalid value rejected."""

from __future__ import annotations

import attrs
import pytest

from pcamflow.config import Settings
from pcamflow.errors import ConfigError, HyperparameterError, TuningRangeError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions, kind_of
from pcamflow.tuning_ranges import TuningRange


def test_defaults_are_the_algorithms() -> None:
    hp = Hyperparameters()
    assert (hp.num_layers, hp.epochs, hp.mini_batch_size, hp.learning_rate) == (152, 30, 32, 0.1)
    assert (hp.optimizer, hp.momentum, hp.weight_decay) == ("sgd", 0.9, 0.0001)
    assert (hp.beta_1, hp.beta_2, hp.eps, hp.gamma) == (0.9, 0.999, 1e-8, 0.9)
    assert (hp.lr_scheduler_factor, hp.precision_dtype, hp.use_pretrained_model) == (
        0.1, "float32", 0)
    assert (hp.early_stopping, hp.early_stopping_min_epochs, hp.early_stopping_patience,
            hp.early_stopping_tolerance) == (False, 10, 5, 0.0)
    assert hp.augmentation_type is None and hp.checkpoint_frequency is None and hp.resize is None
    assert hp.image_shape == "3,96,96" and (hp.channels, hp.height, hp.width) == (3, 96, 96)


def test_to_sagemaker_gives_strings_and_round_trips() -> None:
    hp = Hyperparameters(num_layers=20, epochs=12, num_training_samples=1000, resize=100,
                         lr_scheduler_step="4,8", augmentation_type="crop_color",
                         early_stopping=True)
    sent = hp.to_sagemaker()
    assert all(isinstance(v, str) for v in sent.values())
    assert sent["num_layers"] == "20" and sent["early_stopping"] == "True"
    assert "checkpoint_frequency" not in sent  # unset values are left out
    assert Hyperparameters.from_sagemaker(sent) == hp


def test_to_sagemaker_needs_num_training_samples() -> None:
    with pytest.raises(HyperparameterError, match="num_training_samples"):
        Hyperparameters().to_sagemaker()


def test_from_sagemaker_reads_algorithm_strings() -> None:
    hp = Hyperparameters.from_sagemaker(
        {"num_layers": "18", "learning_rate": "0.01", "early_stopping": "true",
         "lr_scheduler_step": "10, 20", "epochs": "30", "kv_store": ""}
    )
    assert hp.num_layers == 18 and hp.learning_rate == 0.01 and hp.early_stopping is True
    assert hp.scheduler_steps == (10, 20) and hp.kv_store is None


@pytest.mark.parametrize(
    ("values", "named"),
    [
        # out of range
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": 1.5}, "learning_rate"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": 2.0}, "weight_decay"),
        ({"beta_1": 1.1}, "beta_1"),
        ({"beta_2": -1.0}, "beta_2"),
        ({"eps": 3.0}, "eps"),
        ({"gamma": 1.01}, "gamma"),
        ({"lr_scheduler_factor": 1.5}, "lr_scheduler_factor"),
        ({"early_stopping_tolerance": 1.5}, "early_stopping_tolerance"),
        ({"epochs": 0}, "epochs"),
        ({"mini_batch_size": 0}, "mini_batch_size"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_training_samples": 0}, "num_training_samples"),
        ({"early_stopping_min_epochs": 0}, "early_stopping_min_epochs"),
        ({"early_stopping_patience": -1}, "early_stopping_patience"),
        ({"top_k": 1}, "top_k"),
        ({"top_k": 3}, "top_k"),  # more than num_classes
        ({"resize": 0}, "resize"),
        ({"resize": 64}, "resize"),  # smaller than image_shape's 96x96
        ({"num_layers": 19}, "num_layers"),
        ({"use_pretrained_model": 2}, "use_pretrained_model"),
        ({"use_pretrained_model": 1, "num_layers": 20}, "use_pretrained_model"),
        ({"multi_label": 3}, "multi_label"),
        ({"use_weighted_loss": -1}, "use_weighted_loss"),
        # unknown choices
        ({"optimizer": "adagrad"}, "optimizer"),
        ({"augmentation_type": "rotate"}, "augmentation_type"),
        ({"precision_dtype": "float64"}, "precision_dtype"),
        ({"kv_store": "local"}, "kv_store"),
        # cross-field
        ({"checkpoint_frequency": 5, "epochs": 4}, "checkpoint_frequency"),
        ({"checkpoint_frequency": 0}, "checkpoint_frequency"),
        # malformed strings
        ({"image_shape": "96,96"}, "image_shape"),
        ({"image_shape": "3x96x96"}, "image_shape"),
        ({"image_shape": "3,96,96,1"}, "image_shape"),
        ({"image_shape": "3,-96,96"}, "image_shape"),
        ({"image_shape": "4,96,96"}, "image_shape"),
        ({"image_shape": "3,4,4"}, "image_shape"),
        ({"lr_scheduler_step": "ten"}, "lr_scheduler_step"),
        ({"lr_scheduler_step": "10;20"}, "lr_scheduler_step"),
        ({"lr_scheduler_step": "0,5"}, "lr_scheduler_step"),
        ({"lr_scheduler_step": "20,10"}, "lr_scheduler_step"),
        ({"lr_scheduler_step": "10,"}, "lr_scheduler_step"),
        # wrong types
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"learning_rate": "0.1"}, "learning_rate"),
        ({"early_stopping": 1}, "early_stopping"),
    ],
)
def test_invalid_values_are_rejected_naming_the_hyperparameter(values: dict, named: str) -> None:
    with pytest.raises(HyperparameterError, match=named):
        Hyperparameters(**values)
    # from a settings file, the key path names it too, before any stage runs
    with pytest.raises(ConfigError, match=f"train.{named}"):
        Settings.from_dict({"train": values})


def test_steps_at_or_after_the_last_epoch_are_allowed() -> None:
    # the algorithm accepts them (they just never apply); tuning fewer epochs must not break
    assert Hyperparameters(lr_scheduler_step="10,20", epochs=5).scheduler_steps == (10, 20)


def test_with_values_parses_strings_and_validates() -> None:
    hp = Hyperparameters(num_layers=20)
    assert hp.with_values(learning_rate="0.05", optimizer="adam").learning_rate == 0.05
    with pytest.raises(HyperparameterError, match="learning_rate"):
        hp.with_values(learning_rate="fast")
    with pytest.raises(HyperparameterError, match="not a hyperparameter"):
        hp.with_values(dropout="0.5")
    with pytest.raises(HyperparameterError, match="epochs"):
        attrs.evolve(hp, epochs=0)


def test_from_sagemaker_rejects_unknown_names_and_bad_numbers() -> None:
    with pytest.raises(HyperparameterError, match="dropout"):
        Hyperparameters.from_sagemaker({"dropout": "0.5"})
    with pytest.raises(HyperparameterError, match="epochs"):
        Hyperparameters.from_sagemaker({"epochs": "2.5"})
    with pytest.raises(HyperparameterError, match="early_stopping"):
        Hyperparameters.from_sagemaker({"early_stopping": "maybe"})


def test_local_extensions_are_separate_and_validated() -> None:
    ext = LocalExtensions(dihedral=True, stain_jitter=0.05)
    assert ext.non_default() == {"dihedral": True, "stain_jitter": 0.05}
    assert LocalExtensions(num_workers=2, device="cpu").non_default() == {}
    # how data is read and how many processes train change nothing SageMaker would learn
    assert LocalExtensions(data_path="stream", cache_dir="/shared/cache",
                           nproc_per_node=8).non_default() == {}
    with pytest.raises(HyperparameterError, match="stain_jitter"):
        LocalExtensions(stain_jitter=2.0)
    with pytest.raises(HyperparameterError, match="data_path: 'memory' is not one of"):
        LocalExtensions(data_path="memory")
    with pytest.raises(HyperparameterError, match="nproc_per_node: 0 is outside"):
        LocalExtensions(nproc_per_node=0)
    with pytest.raises(HyperparameterError, match="device"):
        LocalExtensions(device="tpu")
    assert "dihedral" not in Hyperparameters(num_training_samples=1).to_sagemaker()


def test_tuning_ranges_are_checked_against_the_contract() -> None:
    base = Hyperparameters(num_layers=20)
    TuningRange(type="continuous", min_value=1e-4, max_value=0.5,
                scaling="Logarithmic").check_against("learning_rate", base)
    with pytest.raises(HyperparameterError, match="learning_rate"):
        TuningRange(type="continuous", min_value=0.1, max_value=2.0).check_against(
            "learning_rate", base)
    with pytest.raises(HyperparameterError, match="optimizer"):
        TuningRange(type="categorical", values=["sgd", "lbfgs"]).check_against("optimizer", base)


def test_a_tuning_range_checks_itself_with_its_own_error() -> None:
    with pytest.raises(TuningRangeError, match=r"^min_value: 0\.9 is greater than max_value 0\.1"):
        TuningRange(type="continuous", min_value=0.9, max_value=0.1)
    with pytest.raises(TuningRangeError,
                       match=r"^type: 'uniform' is not one of continuous, integer, categorical$"):
        TuningRange(type="uniform")
    with pytest.raises(TuningRangeError, match=r"^values: expected a string or a number, got True"):
        TuningRange(type="categorical", values=[True])
    with pytest.raises(TuningRangeError, match=r"^max_value: inf is not a finite number"):
        TuningRange(type="continuous", min_value=0.1, max_value=float("inf"))
    # in a settings file, the range's key path comes first
    with pytest.raises(TuningRangeError, match=r"^tune\.ranges\.momentum\.min_value: 0\.9"):
        Settings.from_dict({"tune": {"ranges": {"momentum": {
            "type": "continuous", "min_value": 0.9, "max_value": 0.1}}}})


def test_each_hyperparameters_kind_comes_from_its_annotation() -> None:
    assert (kind_of("num_layers"), kind_of("learning_rate"), kind_of("early_stopping")) == (
        int, float, bool)
    assert (kind_of("optimizer"), kind_of("augmentation_type"), kind_of("resize")) == (
        str, str, int)
    with pytest.raises(HyperparameterError, match="dropout: not a hyperparameter"):
        kind_of("dropout")


def test_nan_and_an_adam_decay_of_one_are_refused_in_code_too() -> None:
    with pytest.raises(HyperparameterError,
                       match=r"^learning_rate: nan is outside \(0\.0, 1\.0\]$"):
        Hyperparameters(learning_rate=float("nan"))
    with pytest.raises(HyperparameterError, match=r"^beta_2: 1\.0 is outside \[0\.0, 1\.0\)$"):
        Hyperparameters(beta_2=1.0)
    with pytest.raises(HyperparameterError, match=r"^learning_rate: nan is outside"):
        Hyperparameters().with_values(learning_rate="nan")

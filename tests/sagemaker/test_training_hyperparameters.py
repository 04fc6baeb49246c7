"""The hyperparameters a training job is sent: the algorithm's strings, its required values set."""

from __future__ import annotations

import pytest

from pcamflow.artifacts import Manifests, TuningResult
from pcamflow.errors import ConfigError
from pcamflow.hyperparameters import Hyperparameters
from pcamflow.sagemaker.trainer import training_hyperparameters

MANIFESTS = Manifests(manifests={"train": "s3://b/train.manifest"},
                      counts={"train": 8, "valid": 6, "test": 10})


def test_every_value_is_sent_as_the_algorithm_takes_it() -> None:
    # AWS "Image Classification Hyperparameters": num_classes and num_training_samples are
    # required; image_shape defaults to 3,224,224 there, so PCam's must be sent
    sent = training_hyperparameters(Hyperparameters(num_layers=20, epochs=2), MANIFESTS)
    assert sent == {
        "num_classes": "2", "num_training_samples": "8", "image_shape": "3,96,96",
        "num_layers": "20", "epochs": "2", "mini_batch_size": "32", "learning_rate": "0.1",
        "lr_scheduler_factor": "0.1", "optimizer": "sgd", "momentum": "0.9",
        "weight_decay": "0.0001", "beta_1": "0.9", "beta_2": "0.999", "eps": "1e-08",
        "gamma": "0.9", "early_stopping": "False", "early_stopping_min_epochs": "10",
        "early_stopping_patience": "5", "early_stopping_tolerance": "0.0",
        "precision_dtype": "float32", "use_pretrained_model": "0", "use_weighted_loss": "0",
        "multi_label": "0",
    }


def test_tuned_values_replace_the_base_but_never_the_training_count() -> None:
    tuned = TuningResult(best_hyperparameters={"learning_rate": "0.003", "optimizer": "adam",
                                               "num_training_samples": "999"})
    sent = training_hyperparameters(Hyperparameters(epochs=3), MANIFESTS, tuned)
    assert (sent["learning_rate"], sent["optimizer"]) == ("0.003", "adam")
    assert (sent["num_training_samples"], sent["epochs"]) == ("8", "3")


@pytest.mark.parametrize("counts", [{}, {"valid": 6}, {"train": 0}])
def test_an_unknown_or_empty_train_count_is_an_error(counts: dict) -> None:
    manifests = Manifests(manifests={"train": "s3://b/train.manifest"}, counts=counts)
    with pytest.raises(ConfigError) as caught:
        training_hyperparameters(Hyperparameters(), manifests)
    assert str(caught.value) == "manifests: the train manifest's count is unknown or zero"

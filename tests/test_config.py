from pathlib import Path

import attrs
import pytest

from pcamflow import Settings
from pcamflow.errors import ConfigError, HyperparameterError

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"train": {"num_layers": 19}},
            "train.num_layers: 19 is not one of 18, 20, 32, 34, 44, 50, 56, 101, 110, 152, 200",
        ),
        ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer, got 'ten'"),
        ({"train": {"learning_rate": 1.5}}, "train.learning_rate: 1.5 is outside (0.0, 1.0]"),
        ({"train": {"optimizer": "lbfgs"}}, "train.optimizer: 'lbfgs' is not one of sgd"),
        (
            {"train": {"extensions": {"dihedrl": True}}},
            "train.extensions.dihedrl: unknown setting; did you mean 'dihedral'?",
        ),
        ({"trian": {}}, "trian: unknown setting; did you mean 'train'?"),
        ({"convert": {"quality": 0}}, "convert.quality: 0 is outside 1..100"),
        ({"convert": {"quality": True}}, "convert.quality: expected an integer, got True"),
        ({"pipeline": {"seed": 1.5}}, "pipeline.seed: expected an integer, got 1.5"),
        (
            {"data": {"splits": ["train", "holdout"]}},
            "data.splits: 'holdout' is not one of train, valid, test",
        ),
        ({"deploy": {"port": 70000}}, "deploy.port: 70000 is outside 0..65535"),
        (
            {"tune": {"max_jobs": 2, "max_parallel_jobs": 3}},
            "tune.max_parallel_jobs: 3 is greater than max_jobs (2)",
        ),
        (
            {"tune": {"ranges": {"optimizer": {"type": "categorical", "values": ["sgd", "foo"]}}}},
            "tune.ranges.optimizer: range value 'foo' is invalid",
        ),
        (
            {
                "tune": {
                    "ranges": {
                        "momentum": {"type": "continuous", "min_value": 0.9, "max_value": 0.1}
                    }
                }
            },
            "tune.ranges.momentum.min_value: 0.9 is greater than max_value 0.1",
        ),
        (
            {"train": {"epochs": 4, "checkpoint_frequency": 5}},
            "train.checkpoint_frequency: 5 is greater than epochs (4)",
        ),
        ({"pipeline": "run"}, "pipeline: expected a table, got 'run'"),
    ],
)
def test_a_bad_setting_is_an_error_naming_its_key(table, message):
    with pytest.raises(ConfigError) as caught:
        Settings.from_dict(table)
    assert message in str(caught.value)


def test_hyperparameter_errors_are_config_errors_and_value_errors():
    with pytest.raises(HyperparameterError):
        Settings.from_dict({"train": {"num_layers": 19}})
    assert issubclass(HyperparameterError, ValueError)


def test_a_file_error_names_the_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{missing}: settings file not found"):
        Settings.from_toml(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid TOML"):
        Settings.from_toml(broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[train]\nnum_layers = 19\n")
    with pytest.raises(ConfigError, match=f"{wrong}: train.num_layers: 19"):
        Settings.from_toml(wrong)


def test_settings_are_typed_frozen_and_evolve_validates():
    settings = Settings.from_dict(
        {"pipeline": {"seed": 3}, "train": {"num_layers": 20, "extensions": {"dihedral": True}}}
    )
    assert settings.pipeline.seed == 3
    assert settings.train.hyperparameters.num_layers == 20
    assert settings.train.extensions.dihedral is True
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.pipeline.seed = 4  # type: ignore[misc]
    with pytest.raises(HyperparameterError, match="num_layers: 21"):
        attrs.evolve(settings.train.hyperparameters, num_layers=21)


def test_to_dict_round_trips():
    settings = Settings.from_dict(
        {
            "train": {"num_layers": 20, "lr_scheduler_step": "2,4", "epochs": 6},
            "tune": {
                "strategy": "Random",
                "ranges": {
                    "learning_rate": {
                        "type": "continuous",
                        "min_value": 1e-4,
                        "max_value": 0.1,
                        "scaling": "Logarithmic",
                    },
                    "optimizer": {"type": "categorical", "values": ["sgd", "adam"]},
                },
            },
            "aws": {"tags": {"project": "pcam"}, "network": {"subnets": ["subnet-1"]}},
        }
    )
    assert Settings.from_dict(settings.to_dict()) == settings


def test_the_examples_are_valid():
    for path in sorted(EXAMPLES.glob("*.toml")):
        settings = Settings.from_toml(path)
        assert settings.source == str(path)


def test_the_configuration_reference_is_current():
    from pcamflow._reference import settings_reference

    current = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert current == settings_reference(), (
        "run: python -m pcamflow._reference > docs/configuration.md"
    )

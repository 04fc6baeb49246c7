import typing
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
            {"train": {"epochs": 4, "checkpoint_frequency": 5}},
            "train.checkpoint_frequency: 5 is greater than epochs (4)",
        ),
        ({"pipeline": "run"}, "pipeline: expected a table, got 'run'"),
        ({"tracking": {"mlflow_uri": ""}}, "tracking.mlflow_uri: '' must not be empty"),
        ({"tracking": {"experiment": ""}}, "tracking.experiment: '' must not be empty"),
        ({"tracking": {"tags": {"team": 7}}}, "tracking.tags.team: expected a string, got 7"),
        (
            {"tracking": {"mlflow_url": "file:/tmp/mlruns"}},
            "tracking.mlflow_url: unknown setting; did you mean 'mlflow_uri'?",
        ),
    ],
)
def test_a_bad_setting_is_an_error_naming_its_key(table, message):
    # the [tune] checks are the tuner's tests (tests/local/tuning/test_tuner.py)
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


# --- settings that used to pass validation and then crash a run ---------------------------


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        ("[train]\nlearning_rate = nan\n", "train.learning_rate: nan is outside (0.0, 1.0]"),
        ("[train]\nmomentum = inf\n", "train.momentum: inf is outside [0.0, 1.0]"),
        ("[train]\nbeta_1 = 1.0\n", "train.beta_1: 1.0 is outside [0.0, 1.0)"),
        ("[train]\nbeta_2 = 1.0\n", "train.beta_2: 1.0 is outside [0.0, 1.0)"),
        ("[pipeline]\nseed = -1\n", "pipeline.seed: -1 is outside 0..2147483647"),
        ("[pipeline]\nseed = 1e20\n", "pipeline.seed: expected an integer, got 1e+20"),
        (
            "[pipeline]\nseed = 100000000000000000000\n",
            "pipeline.seed: 100000000000000000000 is outside 0..2147483647",
        ),
        ("[train.extensions]\nseed = -5\n", "train.extensions.seed: -5 is outside 0..2147483647"),
        (
            "[tune.ranges.learning_rate]\nmin_value = 0.01\nmax_value = 0.1\n",
            "tune.ranges.learning_rate.type: required, but not given "
            "(one of continuous, integer, categorical)",
        ),
        (
            '[tune.ranges.learning_rate]\ntype = "continuous"\nmin_value = nan\nmax_value = 0.1\n',
            "tune.ranges.learning_rate.min_value: nan is not a finite number",
        ),
        ("[deploy]\nmax_wait_ms = inf\n", "deploy.max_wait_ms: inf is not a finite number"),
        (
            '[aws.prices]\n"ml.m5.large" = nan\n',
            'aws.prices."ml.m5.large": nan is not a finite number',
        ),
    ],
)
def test_a_value_a_run_would_crash_on_is_refused_naming_the_key(tmp_path, toml, line):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        Settings.from_toml(path)
    assert str(caught.value) == f"{path}: {line}"


def test_a_top_level_source_key_is_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('source = "elsewhere.toml"\n[train]\nepochs = 3\n')
    with pytest.raises(ConfigError, match=f"^{path}: source: unknown setting"):
        Settings.from_toml(path)
    path.write_text("[train]\nepochs = 3\n")
    assert Settings.from_toml(path).source == str(path)  # where it was read from, set by code


def test_every_problem_is_a_line_naming_the_file_and_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[convert]\nquality = 0\n[train]\nepochs = "ten"\nepocs = 3\n')
    with pytest.raises(ConfigError) as caught:
        Settings.from_toml(path)
    lines = str(caught.value).splitlines()
    assert lines[:2] == [
        f"{path}: convert.quality: 0 is outside 1..100",
        f"{path}: train.epochs: expected an integer, got 'ten'",
    ]
    assert lines[2].startswith(f"{path}: train.epocs: unknown setting; did you mean 'epochs'?")
    assert len(lines) == 3


def test_an_unknown_train_key_lists_extensions_among_the_known():
    with pytest.raises(ConfigError, match=r"^train\.extension: unknown setting; did you mean "
                                          r"'extensions'\?") as caught:
        Settings.from_dict({"train": {"extension": {}}})
    assert "extensions" in str(caught.value).split("known: ")[1]


# --- [aws] and its groups -----------------------------------------------------------------


def test_the_aws_groups_are_read_and_written_as_tables():
    settings = Settings.from_dict(
        {
            "aws": {
                "region": "eu-west-1",
                "network": {"subnets": ["subnet-1"], "security_group_ids": ["sg-1"]},
                "training": {"instance_type": "ml.g4dn.xlarge", "use_spot": True},
                "evaluation": {"evaluate_via": "endpoint"},
                "endpoint": {"endpoint_hours": 2},
            }
        }
    )
    aws = settings.aws
    assert aws.network.subnets == ("subnet-1",)
    assert (aws.training.instance_type, aws.training.use_spot) == ("ml.g4dn.xlarge", True)
    assert aws.evaluation.evaluate_via == "endpoint"
    assert aws.endpoint.endpoint_hours == 2.0
    written = settings.to_dict()["aws"]
    assert written["training"]["instance_type"] == "ml.g4dn.xlarge"
    assert "instance_type" not in written
    assert Settings.from_dict(settings.to_dict()) == settings


def test_an_old_flat_aws_key_still_works_and_names_its_new_place(tmp_path, caplog):
    path = tmp_path / "old.toml"
    path.write_text('[aws]\ninstance_type = "ml.g4dn.xlarge"\nsubnets = ["subnet-1"]\n')
    with pytest.warns(FutureWarning) as warned:
        settings = Settings.from_toml(path)
    assert sorted(str(w.message).split(":")[0] for w in warned) == [
        "aws.instance_type has moved to aws.training.instance_type",
        "aws.subnets has moved to aws.network.subnets",
    ]
    assert warned[0].filename == str(path)
    assert f"{path}: aws.subnets has moved to aws.network.subnets" in caplog.text
    new = Settings.from_dict(
        {"aws": {"training": {"instance_type": "ml.g4dn.xlarge"},
                 "network": {"subnets": ["subnet-1"]}}}
    )
    assert settings.aws == new.aws


def test_a_flat_aws_key_and_its_new_place_together_are_an_error():
    with pytest.raises(ConfigError) as caught:
        Settings.from_dict({"aws": {"instance_type": "a", "training": {"instance_type": "b"}}})
    assert str(caught.value) == (
        "aws.instance_type: given twice, here and as aws.training.instance_type; keep "
        "aws.training.instance_type (aws.instance_type is its old place)"
    )


def test_a_check_across_a_group_names_the_new_key():
    with pytest.raises(ConfigError, match=r"^aws\.training\.max_wait_s: 10 is less than "
                                          r"max_runtime_s \(100\)"):
        Settings.from_dict(
            {"aws": {"training": {"use_spot": True, "max_wait_s": 10, "max_runtime_s": 100}}}
        )


# --- choices are Literal types, checked when built in code too ----------------------------


def _choice_fields():
    from pcamflow import config
    from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
    from pcamflow.tuning_ranges import TuningRange

    classes = [getattr(config, name) for name in config.__all__ if name.endswith("Settings")]
    for cls in [*classes, Hyperparameters, LocalExtensions, TuningRange]:
        for name, hint in typing.get_type_hints(cls).items():
            for part in (hint, *typing.get_args(hint)):
                if typing.get_origin(part) is typing.Literal:
                    yield cls, name, typing.get_args(part), typing.get_origin(hint) is tuple


def test_every_choice_is_checked_when_a_class_is_built_in_code():
    fields = list(_choice_fields())
    assert len(fields) >= 12  # the choices of the settings, hyperparameters and ranges
    for cls, name, choices, listed in fields:
        kwargs = {"type": "continuous", "min_value": 0.1, "max_value": 0.2} if (
            cls.__name__ == "TuningRange") else {}
        kwargs[name] = ("nope",) if listed else "nope"
        with pytest.raises(ConfigError) as caught:
            cls(**kwargs)
        shown = ", ".join(str(c) for c in choices)
        assert str(caught.value) == f"{name}: 'nope' is not one of {shown}", cls


# --- exact behaviour of the settings' own methods ---------------------------------------------


def test_the_stage_names_are_in_pipeline_order_without_those_left_out():
    settings = Settings.from_dict({"pipeline": {"converter": "sagemaker", "tuner": "local",
                                                "evaluator": "none", "deployer": "local"}})
    names = settings.pipeline.stage_names()
    assert list(names.items()) == [("converter", "sagemaker"), ("manifest_builder", "local"),
                                   ("tuner", "local"), ("trainer", "local"),
                                   ("deployer", "local")]


def test_a_download_url_must_be_an_http_template_naming_the_file():
    with pytest.raises(ConfigError) as caught:
        Settings.from_dict({"data": {"download_url": "ftp://x/{name}"}})
    assert "data.download_url: 'ftp://x/{name}' is not an http:// or https:// URL" in str(
        caught.value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_dict({"data": {"download_url": "https://x/file"}})
    assert "data.download_url: 'https://x/file' holds no {name}" in str(caught.value)
    url = "https://mirror.example/pcam/{name}"
    assert Settings.from_dict({"data": {"download_url": url}}).data.download_url == url


def test_a_settings_file_is_read_as_utf8_and_an_unreadable_one_is_named(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes('[tracking]\nexperiment = "pcam-é"\n'.encode())
    assert Settings.from_toml(path).tracking.experiment == "pcam-é"
    with pytest.raises(ConfigError) as caught:
        Settings.from_toml(tmp_path)  # a folder: it exists, but cannot be read
    assert str(caught.value).startswith(f"{tmp_path}: cannot read settings file (")


def test_to_dict_leaves_out_where_the_settings_came_from(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[pipeline]\nseed = 7\n")
    data = Settings.from_toml(path).to_dict()
    assert "source" not in data and data["pipeline"]["seed"] == 7
    assert isinstance(data, dict)


def test_the_tune_checks_hold_at_their_bounds():
    lr = {"type": "continuous", "min_value": 0.001, "max_value": 0.1}
    tune = Settings.from_dict({"tune": {"max_jobs": 3, "max_parallel_jobs": 3,
                                        "ranges": {"learning_rate": lr}}}).tune
    assert tune.max_parallel_jobs == tune.max_jobs == 3
    hyperband = Settings.from_dict({"tune": {"strategy": "Hyperband", "early_stopping": "Off",
                                             "ranges": {"learning_rate": lr}}}).tune
    assert hyperband.early_stopping == "Off"
    with pytest.raises(ConfigError) as caught:
        Settings.from_dict({"tune": {"strategy": "Hyperband", "early_stopping": "Auto",
                                     "ranges": {"learning_rate": lr}}})
    assert str(caught.value).endswith("trials itself")

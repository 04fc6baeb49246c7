"""The one shared converter (artifacts and digests go through it, strictly), and the one place
where attrs validators' failures become pcamflow's messages."""

from __future__ import annotations

import json
import math

import attrs
import cattrs
import pytest
from attrs.validators import deep_mapping, ge, gt, in_, le, lt, optional

from pcamflow._validation import FINITE, INTEGER, NUMBER, STRING, allowed, checked
from pcamflow.artifacts import Artifact, Evaluation, ModelArtifact
from pcamflow.errors import ConfigError

# a record as run.json holds it, written by hand: what the pipeline reads back
MODEL_RECORD = """{
  "type": "ModelArtifact",
  "uri": "runs/demo/train/model.tar.gz",
  "hyperparameters": {"epochs": "2", "num_layers": "20"},
  "metrics": {"validation:accuracy": 0.875, "best_epoch": 1},
  "job_name": null
}"""


def test_an_artifact_is_read_with_its_types():
    artifact = Artifact.from_json(MODEL_RECORD)
    assert artifact == ModelArtifact(
        uri="runs/demo/train/model.tar.gz",
        hyperparameters={"epochs": "2", "num_layers": "20"},
        metrics={"validation:accuracy": 0.875, "best_epoch": 1.0},
    )
    assert isinstance(artifact.metrics["best_epoch"], float)  # a JSON 1 is a float metric


def test_an_undefined_metric_reads_back_as_nan_or_none():
    record = '{"type": "Evaluation", "report": "r", "metrics": {"roc_auc": NaN, "f1": null}}'
    metrics = Artifact.from_json(record).metrics
    assert isinstance(metrics["roc_auc"], float) and metrics["roc_auc"] != metrics["roc_auc"]
    assert metrics["f1"] is None
    assert isinstance(Artifact.from_json(record), Evaluation)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"extra": 1}, "extra fields found (extra) @ $"),
        ({"metrics": {"validation:accuracy": "0.875"}}, "@ $.metrics['validation:accuracy']"),
        ({"hyperparameters": ["epochs"]}, "@ $.hyperparameters"),
        ({"uri": 5}, "@ $.uri"),
    ],
)
def test_a_malformed_artifact_record_is_refused_naming_the_field(change, problem):
    # strict as settings are: a string is no number, and no key is silently dropped
    data = {**json.loads(MODEL_RECORD), **change}
    with pytest.raises(cattrs.ClassValidationError) as caught:
        Artifact.from_dict(data)
    assert problem in " ".join(cattrs.transform_error(caught.value))


@attrs.frozen(kw_only=True, field_transformer=checked(ConfigError))
class _Toy:
    count: int = attrs.field(default=1, validator=[INTEGER, ge(1), le(9)])
    rate: float = attrs.field(default=0.5, validator=[NUMBER, gt(0.0), lt(1.0)])
    size: float = attrs.field(default=1.0, validator=[NUMBER, FINITE, ge(0)])
    pick: str | None = attrs.field(default=None, validator=optional(in_(("a", "b"))))
    costs: dict[str, float] = attrs.field(factory=dict, validator=deep_mapping(STRING, FINITE))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": 0}, "count: 0 is outside 1..9"),
        ({"count": True}, "count: expected an integer, got True"),
        ({"count": "3"}, "count: expected an integer, got '3'"),
        ({"rate": 1.0}, "rate: 1.0 is outside (0.0, 1.0)"),
        ({"rate": math.nan}, "rate: nan is outside (0.0, 1.0)"),
        ({"size": math.inf}, "size: inf is not a finite number"),
        ({"size": -1}, "size: -1 must be at least 0"),
        ({"pick": "c"}, "pick: 'c' is not one of a, b"),
        ({"costs": {"ml.m5": math.nan}}, 'costs."ml.m5": nan is not a finite number'),
    ],
)
def test_attrs_validators_fail_in_our_words(values, message):
    with pytest.raises(ConfigError) as caught:
        _Toy(**values)
    assert str(caught.value) == message


def test_the_reference_describes_the_same_validators():
    fields = attrs.fields_dict(_Toy)
    assert [allowed(fields[name].validator) for name in ("count", "rate", "size", "pick")] == [
        "1..9", "(0.0, 1.0)", "finite, at least 0", "one of a, b"]
    assert allowed(fields["costs"].validator) == "each value finite"

"""Plans: costs and totals, the sum over stages, the text and JSON forms."""

from __future__ import annotations

import pytest

from pcamflow.plan import CostLine, Plan, PlannedRequest, format_plan, plan_to_dict

HOURS = CostLine("train", "ml.p3.2xlarge", 2.0, "instance-hour", 3.825, "us-east-1",
                 note="1 job x 2 h")
PUTS = CostLine("convert", "s3 PutObject", 327.68, "1,000 requests", 0.005)
UNPRICED = CostLine("deploy", "ml.m5.large", 10.0, "instance-hour", None)
CREATE = PlannedRequest("train", "sagemaker", "CreateTrainingJob", {"b": 1, "a": "<x>"},
                        region="eu-west-1")
PUT = PlannedRequest("convert", "s3", "PutObject", {"Key": "k"}, count=327_680,
                     region="us-east-1")


def test_a_cost_is_quantity_times_price_or_none() -> None:
    assert HOURS.cost == pytest.approx(7.65)
    assert PUTS.cost == pytest.approx(1.6384)
    assert UNPRICED.cost is None
    assert CostLine("x", "y", 0.0, "h", 2.0).cost == 0.0


def test_the_total_adds_every_cost_and_is_unknown_with_a_price_missing() -> None:
    assert Plan(costs=(HOURS, PUTS)).total == pytest.approx(9.2884)
    assert Plan(costs=(HOURS,)).total == pytest.approx(7.65)
    assert Plan(costs=(HOURS, UNPRICED, PUTS)).total is None
    assert Plan().total == 0.0 and isinstance(Plan().total, float)
    assert Plan(costs=(HOURS,)).spends and Plan(costs=(UNPRICED,)).spends
    assert not Plan(requests=(CREATE,)).spends  # a request that costs nothing listed


def test_combining_keeps_every_line_in_order_and_each_note_once() -> None:
    first = Plan(requests=(CREATE,), costs=(HOURS,), notes=("n1", "n2"), warnings=("w1",))
    second = Plan(requests=(PUT,), costs=(PUTS,), notes=("n2", "n3"), warnings=("w1", "w2"))
    both = Plan.combine([first, None, second])
    assert both == Plan(requests=(CREATE, PUT), costs=(HOURS, PUTS), notes=("n1", "n2", "n3"),
                        warnings=("w1", "w2"))
    assert Plan.combine([]) == Plan()
    assert both.regions == ("eu-west-1", "us-east-1")
    again = PlannedRequest("train", "sagemaker", "DescribeTrainingJob", {}, region="eu-west-1")
    nowhere = PlannedRequest("train", "sagemaker", "DescribeTrainingJob", {})
    assert Plan(requests=(CREATE, again, nowhere)).regions == ("eu-west-1",)


def test_the_json_form() -> None:
    plan = Plan(requests=(PUT,), costs=(PUTS, UNPRICED), notes=("n",), warnings=("w",))
    assert plan_to_dict(plan) == {
        "regions": ["us-east-1"],
        "requests": [{"stage": "convert", "service": "s3", "operation": "PutObject",
                      "params": {"Key": "k"}, "count": 327_680, "region": "us-east-1"}],
        "costs": [
            {"stage": "convert", "item": "s3 PutObject", "quantity": 327.68,
             "unit": "1,000 requests", "price": 0.005, "price_region": None, "note": "",
             "cost": pytest.approx(1.6384)},
            {"stage": "deploy", "item": "ml.m5.large", "quantity": 10.0,
             "unit": "instance-hour", "price": None, "price_region": None, "note": "",
             "cost": None}],
        "total": None,
        "notes": ["n"],
        "warnings": ["w"],
    }


def test_the_text_form() -> None:
    plan = Plan(requests=(CREATE, PUT), costs=(HOURS, PUTS), notes=("estimated",),
                warnings=("careful",))
    assert format_plan(plan).splitlines() == [
        "Requests (nothing has been sent):",
        "[train] sagemaker CreateTrainingJob (eu-west-1)",
        "    {",
        '      "a": "<x>",',
        '      "b": 1',
        "    }",
        "[convert] s3 PutObject x 327,680 (us-east-1)",
        "    {",
        '      "Key": "k"',
        "    }",
        "",
        "Estimated cost (USD):",
        "  train     ml.p3.2xlarge                       2 instance-hour   "
        "@ 3.825/instance-hour (us-east-1)              7.65  1 job x 2 h",
        "  convert   s3 PutObject                   327.68 1,000 requests  "
        "@ 0.005/1,000 requests (region not stated)       1.64",
        "  total: 9.29",
        "warning: careful",
        "note: estimated",
    ]


def test_the_text_form_without_requests_prices_or_costs() -> None:
    unpriced = format_plan(Plan(costs=(UNPRICED,))).splitlines()
    assert unpriced[:2] == ["Requests (nothing has been sent):",
                            "  none: no stage sends requests"]
    assert unpriced[4] == ("  deploy    ml.m5.large                        10 instance-hour   "
                           "no price known                             no price")
    assert unpriced[5] == "  total: unknown (prices missing)"
    assert format_plan(Plan()).splitlines()[-1] == "  total: 0.00 (nothing billed)"
    many = CostLine("tune", "s3 GetObject", 2_359_296.0, "1,000 requests", 0.0004)
    assert " 2,359,296 " in format_plan(Plan(costs=(many,)))

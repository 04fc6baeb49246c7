"""What the settings accept, a local run accepts; what they refuse, they refuse naming the key.

Hypothesis draws ``[pipeline]``, ``[train]``, ``[train.extensions]`` and ``[tune.ranges]``
tables with NaN, infinities, huge numbers, boundary values, wrong types and unknown choices.
Whenever :class:`~pcamflow.config.Settings` accepts a draw, the local trainer's own checks
(``check_local``) and what a run builds from the values before its first batch (the seeded
generators, the optimizer and one step of it at every rate of the schedule, the model of that
depth on a tiny input, the local tuner's search distributions) must accept them too. Whenever
it refuses, the error is a ConfigError each line of which names a key that was drawn.
"""

from __future__ import annotations

import functools
import math
import typing
import warnings

import attrs
import numpy as np
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from pcamflow.config import Settings
from pcamflow.errors import ConfigError
from pcamflow.hyperparameters import NUM_LAYERS, OPTIMIZERS, Hyperparameters, kind_of
from pcamflow.local.model.resnet import build_model
from pcamflow.local.training.engine import build_optimizer, build_schedule, pick_device
from pcamflow.local.training.trainer import check_local
from pcamflow.local.tuning.search import distributions

EDGE_NUMBERS = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1 + 1e-12, -1e-12, -0.0, 1e300, 5e-324, 1 - 1e-16]
)
NUMBERS = st.one_of(
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([0.0, 1.0]),
    st.sampled_from([0.5, 1e-8]),
    EDGE_NUMBERS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-2, 2),
)
EDGE_INTEGERS = st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**32, 2**63, 10**20, -(2**31)])
INTEGERS = st.one_of(st.integers(1, 40), st.integers(1, 40), EDGE_INTEGERS, st.integers())
SHAPES = st.one_of(
    st.builds(
        "{},{},{}".format,
        st.sampled_from([1, 3, 0, 4]),
        st.integers(0, 300) | st.just(10**12),
        st.integers(0, 300),
    ),
    st.text(max_size=8),
)
STEPS = st.lists(st.integers(0, 50) | st.just(10**30), min_size=1, max_size=4).map(
    lambda epochs: ",".join(str(e) for e in epochs)
)
WRONG = st.sampled_from(["nope", "", True, [1], {"a": 1}, 1.5, math.nan])


def _hyperparameter(name: str) -> st.SearchStrategy[typing.Any]:
    hint = typing.get_type_hints(Hyperparameters)[name]
    choices = [a for part in (hint, *typing.get_args(hint)) if typing.get_origin(part) is
               typing.Literal for a in typing.get_args(part)]
    if choices:
        drawn = st.sampled_from(choices)
    elif name == "num_layers":
        drawn = st.sampled_from(NUM_LAYERS) | INTEGERS
    elif name == "image_shape":
        drawn = SHAPES
    elif name == "lr_scheduler_step":
        drawn = STEPS
    elif name in ("use_pretrained_model", "use_weighted_loss", "multi_label"):
        drawn = st.sampled_from([0, 1, 2, -1, True])
    else:
        drawn = {float: NUMBERS, int: INTEGERS, bool: st.booleans()}[kind_of(name)]
    return st.one_of(drawn, drawn, WRONG)


def _some_of(strategies: dict[str, st.SearchStrategy[typing.Any]], most: int) -> typing.Any:
    """A table of at most ``most`` of the keys, each with a value drawn from its strategy."""
    names = st.lists(st.sampled_from(sorted(strategies)), max_size=most, unique=True)
    return names.flatmap(lambda keys: st.fixed_dictionaries({k: strategies[k] for k in keys}))


HYPERPARAMETERS = {name: _hyperparameter(name) for name in typing.get_type_hints(Hyperparameters)}
EXTENSIONS = {
    "dihedral": st.booleans() | WRONG,
    "stain_jitter": NUMBERS | WRONG,
    "seed": INTEGERS | WRONG,
    "num_workers": st.integers(-1, 70) | WRONG,
    "device": st.sampled_from(["auto", "cpu", "cuda", "tpu"]),
}
RANGES = _some_of(
    {
        "type": st.sampled_from(["continuous", "integer", "categorical", "uniform"]),
        "min_value": NUMBERS | st.integers(1, 300),
        "max_value": NUMBERS | st.integers(1, 300),
        "values": st.lists(NUMBERS | st.sampled_from(["sgd", "adam", "lbfgs"]), max_size=3),
        "scaling": st.sampled_from(["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"]),
    },
    most=5,
)
TABLES = st.fixed_dictionaries(
    {"train": st.tuples(_some_of(HYPERPARAMETERS, 5), _some_of(EXTENSIONS, 2)).map(
        lambda parts: {**parts[0], **({"extensions": parts[1]} if parts[1] else {})})},
    optional={
        "pipeline": st.fixed_dictionaries({"seed": INTEGERS | WRONG}),
        "tune": st.fixed_dictionaries({"ranges": st.dictionaries(
            st.sampled_from(["learning_rate", "mini_batch_size", "optimizer", "momentum"]),
            RANGES, max_size=2)}),
    },
)


def _drawn_keys(table: dict[str, typing.Any]) -> set[str]:
    keys = {f"pipeline.{k}" for k in table.get("pipeline", {})}
    train = table["train"]
    keys |= {f"train.{k}" for k in train if k != "extensions"}
    keys |= {f"train.extensions.{k}" for k in train.get("extensions", {})}
    keys |= {f"tune.ranges.{k}" for k in table.get("tune", {}).get("ranges", {})}
    return keys


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=TABLES)
# the values that once passed the settings and crashed a run, always tried
@example(table={"train": {"learning_rate": math.nan}})
@example(table={"train": {"momentum": math.nan, "optimizer": "nag"}})
@example(table={"train": {"beta_1": 1.0, "optimizer": "adam"}})
@example(table={"train": {"beta_2": 1.0}})
@example(table={"train": {}, "pipeline": {"seed": -1}})
@example(table={"train": {}, "pipeline": {"seed": 10**20}})
@example(table={"train": {}, "tune": {"ranges": {"learning_rate": {"min_value": 0.1}}}})
def test_what_the_settings_accept_a_local_run_accepts(table: dict[str, typing.Any]) -> None:
    try:
        chosen = Settings.from_dict(table)
    except ConfigError as error:
        event("refused by the settings")
        keys = _drawn_keys(table)
        for line in str(error).splitlines():
            assert any(line.startswith((f"{k}:", f"{k}.", f"{k}[")) for k in keys), line
        return
    hp, ext = chosen.train.hyperparameters, chosen.train.extensions
    try:
        check_local(hp, ext)
    except ConfigError:
        # the local backend's documented refusals, raised before any work
        assert hp.multi_label or hp.use_pretrained_model or ext.device == "cuda"
        event("refused by check_local")
        return
    event("accepted")
    pick_device(ext.device)
    seed = ext.seed if ext.seed is not None else chosen.pipeline.seed
    for derived in (seed, seed + 1, seed * 1000 + hp.epochs - 1):  # as the engine seeds them
        torch.Generator().manual_seed(derived)
    np.random.default_rng(seed)
    np.random.RandomState(seed)  # Optuna's samplers, seeded with seed + trials so far

    schedule = build_schedule(hp, torch.optim.SGD(torch.nn.Linear(1, 1).parameters(),
                                                  lr=hp.learning_rate))
    rates = []
    with warnings.catch_warnings():  # stepped without training: torch's order warning is moot
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(hp.epochs, (hp.scheduler_steps or (0,))[-1] + 2, 64)):
            rates.append(schedule.get_last_lr()[0])
            schedule.step()
    assert all(math.isfinite(rate) and rate >= 0 for rate in rates), rates
    # every optimizer, as a tuner may pick any of them with the other values as they are
    for name in OPTIMIZERS:
        tiny = torch.nn.Linear(3, 2)
        optimizer = build_optimizer(attrs.evolve(hp, optimizer=name), tiny.parameters())
        for rate in rates:
            for group in optimizer.param_groups:
                group["lr"] = rate
            optimizer.zero_grad()
            tiny(torch.ones(4, 3)).pow(2).sum().backward()
            optimizer.step()

    ranges = chosen.tune.ranges
    distributions(ranges)
    for name, rng in ranges.items():
        rng.to_sagemaker(name)


@functools.cache
def _output_shape(num_layers: int, num_classes: int, channels: int) -> tuple[int, ...]:
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = build_model(num_layers, num_classes, channels=channels)
        return tuple(model(torch.empty(2, channels, 8, 8)).shape)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=st.fixed_dictionaries(
        {},
        optional={
            "num_layers": st.sampled_from(NUM_LAYERS) | INTEGERS,
            "num_classes": st.sampled_from([1, 2, 3, 2**31 - 1, 2**31, 2**63, 0]),
            "image_shape": st.sampled_from(["1,32,32", "3,8,8", "2,8,8", "3,96,96"]),
        },
    )
)
def test_the_model_of_every_accepted_depth_and_head_builds(table: dict[str, typing.Any]) -> None:
    try:
        hp = Settings.from_dict({"train": table}).train.hyperparameters
    except ConfigError as error:
        assert any(str(error).startswith(f"train.{k}:") for k in table), error
        return
    assert _output_shape(hp.num_layers, hp.num_classes, hp.channels) == (2, hp.num_classes)

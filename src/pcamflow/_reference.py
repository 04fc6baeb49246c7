"""Writes docs/configuration.md from the settings classes themselves, so it cannot drift.

Run ``python -m pcamflow._reference > docs/configuration.md``; a test checks the file is current.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any

import attrs

from pcamflow import config
from pcamflow._structure import OMIT
from pcamflow._validation import allowed
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.tuning_ranges import TuningRange

HYPERPARAMETER_HELP = {
    "num_classes": "Output classes (2 for PCam).",
    "num_training_samples": "Training images; filled from the train manifest's count.",
    "image_shape": "`channels,height,width` of the network input.",
    "num_layers": "ResNet depth; 20, 32, 44, 56 and 110 are the small-image networks.",
    "epochs": "Training epochs.",
    "mini_batch_size": "Images per training batch on each machine, split over its devices "
    "(the global batch is this times the machines).",
    "learning_rate": "Initial learning rate.",
    "lr_scheduler_step": "Epochs at which the learning rate is multiplied by "
    '`lr_scheduler_factor`, e.g. `"10,20"`.',
    "lr_scheduler_factor": "Factor applied at each `lr_scheduler_step`.",
    "optimizer": "The optimizer (`nag`: SGD with Nesterov momentum).",
    "momentum": "Momentum of `sgd` and `nag`.",
    "weight_decay": "L2 weight decay.",
    "beta_1": "`adam`'s first-moment decay (below 1: a decay of 1 never forgets).",
    "beta_2": "`adam`'s second-moment decay (below 1).",
    "eps": "`adam`'s and `rmsprop`'s epsilon.",
    "gamma": "`rmsprop`'s decay.",
    "augmentation_type": "Augmentation: random crops, plus colour, plus affine transforms "
    "(unset: none).",
    "resize": "Resize the shorter side to this many pixels before cropping.",
    "top_k": "Report top-k accuracy during training: 2 at least (top-1 is the accuracy "
    "itself), `num_classes` at most.",
    "early_stopping": "Stop when validation accuracy stops improving.",
    "early_stopping_min_epochs": "Epochs before early stopping may stop.",
    "early_stopping_patience": "Epochs without improvement before stopping.",
    "early_stopping_tolerance": "Relative improvement that counts as improvement.",
    "checkpoint_frequency": "Save a checkpoint every N epochs (unset: the best epoch).",
    "precision_dtype": "`float16`: mixed precision.",
    "use_pretrained_model": "1: start from pretrained weights "
    "(offline: `extensions.weights_file`).",
    "use_weighted_loss": "1: weight the loss by inverse class frequency.",
    "multi_label": "1: multi-label classification.",
    "kv_store": "Distributed training's weight updates: `dist_sync` (locally: "
    "DistributedDataParallel); `dist_async` is refused locally across machines.",
}


def _attribute_docs(cls: type) -> dict[str, str]:
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"Attributes:\n(.*?)(?:\n\n|\Z)", doc, re.S)
    out: dict[str, str] = {}
    if not match:
        return out
    current = None
    for line in match.group(1).splitlines():
        item = re.match(r"\s{4}(\w+): (.*)", line)
        if item:
            current = item.group(1)
            out[current] = item.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def _type_name(hint: Any) -> str:
    """A field's type as a settings file sees it: ``str`` for a choice, ``list`` for a tuple."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return _type_name(type(args[0]))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _default(field: attrs.Attribute[Any]) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, str):
        return f'"{default}"'
    if isinstance(default, tuple):
        return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in default) + "]"
    if isinstance(default, dict):
        return "{}"
    return str(default)


def _table(title: str, cls: type, help_: dict[str, str] | None = None) -> list[str]:
    docs = help_ or _attribute_docs(cls)
    hints = typing.get_type_hints(cls)
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    summary = re.sub(r"^``\[[\w.]+\]``(, ``\[[\w.]+\]``)*: ", "", summary).replace("``", "`")
    summary = summary[:1].upper() + summary[1:]
    lines = [
        f"## `{title}`",
        "",
        summary,
        "",
        "| key | type | default | allowed | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for field in attrs.fields(cls):
        if attrs.has(hints[field.name]) or field.metadata.get(OMIT):
            continue
        meaning = _cell(docs.get(field.name, ""))
        kind = _cell(_type_name(hints[field.name]))
        rule = _cell(allowed(field.validator))
        lines.append(
            f"| `{field.name}` | `{kind}` | `{_default(field)}` | {rule} | {meaning} |"
        )
    return [*lines, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("``", "`")


def settings_reference() -> str:
    """The configuration reference, as Markdown."""
    lines = [
        "# Configuration",
        "",
        "One TOML file configures a run; each table below is one class in `pcamflow.config`.",
        "Unknown keys, wrong types and values out of range are errors that name the key path,",
        "one line per problem; the *allowed* column is what the classes check. Relative paths",
        "are taken from the current directory. This page is generated from the classes by",
        "`python -m pcamflow._reference`.",
        "",
    ]
    tables = [
        ("[pipeline]", config.PipelineSettings),
        ("[data]", config.DataSettings),
        ("[convert]", config.ConvertSettings),
        ("[manifests]", config.ManifestSettings),
        ("[tune]", config.TuneSettings),
    ]
    for title, cls in tables:
        lines += _table(title, cls)
    lines += _table("[tune.ranges.NAME]", TuningRange)
    lines += _table("[train]", Hyperparameters, HYPERPARAMETER_HELP)
    lines += _table("[train.extensions]", LocalExtensions)
    for title, cls in [
        ("[evaluate]", config.EvaluateSettings),
        ("[deploy]", config.DeploySettings),
        ("[aws]", config.AwsSettings),
        ("[aws.network]", config.AwsNetworkSettings),
        ("[aws.training]", config.AwsTrainingSettings),
        ("[aws.evaluation]", config.AwsEvaluationSettings),
        ("[aws.endpoint]", config.AwsEndpointSettings),
        ("[tracking]", config.TrackingSettings),
    ]:
        lines += _table(title, cls)
        if cls is config.AwsSettings:
            lines += [
                "The keys of the four tables below were once written in `[aws]` itself",
                "(`[aws] instance_type = ...`). Such files still load, with a warning naming each",
                "key's new table; a key given in both places is an error.",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(settings_reference(), end="")

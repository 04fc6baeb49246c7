"""An example pcamflow plugin: a DataConverter that draws solid-colour patches.

It shows the whole plugin path: a stage subclass, an entry point in ``pyproject.toml``, and a
name (``converter = "example.solid"``) a settings file can use.
"""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

from pcamflow.artifacts import ImageDataset
from pcamflow.errors import ConfigError
from pcamflow.plan import CostLine, Plan, PlannedRequest
from pcamflow.stages import Context, DataConverter

__all__ = ["GreyConverter", "PricedConverter", "SolidColourConverter"]

COLOURS = {"0": (230, 170, 200), "1": (90, 40, 130)}


class SolidColourConverter(DataConverter):
    """Writes ``per_class`` solid-colour 96x96 JPEGs per split and class: pink 0, purple 1."""

    settings_sections: ClassVar[tuple[str, ...]] = ("data",)

    def __init__(self, per_class: int = 4) -> None:
        self.per_class = per_class

    def options(self) -> dict[str, int]:
        return {"per_class": self.per_class}

    def validate(self, context: Context) -> None:
        if self.per_class < 1:
            raise ConfigError(f"per_class: {self.per_class} must be at least 1")

    def run(self, context: Context) -> ImageDataset:
        root = context.stage_dir / "images"
        counts: dict[str, dict[str, int]] = {}
        index = 0
        for split in context.settings.data.splits:
            counts[split] = {}
            for label, colour in COLOURS.items():
                folder = root / split / label
                folder.mkdir(parents=True, exist_ok=True)
                for _ in range(self.per_class):
                    Image.new("RGB", (96, 96), colour).save(folder / f"{split}_{index:06d}.jpg")
                    index += 1
                counts[split][label] = self.per_class
        return ImageDataset(root=str(root), counts=counts)


class GreyConverter(SolidColourConverter):
    """The same converter in grey, registered under a taken name to test duplicate detection."""


class PricedConverter(SolidColourConverter):
    """The same converter, as if it also stored each image with a paid service.

    Its ``plan`` says so, which is all the spend guard needs: no name is checked.
    """

    def plan(self, context: Context) -> Plan:
        images = 2 * self.per_class * len(context.settings.data.splits)
        request = PlannedRequest(context.stage_name, "example-store", "Put", {"Key": "<image>"},
                                 count=images)
        cost = CostLine(context.stage_name, "example-store Put", images / 1000,
                        "1,000 requests", 0.005, "example-region")
        return Plan(requests=(request,), costs=(cost,))

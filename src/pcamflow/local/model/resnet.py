"""The ResNet family of the built-in Image Classification algorithm, in PyTorch.

The algorithm builds MXNet's pre-activation ResNet (He et al., "Identity Mappings in Deep
Residual Networks"), and so does this module:

- ``num_layers`` 18 and 34: ImageNet-style, basic blocks;
- 50, 101, 152 and 200: ImageNet-style, bottleneck blocks;
- 20, 32, 44, 56 and 110: the small-image (CIFAR-style) ``6n+2`` networks, basic blocks.

The ImageNet-style stem (7x7 convolution, stride 2, then 3x3 max pooling) is followed by
adaptive average pooling, so the networks take PCam's 96x96 patches (or any size) as they are.

>>> import torch
>>> model = build_model(20, num_classes=2)
>>> model(torch.zeros(1, 3, 48, 48)).shape
torch.Size([1, 2])
"""

from __future__ import annotations

import torch
from torch import nn

from pcamflow.errors import HyperparameterError
from pcamflow.hyperparameters import NUM_LAYERS, SMALL_IMAGE_LAYERS

__all__ = ["PreActResNet", "architecture_name", "build_model"]

# num_layers -> (units per stage, bottleneck), as MXNet's resnet symbol defines them
_IMAGENET_UNITS: dict[int, tuple[tuple[int, ...], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}


class _BasicUnit(nn.Module):
    """Pre-activation basic unit: BN-ReLU-conv3x3, BN-ReLU-conv3x3."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + short


class _BottleneckUnit(nn.Module):
    """Pre-activation bottleneck unit: 1x1 (out/4), 3x3 (out/4), 1x1 (out)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        mid = out_ch // 4
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + short


class PreActResNet(nn.Module):
    """A pre-activation ResNet: stem, residual stages, BN-ReLU, global pooling, classifier.

    Args:
        units: residual units per stage.
        filters: the stem's width, then each stage's output width.
        bottleneck: bottleneck units (else basic units).
        num_classes: outputs of the classifier.
        channels: input image channels.
        small_image: the CIFAR-style 3x3 stem instead of the ImageNet-style 7x7 one.
    """

    def __init__(
        self,
        units: tuple[int, ...],
        filters: tuple[int, ...],
        bottleneck: bool,
        num_classes: int,
        channels: int = 3,
        small_image: bool = False,
    ) -> None:
        super().__init__()
        if small_image:
            self.stem = nn.Sequential(nn.Conv2d(channels, filters[0], 3, 1, 1, bias=False))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, filters[0], 7, 2, 3, bias=False),
                nn.BatchNorm2d(filters[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        unit = _BottleneckUnit if bottleneck else _BasicUnit
        stages = []
        in_ch = filters[0]
        for i, count in enumerate(units):
            out_ch = filters[i + 1]
            stride = 1 if i == 0 else 2
            blocks = [unit(in_ch, out_ch, stride)]
            blocks += [unit(out_ch, out_ch, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_ch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        out = self.pool(torch.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


def architecture_name(num_layers: int) -> str:
    """The architecture's name, e.g. ``resnet20``."""
    return f"resnet{num_layers}"


def build_model(num_layers: int, num_classes: int, channels: int = 3) -> PreActResNet:
    """The algorithm's ResNet with ``num_layers`` layers.

    Raises:
        HyperparameterError: ``num_layers`` is not one the algorithm offers.
    """
    if num_layers not in NUM_LAYERS:
        shown = ", ".join(str(n) for n in NUM_LAYERS)
        raise HyperparameterError(f"num_layers: {num_layers!r} is not one of {shown}")
    if num_classes < 1:
        raise HyperparameterError(f"num_classes: {num_classes!r} must be a positive integer")
    if num_layers in SMALL_IMAGE_LAYERS:
        per_stage = (num_layers - 2) // 6
        return PreActResNet(
            (per_stage,) * 3, (16, 16, 32, 64), False, num_classes, channels, small_image=True
        )
    units, bottleneck = _IMAGENET_UNITS[num_layers]
    filters = (64, 256, 512, 1024, 2048) if bottleneck else (64, 64, 128, 256, 512)
    return PreActResNet(units, filters, bottleneck, num_classes, channels)


def classifier_prefix() -> str:
    """The state-dict prefix of the top fully connected layer (re-initialised on transfer)."""
    return "fc."

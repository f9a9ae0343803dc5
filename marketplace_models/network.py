"""The classifier network, its config and the evaluation preset that feeds it.

:func:`build_network` makes the image network (a torchvision ResNet, or :class:`SimpleCNN`, the
small network trained from scratch); :func:`forward_features` is its embedding;
:class:`ClassifierConfig` (from :mod:`.config`, readable without torch) is what a logged
classifier stores beside the weights; :class:`ServingNetwork` is the served graph. The
evaluation preset (:func:`preprocess_image` then :func:`normalize_batch`, one image at a time
:func:`eval_transform`) is what training evaluates with and what every logged model and the
service predict with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from marketplace_models.config import (  # re-exported: the config is readable without torch
    ARCHS,
    FORMAT_VERSION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESNETS,
    SIMPLE_CNN,
    ClassifierConfig,
)
from marketplace_models.imaging import load_normalized

__all__ = [
    "ARCHS",
    "FORMAT_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNETS",
    "SIMPLE_CNN",
    "ClassifierConfig",
    "ServingNetwork",
    "SimpleCNN",
    "build_network",
    "embedding_dim",
    "eval_transform",
    "forward_features",
    "normalize_batch",
    "preprocess_image",
    "stack_images",
]

SIMPLE_CNN_WIDTHS = (32, 64, 128, 256)  # channels of each conv-batchnorm-relu-pool block


class SimpleCNN(nn.Module):
    """The seed's first deep model: conv-batchnorm-relu-maxpool blocks, global average pooling
    and a linear head (``fc``, as on a ResNet, so that every consumer finds the head there)."""

    def __init__(self, num_classes: int, widths: Sequence[int] = SIMPLE_CNN_WIDTHS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)  # (B, 256, S/16, S/16)
        return torch.flatten(self.avgpool(x), 1)  # (B, 256)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(images))  # (B, C)


def build_network(arch: str, num_classes: int) -> nn.Module:
    """The ``arch`` network with a ``num_classes`` head and no pretrained weights."""
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
    if arch == SIMPLE_CNN:
        return SimpleCNN(num_classes)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def forward_features(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The image embedding: the pooled penultimate layer, ``(B, D)``."""
    if isinstance(net, SimpleCNN):
        return net.forward_features(images)  # (B, D)
    x = net.conv1(images)  # (B, 64, H/2, W/2)
    x = net.maxpool(net.relu(net.bn1(x)))  # (B, 64, H/4, W/4)
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))  # (B, D, H/32, W/32)
    return torch.flatten(net.avgpool(x), 1)  # (B, D)


def embedding_dim(net: nn.Module) -> int:
    """Width of :func:`forward_features` (256 for simplecnn, 512 for resnet18/34, 2048 for
    resnet50)."""
    return int(net.fc.in_features)


# The evaluation preset.


def preprocess_image(source: bytes | str | Path, image_size: int) -> np.ndarray:
    """First half of the evaluation preset: the shared normalisation, as uint8 ``(S, S, 3)``.

    Raises ``OSError`` when ``source`` is not a readable image.
    """
    return np.array(load_normalized(source, image_size), dtype=np.uint8)


def normalize_batch(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Second half of the evaluation preset: uint8 ``(B, 3, S, S)`` to normalised float."""
    mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def stack_images(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``(S, S, 3)`` arrays to one uint8 ``(B, 3, S, S)`` tensor."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def eval_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """The evaluation preset for one image: shared normalisation, tensor, mean/std.

    Returns a callable ``source -> float tensor (3, S, S)``. Training evaluates and the
    logged model predicts through exactly these steps (batched).
    """

    def transform(source: bytes | str | Path) -> torch.Tensor:
        batch = stack_images([preprocess_image(source, image_size)])
        return normalize_batch(batch, mean, std)[0]

    return transform


class ServingNetwork(nn.Module):
    """A classifier network as served: uint8 pixels in, probabilities and embedding out.

    The one inference graph of a logged classifier (the evaluation preset's mean/std
    inside); :mod:`marketplace_models.onnx` exports it, the service's torch engine runs it.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images.float() / 255.0 - self.shift) / self.scale  # (B, 3, S, S)
        features = forward_features(self.net, x)  # (B, D)
        logits = self.net.fc(features)  # (B, C)
        return torch.softmax(logits.float(), dim=1), features.float()

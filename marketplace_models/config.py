"""What a logged image classifier stores beside its weights, readable without torch.

:class:`ClassifierConfig` (arch, categories, image size, mean/std) and the names of the
networks it can describe. The service reads it for versions it runs on ONNX Runtime, so
nothing here imports torch; :mod:`marketplace_models.network` builds the networks and
re-exports these names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

SIMPLE_CNN = "simplecnn"
RESNETS = ("resnet18", "resnet34", "resnet50")
ARCHS = (SIMPLE_CNN, *RESNETS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything besides the weights that a logged classifier needs, stored as JSON."""

    arch: str
    categories: list[str]
    image_size: int
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "num_classes": self.num_classes}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClassifierConfig:
        data = json.loads(text)
        return cls(
            arch=data["arch"],
            categories=list(data["categories"]),
            image_size=int(data["image_size"]),
            mean=[float(v) for v in data["mean"]],
            std=[float(v) for v in data["std"]],
            format_version=int(data.get("format_version", FORMAT_VERSION)),
        )

"""The two image presets, named once: :func:`train_transform` and :func:`eval_transform`.

- Train: from the cached square image, a random resized crop (area 60-100 %, aspect
  3/4-4/3) to ``image_size``, a horizontal flip half the time, mild colour jitter
  (brightness, contrast, saturation +-20 %), then ImageNet mean/std. It works on whole
  uint8 batches ``(B, 3, S, S)`` on the training device, with per-image random
  parameters; this is torchvision's ``RandomResizedCrop(scale=(0.6, 1))``,
  ``RandomHorizontalFlip()``, ``ColorJitter(0.2, 0.2, 0.2)``, ``ToTensor()``,
  ``Normalize()`` done without a per-image Python loop.
- Eval: the one image normalisation of clean_images (``marketplace_models.imaging``) at
  ``image_size``, tensor conversion and mean/std: ``marketplace_models.network.eval_transform``,
  the same code the logged model runs on every request.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from marketplace_models.network import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize_batch

__all__ = ["TrainTransform", "eval_batch", "eval_transform", "train_transform"]

CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
FLIP_PROBABILITY = 0.5
JITTER = 0.2


class TrainTransform(nn.Module):
    """Batched train preset: uint8 ``(B, 3, S, S)`` to normalised float ``(B, 3, s, s)``."""

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = CROP_SCALE,
        ratio: tuple[float, float] = CROP_RATIO,
        flip: float = FLIP_PROBABILITY,
        jitter: float = JITTER,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.scale, self.ratio, self.flip, self.jitter = scale, ratio, flip, jitter

    def _crop_grid(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """Affine matrices ``(B, 2, 3)``: a random crop box per image, mirrored or not."""
        area = torch.empty(batch).uniform_(*self.scale, generator=generator)
        log_ratio = torch.empty(batch).uniform_(
            math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator
        )
        aspect = torch.exp(log_ratio)
        width = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the side
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        centre_x = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - width)
        centre_y = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - height)
        mirror = torch.where(torch.rand(batch, generator=generator) < self.flip, -1.0, 1.0)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0] = width * mirror
        theta[:, 0, 2] = centre_x
        theta[:, 1, 1] = height
        theta[:, 1, 2] = centre_y
        return theta

    def _jitter_factors(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """Brightness, contrast and saturation factors ``(3, B, 1, 1, 1)``."""
        low, high = 1 - self.jitter, 1 + self.jitter
        return torch.empty(3, batch, 1, 1, 1).uniform_(low, high, generator=generator)

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        batch, device = images.shape[0], images.device
        theta = self._crop_grid(batch, generator).to(device)
        factors = self._jitter_factors(batch, generator).to(device)
        x = images.float().div_(255.0)  # (B, 3, S, S)
        size = (batch, 3, self.image_size, self.image_size)
        grid = F.affine_grid(theta, size, align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        brightness, contrast, saturation = factors
        x = x * brightness
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, s, s)
        x = (x - grey.mean(dim=(2, 3), keepdim=True)) * contrast + grey.mean(
            dim=(2, 3), keepdim=True
        )
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = ((x - grey) * saturation + grey).clamp_(0.0, 1.0)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return (x - mean) / std  # (B, 3, s, s)


def train_transform(image_size: int) -> TrainTransform:
    """The train preset for ``image_size`` inputs."""
    return TrainTransform(image_size)


def eval_batch(images: torch.Tensor) -> torch.Tensor:
    """The eval preset's tensor half on a batch already normalised at ``image_size``."""
    return normalize_batch(images)

"""The cleaned data as training sees it, and the in-memory image cache.

Reads ``<clean>/images.parquet``, ``<clean>/categories.json`` (through
:func:`clean_data.load_clean`) and the JPEGs in ``<clean>/images/<clean_size>/``
(made by clean_images). Each JPEG is decoded once, by
:func:`decode_images`, into a uint8 tensor ``(N, 3, S, S)``; every epoch then indexes that
tensor instead of decoding files again.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from clean_data import IMAGES_FILE, CleanData, choose_size, load_clean
from cli import UserError
from marketplace_models.network import preprocess_image

__all__ = ["CleanData", "decode_images", "labels_of", "load_clean_data", "shard"]

log = logging.getLogger(__name__)

# The train cache is a little larger than the model's input so that random crops keep
# detail (torchvision's 256 -> 224 ratio).
TRAIN_CACHE_RATIO = 8 / 7


def load_clean_data(clean: Path, clean_size: int | None, image_size: int = 0) -> CleanData:
    """The cleaned data at ``clean_size`` (None: ``auto``, see
    :func:`clean_data.choose_size`, for a model input of ``image_size``), without the
    images that have no cleaned JPEG there. A :class:`UserError` says which step to run when
    something is missing.
    """
    data = load_clean(clean, columns=("image_id", "label", "split"))
    needed = math.ceil(image_size * TRAIN_CACHE_RATIO)
    data = data.at_size(choose_size(clean, needed, clean_size, flag="--clean-size"))
    images = data.images[["image_id", "label", "split"]]
    exists = images["image_id"].map(lambda i: (data.image_dir / f"{i}.jpg").is_file())
    if not exists.all():
        log.warning(
            "%d of %d images have no cleaned JPEG in %s; training without them",
            int((~exists).sum()),
            len(images),
            data.image_dir,
        )
    data = replace(data, images=images[exists].reset_index(drop=True))
    for split in ("train", "val"):
        if data.split(split).empty:
            raise UserError(
                f"the {split} split of {data.folder / IMAGES_FILE} has no images with cleaned "
                "JPEGs: run clean_images, and clean_tabular with non-zero --val-frac"
            )
    return data


def train_cache_size(image_size: int, clean_size: int) -> int:
    """Side of the cached training images: just above ``image_size``, at most ``clean_size``."""
    return max(image_size, min(clean_size, math.ceil(image_size * TRAIN_CACHE_RATIO)))


def decode_images(paths: list[Path], size: int, workers: int = 0) -> torch.Tensor:
    """Decode ``paths`` once through the shared normalisation into uint8 ``(N, 3, S, S)``.

    ``workers`` threads decode in parallel (0 = all cores); Pillow releases the GIL while
    it decodes and resizes.
    """
    cache = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    threads = workers or os.cpu_count() or 1

    def fill(index: int) -> None:
        try:
            array = preprocess_image(paths[index], size)
        except OSError as exc:
            raise UserError(
                f"cannot read {paths[index]} ({exc}): re-run clean_images to rebuild it"
            ) from None
        cache[index] = torch.from_numpy(array).permute(2, 0, 1)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fill, range(len(paths))))
    return cache


def labels_of(frame: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(frame["label"].to_numpy(copy=True), dtype=torch.long)


def shard(frame: pd.DataFrame, rank: int, world_size: int, seed: int) -> pd.DataFrame:
    """This process's share of ``frame`` under DDP: a seeded shuffle, every world_size-th row."""
    if world_size == 1:
        return frame
    order = frame.sample(frac=1.0, random_state=seed).index
    return frame.loc[order[rank::world_size]].reset_index(drop=True)

"""The cleaned data as training sees it, and the in-memory image cache.

Reads ``<clean>/images.parquet``, ``<clean>/categories.json`` and the JPEGs in
``<clean>/images/<clean_size>/`` (made by clean_images). Each JPEG is decoded once, by
:func:`decode_images`, into a uint8 tensor ``(N, 3, S, S)``; every epoch then indexes that
tensor instead of decoding files again.
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from registry.model import preprocess_image
from steps.runtime import StepError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# The train cache is a little larger than the model's input so that random crops keep
# detail (torchvision's 256 -> 224 ratio).
TRAIN_CACHE_RATIO = 8 / 7


@dataclass(frozen=True)
class CleanData:
    """The cleaned image table, the category names and the folder of cleaned JPEGs."""

    folder: Path
    images: pd.DataFrame
    categories: list[str]
    image_dir: Path

    def split(self, name: str) -> pd.DataFrame:
        return self.images[self.images["split"] == name].reset_index(drop=True)

    def paths(self, frame: pd.DataFrame) -> list[Path]:
        return [self.image_dir / f"{image_id}.jpg" for image_id in frame["image_id"]]


def _available_sizes(clean: Path) -> str:
    folder = clean / "images"
    sizes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return ", ".join(sizes) or "none"


def load_clean_data(clean: Path, clean_size: int) -> CleanData:
    """Read the cleaned data; a :class:`StepError` says which step to run when it is missing."""
    clean = Path(clean)
    table, names = clean / "images.parquet", clean / "categories.json"
    if not table.is_file() or not names.is_file():
        raise StepError(
            f"no cleaned data in {clean} (images.parquet and categories.json): run "
            "`mlflow run . -e clean_tabular --env-manager local` and `-e clean_images` first, "
            "or pass --clean with the folder they wrote"
        )
    image_dir = clean / "images" / str(clean_size)
    if not image_dir.is_dir():
        raise StepError(
            f"no cleaned images in {image_dir}: run clean_images with --size {clean_size}, "
            f"or pass --clean-size with a size that exists (found: {_available_sizes(clean)})"
        )
    categories = json.loads(names.read_text(encoding="utf-8"))
    images = pd.read_parquet(table, columns=["image_id", "label", "split"])
    images["image_id"] = images["image_id"].astype(str)
    images["label"] = images["label"].astype("int64")
    bad = images[(images["label"] < 0) | (images["label"] >= len(categories))]
    if len(bad):
        raise StepError(
            f"{len(bad)} rows of {table} have labels outside categories.json "
            f"({len(categories)} categories): re-run clean_tabular"
        )
    exists = images["image_id"].map(lambda i: (image_dir / f"{i}.jpg").is_file())
    if not exists.all():
        log.warning(
            "%d of %d images have no cleaned JPEG in %s; training without them",
            int((~exists).sum()),
            len(images),
            image_dir,
        )
        images = images[exists].reset_index(drop=True)
    data = CleanData(clean, images, categories, image_dir)
    for split in ("train", "val"):
        if data.split(split).empty:
            raise StepError(
                f"the {split} split of {table} has no images with cleaned JPEGs: run "
                "clean_images, and clean_tabular with non-zero --val-frac"
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
            raise StepError(
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

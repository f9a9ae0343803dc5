"""Tiny training data and the command lines that train on it (tests of train, resume, tune)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]

CATEGORIES = ["Appliances", "Baby & Kids Stuff", "Home & Garden"]


SIZE = 32


def make_tiny_clean(out: Path, per_split=(16, 6, 6), seed: int = 0) -> Path:
    """A clean-layout export: one coloured shape per category on a dark background."""
    rng = np.random.default_rng(seed)
    folder = out / "images" / str(SIZE)
    folder.mkdir(parents=True)
    (out / "images" / f"complete_{SIZE}.json").write_text("{}")  # finished, as clean_images
    colours = [(230, 40, 40), (40, 230, 40), (40, 40, 230)]
    rows = []
    for label, name in enumerate(CATEGORIES):
        for split, count in zip(("train", "val", "test"), per_split, strict=True):
            for i in range(count):
                image_id = f"{label}-{split}-{i}"
                image = Image.new(
                    "RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(0, 60, 3))
                )
                x, y = (int(v) for v in rng.integers(2, SIZE // 3, 2))
                side = int(rng.integers(SIZE // 3, SIZE // 2))
                box = [x, y, x + side, y + side]
                draw = ImageDraw.Draw(image)
                [draw.ellipse, draw.rectangle, draw.rectangle][label](box, fill=colours[label])
                image.save(folder / f"{image_id}.jpg", quality=92)
                rows.append(
                    {
                        "image_id": image_id,
                        "product_id": f"p-{image_id}",
                        "root_category": name,
                        "label": label,
                        "split": split,
                    }
                )
    pd.DataFrame(rows).to_parquet(out / "images.parquet")
    (out / "categories.json").write_text(json.dumps(CATEGORIES))
    return out


def tiny_args(clean: Path, *extra: str) -> list[str]:
    return [
        "--clean",
        str(clean),
        "--clean-size",
        str(SIZE),
        "--image-size",
        str(SIZE),
        "--arch",
        "resnet18",
        "--batch-size",
        "16",
        "--lr",
        "0.003",
        "--trainable-layers",
        "all",
        "--num-workers",
        "1",
        *extra,
    ]


def subprocess_env() -> dict[str, str]:
    """This checkout first on the path, one thread per process, no run to attach to."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
    }
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

"""clean_data: the clean layout, load_clean and the automatic image size."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from clean_data import (
    CATEGORIES_FILE,
    IMAGES_FILE,
    choose_size,
    cleaned_sizes,
    complete_marker,
    load_clean,
)
from cli import UserError
from steps.training.data import load_clean_data


def write_clean(folder: Path, sizes: tuple[int, ...] = (32, 64, 128)) -> Path:
    rows = [
        {"image_id": f"i{k}", "product_id": f"p{k}", "root_category": "AB"[k % 2]}
        | {"label": k % 2, "split": ("train", "val", "test")[k % 3]}
        for k in range(6)
    ]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / IMAGES_FILE)
    (folder / CATEGORIES_FILE).write_text(json.dumps(["A", "B"]))
    for size in sizes:
        (folder / "images" / str(size)).mkdir(parents=True)
        for row in rows:
            (folder / "images" / str(size) / f"{row['image_id']}.jpg").write_bytes(b"jpeg")
        complete_marker(folder, size).write_text("{}")  # as clean_images leaves a finished size
    (folder / "images" / "report_32.json").write_text("{}")  # not a size folder
    return folder


@pytest.mark.parametrize(
    ("needed", "expected"), [(1, 32), (32, 32), (33, 64), (100, 128), (256, 128)]
)
def test_auto_is_the_smallest_size_large_enough_else_the_largest(
    tmp_path: Path, needed: int, expected: int, caplog
) -> None:
    clean = write_clean(tmp_path / "clean")
    with caplog.at_level(logging.INFO, logger="clean_data"):
        assert choose_size(clean, needed, None, flag="--clean-size") == expected
    [line] = [r.getMessage() for r in caplog.records]
    assert f"images/{expected}/" in line and "--clean-size auto" in line


def test_a_size_asked_for_must_be_there(tmp_path: Path) -> None:
    clean = write_clean(tmp_path / "clean")
    assert cleaned_sizes(clean) == [32, 64, 128]
    assert choose_size(clean, 500, 64, flag="--clean-size") == 64
    with pytest.raises(UserError, match=r"--size 256.*found: 32, 64, 128"):
        choose_size(clean, 1, 256, flag="--clean-size")
    with pytest.raises(UserError, match="clean_images"):
        choose_size(tmp_path, 1, None, flag="--clean-size")


def test_load_clean_names_the_step_to_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="clean_tabular.*clean_images"):
        load_clean(tmp_path / "nothing")
    clean = write_clean(tmp_path / "clean")
    with pytest.raises(UserError, match="products.parquet"):
        load_clean(clean, products=True)
    pd.DataFrame({"image_id": ["x"]}).to_parquet(clean / IMAGES_FILE)
    with pytest.raises(UserError, match="lacks column"):
        load_clean(clean)


def test_training_reads_what_the_clean_size_auto_picks(tmp_path: Path) -> None:
    """The card's train command (224 px) after clean_images at 128 only: it reads 128."""
    clean = write_clean(tmp_path / "clean", sizes=(128,))
    data = load_clean_data(clean, None, 224)
    assert data.size == 128 and data.image_dir == clean / "images" / "128"
    assert data.paths(data.split("train"))[0].parent == clean / "images" / "128"
    assert load_clean_data(write_clean(tmp_path / "two", (64, 256)), None, 48).size == 64

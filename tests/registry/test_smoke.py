"""The smoke check a version must pass before it may hold production."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from registry.promotion import promote
from registry.smoke import (
    SmokeCheckError,
    clean_test_images,
    smoke_check,
    synthetic_images,
)
from tests.helpers.registry_store import (
    NAME,
    _jpeg,
)


class _Fixed:
    """A stand-in model whose predict returns a fixed answer (or raises it)."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def predict(self, frame):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _answer(**changes) -> pd.DataFrame:
    rows = {
        "category": ["Red things", "Blue things"],
        "probability": [0.7, 0.6],
        "probabilities": [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]],
    }
    rows.update(changes)
    return pd.DataFrame(rows)


def test_smoke_check_passes_a_well_formed_answer() -> None:
    result = smoke_check(_Fixed(_answer()), synthetic_images(2), "test")
    assert (result.images, result.categories) == (2, ["Red things", "Blue things"])


@pytest.mark.parametrize(
    ("answer", "rule"),
    [
        (ValueError("bad input\nmore"), "predict raised ValueError: bad input"),
        ([1, 2], "not a DataFrame"),
        (_answer().drop(columns="probabilities"), "lacks the column(s) probabilities"),
        (_answer().iloc[:1], "returned 1 rows for 2 images"),
        (_answer(category=[3, "Blue things"]), "row 0: category 3 is not a non-empty string"),
        (_answer(probability=[0.7, 1.5]), "row 1: probability 1.5 is not in [0, 1]"),
        (_answer(probabilities=[[0.5, 0.9, 0.1], [0.6, 0.3, 0.1]]), "sum to 1.5000, not 1"),
        (_answer(probabilities=[[1.2, -0.2, 0.0], [0.6, 0.3, 0.1]]), "not all in [0, 1]"),
        (_answer(probabilities=[[0.3, 0.7], [0.6, 0.3, 0.1]]), "different numbers"),
        (_answer(probability=[float("nan"), 0.6]), "probability nan is not in [0, 1]"),
    ],
)
def test_smoke_check_names_the_broken_rule(answer, rule: str) -> None:
    with pytest.raises(SmokeCheckError) as failed:
        smoke_check(_Fixed(answer), synthetic_images(2))
    assert rule in str(failed.value)


def test_smoke_images_come_from_the_clean_test_split(demo_clean: Path) -> None:
    images = clean_test_images(demo_clean, count=4)
    table = pd.read_parquet(demo_clean / "images.parquet")
    test = table[table["split"] == "test"]

    assert len(images) == min(4, len(test))
    assert all(image[:2] == b"\xff\xd8" for image in images)  # JPEG files
    assert clean_test_images(demo_clean / "missing") == []


def test_smoke_check_uses_clean_images_when_given(client, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    (clean / "images" / "32").mkdir(parents=True)
    (clean / "images" / "complete_32.json").write_text("{}")  # a finished size, as clean_images
    ids = ["a", "b", "c"]
    for image_id, colour in zip(ids, [(250, 0, 0), (0, 250, 0), (0, 0, 250)], strict=True):
        (clean / "images" / "32" / f"{image_id}.jpg").write_bytes(_jpeg(colour))
    pd.DataFrame(
        {
            "image_id": ids,
            "product_id": ids,
            "root_category": ["R", "G", "B"],
            "label": [1, 2, 0],
            "split": ["test"] * 3,
            "file": [f"images/{i}.jpg" for i in ids],
        }
    ).to_parquet(clean / "images.parquet")
    (clean / "categories.json").write_text('["B", "G", "R"]')

    decision = promote(NAME, "1", clean=clean, client=client)

    assert f"3 images from the test split of {clean}" in decision.smoke_check

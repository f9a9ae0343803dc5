"""Search by a typed query: relevance, category filter and boost, the photo blend, the
files it is saved to, and the ranking measures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from search.metrics import ndcg_at, precision_of
from search.text import TextSearch

LISTINGS = pd.DataFrame(
    {
        "product_id": ["a", "b", "c", "d", "e"],
        "name": ["Corner sofa", "Sofa bed", "Mountain bike", "Road bike", "Job lot"],
        "description": [
            "Grey corner sofa, collection only.",
            "Pull-out sofa bed.",
            "Mountain bike, 21 gears.",
            "Lightweight road bike.",
            "Bits and bobs, must go.",
        ],
        "category": ["Home", "Home", "Sports", "Sports", "Other"],
    }
)


@pytest.fixture(scope="module")
def search() -> TextSearch:
    return TextSearch.build(LISTINGS)


def test_the_listing_a_query_names_comes_first(search) -> None:
    ranked = search.rank("corner sofa", 3)
    assert ranked[0][0] == "a" and ranked[1][0] == "b"
    assert [score for _, score in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert search.rank("mountian bikes", 1)[0][0] == "c", "character n-grams forgive typos"


def test_category_filter_boost_and_exclusion(search) -> None:
    assert {pid for pid, _ in search.rank("sofa", 5, category="Sports")} == {"c", "d"}
    plain = [pid for pid, _ in search.rank("bike", 5)]
    boost = {"Other": 1.0}
    boosted = [
        pid for pid, _ in search.rank("bike", 5, category_probabilities=boost, category_boost=1)
    ]
    assert plain[0] in ("c", "d") and boosted[0] == "e", "the query's category comes first"
    assert "a" not in {pid for pid, _ in search.rank("corner sofa", 5, exclude="a")}


def test_a_photo_similarity_is_blended_in(search) -> None:
    photo = {"c": 1.0}
    assert search.rank("bike", 1)[0][0] == "d"
    assert search.rank("bike", 1, photo_scores=photo)[0][0] == "c"
    only_photo = search.rank("", 2, photo_scores=photo, photo_weight=1.0)
    assert only_photo[0] == ("c", 1.0)


def test_it_round_trips_through_its_files(search, tmp_path: Path) -> None:
    loaded = TextSearch.load(search.save(tmp_path / "text"))
    assert loaded.rank("road bike", 5) == search.rank("road bike", 5)
    assert loaded.category_of("c") == "Sports"


def test_ndcg_and_precision() -> None:
    assert ndcg_at([True, True, False], k=3) == pytest.approx(1.0)
    assert ndcg_at([False, True], k=2, total_relevant=1) == pytest.approx(1 / 1.5849625, rel=1e-6)
    assert ndcg_at([False, False], k=2) == 0.0
    assert precision_of([True, False, True], k=10) == pytest.approx(0.2)

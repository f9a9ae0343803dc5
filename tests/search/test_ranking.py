"""search.ranking: a query's candidates, their features, their graded labels."""

from __future__ import annotations

import pandas as pd
import pytest

from search.ranking import FEATURES, RankingCatalogue, feature_table, graded_relevance
from search.text import TextSearch

LISTINGS = pd.DataFrame(
    {
        "product_id": ["a", "b", "c", "d", "e"],
        "name": ["red sofa", "blue sofa", "sofa bed", "garden bench", "iphone case"],
        "description": ["", "", "", "", ""],
        "category": ["Home", "Home", "Home", "Garden", "Phones"],
        "category_path": [
            "Home / Sofas / Corner",
            "Home / Sofas",
            "Home / Beds",
            "Garden / Benches",
            "Phones / Cases",
        ],
        "price": [100.0, 80.0, None, 20.0, 5.0],
    }
)


@pytest.fixture
def catalogue() -> RankingCatalogue:
    return RankingCatalogue(TextSearch.build(LISTINGS), LISTINGS)


def test_features_are_the_documented_columns_and_leave_the_query_listing_out(catalogue) -> None:
    candidates = feature_table(catalogue, "red sofa", n=3, exclude="a")
    assert list(candidates.features.columns) == list(FEATURES)
    assert "a" not in set(candidates.product_ids)
    assert candidates.features["photo_similarity"].isna().all(), "no photo: NaN"


def test_graded_relevance_is_the_shared_path_depth_capped_at_three() -> None:
    grades = graded_relevance(
        "Home / Sofas / Corner / Leather",
        ["Home / Sofas / Corner / Leather", "Home / Sofas", "Home / Beds", "Garden / Benches"],
    )
    assert grades.tolist() == [3, 2, 1, 0]

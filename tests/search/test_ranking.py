"""search.ranking: candidates, their features (the category votes among them), labels."""

from __future__ import annotations

import numpy as np
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
    assert candidates.features["photo_top_category_share"].isna().all()


def test_the_category_votes_of_the_top_listings(catalogue) -> None:
    photos = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.9, "e": 0.8}
    candidates = feature_table(catalogue, "sofa", n=5, photo_scores=photos)
    features = candidates.features.set_index(pd.Index(candidates.product_ids))
    # text top: the three sofas first; every listing is among the top 10 of both searches
    assert features.loc["a", "text_top_category_share"] == pytest.approx(3 / 5)
    assert features.loc["d", "photo_top_category_share"] == pytest.approx(1 / 5)
    assert features.loc["b", "top_subcategory_share"] == pytest.approx(4 / 10), "Home / Sofas"
    assert np.isfinite(features.to_numpy(dtype=float)[:, 0]).all()


def test_graded_relevance_is_the_shared_path_depth_capped_at_three() -> None:
    grades = graded_relevance(
        "Home / Sofas / Corner / Leather",
        ["Home / Sofas / Corner / Leather", "Home / Sofas", "Home / Beds", "Garden / Benches"],
    )
    assert grades.tolist() == [3, 2, 1, 0]

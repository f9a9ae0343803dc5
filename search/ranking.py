"""Learned ranking: the candidates of a query, their features, and their relevance labels.

One query (what the buyer typed, and a photo when they sent one) gets as candidates the
union of the text search's top ``n`` and the photo search's top ``n``. Each candidate
gets one row of :data:`FEATURES` from :func:`feature_table`, the one function the ``rank``
step trains on and the service scores with, so the two cannot drift apart:

    feature                     what it is (NaN where it does not apply)
    text_relevance              TF-IDF cosine of the query and the listing (search.text)
    text_rank                   the listing's place in the text search, n + 1 beyond its top n
    photo_similarity            best cosine of the query photo and the listing's photos
                                (NaN: no photo)
    photo_rank                  the listing's place in the photo search, n + 1 beyond its top n
                                (NaN: no photo)
    in_both_lists               1 when the listing is in both top-n lists
    query_category_probability  the text model's P(listing's category | query)
                                (NaN: no text model)
    blend_score                 the hand-set blend's score (search.text.TextSearch.rank)
    name_overlap                share of the query's words found in the listing's name
    query_words                 how many words the query has
    listing_terms               distinct TF-IDF terms of the listing's name and description
    log_price                   log(1 + price) (NaN: no price)
    photo_count                 how many photos the listing has

The relevance label of a candidate (:func:`graded_relevance`) is the depth of the category
path it shares with the query's own listing, at most :data:`MAX_GRADE` (docs/ranking.md
says what that stands in for: a buyer's clicks).

Nothing here runs at import time.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from search.text import CATEGORY_BOOST, PHOTO_WEIGHT, TextSearch

if TYPE_CHECKING:
    from search.index import SearchIndex

FEATURES: tuple[str, ...] = (
    "text_relevance",
    "text_rank",
    "photo_similarity",
    "photo_rank",
    "in_both_lists",
    "query_category_probability",
    "blend_score",
    "name_overlap",
    "query_words",
    "listing_terms",
    "log_price",
    "photo_count",
)
DEFAULT_CANDIDATES = 100
MAX_GRADE = 3  # the real export's category paths have three levels below the root
PATH_SEPARATOR = " / "
_WORD = re.compile(r"\w+")


def words(text: str) -> frozenset[str]:
    """The lower-cased words of ``text``."""
    return frozenset(_WORD.findall(str(text).lower()))


def graded_relevance(query_path: str, candidate_paths: Sequence[str]) -> np.ndarray:
    """How many leading levels of ``query_path`` each candidate's path shares, at most
    :data:`MAX_GRADE` (0: another root category)."""
    wanted = [part.strip() for part in str(query_path).split(PATH_SEPARATOR.strip())]
    grades = np.zeros(len(candidate_paths), dtype=np.int32)
    for i, path in enumerate(candidate_paths):
        parts = [part.strip() for part in str(path).split(PATH_SEPARATOR.strip())]
        depth = 0
        for mine, theirs in zip(wanted, parts, strict=False):
            if mine != theirs:
                break
            depth += 1
        grades[i] = min(depth, MAX_GRADE)
    return grades


class RankingCatalogue:
    """The per-listing columns the features need, aligned with a :class:`TextSearch`'s rows.

    ``listings`` has ``product_id``, ``name`` and ``price`` (and optionally
    ``category_path`` and ``photo_count``); a text-search listing missing from it gets
    an empty name, no price and no photos.
    """

    def __init__(self, text_search: TextSearch, listings: pd.DataFrame) -> None:
        self.text_search = text_search
        table = listings.assign(product_id=listings["product_id"].astype(str))
        table = table.drop_duplicates("product_id").set_index("product_id")
        table = table.reindex(pd.Index(text_search.product_ids, name="product_id"))
        self.product_ids = text_search.product_ids
        self.categories = text_search.categories
        self.name_words = [
            words(name) if isinstance(name, str) else frozenset() for name in table["name"]
        ]
        prices = pd.to_numeric(table["price"], errors="coerce").to_numpy(dtype=float)
        self.log_price = np.log1p(np.where(prices >= 0, prices, np.nan))
        self.photo_count = (
            table["photo_count"].fillna(0).to_numpy(dtype=float)
            if "photo_count" in table
            else np.zeros(len(table))
        )
        self.category_paths = (
            table["category_path"].fillna("").astype(str).to_numpy()
            if "category_path" in table
            else self.categories.astype(str)
        )
        self.listing_terms = np.diff(text_search.matrix.indptr).astype(float)
        self.row_of = {pid: row for row, pid in enumerate(self.product_ids)}

    def __len__(self) -> int:
        return len(self.product_ids)

    @classmethod
    def of_index(cls, text_search: TextSearch, index: SearchIndex) -> RankingCatalogue:
        """The catalogue of a served version: the listings its photo index holds (their
        ``category_path`` and how many of their photos it holds), in ``text_search``'s rows.

        The service builds it this way; a step that ranks over a version's index should
        too, so that ``photo_count`` means the same in training and serving."""
        return cls(text_search, index.listing_table())


_BLEND_COLUMN = FEATURES.index("blend_score")


@dataclass(frozen=True)
class Candidates:
    """One query's candidates: their rows in the catalogue, ids, and features.

    ``matrix`` holds the features as one float array (columns :data:`FEATURES`, what a
    ranker's booster reads); :attr:`features` is the same as a table, made when asked for
    (the service scores the matrix and never needs it)."""

    rows: np.ndarray
    product_ids: np.ndarray
    matrix: np.ndarray  # (candidates, len(FEATURES)) float64

    @functools.cached_property
    def features(self) -> pd.DataFrame:
        """The features as a table: columns :data:`FEATURES`, one row per candidate."""
        return pd.DataFrame(self.matrix, columns=list(FEATURES))

    def ranked(self, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` best ``(product_id, score)`` by ``scores``, best first (ties: blend)."""
        blend = self.matrix[:, _BLEND_COLUMN]
        order = np.lexsort((-blend, -np.asarray(scores, dtype=float)))[:k]
        return [(str(self.product_ids[i]), float(scores[i])) for i in order]

    def by_blend(self, k: int) -> list[tuple[str, float]]:
        """The hand-set blend's ranking of these candidates."""
        return self.ranked(self.matrix[:, _BLEND_COLUMN], k)


def _top(scores: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """The rows of the ``n`` highest ``scores`` among ``allowed`` rows, best first."""
    rows = np.flatnonzero(allowed)
    if len(rows) > n:
        rows = rows[np.argpartition(-scores[rows], n - 1)[:n]]
    return rows[np.argsort(-scores[rows], kind="stable")]


def _places(top: np.ndarray, size: int, n: int) -> np.ndarray:
    """Each row's 1-based place in ``top``, ``n + 1`` for the rows it does not hold."""
    places = np.full(size, n + 1, dtype=float)
    places[top] = np.arange(1, len(top) + 1)
    return places


def feature_table(
    catalogue: RankingCatalogue,
    query: str,
    *,
    n: int = DEFAULT_CANDIDATES,
    photo_scores: Mapping[str, float] | None = None,
    category_probabilities: Mapping[str, float] | None = None,
    category: str | None = None,
    exclude: str | None = None,
) -> Candidates:
    """The candidates of one query and their :data:`FEATURES` (see the module).

    ``photo_scores`` are the query photo's similarity to the listings (any order; none:
    the query has no photo); ``category_probabilities`` the text model's answer for the
    query; ``category`` keeps only that category's listings, ``exclude`` leaves one out.
    """
    size = len(catalogue)
    relevance = catalogue.text_search.relevance(query) if query.strip() else np.zeros(size)
    allowed = np.ones(size, dtype=bool)
    if category is not None:
        allowed &= catalogue.categories == category
    if exclude is not None and exclude in catalogue.row_of:
        allowed[catalogue.row_of[exclude]] = False
    text_top = _top(relevance, allowed, n)
    photo, photo_top = None, None
    if photo_scores is not None:
        photo = np.array([photo_scores.get(pid, 0.0) for pid in catalogue.product_ids])
        photo_top = _top(photo, allowed, n)
        rows = np.union1d(text_top, photo_top)
    else:
        rows = np.sort(text_top)
    places = _Places(text_top, photo_top, size, n)
    return Candidates(
        rows=rows,
        product_ids=catalogue.product_ids[rows],
        matrix=_features(catalogue, query, rows, relevance, photo, category_probabilities, places),
    )


@dataclass(frozen=True)
class _Places:
    """The text and photo searches' top-n rows, for the rank features."""

    text_top: np.ndarray
    photo_top: np.ndarray | None
    size: int
    n: int


def _features(
    catalogue: RankingCatalogue,
    query: str,
    rows: np.ndarray,
    relevance: np.ndarray,
    photo: np.ndarray | None,
    category_probabilities: Mapping[str, float] | None,
    places: _Places,
) -> np.ndarray:
    n = places.n
    text_rank = _places(places.text_top, places.size, n)[rows]
    nan = np.full(len(rows), np.nan)
    if photo is not None and places.photo_top is not None:
        photo_similarity = photo[rows]
        photo_rank = _places(places.photo_top, places.size, n)[rows]
        in_both = ((text_rank <= n) & (photo_rank <= n)).astype(float)
        blend = (1 - PHOTO_WEIGHT) * relevance[rows] + PHOTO_WEIGHT * photo_similarity
    else:
        photo_similarity, photo_rank, in_both = nan, nan, np.zeros(len(rows))
        blend = relevance[rows].copy()
    if category_probabilities:
        probability = np.array(
            [category_probabilities.get(c, 0.0) for c in catalogue.categories[rows]], dtype=float
        )
        blend = blend + CATEGORY_BOOST * probability
    else:
        probability = nan
    query_words = words(query)
    overlap = np.array(
        [len(query_words & catalogue.name_words[row]) for row in rows], dtype=float
    ) / max(len(query_words), 1)
    columns = {
        "text_relevance": relevance[rows],
        "text_rank": text_rank,
        "photo_similarity": photo_similarity,
        "photo_rank": photo_rank,
        "in_both_lists": in_both,
        "query_category_probability": probability,
        "blend_score": blend,
        "name_overlap": overlap,
        "query_words": np.full(len(rows), float(len(query_words))),
        "listing_terms": catalogue.listing_terms[rows],
        "log_price": catalogue.log_price[rows],
        "photo_count": catalogue.photo_count[rows],
    }
    matrix = np.empty((len(rows), len(FEATURES)), dtype=np.float64)
    for column, name in enumerate(FEATURES):
        matrix[:, column] = columns[name]
    return matrix


def ndcg_graded(grades_in_order: Sequence[float], all_grades: Sequence[float], k: int) -> float:
    """NDCG@k with gains ``2**grade - 1`` (LightGBM's lambdarank default), the ideal list
    being ``all_grades`` sorted; 0 when no candidate is relevant."""

    def dcg(grades: Sequence[float]) -> float:
        return sum((2.0**g - 1) / math.log2(i + 2) for i, g in enumerate(list(grades)[:k]))

    ideal = dcg(sorted(all_grades, reverse=True))
    return dcg(grades_in_order) / ideal if ideal > 0 else 0.0

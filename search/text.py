"""Search by a typed query: TF-IDF relevance over the listings' names and descriptions.

:class:`TextSearch` holds the catalogue's listings as rows of an L2-normalised TF-IDF
matrix (words and character n-grams, ``marketplace_models.text.TfidfEncoder``), so a query's
relevance to a listing is the cosine of their vectors. :meth:`TextSearch.rank` orders the
listings for a query by

    score = (1 - photo_weight) * text relevance + photo_weight * photo similarity
            + category_boost * P(listing's category | query)

where the photo similarity is given only when the buyer also sent a photo (the cosine of
the photo embeddings, ``search.index``), and the category probabilities come from
the text model's answer for the query. The ``index`` step builds it with the photo index
and logs it in the same run, under ``search_index/text/`` (:data:`FILES`); it also measures
the ranking (:func:`search.metrics.ndcg_at`, :func:`search.metrics.precision_of`).

Nothing here runs at import time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marketplace_models.text import TfidfEncoder, TfidfSettings, listing_text

TEXT_DIR = "text"
MATRIX_FILE = "listings_tfidf.npz"
ROWS_FILE = "listings_rows.json"
FILES = ("tfidf.json", "tfidf_idf.npz", MATRIX_FILE, ROWS_FILE)
CATEGORY_BOOST = 0.2
PHOTO_WEIGHT = 0.5


class TextSearch:
    """The catalogue's listings as TF-IDF rows; queries ranked by :meth:`rank`."""

    def __init__(self, encoder: TfidfEncoder, matrix, product_ids: Sequence[str], categories):
        self.encoder = encoder
        self.matrix = matrix.tocsr()  # (N, F), rows L2-normalised
        self.product_ids = np.asarray(product_ids, dtype=object)
        self.categories = np.asarray(categories, dtype=object)
        self._row_of = {pid: row for row, pid in enumerate(self.product_ids)}

    def __len__(self) -> int:
        return len(self.product_ids)

    def category_of(self, product_id: str) -> str:
        return str(self.categories[self._row_of[product_id]])

    @classmethod
    def build(cls, listings: pd.DataFrame) -> TextSearch:
        """From ``product_id``, ``name``, ``description`` and ``category`` columns."""
        descriptions = (
            listings["description"] if "description" in listings else [""] * len(listings)
        )
        texts = [
            listing_text(name, description)
            for name, description in zip(listings["name"], descriptions, strict=True)
        ]
        encoder = TfidfEncoder(TfidfSettings(min_df=1)).fit(texts)
        matrix = _normalize_rows(encoder.transform(texts))
        return cls(encoder, matrix, listings["product_id"].astype(str), listings["category"])

    def relevance(self, query: str) -> np.ndarray:
        """The cosine of ``query`` with every listing, ``(N,)``."""
        vector = _normalize_rows(self.encoder.transform([query]))
        return np.asarray((self.matrix @ vector.T).toarray()).ravel()

    def rank(
        self,
        query: str,
        k: int,
        *,
        category: str | None = None,
        category_probabilities: Mapping[str, float] | None = None,
        category_boost: float = CATEGORY_BOOST,
        photo_scores: Mapping[str, float] | None = None,
        photo_weight: float = PHOTO_WEIGHT,
        exclude: str | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` best ``(product_id, score)`` for ``query``, best first (see the module)."""
        scores = self.relevance(query) if query.strip() else np.zeros(len(self))
        if photo_scores is not None:
            photo = np.array([photo_scores.get(pid, 0.0) for pid in self.product_ids])
            scores = (1 - photo_weight) * scores + photo_weight * photo
        if category_probabilities:
            boost = np.array([category_probabilities.get(c, 0.0) for c in self.categories])
            scores = scores + category_boost * boost
        keep = np.ones(len(self), dtype=bool)
        if category is not None:
            keep &= self.categories == category
        if exclude is not None and exclude in self._row_of:
            keep[self._row_of[exclude]] = False
        rows = np.flatnonzero(keep)
        if len(rows) == 0 or k <= 0:
            return []
        top = rows[np.argsort(-scores[rows], kind="stable")[:k]]
        return [(str(self.product_ids[r]), float(scores[r])) for r in top]

    # -- files
    def save(self, folder: Path) -> Path:
        from scipy import sparse

        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save(folder)
        sparse.save_npz(folder / MATRIX_FILE, self.matrix)
        rows = {
            "product_ids": list(map(str, self.product_ids)),
            "categories": list(map(str, self.categories)),
        }
        (folder / ROWS_FILE).write_text(json.dumps(rows), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path) -> TextSearch:
        from scipy import sparse

        rows = json.loads((folder / ROWS_FILE).read_text(encoding="utf-8"))
        return cls(
            TfidfEncoder.load(folder),
            sparse.load_npz(folder / MATRIX_FILE),
            rows["product_ids"],
            rows["categories"],
        )


def _normalize_rows(matrix):
    from sklearn.preprocessing import normalize

    return normalize(matrix, norm="l2", axis=1, copy=False)

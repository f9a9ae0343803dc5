"""Which ranking answers a search: the learned ranker when one is served, else the blend.

A typed query (``GET /search?q=``, or ``POST /search`` with a ``q`` beside the photo) is
ranked by the learned ranker (the ``ranking`` slot, ``RANKER_URI``) when one is served:
its candidates are the union of the text search's and the photo search's top
``SERVE_RANK_CANDIDATES`` (at least ``k``), their features come from
:func:`search.ranking.feature_table` (the function the ``rank`` step trains on) and the
ranker's scores order them. Without a ranker, or when it fails on a query (logged and
counted), the hand-set blend of :meth:`search.text.TextSearch.rank` answers, exactly as
before rankers existed. A photo alone (``POST /search`` without ``q``) is ranked by the
photo index's cosine, as before: the ranker learns from queries that have words.

Each answer says which ranking it used (:func:`label`): ``learned v<N>`` (the ranker's
version), ``blend`` or ``photo``. Everything here blocks: the routes run it in the executor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from search.ranking import FEATURES, feature_table
from serve.loader import ServedModel
from serve.metrics import ServiceMetrics

log = logging.getLogger(__name__)

BLEND = "blend"
PHOTO = "photo"
LEARNED = "learned"


def label(ranker: ServedModel) -> str:
    """``learned v<N>`` for a registered version, ``learned <uri>`` for anything else."""
    version = ranker.details.version
    return f"{LEARNED} v{version}" if version is not None else f"{LEARNED} {ranker.details.uri}"


@dataclass(frozen=True)
class Query:
    """One typed query, as the routes checked it."""

    text: str
    k: int
    category: str | None = None
    category_probabilities: Mapping[str, float] | None = None
    photo_scores: Mapping[str, float] | None = None  # the query photo's, when it has one
    exclude: str | None = None


def learned(model: ServedModel, ranker: ServedModel, query: Query, candidates: int):
    """The ranker's ``k`` best ``(product_id, score)`` among the query's candidates."""
    catalogue = model.ranking_catalogue()
    if catalogue is None:
        raise RuntimeError(f"version {model.details.label} has no text search to rank over")
    found = feature_table(
        catalogue,
        query.text,
        n=max(candidates, query.k),
        photo_scores=query.photo_scores,
        category_probabilities=query.category_probabilities,
        category=query.category,
        exclude=query.exclude,
    )
    return found.ranked(scores(ranker, found.matrix), query.k)


def scores(ranker: ServedModel, matrix: np.ndarray) -> np.ndarray:
    """The ranker's score of each row of a :func:`feature_table` matrix.

    The same numbers as ``MarketplaceRanker.score``, without its pandas table: the matrix's
    columns are :data:`FEATURES` in order, the ranker's booster gets them in its own order,
    on this request's thread alone."""
    model = ranker.ranker
    if len(matrix) == 0:
        return np.zeros(0)
    if model.features != FEATURES:
        matrix = matrix[:, [FEATURES.index(name) for name in model.features]]
    return np.asarray(model.booster.predict(matrix, num_threads=1), dtype=np.float64)


def blend(model: ServedModel, query: Query) -> list[tuple[str, float]]:
    """The hand-set blend's ``k`` best, as /search ranked before learned rankers."""
    return model.text_search.rank(
        query.text,
        query.k,
        category=query.category,
        category_probabilities=query.category_probabilities,
        photo_scores=query.photo_scores,
        exclude=query.exclude,
    )


def rank(
    model: ServedModel,
    ranker: ServedModel | None,
    query: Query,
    candidates: int,
    metrics: ServiceMetrics,
) -> tuple[list[tuple[str, float]], str]:
    """The query's ``k`` best ``(product_id, score)`` and the ranking that chose them: the
    learned ranker's when one is served and answers, else the blend's."""
    if ranker is not None and ranker.ranker is not None:
        try:
            ranked = learned(model, ranker, query, candidates)
        except Exception:  # the blend still answers: the failure is logged and counted
            log.exception("the learned ranker %s failed; the blend answers", label(ranker))
            metrics.ranker_failures.inc()
        else:
            metrics.searches.labels(LEARNED).inc()
            return ranked, label(ranker)
    metrics.searches.labels(BLEND).inc()
    return blend(model, query), BLEND

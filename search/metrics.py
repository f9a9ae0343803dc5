"""Ranking metrics: how good a ranked list of listings is, and how close an approximate
search comes to the exact one."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from search.index import SearchIndex

EVAL_K = 10


def ndcg_at(relevant: Sequence[bool], k: int = EVAL_K, total_relevant: int | None = None) -> float:
    """NDCG@k of one ranked list with binary relevance (``relevant[i]``: the i-th result).

    The ideal list puts ``min(k, total_relevant)`` relevant results first (all of
    ``relevant``'s when ``total_relevant`` is None).
    """
    gains = [1.0 / math.log2(rank + 2) for rank, hit in enumerate(relevant[:k]) if hit]
    ideal_count = min(k, sum(relevant) if total_relevant is None else total_relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(ideal_count))
    return sum(gains) / ideal if ideal else 0.0


def precision_of(relevant: Sequence[bool], k: int = EVAL_K) -> float:
    """Share of relevant results among the first ``k`` (a shorter list counts its misses)."""
    return sum(bool(hit) for hit in relevant[:k]) / k


def precision_at(
    index: SearchIndex, queries: np.ndarray, query_categories: Sequence[str], ks: Iterable[int]
) -> dict[int, float]:
    """Mean share of same-category listings among each query's top ``k`` (per product)."""
    ks = sorted(set(ks))
    if len(queries) == 0:
        return {k: float("nan") for k in ks}
    answers = index.search(queries, max(ks))
    shares: dict[int, list[float]] = {k: [] for k in ks}
    for category, results in zip(query_categories, answers, strict=True):
        for k in ks:
            top = results[:k]
            shares[k].append(sum(r.category == category for r in top) / k)
    return {k: float(np.mean(values)) for k, values in shares.items()}


def recall_at(approximate: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top ``k`` rows that the approximate search found."""
    if len(exact) == 0:
        return float("nan")
    hits = []
    for found, truth in zip(approximate, exact, strict=True):
        wanted = {int(row) for row in truth[:k] if row >= 0}
        if wanted:
            hits.append(len(wanted & {int(row) for row in found[:k]}) / len(wanted))
    return float(np.mean(hits)) if hits else float("nan")

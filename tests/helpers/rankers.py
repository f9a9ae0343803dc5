"""Tiny learned rankers for service tests, trained on a served version's own catalogue.

:func:`served_catalogue` reads a registered version's search index and text search the way
the service does (``RankingCatalogue.of_index``); :func:`train_price_ranker` fits a
LightGBM ``LGBMRanker`` (lambdarank) on the :func:`search.ranking.feature_table` rows of a
few queries, graded by price alone, so that its preference is plain to assert (cheap
first, or dear first, unlike the blend); :func:`register_ranker` logs it with
``marketplace_models.ranker.log_ranker`` and registers it as ``marketplace-ranker`` with
the ``input`` tag ``ranking``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from search.ranking import FEATURES, RankingCatalogue, feature_table

RANKER_NAME = "marketplace-ranker"
RANKING_INPUT = "ranking"
CANDIDATES = 100
GRADES = 4  # price quartiles of a query's candidates: 3 for the quarter the ranker prefers


@dataclass(frozen=True)
class TrainedRanker:
    """A fitted booster and the feature list it is logged with."""

    booster: object  # lightgbm.Booster
    features: tuple[str, ...]
    example: pd.DataFrame  # a few feature rows, the logged input example

    def scores(self, table: pd.DataFrame) -> np.ndarray:
        """The booster's scores of ``table``'s rows, as the logged ranker computes them."""
        values = table.loc[:, list(FEATURES)].to_numpy(dtype=np.float64)
        return np.asarray(self.booster.predict(values, num_threads=1))


def served_catalogue(uri: str, name: str, version: int, cache: Path) -> RankingCatalogue:
    """The catalogue a service ranks over for ``version`` of ``name`` in the store ``uri``."""
    import mlflow

    from search.index import download_index, index_run_for_version, load_index_for_version
    from search.text import TEXT_DIR, TextSearch

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    index = load_index_for_version(client, name, version, cache)
    run_id = index_run_for_version(client, name, version)
    text_search = TextSearch.load(download_index(run_id, cache, client) / TEXT_DIR)
    return RankingCatalogue.of_index(text_search, index)


def price_grades(log_price: np.ndarray, cheap_first: bool) -> np.ndarray:
    """Quartile grades of a query's candidates by price: the preferred end gets the top
    grade; a candidate without a price gets 0."""
    known = np.isfinite(log_price)
    grades = np.zeros(len(log_price), dtype=np.int32)
    if known.sum() == 0:
        return grades
    order = pd.Series(log_price[known]).rank(method="first", pct=True).to_numpy()
    quartile = np.minimum((order * GRADES).astype(int), GRADES - 1)  # 0 cheapest .. 3 dearest
    grades[known] = GRADES - 1 - quartile if cheap_first else quartile
    return grades


def train_price_ranker(
    catalogue: RankingCatalogue,
    queries: Sequence[str],
    *,
    cheap_first: bool = True,
    features: Sequence[str] = FEATURES,
) -> TrainedRanker:
    """An ``LGBMRanker`` fitted on ``queries``' candidates, graded by price alone."""
    from lightgbm import LGBMRanker

    tables, labels, groups = [], [], []
    for query in queries:
        found = feature_table(catalogue, query, n=CANDIDATES)
        tables.append(found.features)
        labels.append(price_grades(found.features["log_price"].to_numpy(), cheap_first))
        groups.append(len(found.features))
    table = pd.concat(tables, ignore_index=True)
    model = LGBMRanker(
        objective="lambdarank",
        n_estimators=40,
        learning_rate=0.2,
        num_leaves=15,
        min_child_samples=5,
        random_state=0,
        n_jobs=1,
        verbose=-1,
    )
    model.fit(table.to_numpy(dtype=np.float64), np.concatenate(labels), group=groups)
    example = table.head(5).copy()
    example.columns = list(features)  # a ranker logged with another feature list
    return TrainedRanker(model.booster_, tuple(features), example)


def register_ranker(uri: str, trained: TrainedRanker, experiment: str = "search") -> int:
    """Log ``trained`` in a run of ``experiment`` (whose artifacts lie beside the store) and
    register it as a version of ``marketplace-ranker`` tagged ``input=ranking``; its
    number. No alias is set."""
    import mlflow

    from marketplace_models.ranker import log_ranker
    from registry.kinds import INPUT_TAG

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        with mlflow.start_run(experiment_id=experiment_id):
            info = log_ranker(trained.booster, trained.features, trained.example)
        version = mlflow.register_model(
            info.model_uri, RANKER_NAME, tags={INPUT_TAG: RANKING_INPUT}
        )
    finally:
        mlflow.set_tracking_uri(previous)
    return int(version.version)


def set_ranker_alias(uri: str, version: int, alias: str = "production") -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(RANKER_NAME, alias, str(version))

"""A tiny store the ranker trains from: production image and text versions and an index.

:func:`make_ranking_store` registers a resnet18 with random weights at 32 px over the
cleaned demo export (``demo_clean``), builds its search index with the ``index`` step, trains
the TF-IDF text model with ``train_text``, and gives both the ``production`` alias: what
``rank`` reads by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.helpers.demo import DEMO_CLEAN_SIZE, NAME, register_tiny_version

TEXT_NAME = "marketplace-text-classifier"
RANKER_NAME = "marketplace-ranker"
# Small settings so a ranker fits in seconds on the 60-product demo export.
FAST_RANK = ["--n-estimators", "30", "--early-stopping-rounds", "10", "--min-child-samples", "5"]


@dataclass(frozen=True)
class RankingStore:
    image_version: str
    text_version: str
    index_run: str


def make_ranking_store(clean: Path) -> RankingStore:
    """In the current tracking store (see the module docstring)."""
    import mlflow

    from steps import index as index_step
    from steps import train_text

    client = mlflow.MlflowClient()
    image = register_tiny_version(clean)
    index_run = index_step.main(
        [
            "--clean",
            str(clean),
            "--clean-size",
            str(DEMO_CLEAN_SIZE),
            "--model-uri",
            f"models:/{NAME}/{image}",
        ]
    )
    client.set_registered_model_alias(NAME, "production", str(image))
    parser = train_text.get_args_parser()
    outcome = train_text.train_text(parser.parse_args(["--clean", str(clean), "--min-df", "1"]))
    text = outcome.model_version
    client.set_registered_model_alias(TEXT_NAME, "production", str(text))
    return RankingStore(str(image), str(text), index_run)


def rank_args(clean: Path, *extra: str) -> list[str]:
    """``steps.rank`` arguments over ``clean`` with :data:`FAST_RANK`."""
    return ["--clean", str(clean), *FAST_RANK, *extra]

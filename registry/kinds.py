"""The kinds of model the registry holds, by the input they take, and where each lives.

One registered model per kind (:mod:`marketplace_models.kinds`), each with its own
``production`` alias:

    kind          registered model
    image         marketplace-classifier
    text          marketplace-text-classifier
    image+text    marketplace-listing-classifier
    ranking       marketplace-ranker  (the learned ranker of the search: steps/rank.py)

Every version carries the tag ``input`` (``image``, ``text``, ``image+text`` or
``ranking``); a version
without it is an image model (those registered before the tag existed). The smoke check
and the service read the tag, so a version is only ever asked for what it takes.
Nothing here runs at import time.
"""

from __future__ import annotations

from collections.abc import Mapping

from cli import UserError
from marketplace_models.kinds import ALL_KINDS, IMAGE, IMAGE_TEXT, RANKING, TEXT
from registry.store import DEFAULT_MODEL_NAME

INPUT_TAG = "input"
MODEL_NAME = DEFAULT_MODEL_NAME
TEXT_MODEL_NAME = "marketplace-text-classifier"
LISTING_MODEL_NAME = "marketplace-listing-classifier"
RANKER_MODEL_NAME = "marketplace-ranker"
MODEL_NAMES: dict[str, str] = {
    IMAGE: DEFAULT_MODEL_NAME,
    TEXT: TEXT_MODEL_NAME,
    IMAGE_TEXT: LISTING_MODEL_NAME,
    RANKING: RANKER_MODEL_NAME,
}
# The entry point that trains and registers a version of each kind.
TRAINED_BY: dict[str, str] = {
    IMAGE: "train",
    TEXT: "train_text",
    IMAGE_TEXT: "train_combined",
    RANKING: "rank",
}
# The metric `promote` ranks and compares versions by, when none is given: the classifiers'
# test accuracy; the ranker's graded NDCG@10 on the test queries.
CLASSIFIER_METRIC = "test/accuracy"
DEFAULT_METRICS: dict[str, str] = {RANKING: "test/ndcg_at_10"}
# The ranker's second rule: its test NDCG@10 at least the hand blend's on the same queries.
BLEND_GATE = ("test/ndcg_at_10", "test/blend_ndcg_at_10")


def training_command(kind: str) -> str:
    """The command that trains and registers a model of ``kind``."""
    return f"mlflow run . -e {TRAINED_BY.get(kind, TRAINED_BY[IMAGE])} --env-manager local"


def kind_of_name(name: str) -> str:
    """The kind of the registered model ``name`` (``image`` for a name of its own)."""
    return next((kind for kind, known in MODEL_NAMES.items() if known == name), IMAGE)


def default_metric(name: str) -> str:
    """The metric ``promote`` uses for the registered model ``name`` when none is given."""
    return DEFAULT_METRICS.get(kind_of_name(name), CLASSIFIER_METRIC)


def input_of(tags: Mapping[str, str] | None) -> str:
    """The input kind a version's tags declare (``image`` when they declare none).

    Raises :class:`UserError` for a value that is not a known kind.
    """
    kind = (tags or {}).get(INPUT_TAG, IMAGE)
    if kind not in ALL_KINDS:
        raise UserError(
            f"the version's {INPUT_TAG!r} tag is {kind!r}, not one of {', '.join(ALL_KINDS)}: "
            "fix the tag, or register the model again with this project's code"
        )
    return kind

"""The kinds of model the registry holds, by the input they take, and where each lives.

One registered model per kind (:mod:`marketplace_models.kinds`), each with its own
``production`` alias:

    kind          registered model
    image         marketplace-classifier
    text          marketplace-text-classifier
    image+text    marketplace-listing-classifier

Every version carries the tag ``input`` (``image``, ``text`` or ``image+text``); a version
without it is an image model (those registered before the tag existed). The smoke check
and the service read the tag, so a version is only ever asked for what it takes.
Nothing here runs at import time.
"""

from __future__ import annotations

from collections.abc import Mapping

from cli import UserError
from marketplace_models.kinds import IMAGE, IMAGE_TEXT, KINDS, TEXT
from registry.store import DEFAULT_MODEL_NAME

INPUT_TAG = "input"
MODEL_NAME = DEFAULT_MODEL_NAME
TEXT_MODEL_NAME = "marketplace-text-classifier"
LISTING_MODEL_NAME = "marketplace-listing-classifier"
MODEL_NAMES: dict[str, str] = {
    IMAGE: DEFAULT_MODEL_NAME,
    TEXT: TEXT_MODEL_NAME,
    IMAGE_TEXT: LISTING_MODEL_NAME,
}


def input_of(tags: Mapping[str, str] | None) -> str:
    """The input kind a version's tags declare (``image`` when they declare none).

    Raises :class:`UserError` for a value that is not a known kind.
    """
    kind = (tags or {}).get(INPUT_TAG, IMAGE)
    if kind not in KINDS:
        raise UserError(
            f"the version's {INPUT_TAG!r} tag is {kind!r}, not one of {', '.join(KINDS)}: "
            "fix the tag, or register the model again with this project's code"
        )
    return kind

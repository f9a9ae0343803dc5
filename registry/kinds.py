"""The kinds of model the registry holds, by the input they take, and where each lives.

One registered model per kind, each with its own ``production`` alias:

    kind          registered model                   input columns
    image         marketplace-classifier             image        (photo bytes)
    text          marketplace-text-classifier        text         (a listing's title/description)
    image+text    marketplace-listing-classifier     image, text  (a photo and its listing's text)

Every version carries the tag ``input`` (``image``, ``text`` or ``image+text``); a version
without it is an image model (those registered before the tag existed). The smoke check
and the service read the tag, so a version is only ever asked for what it takes.
Nothing here runs at import time.
"""

from __future__ import annotations

from collections.abc import Mapping

from registry.store import DEFAULT_MODEL_NAME, RegistryError

INPUT_TAG = "input"
IMAGE = "image"
TEXT = "text"
IMAGE_TEXT = "image+text"
KINDS = (IMAGE, TEXT, IMAGE_TEXT)
IMAGE_COLUMN = "image"
TEXT_COLUMN = "text"
TEXT_MODEL_NAME = "marketplace-text-classifier"
LISTING_MODEL_NAME = "marketplace-listing-classifier"
MODEL_NAMES: dict[str, str] = {
    IMAGE: DEFAULT_MODEL_NAME,
    TEXT: TEXT_MODEL_NAME,
    IMAGE_TEXT: LISTING_MODEL_NAME,
}
COLUMNS: dict[str, tuple[str, ...]] = {
    IMAGE: (IMAGE_COLUMN,),
    TEXT: (TEXT_COLUMN,),
    IMAGE_TEXT: (IMAGE_COLUMN, TEXT_COLUMN),
}


def input_of(tags: Mapping[str, str] | None) -> str:
    """The input kind a version's tags declare (``image`` when they declare none).

    Raises :class:`RegistryError` for a value that is not a known kind.
    """
    kind = (tags or {}).get(INPUT_TAG, IMAGE)
    if kind not in KINDS:
        raise RegistryError(
            f"the version's {INPUT_TAG!r} tag is {kind!r}, not one of {', '.join(KINDS)}: "
            "fix the tag, or register the model again with this project's code"
        )
    return kind


def columns_of(kind: str) -> tuple[str, ...]:
    """The input columns a model of ``kind`` needs."""
    return COLUMNS[kind]

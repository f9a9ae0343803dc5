"""The kinds of model, by the input they take, and the input columns of each.

kind          input columns
image         image        (photo bytes)
text          text         (a listing's title/description)
image+text    image, text  (a photo and its listing's text)

A learned ranker (``marketplace_models.ranker``) is no classifier: its input is a query's
feature table, and its versions' ``input`` tag is :data:`RANKING`.
"""

from __future__ import annotations

IMAGE = "image"
TEXT = "text"
IMAGE_TEXT = "image+text"
KINDS = (IMAGE, TEXT, IMAGE_TEXT)
RANKING = "ranking"  # a ranker's input: a query's candidates and their features
IMAGE_COLUMN = "image"
TEXT_COLUMN = "text"
COLUMNS: dict[str, tuple[str, ...]] = {
    IMAGE: (IMAGE_COLUMN,),
    TEXT: (TEXT_COLUMN,),
    IMAGE_TEXT: (IMAGE_COLUMN, TEXT_COLUMN),
}


def columns_of(kind: str) -> tuple[str, ...]:
    """The input columns a model of ``kind`` needs."""
    return COLUMNS[kind]

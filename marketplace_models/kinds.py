"""The kinds of model, by the input they take, and the input columns of each.

kind          input columns
image         image        (photo bytes)
text          text         (a listing's title/description)
image+text    image, text  (a photo and its listing's text)
ranking       the feature table of search.ranking.FEATURES (a query's candidates)

:data:`KINDS` are the classifiers (each answers a category); :data:`RANKING` is the learned
ranker, which scores a query's candidates instead, so code that iterates the classifiers
keeps iterating :data:`KINDS` and code that reads any version's ``input`` tag checks
:data:`ALL_KINDS`.
"""

from __future__ import annotations

IMAGE = "image"
TEXT = "text"
IMAGE_TEXT = "image+text"
RANKING = "ranking"
KINDS = (IMAGE, TEXT, IMAGE_TEXT)  # the classifiers
ALL_KINDS = (*KINDS, RANKING)
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

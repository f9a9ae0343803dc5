"""What a route's signature cannot declare: bounds that come from the settings or from the
version being served (the text limit, ``top_k`` up to its categories, a known category)."""

from __future__ import annotations

from fastapi import HTTPException

from serve.loader import ServedModel


def checked_text(text: str | None, limit: int) -> str | None:
    """``text`` stripped (None stays None), or 422 when it is over ``limit`` characters.

    Blank texts never get here: the routes declare ``text`` non-blank.
    """
    if text is None:
        return None
    stripped = text.strip()
    if len(stripped) > limit:
        raise HTTPException(
            422,
            f"text is {len(stripped):,} characters, over the {limit:,} allowed: send the "
            "title and the start of the description (SERVE_MAX_TEXT_CHARS sets the limit)",
        )
    return stripped


def checked_top_k(model: ServedModel, top_k: int | None, default: int) -> int:
    """``top_k`` (or the default, capped at the categories), or 422 past the categories."""
    classes = len(model.categories)
    if top_k is None:
        return min(default, classes)
    if top_k > classes:
        raise HTTPException(
            422, f"top_k must be between 1 and {classes} (the number of categories)"
        )
    return top_k


def checked_category(model: ServedModel, category: str | None) -> str | None:
    """``category`` when the index knows it, None for none; else 422 naming the known ones."""
    if category is None or category == "":
        return None
    known = model.index.categories if model.index is not None else model.categories
    if category not in known:
        raise HTTPException(422, f"unknown category {category!r}: use one of {', '.join(known)}")
    return category

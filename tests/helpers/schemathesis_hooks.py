"""Schemathesis hooks for the service's fuzz test (loaded through SCHEMATHESIS_HOOKS).

The schema declares each photo part's media types (``image/jpeg``, ...); here is how to make
a photo of the first, so that valid requests carry one. A file-array item generated as a
number, a boolean or null cannot travel as a file in a multipart body: schemathesis sends
it as some other part, and what arrives is a valid request (one file); a text with a lone
surrogate cannot be encoded at all. Such cases are not generated.
"""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


schemathesis.openapi.media_type(
    "image/jpeg",
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)).map(_jpeg),
)


def _travels(value: object) -> bool:
    """Whether a form field's text survives multipart encoding as it was generated (a lone
    surrogate cannot be UTF-8: the client sends something else, often nothing)."""
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Fields the schema declares with minLength 1: schemathesis 4 (its coverage phase) sometimes
# offers "" for them as a *positive* value beside their pattern, which the schema itself
# refuses; such a case is not a valid request, so it is not sent as one.
NON_EMPTY = ("text", "q")


@schemathesis.hook
def filter_case(context, case) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    if not all(_travels(value) for value in body.values()):
        return False
    if case.meta is None or not case.meta.generation.mode.is_negative:
        fields = {**body, **(case.query or {})}
        return not any(fields.get(name) == "" for name in NON_EMPTY)
    items = body.get("images")
    scalars = isinstance(items, list) and any(
        isinstance(i, int | float | bool) or i is None for i in items
    )
    return not scalars

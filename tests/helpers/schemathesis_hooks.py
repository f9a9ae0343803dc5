"""Schemathesis hooks for the service's fuzz test (loaded through SCHEMATHESIS_HOOKS).

The schema declares each photo part's media types (``image/jpeg``, ...); here is how to make
a photo of the first, so that valid requests carry one. A file-array item generated as a
number, a boolean or null cannot travel as a file in a multipart body: schemathesis sends
it as some other part, and what arrives is a valid request (one file). Such cases are not
generated.
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


@schemathesis.hook
def filter_case(context, case) -> bool:
    if case.meta is None or not case.meta.generation.mode.is_negative:
        return True
    body = case.body if isinstance(case.body, dict) else {}
    items = body.get("images")
    scalars = isinstance(items, list) and any(
        isinstance(i, int | float | bool) or i is None for i in items
    )
    return not scalars

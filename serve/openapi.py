"""The OpenAPI schema as this service accepts requests now.

The routes declare their fixed bounds (``k`` 1..100, a non-blank ``text``, ``top_k`` >= 1);
what depends on the settings or on the versions being served is added here, each time the
schema is asked for: the longest ``text`` (``SERVE_MAX_TEXT_CHARS``), the most images in a
batch (``SERVE_MAX_BATCH_IMAGES``), ``top_k`` up to the served model's categories, and a
``category`` among the search index's; and a photo part's media types (its ``encoding``).
A form or query field that may be left out is not
``null`` either (a form cannot send one), so its ``anyOf [..., null]`` is folded.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from marketplace_models.kinds import IMAGE, IMAGE_TEXT, TEXT
from serve.routes.fields import PHOTO_TYPES

SLOT_OF_PATH = {"/predict/text": TEXT, "/predict/combined": IMAGE_TEXT}
TEXT_FIELDS = ("text", "q")
PHOTO_FIELDS = ("image",)  # a batch's images: schemathesis would send them without filenames


def install_schema(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) the schema with today's limits."""
    build = app.openapi  # FastAPI's own: builds once, then caches

    def openapi() -> dict[str, Any]:
        schema = copy.deepcopy(build())
        declare_limits(schema, app)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def declare_limits(schema: dict[str, Any], app: FastAPI) -> None:
    """Add the settings' and the served versions' bounds to every operation's fields."""
    bodies = schema.get("components", {}).get("schemas", {})
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for field, spec in _fields(operation, bodies):
                _fold_null(spec)
                _limit(field, spec, app, SLOT_OF_PATH.get(path, IMAGE))


def _fields(operation: dict[str, Any], bodies: dict[str, Any]):
    """``(name, schema)`` of the operation's query parameters and form fields."""
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "query":
            yield parameter["name"], parameter["schema"]
    for content in operation.get("requestBody", {}).get("content", {}).values():
        reference = content.get("schema", {}).get("$ref", "")
        body = bodies.get(reference.rsplit("/", 1)[-1], {})
        photos = [name for name in PHOTO_FIELDS if name in body.get("properties", {})]
        content.setdefault("encoding", {}).update(
            {name: {"contentType": PHOTO_TYPES} for name in photos}  # the parts' media types
        )
        yield from body.get("properties", {}).items()


def _fold_null(spec: dict[str, Any]) -> None:
    options = spec.get("anyOf")
    if not options:
        return
    kept = [option for option in options if option.get("type") != "null"]
    if len(kept) == 1:
        del spec["anyOf"]
        spec.update(kept[0])
        if "default" in spec and spec["default"] is None:
            del spec["default"]  # left out, not null


def _limit(field: str, spec: dict[str, Any], app: FastAPI, kind: str) -> None:
    settings = app.state.settings
    if field in TEXT_FIELDS:
        spec["maxLength"] = settings.max_text_chars
    elif field == "images":
        spec["maxItems"] = settings.max_batch_images
    model = _served(app, kind)
    if model is None:
        return
    if field == "top_k":
        spec["maximum"] = len(model.categories)
    elif field == "category" and model.index is not None:
        spec["enum"] = ["", *model.index.categories]


def _served(app: FastAPI, kind: str):
    holders = getattr(app.state, "holders", None) or {}
    holder = holders.get(kind)
    return holder.current if holder is not None else None

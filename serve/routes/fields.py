"""The request fields and error answers that several routes share, declared once.

Bounds and required non-blank values are declared here, so the OpenAPI schema says what the
service accepts and FastAPI refuses the rest (422) before a handler runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Form, UploadFile

from serve.schemas import Problem

# At least one visible character: not white space, not a control character. Anchored at both
# ends, so that the schema reads the same whether a client takes a pattern as a search (as
# JSON Schema says) or as a whole match; the classes spelled out, so that the schema's
# (ECMAScript) regex, pydantic's and ``str.strip`` agree on what is blank.
_BLANK = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = rf"^[{_BLANK}]*[^{_BLANK}][\s\S]*$"
IMAGE_HELP = "The photo: JPEG, PNG, WebP, GIF, BMP or TIFF, as a multipart file field."
TEXT_HELP = "The listing's title and/or description (or a query), as a form field."
UPLOAD_ERRORS = {
    400: {"model": Problem, "description": "The body is not valid multipart form data."},
    413: {"model": Problem, "description": "The request body is over SERVE_MAX_UPLOAD_BYTES."},
    415: {"model": Problem, "description": "The upload is not an image."},
    422: {"model": Problem, "description": "Empty, corrupt, truncated or too many pixels."},
    503: {
        "model": Problem,
        "description": "No model loaded yet, or the service is busy (see Retry-After).",
    },
    504: {"model": Problem, "description": "No answer within SERVE_INFERENCE_TIMEOUT."},
}
NOT_FOUND = {404: {"model": Problem, "description": "No such listing or photo in the index."}}
NO_INDEX = {503: {"model": Problem, "description": "No model or no index yet."}}

# A photo, not empty: the schema says so; the classifier refuses the rest in its own words.
PHOTO_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff"
Image = Annotated[UploadFile, File(description=IMAGE_HELP, json_schema_extra={"minLength": 1})]
Text = Annotated[str, Form(min_length=1, pattern=NOT_BLANK, description=TEXT_HELP + " Required.")]
OptionalText = Annotated[str | None, Form(min_length=1, pattern=NOT_BLANK, description=TEXT_HELP)]
TopK = Annotated[int | None, Form(ge=1, description="Length of top_k (1..categories).")]

"""The request fields and error answers that several routes share, declared once.

Bounds and required non-blank values are declared here, so the OpenAPI schema says what the
service accepts and FastAPI refuses the rest (422) before a handler runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Form, UploadFile

from serve.schemas import Problem

NOT_BLANK = r"\S"  # at least one character that is not white space
IMAGE_HELP = "The photo: JPEG, PNG, WebP, GIF, BMP or TIFF, as a multipart file field."
TEXT_HELP = "The listing's title and/or description (or a query), as a form field."
UPLOAD_ERRORS = {
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

# Not empty: the schema says so, the classifier refuses an empty upload in its own words.
Image = Annotated[UploadFile, File(description=IMAGE_HELP, json_schema_extra={"minLength": 1})]
Text = Annotated[str, Form(min_length=1, pattern=NOT_BLANK, description=TEXT_HELP + " Required.")]
OptionalText = Annotated[str | None, Form(min_length=1, pattern=NOT_BLANK, description=TEXT_HELP)]
TopK = Annotated[int | None, Form(ge=1, description="Length of top_k (1..categories).")]

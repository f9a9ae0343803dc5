"""The service's exception handlers: every error a JSON ``{"detail": ...}`` saying why.

A request that breaks what the routes declare (a missing field, ``k`` out of range, an empty
``text``) is refused by FastAPI before a handler runs; :func:`validation_error` words it for
a person: which field, what is wrong, what to send.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

EMPTY_TEXT = {
    "text": "text is empty: send the listing's title and/or description as `text`",
    "q": "text is empty: send what the buyer typed as `q`",
}
WHERE_SENT = {"query": "a query parameter", "body": "a multipart/form-data field"}


def internal_error(exc: Exception) -> HTTPException:
    """The 500 for an unexpected error: its type, never its text (that goes to the log)."""
    return HTTPException(500, f"internal error ({type(exc).__name__}): see the service's log")


def describe(error: dict) -> str:
    """One validation error as a sentence: ``k must be less than or equal to 100, got 101``."""
    location = [str(part) for part in error.get("loc", ())]
    field = location[-1] if len(location) > 1 else ""
    kind = error.get("type", "")
    if field in EMPTY_TEXT and kind in ("missing", "string_too_short", "string_pattern_mismatch"):
        return EMPTY_TEXT[field]
    if kind == "missing":
        where = WHERE_SENT.get(location[0], "a field") if location else "a field"
        return f"{field}: missing: send it as {where}"
    message = error.get("msg", "invalid")
    if field and message.startswith("Input should be"):
        given = error.get("input")
        got = f", got {given!r}" if isinstance(given, str | int | float) else ""
        return f"{field} must be{message.removeprefix('Input should be')}{got}"
    return f"{field}: {message}" if field else message


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with every problem of the request, each saying what to send instead."""
    problems = [describe(error) for error in exc.errors()]
    return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answer to an HTTP error; a 405's ``Allow`` names every method of the path.

    Starlette's names only those of the first route that matched the path (``POST`` for
    ``OPTIONS /search``, though ``GET /search`` is served too).
    """
    if exc.status_code == 405:
        allowed = sorted(
            method
            for route in request.app.state.api_routes
            if route.matches(request.scope)[0] != Match.NONE
            for method in route.methods
        )
        exc = StarletteHTTPException(405, exc.detail, headers={"Allow": ", ".join(allowed)})
    return await http_exception_handler(request, exc)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """500 for an error no handler expected, logged with its traceback."""
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": internal_error(exc).detail}, status_code=500)


def add_error_handlers(app: FastAPI) -> None:
    """Install the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)

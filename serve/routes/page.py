"""The ``page`` tag: the web page (a photo in, its category and similar listings out)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["page"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The web page: a photo in, its category and similar listings out."""
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

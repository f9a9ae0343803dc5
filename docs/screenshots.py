"""Screenshots of the service's page for the docs (docs/images/page-*.png).

Starts ``python -m serve`` on a free loopback port over the store MLFLOW_TRACKING_URI names
(default ``sqlite:///mlflow.db``: the one ``make demo`` leaves), or uses a running service
(``--url``); opens the page in Debian's chromium (``apt-get install chromium``: Playwright's
own browser download is not used) and saves what a visitor sees: a test photo's category and
the listings similar to it, those similar to the first result, and a typed query's listings,
on a desktop and on a phone.

    make demo && .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from the checkout
    sys.path.insert(0, str(ROOT))

from cli import UserError, cli  # noqa: E402
from cli.processes import LOOPBACK, free_port, log_tail, start_in_group, stop_group  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_S = 300.0
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def poll(predicate, what: str, timeout: float = TIMEOUT_S):
    """Poll ``predicate`` until it returns something truthy; a UserError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    raise UserError(f"{what} did not happen within {timeout:.0f} s")


@contextlib.contextmanager
def service(url: str, workdir: Path) -> Iterator[str]:
    """``url`` when given, else a ``python -m serve`` of our own, stopped afterwards."""
    import httpx

    if url:
        yield url.rstrip("/")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / f"serve-{port}.log"
    env = {**os.environ, "SERVE_HOST": LOOPBACK, "SERVE_PORT": str(port), "PYTHONPATH": str(ROOT)}
    process = start_in_group([sys.executable, "-m", "serve"], log=log, env=env, cwd=ROOT)
    base = f"http://{LOOPBACK}:{port}"
    try:

        def indexed():
            if process.poll() is not None:
                raise UserError(f"python -m serve exited: {log_tail(log)}")
            try:
                reply = httpx.get(base + "/model", timeout=5)
            except httpx.HTTPError:  # not listening yet
                return None
            return reply.status_code == 200 and reply.json()["index"].get("available")

        poll(indexed, "the service with a production version and its search index")
        yield base
    finally:
        stop_group(process.pid, 30.0, process)


def test_photo(clean: Path, raw: Path) -> Path:
    """The first test-split photo of the clean data, as the raw export holds it."""
    import pandas as pd

    try:
        images = pd.read_parquet(clean / "images.parquet")
    except OSError:
        raise UserError(
            f"no {clean / 'images.parquet'}: run make demo first, or pass --clean"
        ) from None
    test = images[images["split"] == "test"].sort_values("image_id")
    for file in test["file"]:
        if (raw / file).is_file():
            return raw / file
    raise UserError(f"no test photo of {clean} under {raw}: pass --raw")


def _settled(page) -> None:
    """Wait until the results' thumbnails have loaded."""
    from playwright.sync_api import expect

    cards = page.locator("#results .card")
    expect(cards.first).to_be_visible(timeout=TIMEOUT_S * 1000)
    poll(
        lambda: page.evaluate(
            "() => [...document.querySelectorAll('#results img')].slice(0, 2)"
            ".every(img => img.complete && img.naturalWidth > 0)"
        ),
        "the first thumbnails to load",  # the others load as they scroll into view
    )


def shoot(base: str, photo: Path, out: Path, query: str) -> list[Path]:
    """The screenshots, saved under ``out``; their paths."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        raise UserError(f"{CHROMIUM} not found: apt-get install chromium")
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                page = browser.new_page(viewport=viewport)
                page.goto(base + "/", timeout=TIMEOUT_S * 1000)
                expect(page.locator("#model-state")).to_contain_text(
                    "version", timeout=TIMEOUT_S * 1000
                )
                page.set_input_files("#photo", str(photo))
                expect(page.locator("#category-answer")).not_to_be_empty(timeout=TIMEOUT_S * 1000)
                _settled(page)
                saved.append(out / f"page-photo-{name}.png")
                page.screenshot(path=saved[-1], full_page=name == "desktop")
                if name == "phone":
                    break
                page.locator("#results .card").first.locator("button").click()
                expect(page.locator("#results-title")).to_contain_text("similar to")
                _settled(page)
                saved.append(out / "page-similar-desktop.png")
                page.screenshot(path=saved[-1], full_page=True)
                page.fill("#q", query)
                page.press("#q", "Enter")
                expect(page.locator("#results-title")).to_contain_text("Listings for")
                _settled(page)
                saved.append(out / "page-query-desktop.png")
                page.screenshot(path=saved[-1], full_page=True)
        finally:
            browser.close()
    return saved


def get_args_parser() -> argparse.ArgumentParser:
    from cli import ArgumentParser

    parser = ArgumentParser(prog="python docs/screenshots.py", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="", help="a running service (default: start one)")
    parser.add_argument("--clean", type=Path, default=ROOT / "data/clean", help="clean data")
    parser.add_argument("--raw", type=Path, default=ROOT / "data/raw", help="raw export")
    parser.add_argument("--query", default="sofa", help="the typed query to show")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images", help="where to save")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    import logging

    args = get_args_parser().parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per poll
    photo = test_photo(args.clean, args.raw)
    with tempfile.TemporaryDirectory() as logs, service(args.url, Path(logs)) as base:
        for path in shoot(base, photo, args.out, args.query):
            print(path)


if __name__ == "__main__":
    cli(main)()

"""The documentation: the site builds strictly, and the README stays a front door."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250


def _build(site: Path) -> str:
    """``mkdocs build --strict`` into ``site``; the build's output (for a failure's message)."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    _build(folder)
    return folder


def test_the_site_builds_strictly(site: Path) -> None:
    """Every page of the nav is built; a broken link, anchor or marker would have failed it."""
    for page in ("getting-started", "pipeline", "data", "training", "registry", "serving"):
        assert (site / page / "index.html").is_file(), page
    for page in ("search", "stack", "benchmarks", "architecture", "tests"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "index.html").is_file()


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def test_every_entry_point_and_parameter_is_on_the_pipeline_page(site: Path) -> None:
    """The parameters come from MLproject at build time, so the page cannot miss one."""
    import yaml

    points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    page = _text((site / "pipeline" / "index.html").read_text())
    for name, point in points.items():
        assert name in page, name
        for parameter in point.get("parameters", {}):
            assert parameter in page, (name, parameter)
    assert "<!--" not in (site / "pipeline" / "index.html").read_text().split("<body")[1]


def test_every_entry_point_has_its_own_parameter_table() -> None:
    """Each entry point is described on some page, with the table the hook renders."""
    import yaml

    points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    pages = "\n".join(path.read_text() for path in (ROOT / "docs").glob("*.md"))
    described = set(re.findall(r"<!--\s*entry-point:\s*([a-z_]+)", pages))
    assert described == set(points)


def test_the_serving_page_lists_every_setting(site: Path) -> None:
    from serve.settings import environment_table

    page = _text((site / "serving" / "index.html").read_text())
    for variable, _, _ in environment_table():
        assert variable in page, variable


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The strict build is what catches a broken link: check it does, on a copy of docs/
    (everything else of the project linked in as it is)."""
    copy = tmp_path / "project"
    copy.mkdir()
    for path in ROOT.iterdir():
        if path.name not in ("docs", "site", ".git"):
            (copy / path.name).symlink_to(path)
    (copy / "docs").mkdir()
    for path in (ROOT / "docs").iterdir():
        if path.is_file():
            (copy / "docs" / path.name).write_text(path.read_text())
    with (copy / "docs" / "tests.md").open("a") as page:
        page.write("\nSee [nowhere](no-such-page.md).\n")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "s")],
        cwd=copy,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    assert "no-such-page.md" in done.stdout + done.stderr


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def _relative_links(markdown: str) -> list[str]:
    """The targets of the Markdown links and images that point into the repository."""
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", markdown)
    return [t for t in targets if not urlparse(t).scheme and not t.startswith(("#", "mailto:"))]


def test_every_relative_link_in_the_readme_leads_to_a_file() -> None:
    links = _relative_links((ROOT / "README.md").read_text())
    assert links, "the README links into docs/"
    missing = [link for link in links if not (ROOT / unquote(link.split("#")[0])).exists()]
    assert missing == []


def test_relative_links_are_found() -> None:
    text = "[a](docs/a.md) [b](https://x.org/b.md) [c](#here) [d](docs/d.md#part) ![e](e.png)"
    assert _relative_links(text) == ["docs/a.md", "docs/d.md#part", "e.png"]

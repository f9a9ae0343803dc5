"""demo_data writes an export with the real raw layout's quirks, deterministically."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from steps.demo_data import CATEGORIES, PRODUCT_COLUMNS, build_tables, make_export


def test_products_csv_has_the_export_quirks(demo_raw: Path) -> None:
    data = (demo_raw / "Products.csv").read_bytes()
    header, _, body = data.partition(b"\n")
    assert header == b"," + ",".join(PRODUCT_COLUMNS).encode() + b"\r"
    assert b"\r\n" not in body, "records end in a bare \\n"
    assert b"\r" in body, "line breaks inside descriptions are bare \\r"
    images_header = (demo_raw / "Images.csv").read_text().splitlines()[0]
    assert images_header == ",id,product_id,bucket_link,image_ref,create_time"


def test_tables_look_like_the_real_export() -> None:
    products, images, specs = build_tables(3000, seed=1)
    assert products["product_name"].str.endswith(" | Gumtree").all()
    prices = products["price"]
    assert (prices == "N/A").any() and (prices == "£0.00").any()
    assert prices.str.contains(r"^£\d{1,3}(?:,\d{3})+\.\d\d$").any(), "thousands separators"
    assert prices.str.startswith("Â£").any(), "mojibake pound signs"
    millions = prices.str.replace(r"[^\d.]", "", regex=True).replace("", "0").astype(float)
    assert (millions > 1e6).any(), "a few outliers in the millions"
    roots = products["category"].str.split(" / ").str[0]
    assert set(roots[roots != ""]) == {c.root for c in CATEGORIES}
    depths = products.loc[products["category"] != "", "category"].str.count(" / ") + 1
    assert depths.min() == 2 and depths.max() == 5
    assert products.duplicated().any(), "a few exact duplicate rows"
    per_product = images.groupby("product_id").size().reindex(products["id"], fill_value=0)
    assert per_product.mode()[0] == 2 and (per_product == 1).any() and (per_product == 0).any()
    flaws = {spec.flaw for spec in specs}
    assert {"grey", "cmyk", "truncated"} <= flaws
    assert len(specs) > len(images), "some image files that no row names"


def test_images_have_real_sizes_and_modes(demo_raw: Path) -> None:
    images = pd.read_csv(demo_raw / "Images.csv", index_col=0)
    sizes, modes = set(), set()
    for image_id in images["id"][:40]:
        with Image.open(demo_raw / "images" / f"{image_id}.jpg") as image:
            sizes.add(image.size)
            modes.add(image.mode)
            assert max(image.size) <= 1024
    assert len(sizes) > 1 and "RGB" in modes


def test_export_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def digest(folder: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                h.update(path.name.encode() + path.read_bytes())
        return h.hexdigest()

    make_export(tmp_path / "a", products=12, seed=3)
    make_export(tmp_path / "b", products=12, seed=3)
    make_export(tmp_path / "c", products=12, seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


@pytest.mark.parametrize("argv", [["--products", "0"], ["--products", "ten"], ["--seed", "-1"]])
def test_bad_parameters_are_rejected(argv: list[str], tmp_path: Path) -> None:
    from cli import UserError
    from steps.demo_data import get_args_parser

    with pytest.raises(UserError, match="--products|--seed"):
        get_args_parser().parse_args(["--out", str(tmp_path), *argv])


def _titles(products: pd.DataFrame) -> pd.Series:
    return products["product_name"].str.split(" | in ", regex=False).str[0]


def test_text_is_as_imperfect_as_documented() -> None:
    from steps import demo_data

    products, _, _ = build_tables(4000, seed=1)
    products = products[products["category"] != ""].drop_duplicates()
    titles = _titles(products).str.lower()
    roots = products["category"].str.split(" / ").str[0]
    nouns = {c.root: c.nouns for c in CATEGORIES}
    vague = titles.isin([t.lower() for t in demo_data.VAGUE_TITLES])
    own = [any(n in t for n in nouns[r]) for t, r in zip(titles, roots, strict=True)]
    other = [
        any(n in t for c, ns in nouns.items() if c != r for n in ns)
        for t, r in zip(titles, roots, strict=True)
    ]
    misleading = ~vague & ~pd.Series(own, index=titles.index) & pd.Series(other, index=titles.index)
    assert vague.mean() == pytest.approx(demo_data.VAGUE_SHARE, abs=0.03)
    # A few misleading titles name an item that is also a word of their own category's
    # ("keyboard"), so they are counted as plain here.
    assert misleading.mean() == pytest.approx(demo_data.MISLEADING_SHARE, abs=0.03)
    asides = products["product_description"].str.contains("Also selling a ")
    assert 0.05 < asides.mean() < 0.15


def test_the_text_stream_leaves_everything_else_as_it_was(monkeypatch) -> None:
    from steps import demo_data

    products, images, specs = build_tables(300, seed=2)
    monkeypatch.setattr(demo_data, "VAGUE_SHARE", 0.0)
    monkeypatch.setattr(demo_data, "MISLEADING_SHARE", 0.0)
    monkeypatch.setattr(demo_data, "ASIDE_SHARE", 0.0)
    plain_products, plain_images, plain_specs = build_tables(300, seed=2)
    same = ["id", "category", "price", "location", "page_id", "create_time"]
    pd.testing.assert_frame_equal(products[same], plain_products[same])
    pd.testing.assert_frame_equal(images, plain_images)
    assert specs == plain_specs
    assert (_titles(products) != _titles(plain_products)).mean() > 0.2


def test_demo_data_refuses_to_write_over_an_ingested_export(tracking: str, tmp_path: Path) -> None:
    from cli import UserError
    from steps.ingest import MARKER as INGEST_MARKER
    from steps.ingest import ingest
    from tests.helpers.servers import make_tiny_export

    out = tmp_path / "raw"
    ingest(str(make_tiny_export(tmp_path / "export")), out, workers=1)
    real = (out / "Products.csv").read_bytes()

    with pytest.raises(UserError, match=rf"{out} holds an ingested export.*--force true"):
        make_export(out, products=3, seed=0, workers=1)
    assert (out / "Products.csv").read_bytes() == real

    make_export(out, products=3, seed=0, workers=1, force=True)
    assert (out / "Products.csv").read_bytes() != real
    assert not (out / INGEST_MARKER).exists(), "a demo export now"


def test_demo_data_redraws_stale_images_and_removes_foreign_ones(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    make_export(out, products=6, seed=0, workers=1)
    first = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    stale = next(iter(first))
    (out / "images" / stale).write_bytes(b"drawn by an older demo_data")
    (out / "images" / "left-from-another-seed.jpg").write_bytes(b"x")

    make_export(out, products=6, seed=0, workers=1)

    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == first


def test_demo_data_redraws_every_image_when_its_drawing_code_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steps import demo_data

    out = tmp_path / "raw"
    make_export(out, products=4, seed=0, workers=1)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    make_export(out, products=4, seed=0, workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps, "kept"
    real = demo_data.code_digest()
    monkeypatch.setattr(demo_data, "code_digest", lambda: real + "-changed")

    make_export(out, products=4, seed=0, workers=1)

    after = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert after.keys() == stamps.keys()
    assert all(after[name] != stamps[name] for name in stamps), "every image redrawn"


def test_every_item_has_its_own_openmoji_artwork() -> None:
    from steps.demo_data import glyph

    owners: dict[str, str] = {}
    for category in CATEGORIES:
        assert len(category.emoji) == len(category.nouns) >= 4, category.root
        for emoji in category.emoji:
            art = glyph(emoji)
            assert art.getchannel("A").getbbox() is not None, f"no artwork for {emoji!r}"
            assert art.convert("RGB").getcolors(4) is None, f"{emoji!r} drawn in colour"
            assert owners.setdefault(emoji, category.root) == category.root, "one category each"


def test_photos_show_the_item_the_listing_names() -> None:
    products, images, specs = build_tables(600, seed=5)
    titles = _titles(products.drop_duplicates("id")).set_axis(products.drop_duplicates("id")["id"])
    named = specs[: len(images)]
    assert [spec.image_id for spec in named] == list(images["id"])
    item_named = [
        CATEGORIES[spec.category].nouns[spec.item] in titles[product].lower()
        for spec, product in zip(named, images["product_id"], strict=True)
    ]
    # vague and misleading titles name no item or another category's (a third or so)
    assert 0.55 < sum(item_named) / len(item_named) < 0.75
    shown: dict[str, set[tuple[int, int]]] = {}
    for spec, product in zip(named, images["product_id"], strict=True):
        shown.setdefault(product, set()).add((spec.category, spec.item))
    assert all(len(items) == 1 for items in shown.values()), "a listing's photos show its item"


def test_the_export_credits_openmoji(tmp_path: Path) -> None:
    import json

    from steps.demo_data import LICENSE_NOTE, MARKER

    make_export(tmp_path / "raw", products=3, seed=0, workers=1)
    note = (tmp_path / "raw" / LICENSE_NOTE).read_text()
    assert "OpenMoji" in note and "CC BY-SA 4.0" in note
    marker = json.loads((tmp_path / "raw" / MARKER).read_text())
    assert "OpenMoji" in marker["artwork"]

"""steps.clean_tabular: parsing rules, the raw layout's quirks, the joins, the split, the step."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cli import UserError
from steps.clean_tabular import (
    IMAGE_COLUMNS,
    PRODUCT_COLUMNS,
    REQUIRED_IMAGE_COLUMNS,
    REQUIRED_PRODUCT_COLUMNS,
    allocate_split,
    build_clean_tables,
    clean_image_rows,
    clean_name,
    clean_products,
    clean_tabular,
    county_of,
    missing_to_none,
    parse_price,
    price_flag,
    read_raw_csv,
    split_by_product,
    split_category,
)
from tests.helpers.mlflow_run import REPO, mlflow_run, project_env

ROOTS = ("Appliances", "Baby & Kids Stuff", "Home & Garden")


# --------------------------------------------------------------------------- a tiny export


def product(pid: str, **fields: str) -> dict[str, str]:
    row = {
        "id": pid,
        "product_name": f"Thing {pid} | in Wokingham, Berkshire | Gumtree",
        "category": "Home & Garden / Dining, Living Room Furniture / Mirrors",
        "product_description": "Nice.\rCollection only.",
        "price": "£5.00",
        "location": "Wokingham, Berkshire",
        "url": f"https://www.gumtree.com/p/{pid}",
        "page_id": "1426704584",
        "create_time": "2022-02-26",
    }
    row.update(fields)
    return row


def image_row(iid: str, pid: str) -> dict[str, str]:
    return {
        "id": iid,
        "product_id": pid,
        "bucket_link": f"https://bucket/{iid}",
        "image_ref": f"{iid}.jpg",
        "create_time": "2022-02-26",
    }


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    """Write as the real export: pandas index column, ``\\r`` ending the header, ``\\n`` rows."""
    text = pd.DataFrame(rows, columns=list(columns)).to_csv(lineterminator="\n")
    header, body = text.split("\n", 1)
    path.write_bytes(f"{header}\r\n{body}".encode())


def write_jpeg(path: Path, size=(48, 32), mode: str = "RGB") -> None:
    colour = {"RGB": (200, 30, 30), "L": 128, "CMYK": (0, 255, 255, 0)}[mode]
    Image.new(mode, size, colour).save(path, "JPEG", quality=90)


def write_export(
    raw: Path,
    products: list[dict[str, str]],
    images: list[dict[str, str]],
    files: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """An export in ``raw``; every image row gets a readable file unless ``files`` says."""
    (raw / "images").mkdir(parents=True)
    write_csv(raw / "Products.csv", PRODUCT_COLUMNS, products)
    write_csv(raw / "Images.csv", IMAGE_COLUMNS, images)
    for row in images:
        if files is None or row["id"] in files:
            write_jpeg(raw / "images" / f"{row['id']}.jpg", (files or {}).get(row["id"], (48, 32)))
    return raw


def balanced_export(raw: Path, per_category: int = 10, images_each: int = 2) -> Path:
    products, images = [], []
    for c, root in enumerate(ROOTS):
        for k in range(per_category):
            pid = f"p{c}{k:03d}"
            products.append(product(pid, category=f"{root} / Sub {k % 2}"))
            images += [image_row(f"{pid}-{j}", pid) for j in range(images_each)]
    return write_export(raw, products, images)


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            stat = path.stat()
            digest.update(path.read_bytes())
            digest.update(f"{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- parsing rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("£5.00", 5.0),
        ("£1,900.00", 1900.0),
        ("Â£5.00", 5.0),  # UTF-8 read as Latin-1 once
        ("£0.00", 0.0),
        ("£1,234,567.89", 1234567.89),
        (" £12.50 ", 12.5),
        ("12", 12.0),
        ("£.50", 0.5),
        ("-£5.00", -5.0),
        ("£-5.00", -5.0),
        ("N/A", None),
        ("n/a", None),
        ("", None),
        ("   ", None),
        (None, None),
        (float("nan"), None),
        ("free", None),
        ("£5.00 ono", None),
        ("£1.2.3", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_parse_price(text, expected) -> None:
    assert parse_price(text) == expected


@settings(max_examples=200, deadline=None)
@given(
    pennies=st.integers(min_value=0, max_value=10**11),
    prefix=st.sampled_from(["£", "Â£", ""]),
)
def test_price_round_trips_the_export_format(pennies: int, prefix: str) -> None:
    amount = Decimal(pennies) / 100
    assert parse_price(f"{prefix}{amount:,.2f}") == float(amount)


@pytest.mark.parametrize(
    ("price", "flag"),
    [
        (None, "missing"),
        (math.nan, "missing"),
        (0.0, "zero"),
        (0.01, "ok"),
        (5.0, "ok"),
        (100_000.0, "ok"),
        (100_000.01, "implausible"),
        (3_500_000.0, "implausible"),
        (-1.0, "implausible"),
    ],
)
def test_price_flag(price, flag) -> None:
    assert price_flag(price, max_price=100_000.0) == flag


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("Mirror wall art | in Wokingham, Berkshire | Gumtree", "Mirror wall art"),
        ("Mirror wall art | in Wokingham, Berkshire", "Mirror wall art"),
        ("Mirror wall art | Gumtree", "Mirror wall art"),
        ("Mirror wall art", "Mirror wall art"),
        ("Mirror wall art|in Leeds|Gumtree", "Mirror wall art"),
        ("Mirror wall art | in Leeds | gumtree ", "Mirror wall art"),
        ("Sofa | 3 seater | in Leeds, West Yorkshire | Gumtree", "Sofa | 3 seater"),
        ("Built in oven | in Leeds | Gumtree", "Built in oven"),
        ("Gumtree", "Gumtree"),
        ("Item | in great condition | in Leeds | Gumtree", "Item | in great condition"),
        ("Lamp | in  | Gumtree", "Lamp"),  # the location itself blank
        ("Lamp | in", "Lamp"),
        ("Lamp | inside out", "Lamp | inside out"),
        ("N/A", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_clean_name(raw, name) -> None:
    assert clean_name(raw) == name


@settings(max_examples=100, deadline=None)
@given(
    title=st.text(st.characters(categories=("L", "N"), include_characters=" -&'"), min_size=1),
    place=st.text(st.characters(categories=("L",), include_characters=" ,"), min_size=1),
)
def test_clean_name_recovers_any_title(title: str, place: str) -> None:
    if missing_to_none(title) is None:
        return  # "N/A", "none"...: a missing title, covered above
    assert clean_name(f"{title} | in {place} | Gumtree") == title.strip()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "Home & Garden / Dining, Living Room Furniture / Mirrors, Clocks & Ornaments",
            (
                "Home & Garden / Dining, Living Room Furniture / Mirrors, Clocks & Ornaments",
                "Home & Garden",
                "Dining, Living Room Furniture",
                3,
            ),
        ),
        ("Appliances", ("Appliances", "Appliances", None, 1)),
        ("  Appliances /  Fridges  ", ("Appliances / Fridges", "Appliances", "Fridges", 2)),
        ("A / B / C / D / E", ("A / B / C / D / E", "A", "B", 5)),
        ("A / / B", ("A / B", "A", "B", 2)),
        ("", None),
        ("N/A", None),
        (" / ", None),
        (None, None),
    ],
)
def test_split_category(raw, expected) -> None:
    assert split_category(raw) == expected


@pytest.mark.parametrize(
    ("location", "county"),
    [
        ("Wokingham, Berkshire", "Berkshire"),
        ("Leeds, West Yorkshire ", "West Yorkshire"),
        ("Soho, London, Greater London", "Greater London"),
        ("London", "London"),
        ("Leeds,", None),
        ("", None),
        ("N/A", None),
        (None, None),
    ],
)
def test_county_of(location, county) -> None:
    assert county_of(location) == county


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("N/A", None),
        (" n/a ", None),
        ("", None),
        ("\r", None),
        ("null", None),
        ("a\rb", "a\nb"),
        ("a\r\nb\r", "a\nb"),
        ("  keep  me ", "keep  me"),
    ],
)
def test_missing_to_none(text, expected) -> None:
    assert missing_to_none(text) == expected


# --------------------------------------------------------------------------- the raw layout

QUIRKY_PRODUCTS = (
    b",id,product_name,category,product_description,price,location,url,page_id,create_time\r\n"
    b'0,a1,"Mirror wall art | in Wokingham, Berkshire | Gumtree",Home & Garden / Mirrors,'
    b'"Lovely mirror.\rCollection only,\r\rcash.","\xc2\xa31,900.00","Wokingham, Berkshire",'
    b"https://g/a1,11,2022-02-26\n"
    b"1,a2,Chair | in Leeds | Gumtree,Appliances / Chairs,Line one\rline two,"
    b"\xc3\x82\xc2\xa35.00,Leeds,https://g/a2,12,2022-02-27\n"
    b"2,a3,Lamp | in Leeds | Gumtree,Appliances,N/A,N/A,,https://g/a3,,\n"
)


def test_bare_cr_in_header_and_fields_does_not_split_records(tmp_path: Path) -> None:
    path = tmp_path / "Products.csv"
    path.write_bytes(QUIRKY_PRODUCTS)
    frame = read_raw_csv(path, PRODUCT_COLUMNS, REQUIRED_PRODUCT_COLUMNS)[0]
    assert list(frame.columns) == list(PRODUCT_COLUMNS)  # index column gone, no "\r"
    assert len(frame) == 3
    assert frame.loc[0, "product_description"] == "Lovely mirror.\rCollection only,\r\rcash."
    assert frame.loc[1, "product_description"] == "Line one\rline two"
    assert frame.loc[0, "price"] == "£1,900.00"
    assert frame.loc[1, "price"] == "Â£5.00"
    assert list(frame["create_time"]) == ["2022-02-26", "2022-02-27", ""]

    clean, _ = clean_products(frame, max_price=100_000)
    assert list(clean["description"][:2]) == [
        "Lovely mirror.\nCollection only,\n\ncash.",
        "Line one\nline two",
    ]
    assert list(clean["price"][:2]) == [1900.0, 5.0]
    assert pd.isna(clean.loc[2, "description"])
    assert clean.loc[2, "price_flag"] == "missing"
    assert pd.isna(clean.loc[2, "location"]) and pd.isna(clean.loc[2, "county"])
    assert pd.isna(clean.loc[2, "create_time"])


def test_crlf_records_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "Products.csv"
    path.write_bytes(QUIRKY_PRODUCTS.replace(b",2022-02-27\n", b",2022-02-27\r\n"))
    frame = read_raw_csv(path, PRODUCT_COLUMNS, REQUIRED_PRODUCT_COLUMNS)[0]
    assert len(frame) == 3
    assert frame.loc[1, "create_time"] == "2022-02-27"


def test_missing_required_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "Products.csv"
    path.write_text(",id,product_name,price\r\n0,a,b,£1.00\n")
    with pytest.raises(UserError, match=r"lacks column\(s\) category \(") as error:
        read_raw_csv(path, PRODUCT_COLUMNS, REQUIRED_PRODUCT_COLUMNS)
    assert "\n" not in str(error.value)


def test_optional_columns_may_be_absent_and_come_out_empty(tmp_path: Path) -> None:
    path = tmp_path / "Products.csv"
    path.write_text(",id,category\r\n0,a,Appliances / Irons\r\n")
    frame, absent = read_raw_csv(path, PRODUCT_COLUMNS, REQUIRED_PRODUCT_COLUMNS)
    assert absent == [c for c in PRODUCT_COLUMNS if c not in ("id", "category")]
    assert list(frame.loc[0, absent]) == [""] * len(absent)
    clean, _ = clean_products(frame, max_price=100_000)
    assert clean.loc[0, "name"] == "" and clean.loc[0, "price_flag"] == "missing"
    assert clean[["description", "url", "page_id", "create_time"]].isna().all().all()


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02"])
def test_unreadable_csv_is_a_step_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "Products.csv"
    path.write_bytes(content)
    with pytest.raises(UserError):
        read_raw_csv(path, PRODUCT_COLUMNS, REQUIRED_PRODUCT_COLUMNS)[0]


# --------------------------------------------------------------------------- products


def test_products_are_dropped_only_for_id_or_category_and_counted() -> None:
    rows = [
        product("a"),
        product("a"),  # exact duplicate of the first
        product("b", product_name="Other thing"),
        product("b", product_name="Same id, later row"),  # duplicate id: first kept
        product("", product_name="no id"),
        product("N/A", product_name="no id either"),
        product("c", category=""),
        product("d", category="N/A"),
        product("e", price="N/A", location="", product_description=""),
        product("f", price="£0.00"),
        product("g", price="£3,500,000.00"),
    ]
    raw = pd.DataFrame(rows, columns=list(PRODUCT_COLUMNS)).astype("str")
    clean, report = clean_products(raw, max_price=100_000.0)
    assert report["rows_in"] == 11
    assert report["dropped"] == {
        "exact_duplicate": 1,
        "no_id": 2,
        "no_category": 2,
        "duplicate_id": 1,
    }
    assert report["rows_out"] == len(clean) == 5
    assert list(clean["product_id"]) == ["a", "b", "e", "f", "g"]
    assert clean.set_index("product_id").loc["b", "name"] == "Other thing"
    by_id = clean.set_index("product_id")
    assert by_id.loc["e", "price_flag"] == "missing" and np.isnan(by_id.loc["e", "price"])
    assert by_id.loc["f", "price_flag"] == "zero" and by_id.loc["f", "price"] == 0.0
    assert by_id.loc["g", "price_flag"] == "implausible" and np.isnan(by_id.loc["g", "price"])
    assert report["price_flags"] == {"ok": 2, "missing": 1, "zero": 1, "implausible": 1}


def test_product_columns_follow_the_contract() -> None:
    raw = pd.DataFrame([product("a")], columns=list(PRODUCT_COLUMNS)).astype("str")
    clean, _ = clean_products(raw, max_price=100_000.0)
    row = clean.iloc[0]
    assert row["name"] == "Thing a"
    assert row["category"] == "Home & Garden / Dining, Living Room Furniture / Mirrors"
    assert row["root_category"] == "Home & Garden"
    assert row["sub_category"] == "Dining, Living Room Furniture"
    assert row["category_depth"] == 3
    assert row["county"] == "Berkshire"
    assert row["location"] == "Wokingham, Berkshire"
    assert row["create_time"] == pd.Timestamp("2022-02-26")
    assert clean["price"].dtype == np.float64
    assert clean["category_depth"].dtype == np.int64
    assert pd.api.types.is_datetime64_any_dtype(clean["create_time"])


# --------------------------------------------------------------------------- images


def test_images_joined_probed_and_counted(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    images = [
        image_row("ok1", "a"),
        image_row("cmyk", "a"),
        image_row("grey", "b"),
        image_row("ok1", "a"),  # exact duplicate
        image_row("nofile", "a"),
        image_row("ghost", "zzz"),  # product unknown
        image_row("broken", "b"),
    ]
    write_export(raw, [product("a"), product("b")], images, files={})
    write_jpeg(raw / "images" / "ok1.jpg", (800, 600))
    write_jpeg(raw / "images" / "cmyk.jpg", (30, 40), mode="CMYK")
    write_jpeg(raw / "images" / "grey.jpg", (31, 41), mode="L")
    write_jpeg(raw / "images" / "ghost.jpg")
    write_jpeg(raw / "images" / "broken.jpg", (300, 200))
    data = (raw / "images" / "broken.jpg").read_bytes()
    (raw / "images" / "broken.jpg").write_bytes(data[: len(data) // 2])
    write_jpeg(raw / "images" / "orphan.jpg")
    (raw / "images" / "notes.txt").write_text("not an image")

    products = pd.DataFrame({"product_id": ["a", "b"]})
    raw_rows, _ = read_raw_csv(raw / "Images.csv", IMAGE_COLUMNS, REQUIRED_IMAGE_COLUMNS)
    clean, report = clean_image_rows(raw_rows, products, raw)

    assert report["dropped"] == {
        "exact_duplicate": 1,
        "no_id": 0,
        "duplicate_id": 0,
        "no_product": 1,
        "file_missing": 1,
        "unreadable": 1,
    }
    assert report["rows_in"] == 7 and report["rows_out"] == 3
    assert [u["image_id"] for u in report["unreadable"]] == ["broken"]
    assert "truncated" in report["unreadable"][0]["error"]
    assert report["orphan_files"] == 1 and report["orphan_examples"] == ["images/orphan.jpg"]
    assert report["file_missing_examples"] == ["nofile"]
    by_id = clean.set_index("image_id")
    assert list(by_id.index) == ["ok1", "cmyk", "grey"]
    assert tuple(by_id.loc["ok1", ["width", "height", "mode"]]) == (800, 600, "RGB")
    assert tuple(by_id.loc["cmyk", ["width", "height", "mode"]]) == (30, 40, "CMYK")
    assert tuple(by_id.loc["grey", ["width", "height", "mode"]]) == (31, 41, "L")
    assert by_id.loc["ok1", "file"] == "images/ok1.jpg"
    assert clean["width"].dtype == np.int64


# --------------------------------------------------------------------------- the split


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (0, 0.15, 0.15, (0, 0, 0)),
        (1, 0.15, 0.15, (1, 0, 0)),
        (2, 0.15, 0.15, (2, 0, 0)),
        (2, 0.4, 0.4, (1, 0, 1)),  # train keeps one; on a tie val gives way first
        (3, 0.15, 0.15, (1, 1, 1)),
        (4, 0.15, 0.15, (2, 1, 1)),
        (10, 0.15, 0.15, (6, 2, 2)),
        (100, 0.15, 0.15, (70, 15, 15)),
        (3, 0.0, 0.15, (2, 0, 1)),
        (10, 0.0, 0.0, (10, 0, 0)),
        (5, 0.45, 0.45, (1, 2, 2)),
    ],
)
def test_allocate_split(n, val, test, expected) -> None:
    assert allocate_split(n, val, test) == expected


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 2000),
    val=st.floats(0, 0.49),
    test=st.floats(0, 0.49),
)
def test_allocation_guarantees(n: int, val: float, test: float) -> None:
    n_train, n_val, n_test = allocate_split(n, val, test)
    assert n_train + n_val + n_test == n
    assert min(n_train, n_val, n_test) >= 0
    if n >= 1:
        assert n_train >= 1
    if n >= 3:
        assert (n_val >= 1) == (val > 0)
        assert (n_test >= 1) == (test > 0)
    assert abs(n_val - n * val) <= 1.5 and abs(n_test - n * test) <= 1.5


def category_products(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [
        {"product_id": f"{root[:3]}-{k:04d}", "root_category": root}
        for root, count in sizes.items()
        for k in range(count)
    ]
    return pd.DataFrame(rows)


SIZES = {"Appliances": 40, "Baby & Kids Stuff": 3, "Home & Garden": 17, "Other Goods": 1}


def test_split_is_stratified_and_every_category_is_everywhere() -> None:
    products = category_products(SIZES)
    split = split_by_product(products, val_frac=0.15, test_frac=0.15, seed=0)
    assert set(split.index) == set(products["product_id"])  # each product exactly once
    assert set(split) <= {"train", "val", "test"}
    table = pd.crosstab(products["root_category"], products["product_id"].map(split))
    for root, size in SIZES.items():
        expected = dict(
            zip(("train", "val", "test"), allocate_split(size, 0.15, 0.15), strict=True)
        )
        assert {s: int(table.loc[root].get(s, 0)) for s in expected} == expected
    assert (table.loc[["Appliances", "Baby & Kids Stuff", "Home & Garden"]] >= 1).all().all()


def test_split_is_deterministic_per_seed_and_ignores_row_order() -> None:
    products = category_products(SIZES)
    first = split_by_product(products, val_frac=0.15, test_frac=0.15, seed=7)
    shuffled = products.sample(frac=1.0, random_state=1)
    again = split_by_product(shuffled, val_frac=0.15, test_frac=0.15, seed=7)
    assert first.sort_index().equals(again.sort_index())
    other = split_by_product(products, val_frac=0.15, test_frac=0.15, seed=8)
    assert not first.sort_index().equals(other.sort_index())


def test_no_product_straddles_splits_and_labels_match_categories(tmp_path: Path) -> None:
    raw = balanced_export(tmp_path / "raw", per_category=10, images_each=3)
    tables = build_clean_tables(raw, seed=3)
    images = tables.images
    assert (images.groupby("product_id")["split"].nunique() == 1).all()
    assert tables.categories == sorted(ROOTS)
    assert (images["label"].map(lambda i: tables.categories[i]) == images["root_category"]).all()
    per_category = images.drop_duplicates("product_id").groupby("root_category")["split"]
    assert (per_category.nunique() == 3).all()
    assert list(images.columns[:5]) == ["image_id", "product_id", "root_category", "label", "split"]
    again = build_clean_tables(raw, seed=3)
    assert images.equals(again.images)


# --------------------------------------------------------------------------- the step


def test_step_writes_the_contract_and_logs_the_run(tmp_path: Path, tracking: str) -> None:
    import mlflow

    raw = balanced_export(tmp_path / "raw", per_category=6)
    extra = raw / "images" / "orphan.jpg"
    write_jpeg(extra)
    before = tree_digest(raw)
    out = tmp_path / "clean"

    report = clean_tabular(raw, out, val_frac=0.2, test_frac=0.2, seed=1)

    assert tree_digest(raw) == before  # the raw export is never touched
    products = pd.read_parquet(out / "products.parquet")
    images = pd.read_parquet(out / "images.parquet")
    categories = json.loads((out / "categories.json").read_text())
    assert json.loads((out / "report.json").read_text()) == report
    assert categories == sorted(ROOTS)
    assert len(products) == 18 and len(images) == 36
    assert {
        "product_id",
        "name",
        "description",
        "price",
        "price_flag",
        "location",
        "county",
        "category",
        "root_category",
        "sub_category",
        "category_depth",
        "url",
        "page_id",
        "create_time",
    } <= set(products.columns)
    assert set(images.columns) >= {
        "image_id",
        "product_id",
        "root_category",
        "label",
        "split",
        "file",
        "width",
        "height",
        "mode",
    }
    assert images["label"].dtype == np.int64
    assert report["images"]["orphan_files"] == 1
    assert report["splits"]["images"] == {
        split: int((images["split"] == split).sum()) for split in ("train", "val", "test")
    }
    assert sum(report["splits"]["products"].values()) == 18

    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.run_name == "clean_tabular"
    assert run.data.params["seed"] == "1"
    assert run.data.metrics["products_in"] == 18
    assert run.data.metrics["images_out"] == 36
    assert run.data.metrics["orphan_image_files"] == 1
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "clean")}
    assert artifacts == {
        "clean/products.parquet",
        "clean/images.parquet",
        "clean/categories.json",
        "clean/report.json",
    }
    inputs = {
        (d.dataset.name, tag.value)
        for d in run.inputs.dataset_inputs
        for tag in d.tags
        if tag.key == "mlflow.data.context"
    }
    assert inputs == {
        ("products_raw", "raw"),
        ("images_raw", "raw"),
        ("products_clean", "clean"),
        ("images_clean", "clean"),
    }


def test_out_inside_raw_is_refused(tmp_path: Path) -> None:
    raw = balanced_export(tmp_path / "raw", per_category=1)
    before = tree_digest(raw)
    for out in (raw, raw / "clean", raw / "images"):
        with pytest.raises(UserError, match="inside the raw folder"):
            clean_tabular(raw, out)
    assert tree_digest(raw) == before


def test_tracking_server_down_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.servers import closed_endpoint

    raw = balanced_export(tmp_path / "raw", per_category=1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_endpoint())
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        clean_tabular(raw, tmp_path / "clean")
    assert not (tmp_path / "clean").exists()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_raw", "not found"),
        ("no_products_csv", "Products.csv not found"),
        ("no_images_csv", "Images.csv not found"),
        ("no_category_anywhere", "no usable rows"),
        ("no_image_files", "no usable images"),
    ],
)
def test_bad_exports_are_one_line_step_errors(
    tmp_path: Path, tracking: str, breakage: str, message: str
) -> None:
    raw = tmp_path / "raw"
    if breakage == "no_category_anywhere":
        write_export(raw, [product("a", category="")], [image_row("i", "a")])
    elif breakage != "no_raw":
        balanced_export(raw, per_category=1)
    if breakage == "no_products_csv":
        (raw / "Products.csv").unlink()
    if breakage == "no_images_csv":
        (raw / "Images.csv").unlink()
    if breakage == "no_image_files":
        for path in (raw / "images").iterdir():
            path.unlink()
    with pytest.raises(UserError, match=message) as error:
        clean_tabular(raw, tmp_path / "clean")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "clean" / "products.parquet").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_frac": 0.6, "test_frac": 0.5}, "sum to less than 1"),
        ({"val_frac": -0.1}, "val-frac"),
        ({"max_price": 0}, "max-price"),
    ],
)
def test_bad_fractions_are_step_errors(tmp_path: Path, kwargs, message) -> None:
    raw = balanced_export(tmp_path / "raw", per_category=1)
    with pytest.raises(UserError, match=message):
        clean_tabular(raw, tmp_path / "clean", **kwargs)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = project_env(tracking="sqlite:///:memory:")  # errors come before any logging
    return subprocess.run(
        [sys.executable, "-m", "steps.clean_tabular", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--raw", "/nonexistent/raw", "--out", "{tmp}/clean"], id="no-raw"),
        pytest.param(["--raw", "{tmp}", "--out", "{tmp}/clean"], id="no-csv"),
        pytest.param(["--raw", "{tmp}", "--out", "{tmp}/x", "--val-frac", "2"], id="bad-frac"),
        pytest.param(["--raw", "{tmp}", "--out", "{tmp}/x", "--seed", "-1"], id="negative-seed"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr


def test_cli_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--raw", "--out", "--val-frac", "--test-frac", "--max-price", "--seed"):
        assert flag in result.stdout


def test_demo_export_cleans_to_the_contract(demo_raw: Path) -> None:
    before = tree_digest(demo_raw)
    tables = build_clean_tables(demo_raw)
    assert tree_digest(demo_raw) == before
    report, products, images = tables.report, tables.products, tables.images
    for table in ("products", "images"):
        part = report[table]
        assert part["rows_out"] + sum(part["dropped"].values()) == part["rows_in"]
    assert len(products) == report["products"]["rows_out"] > 0
    assert products["product_id"].is_unique and images["image_id"].is_unique
    assert not products["name"].str.contains("Gumtree|\\| in ", regex=True).any()
    assert set(products["price_flag"]) <= {"ok", "missing", "zero", "implausible"}
    priced = products["price_flag"].isin(["ok", "zero"])
    assert products.loc[priced, "price"].notna().all()
    assert products.loc[~priced, "price"].isna().all()
    assert (products["category_depth"] >= 1).all()
    assert (images.groupby("product_id")["split"].nunique() == 1).all()
    assert set(images["product_id"]) <= set(products["product_id"])
    assert tables.categories == sorted(set(images["root_category"]))
    assert all((demo_raw / file).is_file() for file in images["file"])
    assert sum(report["splits"]["images"].values()) == len(images)


def test_a_crash_leaves_a_failed_run_with_its_params(
    tmp_path: Path, tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from steps import clean_tabular as step

    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire")

    raw = balanced_export(tmp_path / "raw", per_category=1)
    monkeypatch.setattr(step, "clean_image_rows", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        clean_tabular(raw, tmp_path / "clean", seed=3)
    [run] = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert run.info.run_name == "clean_tabular" and run.info.status == "FAILED"
    assert run.data.params["seed"] == "3" and run.data.params["raw"] == str(raw)


# ------------------------------------------------------ exports as they really come

DEC_2022_PRODUCTS = ["id", "product_name", "category", "product_description", "price", "location"]
DEC_2022_IMAGES = ["id", "product_id"]
ENDINGS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


def export_as(raw: Path, out: Path, layout: str, ending: str) -> Path:
    """A copy of the export ``raw`` in ``layout`` (``full`` or ``dec2022``, the December 2022
    copies' columns) whose every line ends in ``ending``, line breaks in descriptions too."""
    import shutil

    products, _ = read_raw_csv(raw / "Products.csv", PRODUCT_COLUMNS, REQUIRED_PRODUCT_COLUMNS)
    images, _ = read_raw_csv(raw / "Images.csv", IMAGE_COLUMNS, REQUIRED_IMAGE_COLUMNS)
    if layout == "dec2022":
        products, images = products[DEC_2022_PRODUCTS], images[DEC_2022_IMAGES]
    breaks = products["product_description"].str.replace(r"\r\n|\r|\n", ending, regex=True)
    products = products.assign(product_description=breaks)
    out.mkdir(parents=True)
    products.to_csv(out / "Products.csv", lineterminator=ending)
    images.to_csv(out / "Images.csv", lineterminator=ending)
    shutil.copytree(raw / "images", out / "images")
    return out


@pytest.fixture(scope="module")
def demo_tables(demo_raw: Path):
    return build_clean_tables(demo_raw)


@pytest.mark.parametrize("ending", sorted(ENDINGS))
@pytest.mark.parametrize("layout", ["full", "dec2022"])
def test_every_layout_and_line_ending_gives_the_same_rows(
    demo_raw: Path, demo_tables, tmp_path: Path, layout: str, ending: str
) -> None:
    raw = export_as(demo_raw, tmp_path / "raw", layout, ENDINGS[ending])
    assert (b"\n" in (raw / "Products.csv").read_bytes()) == (ending != "cr")

    tables = build_clean_tables(raw)

    absent = {"full": [], "dec2022": ["url", "page_id", "create_time"]}[layout]
    absent_images = {"full": [], "dec2022": ["bucket_link", "image_ref", "create_time"]}[layout]
    assert tables.report["absent_columns"] == {
        "Products.csv": absent,
        "Images.csv": absent_images,
    }
    expected = demo_tables.products.drop(columns=absent)
    pd.testing.assert_frame_equal(tables.products.drop(columns=absent), expected)
    assert tables.products[absent].isna().all().all()
    pd.testing.assert_frame_equal(tables.images, demo_tables.images)
    descriptions = tables.products["description"].dropna()
    assert descriptions.str.contains("\n").any()  # line breaks kept, as \n
    assert not descriptions.str.contains("\r").any()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layout", "ending", "through_ingest"),
    [("dec2022", "crlf", True), ("full", "cr", False), ("dec2022", "lf", False)],
)
def test_real_export_layouts_through_mlflow_run(
    demo_raw: Path, demo_tables, tmp_path: Path, tracking: str, layout, ending, through_ingest
) -> None:
    """A December 2022 copy with CRLF endings goes through ingest, clean_tabular and
    clean_images as `mlflow run` entry points; the other layouts and endings through
    clean_tabular. Every row comes out as from the demo export itself."""
    export = export_as(demo_raw, tmp_path / "export", layout, ENDINGS[ending])
    raw, clean = tmp_path / "raw", tmp_path / "clean"
    if through_ingest:
        mlflow_run(
            "ingest", {"source": str(export), "out": str(raw)}, cwd=tmp_path, experiment="tests"
        )
        assert (raw / "Products.csv").read_bytes() == (export / "Products.csv").read_bytes()
    else:
        raw = export
    mlflow_run(
        "clean_tabular", {"raw": str(raw), "out": str(clean)}, cwd=tmp_path, experiment="tests"
    )
    if through_ingest:
        mlflow_run(
            "clean_images",
            {"raw": str(raw), "out": str(clean), "size": "32"},
            cwd=tmp_path,
            experiment="tests",
        )

    products = pd.read_parquet(clean / "products.parquet")
    images = pd.read_parquet(clean / "images.parquet")
    report = json.loads((clean / "report.json").read_text())
    absent = report["absent_columns"]["Products.csv"]
    assert absent == ([] if layout == "full" else ["url", "page_id", "create_time"])
    assert len(products) == len(demo_tables.products) and len(images) == len(demo_tables.images)
    assert list(products["product_id"]) == list(demo_tables.products["product_id"])
    assert list(products["description"].fillna("")) == list(
        demo_tables.products["description"].fillna("")
    )
    if through_ingest:
        cleaned = {path.stem for path in (clean / "images" / "32").glob("*.jpg")}
        assert set(images["image_id"]) <= cleaned

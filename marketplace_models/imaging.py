"""The one image normalisation, shared by clean_images, training and the served model.

Every image the project touches goes through :func:`normalize_image`: EXIF orientation
applied, converted to RGB (greyscale, palette, alpha, CMYK and 16-bit modes handled),
resized keeping its aspect ratio and padded to a ``size`` x ``size`` square. The served
model carries this function, so the service sees images exactly as training did.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

PAD_COLOUR = (0, 0, 0)
ALPHA_BACKGROUND = (255, 255, 255)
RESAMPLE = Image.Resampling.BICUBIC


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB copy of ``image`` whatever its mode.

    Transparent pixels are composited on white (a product photo's background), 16-bit and
    float greyscale are rescaled to 8 bits, and CMYK goes through Pillow's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "La":
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    return image.convert("RGB")


def normalize_image(image: Image.Image, size: int) -> Image.Image:
    """EXIF-orient, convert to RGB, resize keeping aspect ratio and pad to ``size`` square."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    image = ImageOps.exif_transpose(image) or image
    image = to_rgb(image)
    # Fit the long side to ``size``; the short side keeps at least one pixel (ImageOps.pad
    # rounds a sliver's short side to 0 and the photo vanishes).
    if image.width >= image.height:
        fitted = (size, max(1, round(image.height / image.width * size)))
    else:
        fitted = (max(1, round(image.width / image.height * size)), size)
    if image.size != fitted:
        image = image.resize(fitted, RESAMPLE)
    if fitted == (size, size):
        return image
    canvas = Image.new("RGB", (size, size), PAD_COLOUR)
    canvas.paste(image, (round((size - fitted[0]) * 0.5), round((size - fitted[1]) * 0.5)))
    return canvas


class ImageTooLarge(OSError):
    """The image's header declares more pixels than the caller accepts (not decoded)."""


def open_image(
    source: bytes | str | Path, size: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Open and fully decode an image from bytes or a path.

    With ``size``, a JPEG is decoded at the smallest DCT scale that still covers the box
    :func:`normalize_image` fits it into (long side ``size``; Pillow's ``draft``): a
    1024 x 768 photo for a 256 square decodes at quarter scale, several times faster.
    Raises ``OSError`` (Pillow's ``UnidentifiedImageError`` is one) when the data
    is not a readable image or is truncated, and :class:`ImageTooLarge` (before decoding)
    when ``max_pixels`` is given and the header declares more pixels than that.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115 (closed by the with below)
    with stream:
        image = Image.open(stream)
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ImageTooLarge(
                f"the image is {image.width} x {image.height} pixels, more than the "
                f"{max_pixels:,} allowed"
            )
        if size is not None and image.format == "JPEG":
            scale = size / max(image.size)
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image.load()
    return image


def load_normalized(
    source: bytes | str | Path, size: int, max_pixels: int | None = None
) -> Image.Image:
    """Open ``source`` (bytes or a path) and return it normalised to ``size`` square."""
    return normalize_image(open_image(source, size, max_pixels), size)

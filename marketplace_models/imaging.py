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
from PIL import Image, ImageMode, ImageOps

PAD_COLOUR = (0, 0, 0)
ALPHA_BACKGROUND = (255, 255, 255)
RESAMPLE = Image.Resampling.BICUBIC
HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


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
    if image.mode in HIGH_BIT_MODES:
        image = _rescaled_to_eight_bits(image)
    return image.convert("RGB")


def _rescaled_to_eight_bits(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float greyscale image stretched to 8 bits (its min to 0, max to 255).

    Works in the image's own precision (float32 at most), so the only copy is one the size of
    ``image``: :func:`normalize_image` calls it on the image already shrunk to the model's size.
    """
    array = np.asarray(image)
    low, high = array.min(), array.max()
    if not high > low:
        return Image.new("L", image.size, 0)
    shifted = array.astype(np.float32) - np.float32(low)
    scaled = shifted / np.float32(float(high) - float(low)) * np.float32(255.0)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def fitted_size(dimensions: tuple[int, int], size: int) -> tuple[int, int]:
    """The long side fitted to ``size``, aspect kept; the short side keeps at least one pixel
    (ImageOps.pad rounds a sliver's short side to 0 and the photo vanishes)."""
    width, height = dimensions
    if width >= height:
        return (size, max(1, round(height / width * size)))
    return (max(1, round(width / height * size)), size)


def normalize_image(image: Image.Image, size: int) -> Image.Image:
    """EXIF-orient, convert to RGB, resize keeping aspect ratio and pad to ``size`` square."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    image = ImageOps.exif_transpose(image) or image
    fitted = fitted_size(image.size, size)
    if image.mode in HIGH_BIT_MODES and image.size != fitted:
        # Shrunk in its own depth first: the 8-bit rescaling then works on a small copy.
        image = image.resize(fitted, RESAMPLE)
    image = to_rgb(image)
    if image.size != fitted:
        image = image.resize(fitted, RESAMPLE)
    if fitted == (size, size):
        return image
    canvas = Image.new("RGB", (size, size), PAD_COLOUR)
    canvas.paste(image, (round((size - fitted[0]) * 0.5), round((size - fitted[1]) * 0.5)))
    return canvas


class ImageTooLarge(OSError):
    """The image's header declares more pixels than the caller accepts (not decoded)."""


class ImageTooCostly(ImageTooLarge):
    """Decoding the image would take more memory than the caller allows (not decoded)."""


def bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow keeps per pixel of ``mode`` (every multi-band mode takes 4)."""
    info = ImageMode.getmode(mode)
    return 4 if len(info.bands) > 1 else int(info.typestr[-1])


def decode_bytes(image: Image.Image) -> int:
    """The memory decoding an opened (not yet loaded) image takes: its header's width x
    height x bytes per pixel of its mode, at the scale ``draft`` chose."""
    return image.width * image.height * bytes_per_pixel(image.mode)


def open_image(
    source: bytes | str | Path,
    size: int | None = None,
    max_pixels: int | None = None,
    max_decode_bytes: int | None = None,
) -> Image.Image:
    """Open and fully decode an image from bytes or a path.

    With ``size``, a JPEG is decoded at the smallest DCT scale that still covers the box
    :func:`normalize_image` fits it into (long side ``size``; Pillow's ``draft``): a
    1024 x 768 photo for a 256 square decodes at quarter scale.
    Raises ``OSError`` (Pillow's ``UnidentifiedImageError`` is one) when the data
    is not a readable image or is truncated, and, before decoding, :class:`ImageTooLarge`
    when ``max_pixels`` is given and the header declares more pixels than that, or
    :class:`ImageTooCostly` when ``max_decode_bytes`` is given and decoding would take more
    memory than that (:func:`decode_bytes`).
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
        if max_decode_bytes is not None and decode_bytes(image) > max_decode_bytes:
            raise ImageTooCostly(
                f"decoding the image ({image.width} x {image.height} pixels, mode "
                f"{image.mode}) would take {decode_bytes(image) / 2**20:,.0f} MiB, more than "
                f"the {max_decode_bytes / 2**20:,.0f} MiB allowed"
            )
        image.load()
    return image


def load_normalized(
    source: bytes | str | Path,
    size: int,
    max_pixels: int | None = None,
    max_decode_bytes: int | None = None,
) -> Image.Image:
    """Open ``source`` (bytes or a path) and return it normalised to ``size`` square."""
    return normalize_image(open_image(source, size, max_pixels, max_decode_bytes), size)

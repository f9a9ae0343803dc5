"""Small hand-made image features for the sklearn image baseline, as a scikit-learn transformer.

:class:`ImageFeatures` turns a column of images (JPEG/PNG bytes, or file paths) into one
feature row per image: the image normalised by :func:`.imaging.load_normalized` (the
project's one normalisation) to ``size`` x ``size``, then

* its pixels, scaled to [0, 1] (``3 * size * size`` numbers);
* a colour histogram, ``bins`` bins per RGB channel, as fractions of the pixels;
* a histogram of oriented gradients of the image at ``hog_size`` x ``hog_size``: greyscale,
  cut into ``cells`` x ``cells`` blocks, each with ``orientations`` bins of gradient
  direction weighted by magnitude (a coarse HOG, which sees shapes where a few downsized
  pixels see mostly colour).

It has no fitted state, so a logged baseline model takes raw image bytes, as the deep model
does. It is part of what a logged model carries and imports only numpy,
Pillow, scikit-learn and ``marketplace_models.imaging``, so that it travels with a logged baseline
(``code_paths``) and loads where ``steps/`` is absent.

Reads and writes nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin

from marketplace_models.imaging import load_normalized

DEFAULT_COLUMN = "image"
HOG_SIZE = 64  # side of the image the colour histogram and the HOG are taken on
DOWNSIZE = Image.Resampling.BOX


class ImageFeatures(TransformerMixin, BaseEstimator):
    """Images (bytes or paths) -> pixels, colour histogram and coarse HOG features.

    Args:
        size: side in pixels of the downsized image whose pixels are features.
        bins: colour-histogram bins per RGB channel (0 leaves the histogram out).
        hog_size: side in pixels of the image the colour histogram and the HOG are taken on.
        cells: HOG blocks per side (0 leaves the HOG out).
        orientations: HOG gradient-direction bins per block.
        column: the column holding the images when the input is a DataFrame.
    """

    def __init__(
        self,
        size: int = 16,
        bins: int = 8,
        hog_size: int = HOG_SIZE,
        cells: int = 6,
        orientations: int = 9,
        column: str = DEFAULT_COLUMN,
    ) -> None:
        self.size = size
        self.bins = bins
        self.hog_size = hog_size
        self.cells = cells
        self.orientations = orientations
        self.column = column

    def fit(self, X, y=None) -> ImageFeatures:
        self._check_params()
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True  # stateless: nothing is learnt from the data

    @property
    def n_features(self) -> int:
        """How many numbers :meth:`transform` makes per image."""
        return (
            3 * self.size * self.size + 3 * self.bins + self.cells * self.cells * self.orientations
        )

    def transform(self, X) -> np.ndarray:
        """One float32 row of features per image in ``X``; ``(len(X), n_features)``."""
        self._check_params()
        sources = list(_image_column(X, self.column))
        features = np.empty((len(sources), self.n_features), dtype=np.float32)
        for row, source in enumerate(sources):
            features[row] = self.features_of(source)
        return features

    def features_of(self, source: bytes | str | Path) -> np.ndarray:
        """The feature vector of one image (bytes, base64 text or a path)."""
        try:
            image = load_normalized(_as_image_source(source), max(self.size, self.hog_size))
        except OSError as exc:
            raise ValueError(f"not a readable image ({exc})") from None
        small = image if image.width == self.size else image.resize((self.size,) * 2, DOWNSIZE)
        large = image if image.width == self.hog_size else image.resize((self.hog_size,) * 2)
        parts = [np.asarray(small, dtype=np.float32).ravel() / 255.0]  # (3 * size * size,)
        rgb = np.asarray(large, dtype=np.float32) / 255.0  # (hog_size, hog_size, 3)
        if self.bins:
            parts.append(colour_histogram(rgb, self.bins))
        if self.cells:
            parts.append(gradient_histogram(rgb.mean(axis=2), self.cells, self.orientations))
        return np.concatenate(parts)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        names = [f"pixel_{i}" for i in range(3 * self.size * self.size)]
        names += [f"{c}_hist_{b}" for c in "rgb" for b in range(self.bins)]
        names += [f"hog_{i}" for i in range(self.cells * self.cells * self.orientations)]
        return np.asarray(names, dtype=object)

    def _check_params(self) -> None:
        if self.size < 2 or self.hog_size < 2:
            raise ValueError(f"size and hog_size must be at least 2 pixels, got {self.size}")
        if self.cells and self.hog_size < self.cells:
            raise ValueError(f"hog_size ({self.hog_size}) must be at least cells ({self.cells})")
        if self.bins < 0 or self.cells < 0 or self.orientations < 1:
            raise ValueError("bins and cells must be >= 0 and orientations >= 1")


def colour_histogram(pixels: np.ndarray, bins: int) -> np.ndarray:
    """Per-channel histogram of an ``(H, W, 3)`` image in [0, 1], as fractions; ``(3 * bins,)``."""
    index = np.minimum((pixels * bins).astype(np.int64), bins - 1)  # (H, W, 3)
    counts = [np.bincount(index[..., c].ravel(), minlength=bins) for c in range(3)]
    return np.concatenate(counts).astype(np.float32) / float(index[..., 0].size)


def gradient_histogram(grey: np.ndarray, cells: int, orientations: int) -> np.ndarray:
    """Coarse HOG of an ``(H, W)`` greyscale image; ``(cells * cells * orientations,)``.

    Unsigned gradient directions (0 to 180 degrees) weighted by gradient magnitude, summed in
    each of ``cells`` x ``cells`` blocks, and each block normalised to unit length.
    """
    gy, gx = np.gradient(grey.astype(np.float32))  # (H, W) each
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)  # [0, pi)
    direction = np.minimum((angle / np.pi * orientations).astype(np.int64), orientations - 1)
    rows = np.minimum(np.arange(grey.shape[0]) * cells // grey.shape[0], cells - 1)
    cols = np.minimum(np.arange(grey.shape[1]) * cells // grey.shape[1], cells - 1)
    block = rows[:, None] * cells + cols[None, :]  # (H, W): which block each pixel is in
    flat = (block * orientations + direction).ravel()
    histogram = np.bincount(flat, weights=magnitude.ravel(), minlength=cells * cells * orientations)
    histogram = histogram.reshape(cells * cells, orientations)
    norms = np.linalg.norm(histogram, axis=1, keepdims=True)
    return (histogram / np.maximum(norms, 1e-6)).ravel().astype(np.float32)


def _image_column(X, column: str) -> Iterable:
    """The images in ``X``: a DataFrame's ``column`` (or its only column), else ``X`` itself."""
    columns = getattr(X, "columns", None)
    if columns is not None:
        if column in columns:
            return X[column]
        if len(columns) == 1:
            return X[columns[0]]
        raise ValueError(f"expected a column named {column!r}, got {list(columns)}")
    array = np.asarray(X, dtype=object)
    return array[:, 0] if array.ndim == 2 else array


def _as_image_source(source: object) -> bytes | Path:
    """Bytes as they are; text as a path when such a file exists, else as base64 image data."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, Path):
        return source
    if isinstance(source, str):
        if len(source) < 4096 and Path(source).is_file():
            return Path(source)
        try:
            return base64.b64decode(source, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "text is neither an existing file path nor base64 image data"
            ) from None
    raise ValueError(f"expected image bytes or a path, got {type(source).__name__}")

"""The clean data's layout: what clean_tabular and clean_images write, and one way to read it.

    <clean>/products.parquet          one row per product (PRODUCT_COLUMNS at least)
    <clean>/images.parquet            one row per usable image (IMAGE_COLUMNS at least)
    <clean>/categories.json           the root categories; label i <-> categories[i]
    <clean>/report.json               what cleaning kept and dropped, and its params
    <clean>/images/<size>/<id>.jpg    every image normalised to size x size (clean_images)
    <clean>/images/complete_<size>.json  written last by clean_images, removed when it
                                      starts on that size: without it, images/<size>/ is
                                      half-written and nothing reads it

The writers (``steps.clean_tabular``, ``steps.clean_images``) and the readers (baselines,
training, the promotion smoke check) take the names from here, and the readers go through
:func:`load_clean`. :func:`choose_size` picks which ``images/<size>/`` to read when the user
says ``auto``; :func:`data_digest` is what a trained model records of the data it read.
Reads only; nothing runs at import time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import UserError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PRODUCTS_FILE = "products.parquet"
IMAGES_FILE = "images.parquet"
CATEGORIES_FILE = "categories.json"
REPORT_FILE = "report.json"
DATA_DIGEST_TAG = "data_digest"  # on a run and its version: data_digest() of its data
IMAGES_DIR = "images"
TABLE_FILES = (IMAGES_FILE, PRODUCTS_FILE, CATEGORIES_FILE)
SPLITS = ("train", "val", "test")
IMAGE_COLUMNS = ("image_id", "product_id", "root_category", "label", "split")
PRODUCT_COLUMNS = (
    "product_id",
    "name",
    "description",
    "price",
    "price_flag",
    "root_category",
    "sub_category",
    "county",
)
RUN_CLEAN_TABULAR = "`mlflow run . -e clean_tabular --env-manager local`"


@dataclass(frozen=True)
class CleanData:
    """The clean tables as read by :func:`load_clean`, and the image size in use (if any)."""

    folder: Path
    images: pd.DataFrame
    categories: list[str]
    products: pd.DataFrame | None = None
    report: dict[str, Any] = field(default_factory=dict)
    size: int | None = None

    @property
    def image_dir(self) -> Path:
        """``<clean>/images/<size>/`` of the size in use."""
        if self.size is None:
            raise ValueError("no image size chosen: call at_size(size) first")
        return image_folder(self.folder, self.size)

    def at_size(self, size: int) -> CleanData:
        """The same data, reading its images from ``images/<size>/``."""
        return replace(self, size=size)

    def split(self, name: str) -> pd.DataFrame:
        """The image rows of split ``name`` (``train``, ``val`` or ``test``), reindexed."""
        return self.images[self.images["split"] == name].reset_index(drop=True)

    def paths(self, frame: pd.DataFrame) -> list[Path]:
        """The cleaned JPEG of each row of ``frame`` at the size in use."""
        return [self.image_dir / f"{image_id}.jpg" for image_id in frame["image_id"]]


def image_folder(clean: Path, size: int) -> Path:
    return Path(clean) / IMAGES_DIR / str(size)


def size_folders(clean: Path) -> list[int]:
    """Every ``<clean>/images/<size>/`` folder's size, complete or not, smallest first."""
    root = Path(clean) / IMAGES_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def complete_marker(clean: Path, size: int) -> Path:
    """``<clean>/images/complete_<size>.json``: clean_images finished ``images/<size>/``."""
    return Path(clean) / IMAGES_DIR / f"complete_{size}.json"


def is_complete(clean: Path, size: int) -> bool:
    """Whether clean_images finished ``images/<size>/`` (its completion marker is there)."""
    return complete_marker(clean, size).is_file()


def cleaned_sizes(clean: Path) -> list[int]:
    """The sizes clean_images has finished under ``<clean>/images/``, smallest first.

    A folder without its completion marker (a run interrupted, or still running) is left
    out: nothing reads half a folder.
    """
    return [size for size in size_folders(clean) if is_complete(clean, size)]


def choose_size(clean: Path, needed: int, requested: int | None = None, *, flag: str) -> int:
    """The ``images/<size>/`` folder to read: ``requested``, or for None (``auto``) the smallest
    complete size at least ``needed``, else the largest there; one log line says which.
    Incomplete folders (see :func:`cleaned_sizes`) are never chosen.

    Raises :class:`UserError` naming clean_images (and ``flag``, the option to change) when
    the folder is not there.
    """
    sizes = cleaned_sizes(clean)
    found = ", ".join(map(str, sizes)) or "none"
    incomplete = [size for size in size_folders(clean) if size not in sizes]
    if incomplete:
        log.warning(
            "ignoring incomplete %s: clean_images did not finish there; run it again",
            ", ".join(f"images/{size}/" for size in incomplete),
        )
    if requested is not None:
        if requested in incomplete:
            raise UserError(
                f"{image_folder(clean, requested)} is incomplete (clean_images did not finish "
                f"there): run clean_images with --size {requested} again, or pass {flag} with "
                f"a complete size (found: {found})"
            )
        if requested not in sizes:
            raise UserError(
                f"no cleaned images in {image_folder(clean, requested)}: run clean_images with "
                f"--size {requested}, or pass {flag} with a size that exists (found: {found})"
            )
        return requested
    if not sizes:
        raise UserError(
            f"no cleaned images in {Path(clean) / IMAGES_DIR}: run "
            f"`mlflow run . -e clean_images -P out={clean} --env-manager local` first"
        )
    large_enough = [size for size in sizes if size >= needed]
    size = large_enough[0] if large_enough else sizes[-1]
    why = "the smallest" if large_enough else "none as large; the largest"
    log.info(
        "%s auto: reading images/%d/ (%s of %s at least %d px)", flag, size, why, found, needed
    )
    return size


def load_clean(
    folder: Path,
    *,
    products: bool = False,
    columns: Sequence[str] = IMAGE_COLUMNS,
) -> CleanData:
    """Read ``images.parquet``, ``categories.json`` and ``report.json`` (and, with
    ``products``, ``products.parquet``) of a clean folder.

    ``columns`` are the image columns the caller needs; :meth:`CleanData.at_size` then names
    the ``images/<size>/`` folder in use, as :func:`choose_size` chose it. Raises
    :class:`UserError` naming the step to run when a file or a column is missing, or a label
    does not index ``categories.json``.
    """

    folder = Path(folder)
    needed = [IMAGES_FILE, CATEGORIES_FILE] + ([PRODUCTS_FILE] if products else [])
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"no clean data in {folder} (missing {', '.join(missing)}): run the clean_tabular "
            f"step first (`mlflow run . -e clean_tabular -P out={folder} --env-manager local`), "
            "then clean_images, or pass the folder they wrote"
        )
    try:
        categories = [str(name) for name in json.loads(_read_text(folder / CATEGORIES_FILE))]
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(
            f"{folder / CATEGORIES_FILE} is not a JSON list ({exc}): run clean_tabular again"
        ) from None
    images = _read_table(folder / IMAGES_FILE, columns)
    images["image_id"] = images["image_id"].astype(str)
    if "label" in images.columns:
        images["label"] = images["label"].astype("int64")
        bad = images[(images["label"] < 0) | (images["label"] >= len(categories))]
        if len(bad):
            raise UserError(
                f"{len(bad)} rows of {folder / IMAGES_FILE} have labels outside "
                f"{CATEGORIES_FILE} ({len(categories)} categories): run clean_tabular again"
            )
    product_table = _read_table(folder / PRODUCTS_FILE, PRODUCT_COLUMNS) if products else None
    return CleanData(folder, images, categories, product_table, _read_report(folder))


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # a partial or foreign file surfaces as many types
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read {path} ({first}): run clean_tabular again") from None
    absent = [column for column in columns if column not in table.columns]
    if absent:
        raise UserError(
            f"{path} lacks column(s) {', '.join(absent)}: it was not written by this project's "
            f"clean_tabular; run {RUN_CLEAN_TABULAR} again"
        )
    return table


def _read_report(folder: Path) -> dict[str, Any]:
    """``report.json`` as a dict; empty when absent or unreadable (nothing depends on it)."""
    path = folder / REPORT_FILE
    try:
        report = json.loads(_read_text(path)) if path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        return {}
    return report if isinstance(report, dict) else {}


def data_digest(clean: Path) -> str:
    """A short digest of the cleaned data a model was trained on.

    Covers ``images.parquet`` and ``categories.json``; stored as the ``data_digest``
    version tag so a promotion can check that a version matches the current data.
    """
    sha = hashlib.sha256()
    for name in (IMAGES_FILE, CATEGORIES_FILE):
        sha.update(name.encode())
        sha.update((Path(clean) / name).read_bytes())
    return sha.hexdigest()[:16]

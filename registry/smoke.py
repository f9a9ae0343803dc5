"""The smoke check a version must pass before it may hold ``production``.

The candidate is loaded with ``mlflow.pyfunc.load_model`` and asked to classify a few
images: test-split images from the cleaned data when a ``--clean`` folder is there
(``images.parquet`` plus ``images/<size>/<image_id>.jpg``, or the raw file beside it), else
the input example logged with the model, else a few generated images. Its answer must
follow the classifier contract: one row per image, ``category`` a string, ``probability``
in [0, 1], ``probabilities`` in [0, 1] summing to 1. Reads the model (downloaded into a
temporary folder, removed afterwards) and the data; leaves nothing behind.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.clean_data import cleaned_sizes, image_folder, load_clean
from registry.store import RegistryError, UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

SMOKE_IMAGES = 4
SUM_TOLERANCE = 1e-3
OUTPUT_COLUMNS = ("category", "probability", "probabilities")
SYNTHETIC_COLOURS = ((200, 40, 40), (40, 160, 60), (40, 60, 200), (230, 230, 230))


class SmokeCheckError(RegistryError):
    """The candidate did not load, or its predictions break the classifier contract."""


@dataclass(frozen=True)
class SmokeResult:
    """A passed smoke check: how many images, where they came from, what came out."""

    images: int
    source: str
    categories: list[str]
    seconds: float

    def summary(self) -> str:
        images = f"{self.images} image{'' if self.images == 1 else 's'}"
        return f"passed on {images} from {self.source} ({self.seconds:.1f} s)"


def smoke_check(
    model: Any, images: Sequence[bytes | str], source: str = "given images"
) -> SmokeResult:
    """Predict ``images`` with a loaded pyfunc ``model`` and check the output contract.

    Raises :class:`SmokeCheckError` naming the broken rule when predict raises or its answer
    is not one well-formed row per image.
    """
    import pandas as pd

    if not images:
        raise SmokeCheckError("the smoke check has no images to predict on")
    started = time.perf_counter()
    try:
        output = model.predict(pd.DataFrame({"image": list(images)}))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise SmokeCheckError(f"predict raised {type(exc).__name__}: {first}") from exc
    _check_output(output, len(images))
    return SmokeResult(
        images=len(images),
        source=source,
        categories=[str(c) for c in output["category"]],
        seconds=time.perf_counter() - started,
    )


def _check_output(output: Any, expected_rows: int) -> None:
    import pandas as pd

    if not isinstance(output, pd.DataFrame):
        raise SmokeCheckError(f"predict returned {type(output).__name__}, not a DataFrame")
    missing = [c for c in OUTPUT_COLUMNS if c not in output.columns]
    if missing:
        raise SmokeCheckError(f"predict output lacks the column(s) {', '.join(missing)}")
    if len(output) != expected_rows:
        raise SmokeCheckError(f"predict returned {len(output)} rows for {expected_rows} images")
    widths = set()
    for row, (category, probability, probabilities) in enumerate(
        zip(output["category"], output["probability"], output["probabilities"], strict=True)
    ):
        if not isinstance(category, str) or not category:
            raise SmokeCheckError(f"row {row}: category {category!r} is not a non-empty string")
        if not _is_probability(probability):
            raise SmokeCheckError(f"row {row}: probability {probability!r} is not in [0, 1]")
        try:
            values = [float(p) for p in probabilities]
        except (TypeError, ValueError):
            raise SmokeCheckError(
                f"row {row}: probabilities {probabilities!r} is not a list of numbers"
            ) from None
        if not values or not all(_is_probability(p) for p in values):
            raise SmokeCheckError(f"row {row}: probabilities are not all in [0, 1]")
        total = math.fsum(values)
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise SmokeCheckError(f"row {row}: probabilities sum to {total:.4f}, not 1")
        widths.add(len(values))
    if len(widths) > 1:
        raise SmokeCheckError(f"rows have different numbers of probabilities: {sorted(widths)}")


def _is_probability(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and 0.0 <= number <= 1.0


def clean_test_images(clean: Path | None, count: int = SMOKE_IMAGES) -> list[bytes]:
    """Up to ``count`` test-split images from a cleaned data folder, one per category first.

    Read through :func:`registry.clean_data.load_clean`, each from the largest
    ``images/<size>/`` that has it, else the raw file beside the clean folder. Returns an
    empty list when the folder, its tables or the image files are missing.
    """
    if clean is None:
        return []
    try:
        data = load_clean(clean, columns=("image_id", "root_category", "split"))
    except UserError as exc:
        log.info("not using %s for the smoke check: %s", clean, exc)
        return []
    test = data.split("test").sort_values(["root_category", "image_id"])
    # One image per category first, then the rest, so a few images cover several classes.
    ordered = test.assign(rank=test.groupby("root_category").cumcount()).sort_values(
        ["rank", "root_category", "image_id"]
    )
    folders = [image_folder(clean, size) for size in reversed(cleaned_sizes(clean))]
    files = ordered["file"] if "file" in ordered.columns else [None] * len(ordered)
    images: list[bytes] = []
    for image_id, file in zip(ordered["image_id"], files, strict=True):
        data_bytes = _read_image(clean, folders, str(image_id), file)
        if data_bytes is not None:
            images.append(data_bytes)
        if len(images) == count:
            break
    return images


def _read_image(clean: Path, folders: list[Path], image_id: str, file: str | None) -> bytes | None:
    candidates = [folder / f"{image_id}.jpg" for folder in folders]
    if file:
        candidates.append(clean.parent / "raw" / file)
    for path in candidates:
        if path.is_file():
            return path.read_bytes()
    return None


def input_example_images(model_dir: Path, count: int = SMOKE_IMAGES) -> list[Any]:
    """The ``image`` values of the input example logged with the model, if any."""
    from mlflow.models import Model

    try:
        example = Model.load(str(model_dir)).load_input_example(str(model_dir))
    except Exception as exc:
        log.debug("no usable input example in %s: %s", model_dir, exc)
        return []
    try:
        values = list(example["image"])  # type: ignore[index]
    except (KeyError, TypeError, IndexError):
        return []
    return values[:count]


def synthetic_images(count: int = SMOKE_IMAGES) -> list[bytes]:
    """``count`` small JPEGs of plain colours with a square in the middle."""
    from PIL import Image, ImageDraw

    images = []
    for index in range(count):
        colour = SYNTHETIC_COLOURS[index % len(SYNTHETIC_COLOURS)]
        image = Image.new("RGB", (96, 64), colour)
        ImageDraw.Draw(image).rectangle((32, 16, 64, 48), fill=tuple(255 - c for c in colour))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    return images


def smoke_images(model_dir: Path, clean: Path | None) -> tuple[list[Any], str]:
    """The images to smoke-check with and where they came from."""
    images = clean_test_images(clean)
    if images:
        return images, f"the test split of {clean}"
    images = input_example_images(model_dir)
    if images:
        return images, "the model's input example"
    return synthetic_images(), "generated images"


@contextmanager
def load_version(client: MlflowClient, name: str, version: int | str) -> Iterator[tuple[Any, Path]]:
    """Download version ``version`` of ``name`` into a temporary folder and load it as a
    pyfunc model; the folder is removed when the block ends.

    Raises :class:`SmokeCheckError` when the files cannot be fetched or the model does not load.
    """
    import mlflow
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="smoke-check-") as tmp:
        try:
            source = client.get_model_version_download_uri(name, str(version))
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=tmp, tracking_uri=client.tracking_uri
                )
            )
            model = mlflow.pyfunc.load_model(str(local))
        except RegistryError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise SmokeCheckError(
                f"version {version} does not load: {type(exc).__name__}: {first}"
            ) from exc
        yield model, local


def check_version(
    client: MlflowClient, name: str, version: int | str, clean: Path | None = None
) -> SmokeResult:
    """Load version ``version`` of ``name`` and smoke-check it (see the module docstring).

    The downloaded copy of the model is removed afterwards, whatever the outcome.
    """
    with load_version(client, name, version) as (model, local):
        images, source = smoke_images(local, clean)
        try:
            result = smoke_check(model, images, source)
        except SmokeCheckError as exc:
            raise SmokeCheckError(f"version {version} failed the smoke check: {exc}") from exc
    log.info("smoke check of %s version %s %s", name, version, result.summary())
    return result

"""The smoke check a version must pass before it may hold ``production``.

The candidate is loaded with ``mlflow.pyfunc.load_model`` and asked to classify a few
listings in the input its kind takes (the version's ``input`` tag, ``registry.kinds``): an
image model gets images, a text model texts, a listing model photos with their listings'
texts. They come from the test split of the cleaned data when a ``--clean`` folder is
there (``images.parquet`` plus ``images/<size>/<image_id>.jpg``, or the raw file beside it;
``products.parquet`` for the texts), else the input example logged with the model, else a
few generated images and texts. Its answer must
follow the classifier contract: one row per image, ``category`` a string, ``probability``
in [0, 1], ``probabilities`` in [0, 1] summing to 1. A ranker (``input=ranking``) must take
exactly the features the search computes (``search.ranking.FEATURES``, in that order) and
score the feature table of its logged input example (else a few generated rows) to one
finite number per row. Reads the model (downloaded into a
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

from clean_data import cleaned_sizes, image_folder, load_clean
from cli import UserError
from marketplace_models.kinds import COLUMNS, IMAGE, IMAGE_COLUMN, RANKING, TEXT, TEXT_COLUMN
from registry.kinds import input_of
from registry.legacy import own_code_layout

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

SMOKE_IMAGES = 4
SUM_TOLERANCE = 1e-3
OUTPUT_COLUMNS = ("category", "probability", "probabilities")
SYNTHETIC_COLOURS = ((200, 40, 40), (40, 160, 60), (40, 60, 200), (230, 230, 230))
SYNTHETIC_TEXTS = (
    "Sofa, good condition",
    "Laptop for sale, barely used",
    "Job lot",
    "Mountain bike\nCollection only.",
)
# What a smoke check's rows are called in its summary, by the model's input kind.
UNITS = {
    IMAGE: ("image", "images"),
    TEXT: ("text", "texts"),
    "image+text": ("listing", "listings"),
    RANKING: ("candidate", "candidates"),
}


class SmokeCheckError(UserError):
    """The candidate did not load, or its predictions break the classifier contract."""


@dataclass(frozen=True)
class SmokeResult:
    """A passed smoke check: how many images, where they came from, what came out."""

    images: int  # rows predicted: images, texts or listings, by ``kind``
    source: str
    categories: list[str]
    seconds: float
    kind: str = IMAGE

    def summary(self) -> str:
        one, many = UNITS[self.kind]
        rows = f"{self.images} {one if self.images == 1 else many}"
        return f"passed on {rows} from {self.source} ({self.seconds:.1f} s)"


def smoke_check(
    model: Any, images: Sequence[bytes | str], source: str = "given images"
) -> SmokeResult:
    """Predict ``images`` with a loaded pyfunc image ``model`` and check the output contract.

    Raises :class:`SmokeCheckError` naming the broken rule when predict raises or its answer
    is not one well-formed row per image.
    """
    import pandas as pd

    return smoke_check_frame(model, pd.DataFrame({IMAGE_COLUMN: list(images)}), source, IMAGE)


def smoke_check_frame(model: Any, rows: Any, source: str, kind: str) -> SmokeResult:
    """Predict the DataFrame ``rows`` (the columns ``kind`` takes) and check the contract."""
    if len(rows) == 0:
        raise SmokeCheckError(f"the smoke check has no {UNITS[kind][1]} to predict on")
    started = time.perf_counter()
    output = _predicted(model, rows)
    _check_output(output, len(rows), UNITS[kind][1])
    return SmokeResult(
        images=len(rows),
        source=source,
        categories=[str(c) for c in output["category"]],
        seconds=time.perf_counter() - started,
        kind=kind,
    )


def _check_output(output: Any, expected_rows: int, unit: str = "images") -> None:
    import pandas as pd

    if not isinstance(output, pd.DataFrame):
        raise SmokeCheckError(f"predict returned {type(output).__name__}, not a DataFrame")
    missing = [c for c in OUTPUT_COLUMNS if c not in output.columns]
    if missing:
        raise SmokeCheckError(f"predict output lacks the column(s) {', '.join(missing)}")
    if len(output) != expected_rows:
        raise SmokeCheckError(f"predict returned {len(output)} rows for {expected_rows} {unit}")
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

    Read through :func:`clean_data.load_clean`, each from the largest
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


def clean_test_listings(clean: Path | None, count: int = SMOKE_IMAGES) -> list[tuple[bytes, str]]:
    """Up to ``count`` test-split photos with their listings' texts (title, new line,
    description), one per category first; empty when the folder or its files are missing."""
    if clean is None:
        return []
    try:
        data = load_clean(
            clean, products=True, columns=("image_id", "product_id", "root_category", "split")
        )
    except UserError as exc:
        log.info("not using %s for the smoke check: %s", clean, exc)
        return []
    from marketplace_models.text import listing_text

    products = data.products.assign(product_id=data.products["product_id"].astype(str))
    text_of = {
        pid: listing_text(name, description)
        for pid, name, description in zip(
            products["product_id"], products["name"], products["description"], strict=True
        )
    }
    test = data.split("test").sort_values(["root_category", "image_id"])
    ordered = test.assign(rank=test.groupby("root_category").cumcount()).sort_values(
        ["rank", "root_category", "image_id"]
    )
    folders = [image_folder(clean, size) for size in reversed(cleaned_sizes(clean))]
    pairs: list[tuple[bytes, str]] = []
    for image_id, product_id in zip(ordered["image_id"], ordered["product_id"], strict=True):
        text = text_of.get(str(product_id))
        data_bytes = _read_image(clean, folders, str(image_id), None)
        if text and data_bytes is not None:
            pairs.append((data_bytes, text))
        if len(pairs) == count:
            break
    return pairs


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
    example = input_example_rows(model_dir, (IMAGE_COLUMN,), count)
    return [] if example is None else list(example[IMAGE_COLUMN])


def input_example_rows(model_dir: Path, columns: Sequence[str], count: int = SMOKE_IMAGES):
    """The input example logged with the model as a DataFrame of ``columns``, or None."""
    import pandas as pd
    from mlflow.models import Model

    try:
        example = Model.load(str(model_dir)).load_input_example(str(model_dir))
    except Exception as exc:
        log.debug("no usable input example in %s: %s", model_dir, exc)
        return None
    try:
        frame = pd.DataFrame({column: list(example[column]) for column in columns})  # type: ignore[index]
    except (KeyError, TypeError, IndexError, ValueError):
        return None
    return frame.head(count) if len(frame) else None


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


def smoke_rows(model_dir: Path, clean: Path | None, kind: str):
    """The rows to smoke-check a model of input ``kind`` with (a DataFrame of the columns it
    takes), and where they came from."""
    import pandas as pd

    if kind == IMAGE:
        images, source = smoke_images(model_dir, clean)
        return pd.DataFrame({IMAGE_COLUMN: images}), source
    columns = COLUMNS[kind]
    pairs = clean_test_listings(clean)
    if pairs:
        frame = pd.DataFrame(pairs, columns=[IMAGE_COLUMN, TEXT_COLUMN])
        if kind == TEXT:
            frame = frame[[TEXT_COLUMN]].drop_duplicates().reset_index(drop=True)
        return frame[list(columns)], f"the test split of {clean}"
    example = input_example_rows(model_dir, columns)
    if example is not None:
        return example, "the model's input example"
    generated = {IMAGE_COLUMN: synthetic_images(), TEXT_COLUMN: list(SYNTHETIC_TEXTS)}
    return pd.DataFrame({c: generated[c] for c in columns}), "generated listings"


def version_kind(client: MlflowClient, name: str, version: int | str) -> str:
    """The input kind of version ``version`` of ``name`` (its ``input`` tag; image without)."""
    return input_of(client.get_model_version(name, str(version)).tags)


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
            with own_code_layout(local):
                model = mlflow.pyfunc.load_model(str(local))
        except UserError:
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
    kind = version_kind(client, name, version)
    with load_version(client, name, version) as (model, local):
        try:
            if kind == RANKING:
                result = smoke_check_ranker(model, local)
            else:
                rows, source = smoke_rows(local, clean, kind)
                result = smoke_check_frame(model, rows, source, kind)
        except SmokeCheckError as exc:
            raise SmokeCheckError(f"version {version} failed the smoke check: {exc}") from exc
    log.info("smoke check of %s version %s %s", name, version, result.summary())
    return result


def ranker_rows(model_dir: Path, features: Sequence[str], count: int = SMOKE_IMAGES):
    """The feature table to score: the logged input example's rows, else generated ones."""
    import numpy as np
    import pandas as pd

    example = input_example_rows(model_dir, features, count)
    if example is not None:
        return example.apply(pd.to_numeric, errors="coerce"), "the model's input example"
    generated = np.linspace(0.0, 1.0, count * len(features)).reshape(count, len(features))
    return pd.DataFrame(generated, columns=list(features)), "generated candidates"


def smoke_check_ranker(model: Any, model_dir: Path) -> SmokeResult:
    """A loaded ranker takes exactly ``search.ranking.FEATURES`` and scores a feature table
    to one finite ``score`` per row; :class:`SmokeCheckError` names the broken rule."""
    import numpy as np
    import pandas as pd

    from search.ranking import FEATURES

    try:
        features = tuple(model.unwrap_python_model().features)
    except (AttributeError, TypeError):
        raise SmokeCheckError("the model is not a ranker: it names no feature list") from None
    if features != FEATURES:
        raise SmokeCheckError(
            f"the ranker takes the features {', '.join(features) or 'none'}, but the search "
            f"computes {', '.join(FEATURES)}: train it again with `mlflow run . -e rank`"
        )
    rows, source = ranker_rows(model_dir, features)
    started = time.perf_counter()
    output = _predicted(model, rows)
    if not isinstance(output, pd.DataFrame) or "score" not in output.columns:
        raise SmokeCheckError("predict did not return a DataFrame with a `score` column")
    scores = pd.to_numeric(output["score"], errors="coerce").to_numpy(dtype=float)
    if len(scores) != len(rows):
        raise SmokeCheckError(f"predict returned {len(scores)} scores for {len(rows)} candidates")
    if not np.isfinite(scores).all():
        raise SmokeCheckError("predict returned scores that are not finite numbers")
    return SmokeResult(
        images=len(rows),
        source=source,
        categories=[],
        seconds=time.perf_counter() - started,
        kind=RANKING,
    )


def _predicted(model, rows):
    """``model.predict(rows)``; what it raised as a one-line :class:`SmokeCheckError`."""
    try:
        return model.predict(rows)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise SmokeCheckError(f"predict raised {type(exc).__name__}: {first}") from exc

"""Loading one model version for serving: download, build the engine, warm, check.

:func:`load_served_model` turns a resolved model URI into a :class:`ServedModel` that is
ready to answer: its files are downloaded into a temporary folder (removed again once the
engine holds what it needs; made inside ``downloads``, a folder the service owns and removes
at shutdown, so a load cut short by a stop leaves nothing behind), the engine is built, the
version's input example is run through it (plus a full batch, to warm the engine's
buffers), and the answers are checked against the classifier contract. A version that fails
any of this raises :class:`LoadError` and is never served.

The version is read with this service's own ``registry`` code (``read_logged_classifier``),
never with ``mlflow.pyfunc.load_model``: loading a pyfunc puts the model's copy of
``registry/`` first on ``sys.path`` and evicts the service's modules, so a long-lived
service that loads versions logged by older code would end up running a mix of both. It
also keeps torch out: a version with an ONNX export is read from its config JSON and ONNX
file (:mod:`marketplace_models.logged`, :mod:`marketplace_models.fusion`), so the service
runs from ``pip install '.[serve]'``.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from marketplace_models.errors import NeedsTorch
from marketplace_models.fusion import FusionParts, read_fusion_parts
from marketplace_models.imaging import load_normalized
from marketplace_models.kinds import IMAGE, IMAGE_TEXT, RANKING, TEXT, TEXT_COLUMN
from marketplace_models.logged import NotAClassifier, decode_image_value, read_logged_classifier
from marketplace_models.ranker import RANKER_ARTIFACT, MarketplaceRanker
from marketplace_models.text import (
    TextClassifier,
    input_kind_of,
    logged_artifacts,
    read_text_classifier,
)
from registry.quantize import INT8_GATE_TAG, INT8_TAG
from registry.resolve import ResolvedModel
from registry.smoke import (
    SYNTHETIC_TEXTS,
    input_example_images,
    input_example_rows,
    synthetic_images,
)
from search.index import (
    INDEX_RUN_TAG,
    MODEL_VERSION_TAG,
    SearchIndex,
    SearchIndexError,
    build_command,
    download_index,
    index_run_for_version,
)
from search.ranking import FEATURES, RankingCatalogue
from search.text import TEXT_DIR, TextSearch
from serve.engines import INT8, Engine, EngineUnavailable, build_engine

log = logging.getLogger(__name__)

METRIC_PREFIX = "test/"
SUM_TOLERANCE = 1e-3
LOCAL_UI_URL = "http://127.0.0.1:5000"


class LoadError(RuntimeError):
    """A version could not be loaded or did not answer well: it is not served."""


class LoadCancelled(LoadError):
    """The service is stopping: the load gave up before it finished."""


def _stop_if_cancelled(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise LoadCancelled("was not loaded: the service is stopping")


@dataclass(frozen=True)
class ModelDetails:
    """What /model reports about the served version."""

    uri: str
    name: str | None
    version: int | None
    run_id: str | None
    aliases: list[str]
    metrics: dict[str, float]
    categories: list[str]
    arch: str
    image_size: int
    embedding_dim: int
    engine: str
    loaded_at: datetime
    load_seconds: float
    ui_url: str | None
    source: str
    engine_reason: str = ""  # why this engine answers (SERVE_ENGINE, and what the version has)

    @property
    def label(self) -> str:
        """The value of the X-Model-Version header: the version number, or the URI."""
        return str(self.version) if self.version is not None else self.uri


def read_pixels(
    data: bytes, image_size: int, max_pixels: int, max_decode_bytes: int | None = None
) -> np.ndarray:
    """One upload to the uint8 ``(S, S, 3)`` array the network takes (the shared normalisation).

    Raises ``OSError`` (``ImageTooLarge``, ``ImageTooCostly`` and ``UnidentifiedImageError``
    among them) for what is not a readable image within the pixel and memory limits.
    """
    image = load_normalized(data, image_size, max_pixels, max_decode_bytes)
    return np.asarray(image, dtype=np.uint8)


@dataclass
class ServedModel:
    """A loaded version: its engine, its preprocessing size, and what to say about it."""

    details: ModelDetails
    engine: Engine | None  # None for a text model
    max_pixels: int
    key: str
    index: SearchIndex | None = None
    index_problem: str | None = None
    kind: str = IMAGE  # what it takes: image, text or image+text (registry.kinds)
    text: TextClassifier | None = None  # a text model's classifier
    fusion: FusionParts | None = None  # a listing model's text half and head
    text_search: TextSearch | None = None  # search by query, logged with the photo index
    text_search_problem: str | None = None  # why the text search failed to load (retried)
    ranker: MarketplaceRanker | None = None  # a ranker's booster and feature list
    # (text search, its RankingCatalogue): built once per text search, see ranking_catalogue
    _ranking: tuple[TextSearch, RankingCatalogue] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _ranking_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @property
    def categories(self) -> list[str]:
        return self.details.categories

    @property
    def embedding_dim(self) -> int:
        return self.details.embedding_dim

    def preprocess(self, data: bytes, max_decode_bytes: int | None = None) -> np.ndarray:
        """One upload to the network's input (see :func:`read_pixels`)."""
        return read_pixels(data, self.details.image_size, self.max_pixels, max_decode_bytes)

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(B, C)`` and embeddings ``(B, D)`` for a uint8 batch."""
        return self.engine.forward(pixels)

    def classify_text(self, texts: list[str]) -> np.ndarray:
        """A text model's probabilities ``(N, C)`` for texts."""
        return self.text.predict_proba(texts)

    def ranking_catalogue(self) -> RankingCatalogue | None:
        """The per-listing columns the learned ranker's features need, over this version's
        index and text search (None without both); built once per text search, so that a
        ranked search computes only its query's part."""
        search, index = self.text_search, self.index
        if search is None or index is None:
            return None
        cached = self._ranking
        if cached is not None and cached[0] is search:
            return cached[1]
        with self._ranking_lock:
            cached = self._ranking
            if cached is None or cached[0] is not search:
                cached = (search, RankingCatalogue.of_index(search, index))
                self._ranking = cached
        return cached[1]


def check_probabilities(probabilities: np.ndarray, rows: int, classes: int) -> None:
    """Raise :class:`LoadError` unless ``probabilities`` is ``rows`` x ``classes`` and sane."""
    if probabilities.shape != (rows, classes):
        raise LoadError(f"answered with shape {probabilities.shape}, expected ({rows}, {classes})")
    if not np.all(np.isfinite(probabilities)):
        raise LoadError("answered with probabilities that are not finite")
    if np.any(probabilities < -1e-6) or np.any(probabilities > 1 + 1e-6):
        raise LoadError("answered with probabilities outside [0, 1]")
    sums = probabilities.sum(axis=1)
    worst = float(np.abs(sums - 1.0).max()) if rows else 0.0
    if worst > SUM_TOLERANCE:
        raise LoadError(f"answered with probabilities that sum to {1 + worst:.4f}, not 1")


def check_full_batch(engine: Engine, pixels: np.ndarray, classes: int, dim: int) -> None:
    """Run a full batch (the engine sizes its buffers for it) and check every row came back.

    Raises :class:`LoadError` unless probabilities are ``(B, classes)`` and sane and the
    embeddings ``(B, dim)`` and finite: the batcher hands out one row per image.
    """
    probabilities, embedding = engine.forward(pixels)
    rows = len(pixels)
    check_probabilities(np.asarray(probabilities), rows, classes)
    embedding = np.asarray(embedding)
    if embedding.shape != (rows, dim):
        raise LoadError(
            f"answered a full batch with embeddings of shape {embedding.shape}, "
            f"expected ({rows}, {dim})"
        )
    if not np.all(np.isfinite(embedding)):
        raise LoadError("answered a full batch with embeddings that are not finite")


def ui_link(base: str | None, tracking_uri: str, experiment_id: str | None, run_id: str | None):
    """The MLflow UI page of the run, or None when there is no run."""
    if not run_id or not experiment_id:
        return None
    if base is None:
        base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI_URL
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _registry_facts(
    client, resolved: ResolvedModel
) -> tuple[list[str], dict[str, float], str | None]:
    """Aliases, test metrics and experiment id of the resolved version (best effort)."""
    if resolved.name is None or resolved.version is None or client is None:
        return [], {}, None
    from registry.versions import describe

    version = client.get_model_version(resolved.name, str(resolved.version))
    held = client.get_registered_model(resolved.name).aliases or {}
    aliases = [alias for alias, number in held.items() if int(number) == resolved.version]
    info = describe(client, version, aliases)
    metrics = {  # test/accuracy ..., whichever spelling the version was logged with
        key: value
        for key, value in info.canonical_metrics().items()
        if key.startswith(METRIC_PREFIX) and math.isfinite(value)
    }
    experiment_id = None
    if resolved.run_id:
        try:
            experiment_id = client.get_run(resolved.run_id).info.experiment_id
        except Exception as exc:  # a deleted run: the link is the only thing lost
            log.debug("no run %s: %s", resolved.run_id, exc)
    return sorted(info.aliases), metrics, experiment_id


def _download(resolved: ResolvedModel, tracking_uri: str, into: Path, client) -> Path:
    local = Path(resolved.load_uri)
    if local.is_dir():
        return local
    import mlflow.artifacts

    source = resolved.load_uri
    if resolved.name is not None and resolved.version is not None and client is not None:
        # The registry of *this* store, not whatever mlflow's global registry URI says.
        source = client.get_model_version_download_uri(resolved.name, str(resolved.version))
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(into), tracking_uri=tracking_uri
        )
    )


def _example_pixels(folder: Path, preprocess) -> np.ndarray:
    """The version's input example (else generated photos) as a uint8 batch."""
    values: list[Any] = input_example_images(folder) or synthetic_images(2)
    images = [decode_image_value(value, row) for row, value in enumerate(values)]
    return np.stack([preprocess(data) for data in images])


def _example_texts(folder: Path, count: int) -> list[str]:
    """The version's input example texts (else generated ones), ``count`` of them."""
    example = input_example_rows(folder, (TEXT_COLUMN,), count)
    texts = [str(t) for t in example[TEXT_COLUMN]] if example is not None else []
    texts = texts or list(SYNTHETIC_TEXTS)
    return (texts * count)[:count]


@contextmanager
def _load_errors(what: str) -> Iterator[None]:
    """Any failure inside as one :class:`LoadError` that names the version ``what``."""
    try:
        yield
    except LoadError as exc:
        raise LoadError(f"{what} {exc}") from exc
    except (NotAClassifier, EngineUnavailable, NeedsTorch) as exc:
        raise LoadError(f"{what} cannot be served: {exc}") from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise LoadError(f"{what} failed to load: {type(exc).__name__}: {first}") from exc


def _details(
    resolved: ResolvedModel, client, started: float, tracking_uri: str, ui_url, **fields
) -> ModelDetails:
    """The version's :class:`ModelDetails`: its registry facts, ``fields`` (categories, arch,
    engine, ...) and how long the load took since ``started``."""
    aliases, metrics, experiment_id = _registry_facts(client, resolved)
    return ModelDetails(
        uri=resolved.uri,
        name=resolved.name,
        version=resolved.version,
        run_id=resolved.run_id,
        aliases=aliases,
        metrics=metrics,
        loaded_at=datetime.now(UTC),
        load_seconds=time.perf_counter() - started,
        ui_url=ui_link(ui_url, tracking_uri, experiment_id, resolved.run_id),
        source=resolved.load_uri,
        **fields,
    )


def _check_kind(folder: Path, kind: str) -> None:
    found = input_kind_of(folder)
    if found != kind:
        raise LoadError(
            f"takes {found} input, but this slot serves {kind} models: point its setting "
            f"at a version whose `input` tag is {kind}"
        )


def load_served_text_model(
    resolved: ResolvedModel,
    *,
    tracking_uri: str,
    max_pixels: int,
    client=None,
    ui_url: str | None = None,
    downloads: Path | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ServedModel:
    """Download and check a text model (input ``text``); :class:`LoadError` when it fails.

    ``downloads`` and ``cancelled`` as for :func:`load_served_model`."""
    started = time.perf_counter()
    what = f"version {resolved.version} of {resolved.name}" if resolved.name else resolved.uri
    with _load_errors(what):
        with tempfile.TemporaryDirectory(prefix="serve-text-model-", dir=downloads) as tmp:
            folder = _download(resolved, tracking_uri, Path(tmp), client)
            _stop_if_cancelled(cancelled)
            _check_kind(folder, TEXT)
            text = read_text_classifier(folder)  # everything in memory, the folder can go
            texts = _example_texts(folder, 2)
        probabilities = text.predict_proba(texts)
        check_probabilities(probabilities, len(texts), len(text.categories))
        encoder = text.config.encoder
        details = _details(
            resolved,
            client,
            started,
            tracking_uri,
            ui_url,
            categories=text.categories,
            arch=f"text ({encoder})",
            image_size=0,
            embedding_dim=0,
            engine=encoder,
        )
    log.info("loaded %s (%s text encoder) in %.1f s", what, encoder, details.load_seconds)
    return ServedModel(
        details=details,
        engine=None,
        max_pixels=max_pixels,
        key=resolved.load_uri,
        kind=TEXT,
        text=text,
    )


def feature_problem(features: tuple[str, ...]) -> str | None:
    """Why a ranker that takes ``features`` cannot rank this service's candidates, or None.

    The order does not matter (the ranker picks its columns by name); the names do."""
    missing = [name for name in features if name not in FEATURES]
    unused = [name for name in FEATURES if name not in features]
    if not missing and not unused:
        return None
    parts = []
    if missing:
        parts.append(f"it wants {', '.join(missing)}, which this service does not compute")
    if unused:
        parts.append(f"it lacks {', '.join(unused)}, which this service computes")
    return (
        f"its feature list does not match this service's search.ranking.FEATURES: "
        f"{'; '.join(parts)}: train it again with this code (`mlflow run . -e rank "
        "--env-manager local`)"
    )


def _read_ranker(folder: Path) -> MarketplaceRanker:
    """The ranker of the logged model in ``folder``, read with this service's code (its
    booster file and feature list; never through mlflow.pyfunc, see the module)."""
    artifacts = logged_artifacts(folder)
    if RANKER_ARTIFACT not in artifacts:
        raise LoadError(
            f"takes {input_kind_of(folder)} input, but this slot serves {RANKING} models: "
            f"point RANKER_URI at a version whose `input` tag is {RANKING}"
        )
    ranker = MarketplaceRanker()
    context = SimpleNamespace(artifacts={RANKER_ARTIFACT: str(artifacts[RANKER_ARTIFACT])})
    ranker.load_context(context)
    problem = feature_problem(ranker.features)
    if problem is not None:
        raise LoadError(f"cannot be served: {problem}")
    return ranker


def _checked_scores(ranker: MarketplaceRanker, folder: Path) -> None:
    """Score the version's input example (else a row of zeros); :class:`LoadError` unless
    every row gets one finite score."""
    import pandas as pd

    example = input_example_rows(folder, ranker.features, 5)
    if example is None:
        example = pd.DataFrame({name: [0.0] for name in ranker.features})
    scores = np.asarray(ranker.score(example.astype(float)))
    if scores.shape != (len(example),):
        raise LoadError(f"answered with scores of shape {scores.shape}, expected ({len(example)},)")
    if not np.all(np.isfinite(scores)):
        raise LoadError("answered with scores that are not finite")


def load_served_ranker(
    resolved: ResolvedModel,
    *,
    tracking_uri: str,
    client=None,
    ui_url: str | None = None,
    downloads: Path | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ServedModel:
    """Download and check a learned ranker (input ``ranking``); :class:`LoadError` when it
    is not one, when its feature list is not :data:`search.ranking.FEATURES`, or when it
    does not score its input example. ``downloads`` and ``cancelled`` as for
    :func:`load_served_model`."""
    started = time.perf_counter()
    what = f"version {resolved.version} of {resolved.name}" if resolved.name else resolved.uri
    with _load_errors(what):
        with tempfile.TemporaryDirectory(prefix="serve-ranker-", dir=downloads) as tmp:
            folder = _download(resolved, tracking_uri, Path(tmp), client)
            _stop_if_cancelled(cancelled)
            ranker = _read_ranker(folder)  # the booster is in memory: the folder can go
            _checked_scores(ranker, folder)
        trees = ranker.booster.num_trees()
        details = _details(
            resolved,
            client,
            started,
            tracking_uri,
            ui_url,
            categories=[],
            arch=f"LightGBM ranker ({trees} trees, {len(ranker.features)} features)",
            image_size=0,
            embedding_dim=0,
            engine="lightgbm",
        )
    log.info("loaded %s (%d trees) in %.1f s", what, trees, details.load_seconds)
    return ServedModel(
        details=details,
        engine=None,
        max_pixels=0,
        key=resolved.load_uri,
        kind=RANKING,
        ranker=ranker,
    )


def load_served_model(
    resolved: ResolvedModel,
    *,
    tracking_uri: str,
    engine: str,
    max_pixels: int,
    batch_size: int,
    client=None,
    ui_url: str | None = None,
    index_cache: Path | None = None,
    kind: str = IMAGE,
    downloads: Path | None = None,
    cancelled: Callable[[], bool] | None = None,
    rejected_indexes: dict[str, str] | None = None,
) -> ServedModel:
    """Download, build, warm and check the version ``resolved`` names (see the module doc).

    ``kind`` is what the slot serves: ``image``, or ``image+text`` (a listing model: its
    image network runs on the engine, its text half and head beside it); a version that
    takes another input is a :class:`LoadError`. With ``index_cache`` the version's search
    index is fetched too (into that folder); a version without one still serves
    ``/predict``, and ``index_problem`` says why (``rejected_indexes``: see
    :func:`load_search_index`). The download goes into a temporary folder inside
    ``downloads`` (default: the system's); ``cancelled`` is asked between the steps, and a
    load it answers True for stops with :class:`LoadCancelled`.
    """
    started = time.perf_counter()
    what = f"version {resolved.version} of {resolved.name}" if resolved.name else resolved.uri
    fusion = texts = None
    with _load_errors(what):
        with tempfile.TemporaryDirectory(prefix="serve-model-", dir=downloads) as tmp:
            folder = _download(resolved, tracking_uri, Path(tmp), client)
            _stop_if_cancelled(cancelled)
            _check_kind(folder, kind)
            logged = read_logged_classifier(folder)
            int8, int8_problem = _int8_export(resolved, client, tracking_uri, Path(tmp), engine)
            built = build_engine(logged, engine, int8, int8_problem)
            config = logged.config
            example = _example_pixels(
                folder, lambda data: read_pixels(data, config.image_size, max_pixels)
            )
            if kind == IMAGE_TEXT:
                fusion = read_fusion_parts(folder)
                texts = _example_texts(folder, len(example))
        embedding = _checked_forward(built, example, config.num_classes, batch_size, fusion, texts)
        _stop_if_cancelled(cancelled)
        details = _details(
            resolved,
            client,
            started,
            tracking_uri,
            ui_url,
            categories=list(config.categories),
            arch=config.arch,
            image_size=config.image_size,
            embedding_dim=int(embedding.shape[1]),
            engine=built.name,
            engine_reason=built.reason,
        )
    model = ServedModel(details, built, max_pixels, key=resolved.load_uri, kind=kind, fusion=fusion)
    if index_cache is not None and kind == IMAGE:
        _attach_search(model, resolved, client, index_cache, rejected_indexes)
    log.info(
        "loaded %s with %s (%s) in %.1f s", what, built.name, built.reason, details.load_seconds
    )
    return model


def _checked_forward(built, example, classes: int, batch_size: int, fusion, texts) -> np.ndarray:
    """The example's embeddings, once the engine (and a listing model's head) gave sane
    probabilities for it and for a full batch."""
    probabilities, embedding = built.forward(example)
    check_probabilities(probabilities, len(example), classes)
    if fusion is not None:
        check_probabilities(
            fusion.predict_proba(embedding, texts), len(example), fusion.config.num_classes
        )
    warm = np.repeat(example[:1], max(1, batch_size), axis=0)
    check_full_batch(built, warm, classes, int(embedding.shape[1]))
    return embedding


def _attach_search(
    model: ServedModel,
    resolved: ResolvedModel,
    client,
    index_cache: Path,
    rejected_indexes: dict[str, str] | None,
) -> None:
    """Give ``model`` its version's search index and text search, or the reasons it has none."""
    model.index, model.index_problem = load_search_index(
        resolved, client, index_cache, model.details.embedding_dim, rejected_indexes
    )
    if model.index is not None:
        model.text_search, model.text_search_problem = load_text_search(
            resolved, client, index_cache
        )


def _int8_export(
    resolved: ResolvedModel, client, tracking_uri: str, into: Path, engine: str
) -> tuple[Path | None, str]:
    """The version's int8 export (its ``int8_onnx`` tag names it; see registry.quantize),
    downloaded into ``into``, or None and why there is none."""
    if engine not in ("auto", INT8):
        return None, ""
    if resolved.name is None or resolved.version is None or client is None:
        return None, "not a registered version"
    tags = client.get_model_version(resolved.name, str(resolved.version)).tags or {}
    uri = tags.get(INT8_TAG)
    if not uri:
        gate = tags.get(INT8_GATE_TAG)
        return None, f"its gate {gate}" if gate else "registered before int8 exports"
    import mlflow.artifacts

    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(into / "int8"), tracking_uri=tracking_uri
        )
    except Exception as exc:  # auto still serves the fp32 export
        log.warning("cannot download the int8 export %s: %s", uri, _first_line(exc))
        return None, f"cannot download {uri}: {type(exc).__name__}"
    return Path(local), ""


def load_text_search(
    resolved: ResolvedModel, client, cache: Path
) -> tuple[TextSearch | None, str | None]:
    """The text search logged with the version's index, or None and why it failed.

    (None, None) for an index built before the index step logged one (/search?q= then says
    to rebuild it); a failure to read it is (None, the reason), and is worth trying again.
    """
    try:
        run_id = index_run_for_version(client, resolved.name, resolved.version)
        folder = download_index(run_id, cache, client) / TEXT_DIR  # cached: no second fetch
        return (TextSearch.load(folder), None) if folder.is_dir() else (None, None)
    except Exception as exc:  # the photo search still serves
        problem = f"cannot load the text search: {type(exc).__name__}: {_first_line(exc)}"
        log.warning("%s of %s", problem, resolved.load_uri)
        return None, problem


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def index_run_problem(client, run_id: str, name: str, version: int, dim: int) -> str | None:
    """Why the index run ``run_id`` cannot serve version ``version`` (``dim``-dim vectors),
    read from the run's tags and metrics before anything is downloaded; None if it can.

    An index run logged by the index step names its model version (tag
    ``model_version``) and its vectors' size (metric ``dim``); an older run without them is
    checked after the download instead.
    """
    run = client.get_run(run_id)
    built_for = run.data.tags.get(MODEL_VERSION_TAG)
    if built_for is not None and str(built_for) != str(version):
        return (
            f"the {INDEX_RUN_TAG} tag of version {version} of {name} names run {run_id}, an "
            f"index of version {built_for}: rebuild with `{build_command(name, version)}`"
        )
    built_dim = run.data.metrics.get("dim")
    if built_dim is not None and int(built_dim) != dim:
        return _dim_problem(int(built_dim), dim, name, version)
    return None


def _dim_problem(index_dim: int, dim: int, name: str, version: int) -> str:
    return (
        f"the search index has {index_dim}-dim vectors, the model {dim}: rebuild it with "
        f"`{build_command(name, version)}`"
    )


def load_search_index(
    resolved: ResolvedModel,
    client,
    cache: Path,
    dim: int,
    rejected: dict[str, str] | None = None,
) -> tuple[SearchIndex | None, str | None]:
    """The version's search index, or None and why (a missing index never fails a load).

    An index run that cannot serve this version (built for another version, vectors of
    another size, a format this code does not read) is recognised from its run's tags
    before it is downloaded where it can be, and remembered in ``rejected`` (run id ->
    why), so that it is neither downloaded nor loaded again; a registry or storage hiccup
    is not remembered, and the next check tries again.
    """
    if resolved.name is None or resolved.version is None or client is None:
        return None, (
            f"the service serves {resolved.uri}, not a registered version: search needs a "
            "version's index (serve models:/<name>@<alias> or models:/<name>/<version>)"
        )
    rejected = {} if rejected is None else rejected
    name, version = resolved.name, resolved.version
    try:
        run_id = index_run_for_version(client, name, version)
        if run_id is None:
            return None, (
                f"version {version} of {name} has no search index: build it with "
                f"`{build_command(name, version)}`"
            )
        if run_id in rejected:
            return None, rejected[run_id]
        index, problem = None, index_run_problem(client, run_id, name, version, dim)
        if problem is None:
            folder = download_index(run_id, cache, client)
            index, problem = _load_downloaded_index(folder, name, version, dim)
    except Exception as exc:  # a registry or storage hiccup: /predict still serves
        return None, f"cannot load the search index: {type(exc).__name__}: {exc}"
    if problem is not None:
        rejected[run_id] = problem
        log.warning("search index run %s rejected, not tried again: %s", run_id, problem)
        return None, problem
    log.info("search index of %s: %s", resolved.load_uri, index.info())
    return index, None


def _load_downloaded_index(
    folder: Path, name: str, version: int, dim: int
) -> tuple[SearchIndex | None, str | None]:
    """The downloaded index in ``folder``, or None and why it cannot serve this version."""
    try:
        index = SearchIndex.load(folder)
    except SearchIndexError as exc:
        return None, str(exc)
    if index.model_version is not None and str(index.model_version) != str(version):
        return None, (
            f"the {INDEX_RUN_TAG} tag of version {version} of {name} names an index of "
            f"version {index.model_version}: rebuild with `{build_command(name, version)}`"
        )
    if index.dim != dim:
        return None, _dim_problem(index.dim, dim, name, version)
    return index, None

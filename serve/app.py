"""The FastAPI app: routes over the model holder, the batcher and the metrics.

``create_app(settings)`` builds the app; nothing is loaded at import time or in the
factory. The lifespan starts the model holder (which loads the production version in the
background: the port opens at once and ``/ready`` says when a model is there), the
batcher and the decode pool, and stops them on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marketplace_models.kinds import IMAGE_TEXT, TEXT
from search import index as search_index
from serve.holder import ModelHolder
from serve.inference import Batcher, Busy, Classifier, ImageResult, InferenceTimeout, UploadError
from serve.loader import ServedModel
from serve.metrics import ServiceMetrics
from serve.schemas import (
    BatchEntry,
    CapstoneHealth,
    CapstonePrediction,
    CategoryScore,
    Health,
    IndexInfo,
    Listing,
    ListingDetail,
    ListingPrediction,
    ModelInfo,
    ModelRef,
    Prediction,
    Problem,
    QueryAnswer,
    Readiness,
    ReloadResult,
    SearchAnswer,
    SimilarAnswer,
    SlotReload,
    SlotStatus,
    UploadProblem,
)
from serve.settings import Settings

log = logging.getLogger(__name__)

MODEL_HEADER = "X-Model-Version"
NO_MODEL = "none"
BUSY_RETRY_S = 1
CLIENT_GONE = 499  # nginx's "client closed request", for the metrics: nobody gets it
UNBOUNDED_PATHS = frozenset({"/health", "/ready", "/metrics", "/healthcheck"})
UPLOAD_ERRORS = {
    413: {"model": Problem, "description": "The request body is over SERVE_MAX_UPLOAD_BYTES."},
    415: {"model": Problem, "description": "The upload is not an image."},
    422: {"model": Problem, "description": "Empty, corrupt, truncated or too many pixels."},
    503: {
        "model": Problem,
        "description": "No model loaded yet, or the service is busy (see Retry-After).",
    },
    504: {"model": Problem, "description": "No answer within SERVE_INFERENCE_TIMEOUT."},
}
IMAGE_HELP = "The photo: JPEG, PNG, WebP, GIF, BMP or TIFF, as a multipart file field."
TEXT_HELP = "The listing's title and/or description (or a query), as a form field."
STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_RESULTS = 12
MAX_RESULTS = 100
THUMBNAIL_CACHE = "public, max-age=86400"


# ----------------------------------------------------------------------------- middleware


class ServiceMiddleware:
    """Bounds what a request may cost, counts and times requests, adds X-Model-Version.

    - At most ``SERVE_MAX_CONCURRENT_REQUESTS`` requests are handled at once (the probes
      and ``/metrics`` aside): past it, 503 with ``Retry-After``, the body left unread.
    - A body is refused from its Content-Length before anything is read, or while it
      streams in (chunked uploads) as soon as it passes the limit: 413 with a JSON
      ``detail``. A client that has not sent its whole body within ``SERVE_BODY_TIMEOUT``
      is cut off: 408, and the connection closed.
    - Once the body is in, a client that goes away cancels its request (counted as 499):
      its images are dropped before they reach the engine.
    - An unexpected error is answered here too (500, logged), so that it carries the header.
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: ServiceMetrics) -> None:
        self.app = app
        self.limit = settings.max_upload_bytes
        self.body_timeout = settings.body_timeout
        self.max_concurrent = settings.max_concurrent_requests
        self.in_flight = 0
        self.metrics = metrics

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413,
            f"the upload is over the {self.limit:,}-byte limit: send a smaller photo "
            "(SERVE_MAX_UPLOAD_BYTES sets the limit)",
        )

    def _too_slow(self) -> HTTPException:
        return HTTPException(
            408,
            f"the request body did not arrive within {self.body_timeout:g} s: send it again "
            "(SERVE_BODY_TIMEOUT sets the limit)",
            headers={"Connection": "close"},
        )

    def _too_many(self) -> HTTPException:
        return HTTPException(
            503,
            f"the service is busy ({self.max_concurrent} requests in progress, "
            "SERVE_MAX_CONCURRENT_REQUESTS): try again shortly",
            headers={"Retry-After": str(BUSY_RETRY_S)},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                headers = list(message.get("headers", []))
                headers.append((MODEL_HEADER.lower().encode(), _model_label(scope).encode()))
                message = {**message, "headers": headers}
            await send(message)

        counted = scope.get("path") not in UNBOUNDED_PATHS
        try:
            length = _content_length(scope)
            if length is not None and length > self.limit:
                await _send_problem(scope, send_with_header, self._too_large())
                return
            if counted and self.in_flight >= self.max_concurrent:
                await _send_problem(scope, send_with_header, self._too_many())
                return
            self.in_flight += counted
            try:
                await self._handle(scope, receive, send_with_header, status)
            finally:
                self.in_flight -= counted
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, status: dict) -> None:
        """Run the app in a task of its own, which a client that leaves cancels."""
        body = _Body(receive, self.limit, self.body_timeout, self._too_large, self._too_slow)
        task = asyncio.ensure_future(self.app(scope, body.receive, send))
        left = False

        def client_left() -> None:  # once answered, the "disconnect" is just the end
            nonlocal left
            if not status["sent"]:
                left = True
                task.cancel()

        body.on_gone = client_left
        try:
            await task
        except HTTPException as exc:  # a limit, raised outside a route's handler
            if status["sent"] or exc.status_code not in (408, 413):
                raise
            await _send_problem(scope, send, exc)
        except asyncio.CancelledError:
            if not left:
                raise
            status["code"] = CLIENT_GONE  # nobody to answer
        except Exception as exc:
            if status["sent"]:
                raise
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            await _send_problem(scope, send, _internal_error(exc))
        finally:
            body.close()


class _Body:
    """The request's ``receive``, with the size limit and the body deadline applied.

    Once the whole body is in, a watcher reads on (all that can come is the client leaving)
    and calls ``on_gone`` when it does; a later ``receive`` from the app waits for that.
    """

    def __init__(self, receive: Receive, limit: int, timeout_s: float, too_large, too_slow):
        self._receive = receive
        self._limit = limit
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self._too_large = too_large
        self._too_slow = too_slow
        self._received = 0
        self._watcher: asyncio.Task | None = None
        self._left = asyncio.Event()
        self.on_gone = None

    async def receive(self) -> Message:
        if self._watcher is not None:
            await self._left.wait()
            return {"type": "http.disconnect"}
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise self._too_slow() from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                raise self._too_large()
            if not message.get("more_body", False):
                self._watcher = asyncio.ensure_future(self._watch())
        return message

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._left.set()
        if self.on_gone is not None:
            self.on_gone()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


def _internal_error(exc: Exception) -> HTTPException:
    return HTTPException(500, f"internal error ({type(exc).__name__}): see the service's log")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_problem(scope: Scope, send: Send, exc: HTTPException) -> None:
    response = JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )
    response.headers["Connection"] = "close"  # the rest of the body is not read

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


def _model_label(scope: Scope) -> str:
    state = scope.get("state") or {}
    if "model_version" in state:
        return state["model_version"]
    app = scope.get("app")
    holder = getattr(getattr(app, "state", None), "holder", None)
    current = getattr(holder, "current", None)
    return current.details.label if current is not None else NO_MODEL


# ----------------------------------------------------------------------------- dependencies


# The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hop each (three per /predict) for a dict lookup.


async def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def get_classifier(request: Request) -> Classifier:
    return request.app.state.classifier


async def get_model(request: Request, holder: Annotated[ModelHolder, Depends(get_holder)]):
    """The version serving this request (fixed for its whole life), or 503."""
    model = holder.current
    if model is None:
        retry = str(math.ceil(holder.settings.reload_interval))
        raise HTTPException(503, holder.reason, headers={"Retry-After": retry})
    request.state.model_version = model.details.label
    return model


async def get_searchable_model(model: Annotated[ServedModel, Depends(get_model)], request: Request):
    """The serving version, when it has a search index; else 503 with the command to build it."""
    if model.index is None:
        retry = str(math.ceil(request.app.state.settings.reload_interval))
        raise HTTPException(
            503, model.index_problem or "no search index", headers={"Retry-After": retry}
        )
    return model


def _served(request: Request, kind: str) -> ServedModel:
    """The version of ``kind`` serving this request, or 503 saying why there is none."""
    holder = request.app.state.holders[kind]
    model = holder.current
    if model is None:
        request.state.model_version = NO_MODEL  # not the image model's: none of this kind
        retry = str(math.ceil(holder.settings.reload_interval))
        raise HTTPException(
            503, f"no {kind} model: {holder.reason}", headers={"Retry-After": retry}
        )
    request.state.model_version = model.details.label
    return model


async def get_text_model(request: Request) -> ServedModel:
    return _served(request, TEXT)


async def get_listing_model(request: Request) -> ServedModel:
    return _served(request, IMAGE_TEXT)


async def get_listing_model_if_any(request: Request) -> ServedModel | None:
    """The photo + text version if one is served, else None (the photo model answers)."""
    return request.app.state.holders[IMAGE_TEXT].current


HolderDep = Annotated[ModelHolder, Depends(get_holder)]
TextModelDep = Annotated[ServedModel, Depends(get_text_model)]
ListingModelDep = Annotated[ServedModel, Depends(get_listing_model)]
MaybeListingModelDep = Annotated[ServedModel | None, Depends(get_listing_model_if_any)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
ModelDep = Annotated[ServedModel, Depends(get_model)]
SearchableDep = Annotated[ServedModel, Depends(get_searchable_model)]
bearer = HTTPBearer(auto_error=False, description="SERVE_ADMIN_TOKEN")


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    token = request.app.state.settings.admin_token
    if token is None:
        raise HTTPException(
            401,
            "admin routes are off: start the service with SERVE_ADMIN_TOKEN set",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            401,
            "missing or wrong admin token: send `Authorization: Bearer <SERVE_ADMIN_TOKEN>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


# ----------------------------------------------------------------------------- answers


def _model_ref(model: ServedModel) -> ModelRef:
    details = model.details
    return ModelRef(name=details.name, version=details.version, run_id=details.run_id)


def _top_k(model: ServedModel, probabilities: np.ndarray, k: int) -> list[CategoryScore]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        CategoryScore(category=model.categories[i], probability=float(probabilities[i]))
        for i in order
    ]


def _prediction(model: ServedModel, result: ImageResult, k: int) -> Prediction:
    top = _top_k(model, result.probabilities, k)
    return Prediction(
        category=top[0].category,
        probability=top[0].probability,
        top_k=top,
        model=_model_ref(model),
        input=model.kind,
    )


def _listing_prediction(model: ServedModel, probabilities: np.ndarray, k: int) -> ListingPrediction:
    top = _top_k(model, probabilities, k)
    return ListingPrediction(
        category=top[0].category,
        probability=top[0].probability,
        top_k=top,
        model=_model_ref(model),
        input=model.kind,
        Category=top[0].category,
        Probabilities=[float(p) for p in probabilities],
    )


def checked_text(text: str | None, limit: int, required: bool) -> str | None:
    """The ``text`` field stripped, or 422: blank (when given or required) or over ``limit``."""
    if text is None and not required:
        return None
    stripped = (text or "").strip()
    if not stripped:
        raise HTTPException(
            422, "text is empty: send the listing's title and/or description as `text`"
        )
    if len(stripped) > limit:
        raise HTTPException(
            422,
            f"text is {len(stripped):,} characters, over the {limit:,} allowed: send the "
            "title and the start of the description (SERVE_MAX_TEXT_CHARS sets the limit)",
        )
    return stripped


async def _fused(classifier: Classifier, model: ServedModel, image: UploadFile, text: str):
    """A listing model's probabilities for one photo and its text.

    The text half runs in a worker thread while the photo is decoded and goes through the
    network, so the text adds only the head's two small matrix products to the latency.
    """
    loop = asyncio.get_running_loop()
    text_probabilities = loop.run_in_executor(None, model.fusion.text.predict_proba, [text])
    try:
        result = await _classify_one(classifier, model, image)
    except HTTPException:
        await asyncio.gather(text_probabilities, return_exceptions=True)
        raise
    [probabilities] = model.fusion.combine(result.embedding[None, :], await text_probabilities)
    return probabilities


def _listings(results) -> list[Listing]:
    return [
        Listing(
            product_id=r.product_id,
            name=r.name,
            price=r.price,
            location=r.location,
            category=r.category,
            score=round(float(r.score), 6),
            thumbnail_url=f"/thumbnails/{r.image_id}.jpg",
        )
        for r in results
    ]


def _text_search(model: ServedModel, request: Request):
    """The serving version's text search, or 503 with the command that builds it."""
    if model.text_search is None:
        retry = str(math.ceil(request.app.state.settings.reload_interval))
        if model.text_search_problem is not None:  # it failed to load: tried again
            detail = f"{model.text_search_problem} (the service tries again by itself)"
        else:
            detail = (
                f"the search index of {model.details.label} has no text search (built before "
                "the index step made one): rebuild it with `mlflow run . -e index -P "
                "force=true --env-manager local`"
            )
        raise HTTPException(503, detail, headers={"Retry-After": retry})
    return model.text_search


async def _query_category(
    request: Request, query: str
) -> tuple[dict[str, float] | None, str | None, float | None]:
    """The text model's probabilities for ``query`` (None without a text model), its best
    category and that category's probability."""
    text_model = request.app.state.holders[TEXT].current
    if text_model is None:
        return None, None, None
    [probabilities] = await asyncio.get_running_loop().run_in_executor(
        None, text_model.classify_text, [query]
    )
    best = int(np.argmax(probabilities))
    by_category = dict(zip(text_model.categories, map(float, probabilities), strict=True))
    return by_category, text_model.categories[best], float(probabilities[best])


def _ranked_listings(model: ServedModel, ranked: list[tuple[str, float]]) -> list[Listing]:
    listings = []
    for product_id, score in ranked:
        record = model.index.listing(product_id)
        if record is None:
            continue
        photos = record.get("image_ids") or []
        listings.append(
            Listing(
                product_id=str(record["product_id"]),
                name=str(record["name"]),
                price=record.get("price"),
                location=record.get("location"),
                category=str(record["category"]),
                score=round(float(score), 6),
                thumbnail_url=f"/thumbnails/{photos[0]}.jpg" if photos else "",
            )
        )
    return listings


def _checked_category(model: ServedModel, category: str | None) -> str | None:
    if category is None or category == "":
        return None
    known = model.index.categories if model.index is not None else model.categories
    if category not in known:
        raise HTTPException(422, f"unknown category {category!r}: use one of {', '.join(known)}")
    return category


def _checked_k(k: int) -> int:
    if not 1 <= k <= MAX_RESULTS:
        raise HTTPException(422, f"k must be between 1 and {MAX_RESULTS}, got {k}")
    return k


def _index_info(model: ServedModel) -> IndexInfo:
    if model.index is None:
        return IndexInfo(available=False, problem=model.index_problem)
    info = model.index.info()
    return IndexInfo(
        available=True,
        run_id=info.get("run_id"),
        kind=info.get("kind"),
        vectors=info.get("vectors"),
        listings=info.get("products"),
    )


def _slots(app: FastAPI) -> dict[str, SlotStatus]:
    return {kind: SlotStatus(**holder.status()) for kind, holder in app.state.holders.items()}


def _readiness_problem(app: FastAPI) -> str | None:
    """Why the service cannot answer /predict now, or None: no image model yet, or the
    batcher down."""
    holder = app.state.holder
    if holder.current is None:
        return holder.reason
    return app.state.classifier.batcher.problem()  # batcher down, or the engine stuck


def _not_ready(request: Request, reason: str) -> JSONResponse:
    """503 with the reason, Retry-After and every slot's state."""
    holder = request.app.state.holder
    retry = holder.retry.seconds_left()
    wait = min(retry, holder.settings.reload_interval) if retry else holder.settings.reload_interval
    slots = {kind: slot.model_dump(mode="json") for kind, slot in _slots(request.app).items()}
    return JSONResponse(
        {"detail": reason, "slots": slots},
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


def _checked_top_k(model: ServedModel, top_k: int | None, default: int) -> int:
    classes = len(model.categories)
    if top_k is None:
        return min(default, classes)
    if not 1 <= top_k <= classes:
        raise HTTPException(
            422, f"top_k must be between 1 and {classes} (the number of categories)"
        )
    return top_k


async def _classified(
    classifier: Classifier, model: ServedModel, uploads: list[bytes]
) -> list[ImageResult | UploadError]:
    """The classifier's results, its refusals as HTTP errors (503 busy, 504 timed out)."""
    try:
        return await classifier.classify(model, uploads)
    except Busy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(BUSY_RETRY_S)}) from None
    except InferenceTimeout as exc:
        raise HTTPException(504, str(exc)) from None


async def _classify_one(classifier: Classifier, model: ServedModel, image: UploadFile):
    [result] = await _classified(classifier, model, [await image.read()])
    if isinstance(result, UploadError):
        raise HTTPException(result.status, result.detail)
    return result


# ----------------------------------------------------------------------------- the app


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for ``settings`` (default: read from the environment)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One query per request, requests side by side: FAISS's own threads only contend.
        search_index.use_threads(1)
        cache = None if settings.cache_dir else tempfile.TemporaryDirectory(prefix="serve-")
        index_cache = settings.cache_dir or Path(cache.name)
        # Every model download goes in here, and the folder goes at shutdown, a load cut
        # short included.
        downloads = tempfile.TemporaryDirectory(
            prefix="serve-downloads-", ignore_cleanup_errors=True
        )
        where = Path(downloads.name)
        holder = ModelHolder(settings, metrics, index_cache=index_cache, downloads=where)
        holders = {
            holder.kind: holder,
            TEXT: ModelHolder(
                settings, metrics, kind=TEXT, model_uri=settings.text_model_uri, downloads=where
            ),
            IMAGE_TEXT: ModelHolder(
                settings,
                metrics,
                kind=IMAGE_TEXT,
                model_uri=settings.listing_model_uri,
                downloads=where,
            ),
        }
        batcher = Batcher(
            settings.batch_size,
            settings.batch_wait_ms / 1000.0,
            metrics,
            max_queued=settings.max_queued_images,
            timeout_s=settings.inference_timeout,
        )
        classifier = Classifier(
            batcher,
            settings.decode_workers,
            metrics,
            decodes_per_request=settings.decodes_per_request,
            max_decode_bytes=settings.max_decode_bytes,
        )
        app.state.holder = holder
        app.state.holders = holders
        app.state.classifier = classifier
        batcher.start()
        for each in holders.values():
            each.start()
        try:
            yield
        finally:
            await asyncio.gather(*(each.stop() for each in holders.values()))
            downloads.cleanup()
            await batcher.stop()
            classifier.close()
            if cache is not None:
                cache.cleanup()

    app = FastAPI(
        title="Marketplace search",
        summary="Classify a listing's photo with the model in production.",
        description=(
            "Serves the version of `marketplace-classifier` that holds the `production` "
            "alias in the MLflow Model Registry, and follows promotions without a restart. "
            "Every answer carries the header `X-Model-Version`."
        ),
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(ServiceMiddleware, settings=settings, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=[MODEL_HEADER],
        )
    _add_error_handlers(app)
    _add_routes(app, settings, metrics)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            message = error.get("msg", "invalid")
            if error.get("type") == "missing":
                message = "missing: send it as a multipart/form-data field"
            problems.append(f"{where}: {message}" if where else message)
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": _internal_error(exc).detail}, status_code=500)


def _add_routes(app: FastAPI, settings: Settings, metrics: ServiceMetrics) -> None:
    @app.post("/predict", response_model=Prediction, responses=UPLOAD_ERRORS, tags=["predict"])
    async def predict(
        request: Request,
        model: ModelDep,
        listing: MaybeListingModelDep,
        classifier: ClassifierDep,
        image: Annotated[UploadFile, File(description=IMAGE_HELP)],
        top_k: Annotated[int | None, Form(description="Length of top_k (1..categories).")] = None,
        text: Annotated[str | None, Form(description=TEXT_HELP)] = None,
    ) -> Prediction:
        """Classify one photo: its category, probability, the best `top_k`, the version.

        With a `text`, the photo + text model answers when one is in production (`input`
        says `image+text`); else the photo model, as without one (`input`: `image`).
        """
        text = checked_text(text, settings.max_text_chars, required=False)
        if text is not None and listing is not None:
            k = _checked_top_k(listing, top_k, settings.top_k)
            request.state.model_version = listing.details.label
            probabilities = await _fused(classifier, listing, image, text)
            return Prediction(**dict(_listing_prediction(listing, probabilities, k)))
        k = _checked_top_k(model, top_k, settings.top_k)
        result = await _classify_one(classifier, model, image)
        return _prediction(model, result, k)

    @app.post(
        "/predict/text",
        response_model=ListingPrediction,
        responses={422: UPLOAD_ERRORS[422], 503: UPLOAD_ERRORS[503]},
        tags=["predict"],
    )
    async def predict_text(
        model: TextModelDep,
        text: Annotated[str | None, Form(description=TEXT_HELP + " Required.")] = None,
        top_k: Annotated[int | None, Form(description="Length of top_k (1..categories).")] = None,
    ) -> ListingPrediction:
        """Classify a listing's text (or a query) with the text model; the capstone
        template's `Category` and `Probabilities` are in the answer too."""
        text = checked_text(text, settings.max_text_chars, required=True)
        k = _checked_top_k(model, top_k, settings.top_k)
        [probabilities] = await asyncio.get_running_loop().run_in_executor(
            None, model.classify_text, [text]
        )
        return _listing_prediction(model, probabilities, k)

    @app.post(
        "/predict/combined",
        response_model=ListingPrediction,
        responses=UPLOAD_ERRORS,
        tags=["predict"],
    )
    async def predict_combined(
        model: ListingModelDep,
        classifier: ClassifierDep,
        image: Annotated[UploadFile, File(description=IMAGE_HELP)],
        text: Annotated[str | None, Form(description=TEXT_HELP + " Required.")] = None,
        top_k: Annotated[int | None, Form(description="Length of top_k (1..categories).")] = None,
    ) -> ListingPrediction:
        """Classify a photo with its listing's text with the photo + text model; the
        capstone template's `Category` and `Probabilities` are in the answer too."""
        text = checked_text(text, settings.max_text_chars, required=True)
        k = _checked_top_k(model, top_k, settings.top_k)
        return _listing_prediction(model, await _fused(classifier, model, image, text), k)

    @app.post(
        "/predict/batch",
        response_model=list[BatchEntry],
        responses=UPLOAD_ERRORS,
        tags=["predict"],
    )
    async def predict_batch(
        model: ModelDep,
        classifier: ClassifierDep,
        images: Annotated[list[UploadFile], File(description="Several photos, repeated field.")],
        top_k: Annotated[int | None, Form(description="Length of top_k (1..categories).")] = None,
    ) -> list[BatchEntry]:
        """Classify several photos in one request: one entry each, in order.

        A bad image fails only its own entry (`error` with the status it would have had).
        """
        if len(images) > settings.max_batch_images:
            raise HTTPException(
                422,
                f"{len(images)} images in one request, more than the {settings.max_batch_images} "
                "allowed: split the batch (SERVE_MAX_BATCH_IMAGES sets the limit)",
            )
        k = _checked_top_k(model, top_k, settings.top_k)
        uploads = [await image.read() for image in images]
        results = await _classified(classifier, model, uploads)
        entries = []
        for index, (image, result) in enumerate(zip(images, results, strict=True)):
            if isinstance(result, UploadError):
                problem = UploadProblem(status=result.status, detail=result.detail)
                entries.append(BatchEntry(index=index, filename=image.filename, error=problem))
                continue
            answer = _prediction(model, result, k)
            entries.append(BatchEntry(index=index, filename=image.filename, **dict(answer)))
        return entries

    @app.get("/health", response_model=Health, tags=["operations"])
    async def health() -> Health:
        """Alive: the process answers (whether or not a model is loaded)."""
        return Health(status="ok")

    @app.get(
        "/ready",
        response_model=Readiness,
        responses={503: {"model": Problem, "description": "No model yet, and why."}},
        tags=["operations"],
    )
    async def ready(request: Request) -> Readiness | JSONResponse:
        """200 while the image model is loaded and the batcher runs; else 503 with the
        reason (and Retry-After). Both say every slot's state: its last error, its failed
        attempts and its next retry."""
        holder = request.app.state.holder
        problem = _readiness_problem(request.app)
        if problem is not None:
            return _not_ready(request, problem)
        model = holder.current
        request.state.model_version = model.details.label
        return Readiness(status="ready", model=_model_ref(model), slots=_slots(request.app))

    @app.get(
        "/model",
        response_model=ModelInfo,
        responses={503: {"model": Problem, "description": "No model yet, and why."}},
        tags=["operations"],
    )
    async def model_info(request: Request, holder: HolderDep) -> ModelInfo | JSONResponse:
        """The served version: name, version, run, aliases, test metrics, engine, UI link;
        and every slot's state (503 with them before the image model loads)."""
        model = holder.current
        if model is None:
            return _not_ready(request, holder.reason)
        request.state.model_version = model.details.label
        details = model.details
        return ModelInfo(
            name=details.name,
            version=details.version,
            run_id=details.run_id,
            uri=settings.model_uri,
            source=details.source,
            follows=holder.follows_alias,
            aliases=details.aliases,
            metrics=details.metrics,
            categories=details.categories,
            arch=details.arch,
            image_size=details.image_size,
            engine=details.engine,
            engine_reason=details.engine_reason,
            loaded_at=details.loaded_at,
            load_seconds=round(details.load_seconds, 3),
            ui_url=details.ui_url,
            last_check=holder.last_check,
            last_check_error=holder.last_check_error,
            last_reload_error=holder.last_error,
            index=_index_info(model),
            slots=_slots(request.app),
        )

    @app.get(
        "/metrics",
        response_class=Response,
        tags=["operations"],
        responses={200: {"content": {"text/plain": {"example": "marketplace_model_loaded 1.0"}}}},
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text: requests, latency, batch sizes, version served, reloads."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post(
        "/admin/reload",
        response_model=ReloadResult,
        responses={401: {"model": Problem, "description": "No or wrong admin token."}},
        dependencies=[Depends(require_admin)],
        tags=["operations"],
    )
    async def admin_reload(request: Request) -> ReloadResult:
        """Check the registry now for every slot (image, text, image+text) and load what
        each URI names, even a version that failed; the image slot's outcome on top."""
        holders = request.app.state.holders
        results = await asyncio.gather(*(each.check(force=True) for each in holders.values()))
        slots = {
            kind: SlotReload(outcome=r.outcome, detail=r.detail, version=r.version)
            for kind, r in zip(holders, results, strict=True)
        }
        image = slots[request.app.state.holder.kind]
        return ReloadResult(**image.model_dump(), slots=slots)

    # The capstone API template's routes, for people coming from it.
    @app.get("/healthcheck", response_model=CapstoneHealth, tags=["capstone"])
    async def healthcheck() -> CapstoneHealth:
        """The capstone template's health check."""
        return CapstoneHealth(message="API is up and running!")

    @app.post(
        "/predict/image",
        response_model=CapstonePrediction,
        responses=UPLOAD_ERRORS,
        tags=["capstone"],
    )
    async def predict_image(
        model: ModelDep,
        classifier: ClassifierDep,
        image: Annotated[UploadFile, File(description=IMAGE_HELP)],
    ) -> CapstonePrediction:
        """The capstone template's shape: `Category` and `Probabilities` in category order."""
        result = await _classify_one(classifier, model, image)
        best = int(np.argmax(result.probabilities))
        return CapstonePrediction(
            Category=model.categories[best],
            Probabilities=[float(p) for p in result.probabilities],
        )

    @app.post(
        "/search",
        response_model=SearchAnswer,
        responses={
            **UPLOAD_ERRORS,
            503: {"model": Problem, "description": "No model or no index yet."},
        },
        tags=["search"],
    )
    async def search(
        request: Request,
        model: SearchableDep,
        classifier: ClassifierDep,
        image: Annotated[UploadFile, File(description=IMAGE_HELP)],
        k: Annotated[int, Form(description="How many listings (1..100).")] = DEFAULT_RESULTS,
        category: Annotated[str | None, Form(description="Only listings of this category.")] = None,
        exclude_product: Annotated[str | None, Form(description="Leave this listing out.")] = None,
        q: Annotated[str | None, Form(description="A typed query too: blended in.")] = None,
    ) -> SearchAnswer:
        """A photo's category and the most similar listings (a listing's photos count once).

        With `q`, the query's text relevance (and its category boost) is blended with the
        photo's similarity (`search.text`)."""
        k = _checked_k(k)
        wanted = _checked_category(model, category)
        query = checked_text(q, settings.max_text_chars, required=False)
        search = _text_search(model, request) if query is not None else None
        result = await _classify_one(classifier, model, image)
        answer = _prediction(model, result, len(model.categories))
        loop = asyncio.get_running_loop()
        if search is None:
            [found] = await loop.run_in_executor(
                None,
                lambda: model.index.search(
                    result.embedding[None, :], k, wanted, exclude_product or None
                ),
            )
            return SearchAnswer(**dict(answer), results=_listings(found))
        probabilities, _, _ = await _query_category(request, query)
        every = model.index.num_products

        def blended() -> list[tuple[str, float]]:
            [similar] = model.index.search(result.embedding[None, :], every, wanted)
            photo = {r.product_id: r.score for r in similar}
            return search.rank(
                query,
                k,
                category=wanted,
                category_probabilities=probabilities,
                photo_scores=photo,
                exclude=exclude_product or None,
            )

        ranked = await loop.run_in_executor(None, blended)
        return SearchAnswer(**dict(answer), results=_ranked_listings(model, ranked))

    @app.get(
        "/search",
        response_model=QueryAnswer,
        responses={
            422: {"model": Problem, "description": "Empty or over-long q, k out of range."},
            503: {"model": Problem, "description": "No model or no index yet."},
        },
        tags=["search"],
    )
    async def search_query(
        request: Request,
        model: SearchableDep,
        q: Annotated[str | None, Query(description="What the buyer typed.")] = None,
        k: Annotated[int, Query(description="How many listings (1..100).")] = DEFAULT_RESULTS,
        category: Annotated[
            str | None, Query(description="Only listings of this category.")
        ] = None,
    ) -> QueryAnswer:
        """Listings ranked for a typed query: TF-IDF relevance over names and descriptions,
        boosted by the category the text model gives the query (when one is served)."""
        query = checked_text(q, settings.max_text_chars, required=True)
        k = _checked_k(k)
        wanted = _checked_category(model, category)
        search = _text_search(model, request)
        probabilities, best, probability = await _query_category(request, query)
        ranked = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: search.rank(query, k, category=wanted, category_probabilities=probabilities),
        )
        return QueryAnswer(
            query=query,
            category=best,
            probability=probability,
            results=_ranked_listings(model, ranked),
        )

    @app.get(
        "/listings/{product_id}",
        response_model=ListingDetail,
        responses={404: {"model": Problem}, 503: {"model": Problem}},
        tags=["search"],
    )
    async def listing(product_id: str, model: SearchableDep) -> ListingDetail:
        """A listing of the indexed catalogue: name, price, location, category, photos."""
        record = model.index.listing(product_id)
        if record is None:
            raise HTTPException(404, f"no listing {product_id!r} in the search index")
        return ListingDetail(
            product_id=str(record["product_id"]),
            name=str(record["name"]),
            price=record.get("price"),
            location=record.get("location"),
            category=str(record["category"]),
            url=record.get("url"),
            thumbnail_urls=[f"/thumbnails/{i}.jpg" for i in record.get("image_ids", [])],
        )

    @app.get(
        "/listings/{product_id}/similar",
        response_model=SimilarAnswer,
        responses={404: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
        tags=["search"],
    )
    async def similar(
        product_id: str,
        model: SearchableDep,
        k: int = DEFAULT_RESULTS,
        category: str | None = None,
    ) -> SimilarAnswer:
        """Listings similar to one already in the catalogue (no upload), itself left out."""
        k = _checked_k(k)
        wanted = _checked_category(model, category)
        found = await asyncio.get_running_loop().run_in_executor(
            None, lambda: model.index.similar_to_listing(product_id, k, wanted)
        )
        if found is None:
            raise HTTPException(404, f"no listing {product_id!r} in the search index")
        return SimilarAnswer(
            product_id=product_id, model=_model_ref(model), results=_listings(found)
        )

    @app.get(
        "/thumbnails/{image_id}.jpg",
        response_class=FileResponse,
        responses={404: {"model": Problem}, 503: {"model": Problem}},
        tags=["search"],
    )
    async def thumbnail(image_id: str, model: SearchableDep) -> FileResponse:
        """A small JPEG of an indexed photo (from the index run's artifacts)."""
        path = model.index.thumbnail_path(image_id)
        if path is None:
            raise HTTPException(404, f"no thumbnail for image {image_id!r}")
        return FileResponse(
            path, media_type="image/jpeg", headers={"Cache-Control": THUMBNAIL_CACHE}
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        """The web page: a photo in, its category and similar listings out."""
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

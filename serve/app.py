"""The FastAPI app: the routers, the middleware, the error handlers, and the lifespan.

``create_app(settings)`` builds the app; nothing is loaded at import time or in the
factory. The lifespan starts the model holders (each loads its production version in the
background: the port opens at once and ``/ready`` says when a model is there), the
batcher and the decode pool, and stops them on shutdown.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from marketplace_models.kinds import IMAGE_TEXT, RANKING, TEXT
from search import index as search_index
from serve.errors import add_error_handlers
from serve.holder import ModelHolder
from serve.inference import Batcher, Classifier
from serve.metrics import ServiceMetrics
from serve.middleware import MODEL_HEADER, ServiceMiddleware
from serve.openapi import install_schema
from serve.routes import capstone, operations, page, predict, search
from serve.routes.page import STATIC
from serve.settings import Settings

__all__ = ["MODEL_HEADER", "create_app"]
ROUTERS = (predict.router, search.router, operations.router, capstone.router, page.router)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for ``settings`` (default: read from the environment)."""
    settings = settings or Settings()
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
    app.state.metrics = ServiceMetrics()
    for router in ROUTERS:
        app.include_router(router)
    app.state.api_routes = [route for router in ROUTERS for route in router.routes]
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(ServiceMiddleware, settings=settings, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=[MODEL_HEADER],
        )
    add_error_handlers(app)
    install_schema(app)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the slots, the batcher and the decode pool; stop them and drop the downloads."""
    settings: Settings = app.state.settings
    # One query per request, requests side by side: FAISS's own threads only contend.
    search_index.use_threads(1)
    async with AsyncExitStack() as stack:
        index_cache = settings.cache_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-"))
        )
        # Every model download goes in here, and the folder goes at shutdown, a load cut
        # short included.
        downloads = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="serve-downloads-", ignore_cleanup_errors=True)
            )
        )
        app.state.holders = _holders(settings, app.state.metrics, index_cache, downloads)
        app.state.holder = app.state.holders[next(iter(app.state.holders))]
        app.state.classifier = _classifier(settings, app.state.metrics)
        app.state.classifier.batcher.start()
        stack.callback(app.state.classifier.close)
        stack.push_async_callback(app.state.classifier.batcher.stop)
        for each in app.state.holders.values():
            each.start()
        stack.push_async_callback(
            lambda: asyncio.gather(*(each.stop() for each in app.state.holders.values()))
        )
        yield


def _holders(
    settings: Settings, metrics: ServiceMetrics, index_cache: Path, downloads: Path
) -> dict[str, ModelHolder]:
    """One slot per kind, the image model's first (it alone has a search index), the
    learned ranker's last."""
    image = ModelHolder(settings, metrics, index_cache=index_cache, downloads=downloads)
    uris = {
        TEXT: settings.text_model_uri,
        IMAGE_TEXT: settings.listing_model_uri,
        RANKING: settings.ranker_uri,
    }
    others = {
        kind: ModelHolder(settings, metrics, kind=kind, model_uri=uri, downloads=downloads)
        for kind, uri in uris.items()
    }
    return {image.kind: image, **others}


def _classifier(settings: Settings, metrics: ServiceMetrics) -> Classifier:
    """The decode pool in front of the batcher that runs the image engines."""
    batcher = Batcher(
        settings.batch_size,
        settings.batch_wait_ms / 1000.0,
        metrics,
        max_queued=settings.max_queued_images,
        timeout_s=settings.inference_timeout,
    )
    return Classifier(
        batcher,
        settings.decode_workers,
        metrics,
        decodes_per_request=settings.decodes_per_request,
        max_decode_bytes=settings.max_decode_bytes,
    )

"""The routes' dependencies, as types: ``model: ModelDep`` is the version serving a request.

Each reads what the lifespan put on ``app.state`` (settings, metrics, the model holders,
the classifier) or answers the request itself: 503 with ``Retry-After`` while there is no
model of the kind a route needs, 401 for an admin route without the token.

The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop each (three per /predict) for a dict lookup.
"""

from __future__ import annotations

import math
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from marketplace_models.kinds import IMAGE_TEXT, RANKING, TEXT
from search.text import TextSearch
from serve.holder import ModelHolder
from serve.inference import Classifier
from serve.loader import ServedModel
from serve.metrics import ServiceMetrics
from serve.middleware import NO_MODEL
from serve.settings import Settings


def retry_after(settings: Settings) -> dict[str, str]:
    """The ``Retry-After`` header of a 503 that the next alias check may end."""
    return {"Retry-After": str(math.ceil(settings.reload_interval))}


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_holder(request: Request) -> ModelHolder:
    """The image model's slot (the one /ready and /model speak of first)."""
    return request.app.state.holder


async def get_holders(request: Request) -> dict[str, ModelHolder]:
    """Every slot, by kind."""
    return request.app.state.holders


async def get_classifier(request: Request) -> Classifier:
    return request.app.state.classifier


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
HoldersDep = Annotated[dict[str, ModelHolder], Depends(get_holders)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]


async def get_model(request: Request, holder: HolderDep) -> ServedModel:
    """The image version serving this request (fixed for its whole life), or 503."""
    model = holder.current
    if model is None:
        raise HTTPException(503, holder.reason, headers=retry_after(holder.settings))
    request.state.model_version = model.details.label
    return model


ModelDep = Annotated[ServedModel, Depends(get_model)]


async def get_searchable_model(model: ModelDep, settings: SettingsDep) -> ServedModel:
    """The serving version, when it has a search index; else 503 with the command to build it."""
    if model.index is None:
        detail = model.index_problem or "no search index"
        raise HTTPException(503, detail, headers=retry_after(settings))
    return model


def served(request: Request, kind: str) -> ServedModel:
    """The version of ``kind`` serving this request, or 503 saying why there is none."""
    holder = request.app.state.holders[kind]
    model = holder.current
    if model is None:
        request.state.model_version = NO_MODEL  # not the image model's: none of this kind
        detail = f"no {kind} model: {holder.reason}"
        raise HTTPException(503, detail, headers=retry_after(holder.settings))
    request.state.model_version = model.details.label
    return model


async def get_text_model(request: Request) -> ServedModel:
    return served(request, TEXT)


async def get_listing_model(request: Request) -> ServedModel:
    return served(request, IMAGE_TEXT)


async def get_listing_model_if_any(holders: HoldersDep) -> ServedModel | None:
    """The photo + text version if one is served, else None (the photo model answers)."""
    return holders[IMAGE_TEXT].current


async def get_text_model_if_any(holders: HoldersDep) -> ServedModel | None:
    """The text version if one is served, else None (a query gets no category boost)."""
    return holders[TEXT].current


async def get_ranker_if_any(holders: HoldersDep) -> ServedModel | None:
    """The learned ranker if one is served, else None (searches use the hand-set blend)."""
    return holders[RANKING].current


SearchableDep = Annotated[ServedModel, Depends(get_searchable_model)]
TextModelDep = Annotated[ServedModel, Depends(get_text_model)]
ListingModelDep = Annotated[ServedModel, Depends(get_listing_model)]
MaybeListingModelDep = Annotated[ServedModel | None, Depends(get_listing_model_if_any)]
MaybeTextModelDep = Annotated[ServedModel | None, Depends(get_text_model_if_any)]
MaybeRankerDep = Annotated[ServedModel | None, Depends(get_ranker_if_any)]


def text_search_of(model: ServedModel, settings: Settings) -> TextSearch:
    """The serving version's text search, or 503 with the command that builds it."""
    if model.text_search is None:
        if model.text_search_problem is not None:  # it failed to load: tried again
            detail = f"{model.text_search_problem} (the service tries again by itself)"
        else:
            detail = (
                f"the search index of {model.details.label} has no text search (built before "
                "the index step made one): rebuild it with `mlflow run . -e index -P "
                "force=true --env-manager local`"
            )
        raise HTTPException(503, detail, headers=retry_after(settings))
    return model.text_search


bearer = HTTPBearer(auto_error=False, description="SERVE_ADMIN_TOKEN")


async def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Nothing when the request carries ``Authorization: Bearer <SERVE_ADMIN_TOKEN>``; else 401."""
    if settings.admin_token is None:
        raise HTTPException(
            401,
            "admin routes are off: start the service with SERVE_ADMIN_TOKEN set",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), settings.admin_token.get_secret_value().encode()):
        raise HTTPException(
            401,
            "missing or wrong admin token: send `Authorization: Bearer <SERVE_ADMIN_TOKEN>`",
            headers={"WWW-Authenticate": "Bearer"},
        )

"""Building the routes' answers from a served version and its results."""

from __future__ import annotations

import math

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from serve.inference import ImageResult
from serve.loader import ServedModel
from serve.schemas import (
    CategoryScore,
    IndexInfo,
    Listing,
    ListingPrediction,
    ModelRef,
    Prediction,
    SlotStatus,
)


def model_ref(model: ServedModel) -> ModelRef:
    details = model.details
    return ModelRef(name=details.name, version=details.version, run_id=details.run_id)


def top_k(model: ServedModel, probabilities: np.ndarray, k: int) -> list[CategoryScore]:
    """The ``k`` most probable categories, most probable first (ties in category order)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        CategoryScore(category=model.categories[i], probability=float(probabilities[i]))
        for i in order
    ]


def prediction(model: ServedModel, result: ImageResult, k: int) -> Prediction:
    top = top_k(model, result.probabilities, k)
    return Prediction(
        category=top[0].category,
        probability=top[0].probability,
        top_k=top,
        model=model_ref(model),
        input=model.kind,
    )


def listing_prediction(model: ServedModel, probabilities: np.ndarray, k: int) -> ListingPrediction:
    """A prediction with the capstone template's ``Category`` and ``Probabilities`` too."""
    top = top_k(model, probabilities, k)
    return ListingPrediction(
        category=top[0].category,
        probability=top[0].probability,
        top_k=top,
        model=model_ref(model),
        input=model.kind,
        Category=top[0].category,
        Probabilities=[float(p) for p in probabilities],
    )


def listings(results) -> list[Listing]:
    """The index's search results as listings, each with its photo's thumbnail."""
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


def ranked_listings(model: ServedModel, ranked: list[tuple[str, float]]) -> list[Listing]:
    """Ranked ``(product_id, score)`` pairs as listings, each with its first photo."""
    found = []
    for product_id, score in ranked:
        record = model.index.listing(product_id)
        if record is None:
            continue
        photos = record.get("image_ids") or []
        found.append(
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
    return found


def index_info(model: ServedModel) -> IndexInfo:
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


def slots(request: Request) -> dict[str, SlotStatus]:
    """Every slot's state: what it serves, its last error, its attempts, its next retry."""
    holders = request.app.state.holders
    return {kind: SlotStatus(**holder.status()) for kind, holder in holders.items()}


def readiness_problem(request: Request) -> str | None:
    """Why the service cannot answer /predict now, or None: no image model yet, or the
    batcher down."""
    holder = request.app.state.holder
    if holder.current is None:
        return holder.reason
    return request.app.state.classifier.batcher.problem()  # batcher down, or the engine stuck


def not_ready(request: Request, reason: str) -> JSONResponse:
    """503 with the reason, Retry-After and every slot's state."""
    holder = request.app.state.holder
    retry = holder.retry.seconds_left()
    wait = min(retry, holder.settings.reload_interval) if retry else holder.settings.reload_interval
    states = {kind: slot.model_dump(mode="json") for kind, slot in slots(request).items()}
    return JSONResponse(
        {"detail": reason, "slots": states},
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )

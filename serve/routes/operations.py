"""The ``operations`` tag: liveness, readiness, the served version, metrics, reloads."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serve import answers
from serve.deps import HolderDep, HoldersDep, MetricsDep, SettingsDep, require_admin
from serve.schemas import Health, ModelInfo, Problem, Readiness, ReloadResult, SlotReload

router = APIRouter(tags=["operations"])
NOT_READY = {503: {"model": Problem, "description": "No model yet, and why."}}


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Alive: the process answers (whether or not a model is loaded)."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses=NOT_READY)
async def ready(request: Request, holder: HolderDep) -> Readiness | JSONResponse:
    """200 while the image model is loaded and the batcher runs; else 503 with the
    reason (and Retry-After). Both say every slot's state: its last error, its failed
    attempts and its next retry."""
    problem = answers.readiness_problem(request)
    if problem is not None:
        return answers.not_ready(request, problem)
    model = holder.current
    request.state.model_version = model.details.label
    return Readiness(status="ready", model=answers.model_ref(model), slots=answers.slots(request))


@router.get("/model", response_model=ModelInfo, responses=NOT_READY)
async def model_info(
    request: Request, holder: HolderDep, settings: SettingsDep
) -> ModelInfo | JSONResponse:
    """The served version: name, version, run, aliases, test metrics, engine, UI link;
    and every slot's state (503 with them before the image model loads)."""
    model = holder.current
    if model is None:
        return answers.not_ready(request, holder.reason)
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
        index=answers.index_info(model),
        slots=answers.slots(request),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"example": "marketplace_model_loaded 1.0"}}}},
)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    """Prometheus text: requests, latency, batch sizes, version served, reloads."""
    return Response(metrics.render(), media_type=metrics.content_type)


@router.post(
    "/admin/reload",
    response_model=ReloadResult,
    responses={401: {"model": Problem, "description": "No or wrong admin token."}},
    dependencies=[Depends(require_admin)],
)
async def admin_reload(holder: HolderDep, holders: HoldersDep) -> ReloadResult:
    """Check the registry now for every slot (image, text, image+text) and load what
    each URI names, even a version that failed; the image slot's outcome on top."""
    results = await asyncio.gather(*(each.check(force=True) for each in holders.values()))
    slots = {
        kind: SlotReload(outcome=r.outcome, detail=r.detail, version=r.version)
        for kind, r in zip(holders, results, strict=True)
    }
    return ReloadResult(**slots[holder.kind].model_dump(), slots=slots)

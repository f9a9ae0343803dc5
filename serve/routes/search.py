"""The ``search`` tag: listings like a photo, for a typed query, like a listing; photos."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import FileResponse

from serve import answers, ranking
from serve.checks import checked_category, checked_text
from serve.classify import classify_one, query_category
from serve.deps import (
    ClassifierDep,
    MaybeRankerDep,
    MaybeTextModelDep,
    MetricsDep,
    SearchableDep,
    SettingsDep,
    text_search_of,
)
from serve.inference import ImageResult
from serve.loader import ServedModel
from serve.routes.fields import NO_INDEX, NOT_BLANK, NOT_FOUND, UPLOAD_ERRORS, Image
from serve.schemas import ListingDetail, Problem, QueryAnswer, SearchAnswer, SimilarAnswer

DEFAULT_RESULTS = 12
MAX_RESULTS = 100
THUMBNAIL_CACHE = "public, max-age=86400"
K_HELP = f"How many listings (1..{MAX_RESULTS})."
CATEGORY_HELP = "Only listings of this category."
QUERY_HELP = "What the buyer typed."

router = APIRouter(tags=["search"])

FormK = Annotated[int, Form(ge=1, le=MAX_RESULTS, description=K_HELP)]
QueryK = Annotated[int, Query(ge=1, le=MAX_RESULTS, description=K_HELP)]


@router.post("/search", response_model=SearchAnswer, responses={**UPLOAD_ERRORS, **NO_INDEX})
async def search(
    model: SearchableDep,
    text_model: MaybeTextModelDep,
    ranker: MaybeRankerDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    image: Image,
    k: FormK = DEFAULT_RESULTS,
    category: Annotated[str | None, Form(description=CATEGORY_HELP)] = None,
    exclude_product: Annotated[str | None, Form(description="Leave this listing out.")] = None,
    q: Annotated[
        str | None,
        Form(min_length=1, pattern=NOT_BLANK, description="A typed query too: blended in."),
    ] = None,
) -> SearchAnswer:
    """A photo's category and the most similar listings (a listing's photos count once).

    With `q`, the learned ranker (when one is served) re-ranks the query's text and photo
    candidates; without one, the query's text relevance (and its category boost) is
    blended with the photo's similarity (`search.text`). `ranking` says which did."""
    wanted = checked_category(model, category)
    query = checked_text(q, settings.max_text_chars)
    if query is not None:
        text_search_of(model, settings)  # 503 before the photo is read
    result = await classify_one(classifier, model, image)
    answer = answers.prediction(model, result, len(model.categories))
    loop = asyncio.get_running_loop()
    if query is None:
        [found] = await loop.run_in_executor(
            None,
            lambda: model.index.search(
                result.embedding[None, :], k, wanted, exclude_product or None
            ),
        )
        metrics.searches.labels(ranking.PHOTO).inc()
        return SearchAnswer(**dict(answer), results=answers.listings(found), ranking=ranking.PHOTO)
    probabilities, _, _ = await query_category(text_model, query)

    def ranked():
        asked = ranking.Query(
            query,
            k,
            category=wanted,
            category_probabilities=probabilities,
            photo_scores=_photo_scores(model, result, wanted),
            exclude=exclude_product or None,
        )
        return ranking.rank(model, ranker, asked, settings.rank_candidates, metrics)

    found, used = await loop.run_in_executor(None, ranked)
    return SearchAnswer(**dict(answer), results=answers.ranked_listings(model, found), ranking=used)


def _photo_scores(model: ServedModel, result: ImageResult, wanted: str | None) -> dict:
    """The photo's similarity to every listing (of ``wanted`` only, when given)."""
    [similar] = model.index.search(result.embedding[None, :], model.index.num_products, wanted)
    return {r.product_id: r.score for r in similar}


@router.get(
    "/search",
    response_model=QueryAnswer,
    responses={
        422: {"model": Problem, "description": "Empty or over-long q, k out of range."},
        **NO_INDEX,
    },
)
async def search_query(
    model: SearchableDep,
    text_model: MaybeTextModelDep,
    ranker: MaybeRankerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    q: Annotated[str, Query(min_length=1, pattern=NOT_BLANK, description=QUERY_HELP)],
    k: QueryK = DEFAULT_RESULTS,
    category: Annotated[str | None, Query(description=CATEGORY_HELP)] = None,
) -> QueryAnswer:
    """Listings ranked for a typed query: by the learned ranker when one is served, else
    by TF-IDF relevance over names and descriptions, boosted by the category the text
    model gives the query (when one is served). `ranking` says which ranked them."""
    query = checked_text(q, settings.max_text_chars)
    wanted = checked_category(model, category)
    text_search_of(model, settings)  # 503 saying how to build it
    probabilities, best, probability = await query_category(text_model, query)
    asked = ranking.Query(query, k, category=wanted, category_probabilities=probabilities)
    found, used = await asyncio.get_running_loop().run_in_executor(
        None, lambda: ranking.rank(model, ranker, asked, settings.rank_candidates, metrics)
    )
    return QueryAnswer(
        query=query,
        category=best,
        probability=probability,
        results=answers.ranked_listings(model, found),
        ranking=used,
    )


@router.get(
    "/listings/{product_id}", response_model=ListingDetail, responses={**NOT_FOUND, **NO_INDEX}
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


@router.get(
    "/listings/{product_id}/similar",
    response_model=SimilarAnswer,
    responses={**NOT_FOUND, 422: {"model": Problem}, **NO_INDEX},
)
async def similar(
    product_id: str,
    model: SearchableDep,
    k: QueryK = DEFAULT_RESULTS,
    category: Annotated[str | None, Query(description=CATEGORY_HELP)] = None,
) -> SimilarAnswer:
    """Listings similar to one already in the catalogue (no upload), itself left out."""
    wanted = checked_category(model, category)
    found = await asyncio.get_running_loop().run_in_executor(
        None, lambda: model.index.similar_to_listing(product_id, k, wanted)
    )
    if found is None:
        raise HTTPException(404, f"no listing {product_id!r} in the search index")
    return SimilarAnswer(
        product_id=product_id, model=answers.model_ref(model), results=answers.listings(found)
    )


@router.get(
    "/thumbnails/{image_id}.jpg",
    response_class=FileResponse,
    responses={**NOT_FOUND, **NO_INDEX},
)
async def thumbnail(image_id: str, model: SearchableDep) -> FileResponse:
    """A small JPEG of an indexed photo (from the index run's artifacts)."""
    path = model.index.thumbnail_path(image_id)
    if path is None:
        raise HTTPException(404, f"no thumbnail for image {image_id!r}")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": THUMBNAIL_CACHE})

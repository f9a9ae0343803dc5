"""The ``search`` tag: listings like a photo, for a typed query, like a listing; photos."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import FileResponse

from search.text import TextSearch
from serve import answers
from serve.checks import checked_category, checked_text
from serve.classify import classify_one, query_category
from serve.deps import (
    ClassifierDep,
    MaybeTextModelDep,
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
    classifier: ClassifierDep,
    settings: SettingsDep,
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

    With `q`, the query's text relevance (and its category boost) is blended with the
    photo's similarity (`search.text`)."""
    wanted = checked_category(model, category)
    query = checked_text(q, settings.max_text_chars)
    text_search = text_search_of(model, settings) if query is not None else None  # 503 first
    result = await classify_one(classifier, model, image)
    answer = answers.prediction(model, result, len(model.categories))
    if text_search is None:
        [found] = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: model.index.search(
                result.embedding[None, :], k, wanted, exclude_product or None
            ),
        )
        return SearchAnswer(**dict(answer), results=answers.listings(found))
    probabilities, _, _ = await query_category(text_model, query)
    ranked = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: _blended(
            model, text_search, result, query, k, wanted, probabilities, exclude_product
        ),
    )
    return SearchAnswer(**dict(answer), results=answers.ranked_listings(model, ranked))


def _blended(
    model: ServedModel,
    search: TextSearch,
    result: ImageResult,
    query: str,
    k: int,
    wanted: str | None,
    probabilities: dict[str, float] | None,
    exclude_product: str | None,
) -> list[tuple[str, float]]:
    """The query's ranking with the photo's similarity to every listing blended in."""
    [similar] = model.index.search(result.embedding[None, :], model.index.num_products, wanted)
    return search.rank(
        query,
        k,
        category=wanted,
        category_probabilities=probabilities,
        photo_scores={r.product_id: r.score for r in similar},
        exclude=exclude_product or None,
    )


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
    settings: SettingsDep,
    q: Annotated[str, Query(min_length=1, pattern=NOT_BLANK, description=QUERY_HELP)],
    k: QueryK = DEFAULT_RESULTS,
    category: Annotated[str | None, Query(description=CATEGORY_HELP)] = None,
) -> QueryAnswer:
    """Listings ranked for a typed query: TF-IDF relevance over names and descriptions,
    boosted by the category the text model gives the query (when one is served)."""
    query = checked_text(q, settings.max_text_chars)
    wanted = checked_category(model, category)
    search = text_search_of(model, settings)
    probabilities, best, probability = await query_category(text_model, query)
    ranked = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: search.rank(query, k, category=wanted, category_probabilities=probabilities),
    )
    return QueryAnswer(
        query=query,
        category=best,
        probability=probability,
        results=answers.ranked_listings(model, ranked),
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

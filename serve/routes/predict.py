"""The ``predict`` tag: a photo, a text, both, or several photos, classified."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Request, UploadFile

from serve import answers
from serve.checks import checked_text, checked_top_k
from serve.classify import classified, classify_one, classify_text, fused
from serve.deps import (
    ClassifierDep,
    ListingModelDep,
    MaybeListingModelDep,
    ModelDep,
    SettingsDep,
    TextModelDep,
)
from serve.inference import UploadError
from serve.routes.fields import UPLOAD_ERRORS, Image, OptionalText, Text, TopK
from serve.schemas import BatchEntry, ListingPrediction, Prediction, UploadProblem

router = APIRouter(tags=["predict"])


@router.post("/predict", response_model=Prediction, responses=UPLOAD_ERRORS)
async def predict(
    request: Request,
    model: ModelDep,
    listing: MaybeListingModelDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    image: Image,
    top_k: TopK = None,
    text: OptionalText = None,
) -> Prediction:
    """Classify one photo: its category, probability, the best `top_k`, the version.

    With a `text`, the photo + text model answers when one is in production (`input`
    says `image+text`); else the photo model, as without one (`input`: `image`).
    """
    text = checked_text(text, settings.max_text_chars)
    k = checked_top_k(model, top_k, settings.top_k)
    if text is not None and listing is not None:
        k = min(k, len(listing.categories))  # top_k is bounded by the photo model's
        request.state.model_version = listing.details.label
        probabilities = await fused(classifier, listing, image, text)
        return Prediction(**dict(answers.listing_prediction(listing, probabilities, k)))
    result = await classify_one(classifier, model, image)
    return answers.prediction(model, result, k)


@router.post(
    "/predict/text",
    response_model=ListingPrediction,
    responses={422: UPLOAD_ERRORS[422], 503: UPLOAD_ERRORS[503]},
)
async def predict_text(
    model: TextModelDep, settings: SettingsDep, text: Text, top_k: TopK = None
) -> ListingPrediction:
    """Classify a listing's text (or a query) with the text model; the capstone
    template's `Category` and `Probabilities` are in the answer too."""
    text = checked_text(text, settings.max_text_chars)
    k = checked_top_k(model, top_k, settings.top_k)
    probabilities = await classify_text(model, text)
    return answers.listing_prediction(model, probabilities, k)


@router.post("/predict/combined", response_model=ListingPrediction, responses=UPLOAD_ERRORS)
async def predict_combined(
    model: ListingModelDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    image: Image,
    text: Text,
    top_k: TopK = None,
) -> ListingPrediction:
    """Classify a photo with its listing's text with the photo + text model; the
    capstone template's `Category` and `Probabilities` are in the answer too."""
    text = checked_text(text, settings.max_text_chars)
    k = checked_top_k(model, top_k, settings.top_k)
    probabilities = await fused(classifier, model, image, text)
    return answers.listing_prediction(model, probabilities, k)


@router.post("/predict/batch", response_model=list[BatchEntry], responses=UPLOAD_ERRORS)
async def predict_batch(
    model: ModelDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    images: Annotated[
        list[UploadFile], File(min_length=1, description="Several photos, repeated field.")
    ],
    top_k: TopK = None,
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
    k = checked_top_k(model, top_k, settings.top_k)
    results = await classified(classifier, model, [await image.read() for image in images])
    entries = []
    for index, (image, result) in enumerate(zip(images, results, strict=True)):
        if isinstance(result, UploadError):
            problem = UploadProblem(status=result.status, detail=result.detail)
            entries.append(BatchEntry(index=index, filename=image.filename, error=problem))
            continue
        answer = answers.prediction(model, result, k)
        entries.append(BatchEntry(index=index, filename=image.filename, **dict(answer)))
    return entries

"""A request's inputs through the served models: photos through the classifier's batcher,
texts through a text model in a worker thread; refusals become HTTP errors."""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import HTTPException, UploadFile

from serve.inference import Busy, Classifier, ImageResult, InferenceTimeout, UploadError
from serve.loader import ServedModel
from serve.middleware import BUSY_RETRY_S


async def classified(
    classifier: Classifier, model: ServedModel, uploads: list[bytes]
) -> list[ImageResult | UploadError]:
    """The classifier's results, its refusals as HTTP errors (503 busy, 504 timed out)."""
    try:
        return await classifier.classify(model, uploads)
    except Busy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(BUSY_RETRY_S)}) from None
    except InferenceTimeout as exc:
        raise HTTPException(504, str(exc)) from None


async def classify_one(
    classifier: Classifier, model: ServedModel, image: UploadFile
) -> ImageResult:
    """One photo's result; a photo that cannot be used is its 4xx."""
    [result] = await classified(classifier, model, [await image.read()])
    if isinstance(result, UploadError):
        raise HTTPException(result.status, result.detail)
    return result


async def fused(
    classifier: Classifier, model: ServedModel, image: UploadFile, text: str
) -> np.ndarray:
    """A listing model's probabilities for one photo and its text.

    The text half runs in a worker thread while the photo is decoded and goes through the
    network, so the text adds only the head's two small matrix products to the latency.
    """
    loop = asyncio.get_running_loop()
    text_probabilities = loop.run_in_executor(None, model.fusion.text.predict_proba, [text])
    try:
        result = await classify_one(classifier, model, image)
    except HTTPException:
        await asyncio.gather(text_probabilities, return_exceptions=True)
        raise
    [probabilities] = model.fusion.combine(result.embedding[None, :], await text_probabilities)
    return probabilities


async def classify_text(model: ServedModel, text: str) -> np.ndarray:
    """A text model's probabilities for one text, computed in a worker thread."""
    loop = asyncio.get_running_loop()
    [probabilities] = await loop.run_in_executor(None, model.classify_text, [text])
    return probabilities


async def query_category(
    text_model: ServedModel | None, query: str
) -> tuple[dict[str, float] | None, str | None, float | None]:
    """The text model's probabilities for ``query`` (None without a text model), its best
    category and that category's probability."""
    if text_model is None:
        return None, None, None
    probabilities = await classify_text(text_model, query)
    best = int(np.argmax(probabilities))
    by_category = dict(zip(text_model.categories, map(float, probabilities), strict=True))
    return by_category, text_model.categories[best], float(probabilities[best])

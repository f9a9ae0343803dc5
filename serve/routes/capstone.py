"""The ``capstone`` tag: the capstone API template's routes, for people coming from it."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter

from serve.classify import classify_one
from serve.deps import ClassifierDep, ModelDep
from serve.routes.fields import UPLOAD_ERRORS, Image
from serve.schemas import CapstoneHealth, CapstonePrediction

router = APIRouter(tags=["capstone"])


@router.get("/healthcheck", response_model=CapstoneHealth)
async def healthcheck() -> CapstoneHealth:
    """The capstone template's health check."""
    return CapstoneHealth(message="API is up and running!")


@router.post("/predict/image", response_model=CapstonePrediction, responses=UPLOAD_ERRORS)
async def predict_image(
    model: ModelDep, classifier: ClassifierDep, image: Image
) -> CapstonePrediction:
    """The capstone template's shape: `Category` and `Probabilities` in category order."""
    result = await classify_one(classifier, model, image)
    best = int(np.argmax(result.probabilities))
    return CapstonePrediction(
        Category=model.categories[best],
        Probabilities=[float(p) for p in result.probabilities],
    )

"""Request and response shapes of the service (the contract in shared/DESIGN.md)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_MODEL = {"name": "marketplace-classifier", "version": 3, "run_id": "5f0c8e..."}
EXAMPLE_TOP_K = [
    {"category": "Home & Garden", "probability": 0.81},
    {"category": "Appliances", "probability": 0.09},
    {"category": "DIY Tools & Materials", "probability": 0.04},
]


def _examples(*examples: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class ModelRef(BaseModel):
    """The version that answered."""

    model_config = _examples(EXAMPLE_MODEL)
    name: str | None = Field(description="Registered model name (None for a plain folder).")
    version: int | None = Field(description="Registered version number.")
    run_id: str | None = Field(description="MLflow run that logged the version.")


class CategoryScore(BaseModel):
    category: str
    probability: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    """A photo's category, its probability, the best ``top_k`` and the version."""

    model_config = _examples(
        {
            "category": "Home & Garden",
            "probability": 0.81,
            "top_k": EXAMPLE_TOP_K,
            "model": EXAMPLE_MODEL,
        }
    )
    category: str
    probability: float = Field(ge=0, le=1)
    top_k: list[CategoryScore]
    model: ModelRef


class UploadProblem(BaseModel):
    status: int = Field(description="The HTTP status this image alone would have had.")
    detail: str


class BatchEntry(BaseModel):
    """One image of a batch: its prediction, or the error of that image alone."""

    model_config = _examples(
        {
            "index": 0,
            "filename": "sofa.jpg",
            "category": "Home & Garden",
            "probability": 0.81,
            "top_k": EXAMPLE_TOP_K,
            "model": EXAMPLE_MODEL,
            "error": None,
        },
        {
            "index": 1,
            "filename": "notes.txt",
            "category": None,
            "probability": None,
            "top_k": None,
            "model": None,
            "error": {"status": 415, "detail": "the upload is not an image: send a photo"},
        },
    )
    index: int
    filename: str | None
    category: str | None = None
    probability: float | None = None
    top_k: list[CategoryScore] | None = None
    model: ModelRef | None = None
    error: UploadProblem | None = None


class Health(BaseModel):
    model_config = _examples({"status": "ok"})
    status: str


class Readiness(BaseModel):
    model_config = _examples({"status": "ready", "model": EXAMPLE_MODEL})
    status: str
    model: ModelRef


class ModelInfo(BaseModel):
    """Everything about the served version, and how the service follows the registry."""

    model_config = _examples(
        {
            **EXAMPLE_MODEL,
            "uri": "models:/marketplace-classifier@production",
            "source": "models:/marketplace-classifier/3",
            "follows": True,
            "aliases": ["production"],
            "metrics": {"test_accuracy": 0.54, "test_top3_accuracy": 0.79},
            "categories": ["Appliances", "Home & Garden"],
            "arch": "resnet18",
            "image_size": 224,
            "engine": "onnx",
            "loaded_at": "2026-11-25T18:00:00Z",
            "load_seconds": 2.4,
            "ui_url": "http://127.0.0.1:5000/#/experiments/1/runs/5f0c8e...",
            "last_check": "2026-11-25T18:05:00Z",
            "last_check_error": None,
            "last_reload_error": None,
        }
    )
    name: str | None
    version: int | None
    run_id: str | None
    uri: str = Field(description="The MODEL_URI the service serves.")
    source: str = Field(description="What that URI resolved to when this version loaded.")
    follows: bool = Field(description="Whether the URI is an alias/stage that is followed.")
    aliases: list[str]
    metrics: dict[str, float] = Field(description="The version's test metrics.")
    categories: list[str]
    arch: str
    image_size: int
    engine: str = Field(description="onnx, torch-cpu or torch-cuda.")
    loaded_at: datetime
    load_seconds: float
    ui_url: str | None = Field(description="The version's run in the MLflow UI.")
    last_check: datetime | None
    last_check_error: str | None = Field(description="Why the last registry check failed.")
    last_reload_error: str | None = Field(
        description="Why the last version tried was not swapped in (None after a success)."
    )


class ReloadResult(BaseModel):
    model_config = _examples({"outcome": "loaded", "detail": "now serving 4", "version": 4})
    outcome: str = Field(description="loaded, unchanged, failed or unreachable.")
    detail: str
    version: int | None


class Problem(BaseModel):
    """Every error: ``{"detail": ...}``."""

    model_config = _examples({"detail": "the upload is not an image: send a photo"})
    detail: str


class CapstoneHealth(BaseModel):
    """The capstone API template's /healthcheck shape."""

    model_config = _examples({"message": "API is up and running!"})
    message: str


class CapstonePrediction(BaseModel):
    """The capstone API template's /predict/image shape."""

    model_config = _examples({"Category": "Home & Garden", "Probabilities": [0.09, 0.81, 0.1]})
    Category: str
    Probabilities: list[float] = Field(description="One per category, in category order.")

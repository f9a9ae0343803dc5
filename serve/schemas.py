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
    input: str = Field(
        "image",
        description="What the answering model took: `image` (the photo model), `text` (the "
        "text model) or `image+text` (the photo + text model).",
    )


class ListingPrediction(Prediction):
    """A :class:`Prediction` with the capstone API template's keys too."""

    model_config = _examples(
        {
            "category": "Home & Garden",
            "probability": 0.81,
            "top_k": EXAMPLE_TOP_K,
            "model": EXAMPLE_MODEL,
            "input": "image+text",
            "Category": "Home & Garden",
            "Probabilities": [0.09, 0.81, 0.1],
        }
    )
    Category: str = Field(description="The capstone template's key: the category.")
    Probabilities: list[float] = Field(description="One per category, in category order.")


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


class SlotStatus(BaseModel):
    """One model slot (image, text, image+text, ranking): what it serves, and its failed
    loads."""

    kind: str = Field(description="image, text, image+text or ranking (the learned ranker).")
    uri: str = Field(
        description="The URI the slot follows (MODEL_URI, TEXT_MODEL_URI, LISTING_MODEL_URI, "
        "RANKER_URI)."
    )
    version: int | None = Field(description="The version it serves, None before one loads.")
    loaded: bool
    reason: str | None = Field(None, description="Why it serves nothing yet.")
    last_error: str | None = Field(None, description="Why the last version tried did not load.")
    attempts: int = Field(0, description="Failed loads in a row of that version.")
    next_retry: datetime | None = Field(None, description="When that version is tried again.")
    last_check: datetime | None = None
    last_check_error: str | None = None


RANKING_HELP = (
    "Which ranking ordered `results`: `learned v<N>` (version N of the learned ranker, "
    "RANKER_URI), `blend` (the hand-set blend of text relevance, photo similarity and the "
    "category boost: no ranker is served, or it failed on this query) or `photo` (a photo "
    "alone, by its cosine similarity)."
)
RANKING_PATTERN = r"^(blend|photo|learned \S.*)$"

EXAMPLE_SLOT = {
    "kind": "image",
    "uri": "models:/marketplace-classifier@production",
    "version": 3,
    "loaded": True,
    "reason": None,
    "last_error": None,
    "attempts": 0,
    "next_retry": None,
    "last_check": "2026-11-25T18:05:00Z",
    "last_check_error": None,
}


class Readiness(BaseModel):
    model_config = _examples(
        {"status": "ready", "model": EXAMPLE_MODEL, "slots": {"image": EXAMPLE_SLOT}}
    )
    status: str
    model: ModelRef
    slots: dict[str, SlotStatus] = Field(
        default_factory=dict, description="Every model slot, by kind."
    )


class ModelInfo(BaseModel):
    """Everything about the served version, and how the service follows the registry."""

    model_config = _examples(
        {
            **EXAMPLE_MODEL,
            "uri": "models:/marketplace-classifier@production",
            "source": "models:/marketplace-classifier/3",
            "follows": True,
            "aliases": ["production"],
            "metrics": {"test/accuracy": 0.54, "test/top3_accuracy": 0.79},
            "categories": ["Appliances", "Home & Garden"],
            "arch": "resnet18",
            "image_size": 224,
            "engine": "onnx-int8",
            "engine_reason": "auto: int8 export passed its gate",
            "loaded_at": "2026-11-25T18:00:00Z",
            "load_seconds": 2.4,
            "ui_url": "http://127.0.0.1:5000/#/experiments/1/runs/5f0c8e...",
            "last_check": "2026-11-25T18:05:00Z",
            "last_check_error": None,
            "last_reload_error": None,
            "index": {
                "available": True,
                "run_id": "9d1e...",
                "kind": "flat",
                "vectors": 6000,
                "listings": 2000,
                "problem": None,
            },
            "slots": {"image": EXAMPLE_SLOT},
        }
    )
    name: str | None
    version: int | None
    run_id: str | None
    uri: str = Field(description="The MODEL_URI the service serves.")
    source: str = Field(description="What that URI resolved to when this version loaded.")
    follows: bool = Field(description="Whether the URI is an alias/stage that is followed.")
    aliases: list[str]
    metrics: dict[str, float] = Field(
        description="The version's test metrics (test/accuracy ..., also for versions logged "
        "with the older names test_accuracy ...)."
    )
    categories: list[str]
    arch: str
    image_size: int
    engine: str = Field(description="onnx-int8, onnx, torch-cpu or torch-cuda.")
    engine_reason: str = Field(
        "", description="Why that engine answers: SERVE_ENGINE, and what the version has."
    )
    loaded_at: datetime
    load_seconds: float
    ui_url: str | None = Field(description="The version's run in the MLflow UI.")
    last_check: datetime | None
    last_check_error: str | None = Field(description="Why the last registry check failed.")
    last_reload_error: str | None = Field(
        description="Why the last version tried was not swapped in (None after a success)."
    )
    index: IndexInfo
    slots: dict[str, SlotStatus] = Field(
        default_factory=dict,
        description="Every model slot, by kind: image, text, image+text, ranking.",
    )


EXAMPLE_LISTING = {
    "product_id": "243809c0-9cfc-4486-ad12-3b7a16605ba9",
    "name": "Oak dining table and 4 chairs",
    "price": 120.0,
    "location": "Leeds, West Yorkshire",
    "category": "Home & Garden",
    "score": 0.93,
    "thumbnail_url": "/thumbnails/1a2b3c.jpg",
}


class Listing(BaseModel):
    """A listing in search results: its best-matching photo stands for it."""

    model_config = _examples(EXAMPLE_LISTING)
    product_id: str
    name: str
    price: float | None = Field(description="Pounds; None when the listing gave none.")
    location: str | None
    category: str
    score: float = Field(
        description="The ranking's score, higher first: the best photo's cosine similarity "
        "(1 = identical) for a photo alone, the blend's score for a typed query, the "
        "ranker's (any real number) when `ranking` is `learned v<N>`."
    )
    thumbnail_url: str = Field(description="A small JPEG of that photo, served here.")


class SearchAnswer(BaseModel):
    """A photo's category, and the most similar listings, best first."""

    model_config = _examples(
        {
            "category": "Home & Garden",
            "probability": 0.81,
            "top_k": EXAMPLE_TOP_K,
            "model": EXAMPLE_MODEL,
            "results": [EXAMPLE_LISTING],
            "ranking": "photo",
        }
    )
    category: str
    probability: float = Field(ge=0, le=1)
    top_k: list[CategoryScore]
    model: ModelRef
    results: list[Listing]
    ranking: str = Field(pattern=RANKING_PATTERN, description=RANKING_HELP)


class QueryAnswer(BaseModel):
    """Listings ranked for a typed query, best first, and the query's category (by the text
    model, when one is served; it boosts the listings of that category)."""

    model_config = _examples(
        {
            "query": "corner sofa",
            "category": "Home & Garden",
            "probability": 0.81,
            "results": [EXAMPLE_LISTING],
            "ranking": "learned v2",
        }
    )
    query: str
    category: str | None = None
    probability: float | None = Field(None, ge=0, le=1)
    results: list[Listing]
    ranking: str = Field(pattern=RANKING_PATTERN, description=RANKING_HELP)


class ListingDetail(BaseModel):
    """One listing of the catalogue the index was built over."""

    model_config = _examples(
        {
            **{k: v for k, v in EXAMPLE_LISTING.items() if k not in ("score", "thumbnail_url")},
            "url": "https://www.gumtree.com/p/...",
            "thumbnail_urls": ["/thumbnails/1a2b3c.jpg"],
        }
    )
    product_id: str
    name: str
    price: float | None
    location: str | None
    category: str
    url: str | None
    thumbnail_urls: list[str]


class SimilarAnswer(BaseModel):
    """Listings similar to one in the catalogue (itself left out), best first."""

    model_config = _examples(
        {
            "product_id": EXAMPLE_LISTING["product_id"],
            "model": EXAMPLE_MODEL,
            "results": [EXAMPLE_LISTING],
        }
    )
    product_id: str
    model: ModelRef
    results: list[Listing]


class IndexInfo(BaseModel):
    """The served version's search index, or why there is none."""

    available: bool
    run_id: str | None = None
    kind: str | None = None
    vectors: int | None = None
    listings: int | None = None
    problem: str | None = Field(None, description="Why /search answers 503, and the fix.")


class SlotReload(BaseModel):
    outcome: str = Field(description="loaded, unchanged, failed or unreachable.")
    detail: str
    version: int | None


class ReloadResult(SlotReload):
    """The image slot's outcome (at the top, as before), and every slot's."""

    model_config = _examples(
        {
            "outcome": "loaded",
            "detail": "now serving 4",
            "version": 4,
            "slots": {"image": {"outcome": "loaded", "detail": "now serving 4", "version": 4}},
        }
    )
    slots: dict[str, SlotReload] = Field(default_factory=dict)


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

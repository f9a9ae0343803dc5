"""The service's settings: one pydantic-settings object read from the environment.

``MLFLOW_TRACKING_URI`` and ``MODEL_URI`` keep their usual names; everything else has the
``SERVE_`` prefix (``SERVE_PORT=8080``). Lists (``SERVE_CORS_ORIGINS``) are comma-separated.
Nothing is read at import time: :func:`Settings` reads the environment when it is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from registry.kinds import LISTING_MODEL_NAME, RANKER_MODEL_NAME, TEXT_MODEL_NAME
from registry.store import DEFAULT_MODEL_NAME, DEFAULT_TRACKING_URI, PRODUCTION

DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{PRODUCTION}"
DEFAULT_TEXT_MODEL_URI = f"models:/{TEXT_MODEL_NAME}@{PRODUCTION}"
DEFAULT_LISTING_MODEL_URI = f"models:/{LISTING_MODEL_NAME}@{PRODUCTION}"
DEFAULT_RANKER_URI = f"models:/{RANKER_MODEL_NAME}@{PRODUCTION}"
MIB = 1024 * 1024

Engine = Literal["auto", "onnx-int8", "onnx", "torch"]


class Settings(BaseSettings):
    """Every knob of the service, with the environment variable that sets it."""

    model_config = SettingsConfigDict(
        env_prefix="SERVE_", extra="ignore", frozen=True, populate_by_name=True
    )

    tracking_uri: str = Field(
        DEFAULT_TRACKING_URI,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "SERVE_TRACKING_URI"),
        description="MLflow tracking/registry store the model is read from.",
    )
    model_uri: str = Field(
        DEFAULT_MODEL_URI,
        validation_alias=AliasChoices("MODEL_URI", "SERVE_MODEL_URI"),
        description="What to serve: an alias URI is followed as it moves; any URI that "
        "registry.resolve accepts (models:/name/3, models:/name/Production, runs:/..., a "
        "folder) is served as given.",
    )
    text_model_uri: str = Field(
        DEFAULT_TEXT_MODEL_URI,
        validation_alias=AliasChoices("TEXT_MODEL_URI", "SERVE_TEXT_MODEL_URI"),
        description="The text model (input `text`) for /predict/text; followed like MODEL_URI. "
        "Until one holds the alias, /predict/text answers 503.",
    )
    listing_model_uri: str = Field(
        DEFAULT_LISTING_MODEL_URI,
        validation_alias=AliasChoices("LISTING_MODEL_URI", "SERVE_LISTING_MODEL_URI"),
        description="The photo + text model (input `image` and `text`) that answers /predict "
        "with a text and /predict/combined; followed like MODEL_URI.",
    )
    ranker_uri: str = Field(
        DEFAULT_RANKER_URI,
        validation_alias=AliasChoices("RANKER_URI", "SERVE_RANKER_URI"),
        description="The learned ranker (input `ranking`) that re-ranks /search?q= and POST "
        "/search with a `q`; followed like MODEL_URI. Until one holds the alias (or when it "
        "is refused), searches use the hand-set blend and say `ranking: blend`.",
    )
    rank_candidates: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Candidates the learned ranker re-ranks: the union of the text search's "
        "and the photo search's top n (at least k).",
    )
    max_text_chars: int = Field(
        2000, ge=1, description="Longest `text` accepted (characters); longer is a 422."
    )
    host: str = Field("127.0.0.1", description="Address uvicorn binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port uvicorn binds.")
    reload_interval: float = Field(
        10.0, gt=0, description="Seconds between checks of the alias the service follows."
    )
    load_retry_initial: float = Field(
        2.0,
        gt=0,
        description="Seconds before a version that failed to load (or its text search that "
        "failed to) is tried again; the wait doubles after each failure.",
    )
    load_retry_max: float = Field(
        300.0,
        gt=0,
        description="Longest wait between two tries of a version that keeps failing to load. "
        "The alias moving, and POST /admin/reload, try at once.",
    )
    shutdown_load_wait: float = Field(
        5.0,
        ge=0,
        description="Seconds shutdown waits for a load in progress to stop before its "
        "downloads are removed anyway.",
    )
    max_upload_bytes: int = Field(
        10 * MIB, ge=1024, description="Largest request body; bigger ones get 413."
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest image (width x height) decoded; bigger ones get 422 unread.",
    )
    max_decode_bytes: int = Field(
        64 * MIB,
        ge=MIB,
        description="Most memory one image may take to decode (width x height x bytes per "
        "pixel of its mode, read from its header; JPEGs at the reduced scale they decode at); "
        "bigger ones get 422 unread.",
    )
    decodes_per_request: int = Field(
        1,
        ge=1,
        description="Images of one request decoded at the same time, so that a big "
        "/predict/batch cannot take every decode thread from the requests beside it.",
    )
    max_concurrent_requests: int = Field(
        32,
        ge=1,
        description="Requests handled at the same time (health, readiness and metrics not "
        "counted); past it, 503 with Retry-After.",
    )
    max_connections: int = Field(
        128,
        ge=1,
        description="Open connections and requests uvicorn accepts (its limit_concurrency); "
        "past it, a plain 503.",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client has to send a whole request body; one that stalls "
        "mid-upload is cut off with 408.",
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection stays open (uvicorn)."
    )
    inference_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request waits for its forward pass (queue included) before a "
        "504; /ready turns 503 while a forward pass runs longer than this.",
    )
    max_queued_images: int = Field(
        256,
        ge=1,
        description="Images waiting for a forward pass; a request that would go past it gets "
        "503 with Retry-After.",
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Most images per forward pass.")
    batch_wait_ms: float = Field(
        5.0,
        ge=0,
        description="Longest wait for more images to join a batch, only while other "
        "requests are still being decoded.",
    )
    max_batch_images: int = Field(
        64, ge=1, description="Most images in one /predict/batch request."
    )
    top_k: int = Field(5, ge=1, description="Default length of the top_k list.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /admin routes; unset turns them off (401)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS, comma-separated."
    )
    engine: Engine = Field(
        "auto",
        description="auto: torch+CUDA (fp16) on a GPU; on a CPU the version's int8 export "
        "when it passed its accuracy gate, else its fp32 ONNX export, else torch. onnx-int8, "
        "onnx or torch force one: a version without it is not served (503 saying why).",
    )
    decode_threads: int = Field(
        0, ge=0, description="Threads that decode uploads; 0 means one per CPU core."
    )
    cache_dir: Path | None = Field(
        None,
        description="Where search indexes (and their thumbnails) are downloaded; default: a "
        "temporary folder removed at shutdown.",
    )
    ui_url: str | None = Field(
        None,
        description="Base URL of the MLflow UI for /model's links; default: the tracking "
        "server itself, or `make ui`'s http://127.0.0.1:5000 for a local store.",
    )
    log_level: str = Field("info", description="uvicorn's log level.")

    @field_validator("admin_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: object) -> object:
        """An empty SERVE_ADMIN_TOKEN turns admin off; it never makes '' a valid token."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def decode_workers(self) -> int:
        return self.decode_threads or max(1, os.cpu_count() or 1)


def variable_name(field: str) -> str:
    """The environment variable that sets ``field`` (MODEL_URI, SERVE_PORT, ...)."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"SERVE_{field.upper()}"


def environment_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, as docs/serving.md lists them."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        rows.append(
            (variable_name(name), "" if shown is None else str(shown), field.description or "")
        )
    return rows

"""Resolving a model URI to the exact thing ``mlflow.pyfunc.load_model`` should load.

Accepted: ``models:/<name>@<alias>`` (``models:/marketplace-classifier@production``),
``models:/<name>/<stage>`` (the legacy ``Production`` stage), ``models:/<name>/<version>``,
``models:/<name>/latest``, ``runs:/<run_id>/<path>``, other artifact URIs (``s3://``,
``mlflow-artifacts:/``, ``file://``) and a local model folder. Registry URIs are pinned to
the version they name now (``models:/<name>/3``), so a caller loads and reports exactly one
version even if the alias moves meanwhile. Reads the registry; writes nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cli import UserError
from registry.store import PRODUCTION, connect
from registry.versions import alias_holder, get_version, require_model

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODELS_SCHEME = "models:/"
STAGES = ("None", "Staging", "Production", "Archived")
PASS_THROUGH_SCHEMES = (
    "runs:/",
    "file:",
    "s3://",
    "gs://",
    "wasbs://",
    "hdfs://",
    "dbfs:/",
    "http://",
    "https://",
    "mlflow-artifacts:",
)


@dataclass(frozen=True)
class ResolvedModel:
    """What a model URI names: the URI to load and, for registry URIs, the version behind it."""

    uri: str
    load_uri: str
    name: str | None = None
    version: int | None = None
    run_id: str | None = None


def resolve_model_uri(uri: str, client: MlflowClient | None = None) -> str:
    """The URI or path to pass to ``mlflow.pyfunc.load_model`` for ``uri``.

    Raises :class:`UserError` with a one-line explanation when ``uri`` names nothing:
    an unknown model or version, an alias or stage that no version holds, a missing folder.
    """
    return resolve_model(uri, client).load_uri


def resolve_model(uri: str, client: MlflowClient | None = None) -> ResolvedModel:
    """Like :func:`resolve_model_uri`, also saying which registered version ``uri`` names."""
    text = uri.strip()
    if not text:
        raise UserError("empty model URI: give e.g. models:/marketplace-classifier@production")
    if text.startswith(MODELS_SCHEME):
        return _resolve_registry_uri(text, client or connect())
    if text.startswith(PASS_THROUGH_SCHEMES):
        return ResolvedModel(uri=text, load_uri=text)
    return _resolve_local_path(text)


def _resolve_local_path(text: str) -> ResolvedModel:
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(
            f"no model at {text}: give a model folder, or a URI such as "
            "models:/marketplace-classifier@production"
        )
    if not (path / "MLmodel").is_file():
        raise UserError(f"{text} is not an MLflow model folder (it has no MLmodel file)")
    resolved = str(path.resolve())
    return ResolvedModel(uri=text, load_uri=resolved)


def _resolve_registry_uri(text: str, client: MlflowClient) -> ResolvedModel:
    rest = text[len(MODELS_SCHEME) :].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return pinned(text, _alias_version(client, name, alias))
    if "/" not in rest:  # models:/m-<id>: an MLflow 3 logged model, not a registry name
        return ResolvedModel(uri=text, load_uri=text)
    name, suffix = rest.split("/", 1)
    stage = next((s for s in STAGES if s.lower() == suffix.lower()), None)
    if stage is not None:
        return pinned(text, _stage_version(client, name, stage))
    return pinned(text, get_version(client, name, suffix))


def pinned(uri: str, version) -> ResolvedModel:
    """``uri`` resolved to registered ``version`` (a ``ModelVersion``): loaded by its number."""
    return ResolvedModel(
        uri=uri,
        load_uri=f"{MODELS_SCHEME}{version.name}/{version.version}",
        name=version.name,
        version=int(version.version),
        run_id=version.run_id,
    )


def _alias_version(client: MlflowClient, name: str, alias: str):
    require_model(client, name)
    holder = alias_holder(client, name, alias)
    if holder is None:
        hint = (
            "run `mlflow run . -e promote --env-manager local` (or "
            "`python -m registry promote --version best`) to promote one"
            if alias == PRODUCTION
            else "set it with `python -m registry promote`, or use an alias that "
            "`python -m registry list` shows"
        )
        raise UserError(f"no version of {name} holds the {alias} alias: {hint}")
    return holder


def _stage_version(client: MlflowClient, name: str, stage: str):
    require_model(client, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        versions = client.get_latest_versions(name, stages=[stage])
    if not versions:
        raise UserError(
            f"no version of {name} is in the legacy stage {stage}: promote one with "
            "`python -m registry promote --version best --legacy-stage`, or load "
            f"models:/{name}@production"
        )
    return max(versions, key=lambda v: int(v.version))

"""Registering a logged model as a version of its registered model, described.

Every kind of classifier registers through :func:`register_described`. Aliases
(``production``) are never touched here: promotion is a separate, deliberate step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow

from registry.descriptions import set_model_description_if_empty
from registry.kinds import MODEL_NAME


def register_classifier(
    model_uri: str,
    *,
    model_name: str = MODEL_NAME,
    tags: Mapping[str, Any] | None = None,
):
    """Register ``model_uri`` as a new version of ``model_name`` with ``tags``.

    Returns the ``ModelVersion``.
    """
    return mlflow.register_model(
        model_uri, model_name, tags={k: str(v) for k, v in (tags or {}).items()}
    )


def register_described(
    model_uri: str,
    *,
    model_name: str,
    tags: Mapping[str, Any],
    model_text: str,
    version_text: str,
):
    """Register ``model_uri`` as a version of ``model_name`` (with ``tags``), describe it
    (the registered model once, with ``model_text``; the version with ``version_text``, see
    :mod:`registry.descriptions`), and tag the active run with the version. Every kind of
    classifier registers through here. Returns the ``ModelVersion``."""
    version = register_classifier(model_uri, model_name=model_name, tags=tags)
    client = mlflow.MlflowClient()
    set_model_description_if_empty(client, model_name, model_text)
    client.update_model_version(model_name, version.version, description=version_text)
    if mlflow.active_run() is not None:
        mlflow.set_tags({"registered_model": model_name, "registered_version": version.version})
    return version

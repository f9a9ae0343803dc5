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
    classifier registers through here. Returns the ``ModelVersion``.

    Idempotent per run: when the active run already registered a version of
    ``model_name`` (a kill stopped it half-way and the run was resumed), that version is
    completed (its tags and description written) instead of registering a second one."""
    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    version = version_of_run(model_name, run.info.run_id) if run is not None else None
    if version is None:
        version = register_classifier(model_uri, model_name=model_name, tags=tags)
    else:
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version.version, key, str(value))
    set_model_description_if_empty(client, model_name, model_text)
    client.update_model_version(model_name, version.version, description=version_text)
    if mlflow.active_run() is not None:
        mlflow.set_tags({"registered_model": model_name, "registered_version": version.version})
    return version


def version_of_run(model_name: str, run_id: str):
    """The first version of ``model_name`` that run ``run_id`` registered, or None."""
    found = mlflow.MlflowClient().search_model_versions(
        f"name = '{model_name}' and run_id = '{run_id}'"
    )
    return min(found, key=lambda v: int(v.version)) if found else None

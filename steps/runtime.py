"""What every step shares: the tracking store and one MLflow run per step.

The command-line convention (the parser, the argparse types, one-line errors with exit code
2 through :func:`cli`) and the one error type are :mod:`cli`'s, re-exported here so
that a step imports everything it runs with from one place. ``UserError`` is
:class:`cli.UserError` under the name the steps use. Nothing here runs at import
time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from cli import (
    EXIT_USER_ERROR,
    ArgumentParser,
    UserError,
    auto_or_positive_int,
    check_server,
    cli,
    configure_logging,
    existing_dir,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    str_to_bool,
    whole_number,
)
from registry.store import tracking_uri

__all__ = [
    "EXIT_USER_ERROR",
    "ArgumentParser",
    "UserError",
    "UserError",
    "auto_or_positive_int",
    "check_tracking_server",
    "cli",
    "configure_logging",
    "existing_dir",
    "file_sha256",
    "fraction",
    "log_params",
    "non_negative_int",
    "optional_text",
    "positive_float",
    "positive_int",
    "start_run",
    "str_to_bool",
    "tracking_uri",
    "whole_number",
]

DEFAULT_EXPERIMENT = "marketplace-search"
# The MLflow 3 UI opens an experiment in its GenAI view (traces) unless the experiment says it
# holds model training; this tag says so (a value of the UI's own, `custom_model_development`).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
UNSET = ("", "none")

log = logging.getLogger("steps")


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when an HTTP tracking server does not answer.

    MLflow's own client retries for minutes before it gives up; a step should say at once
    that the server is down and how to start it.
    """
    check_server(uri or tracking_uri(), timeout)


def optional_text(value: str) -> str:
    """argparse type: text, where ``none`` (an MLproject default) or nothing means unset."""
    text = value.strip()
    return "" if text.lower() in UNSET else text


def start_run(run_name: str, **kwargs):
    """Start (or, under ``mlflow run``, attach to and rename) this step's MLflow run.

    Outside ``mlflow run`` the experiment comes from MLFLOW_EXPERIMENT_NAME (default
    ``marketplace-search``) and the store from :func:`tracking_uri`. The experiment is
    tagged as one of model training (:func:`mark_model_training`).
    """
    import mlflow

    uri = tracking_uri()
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    if "MLFLOW_RUN_ID" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    active = mlflow.start_run(run_name=run_name, **kwargs)
    mark_model_training(active.info.experiment_id)
    return active


def mark_model_training(experiment_id: str) -> None:
    """Tag the experiment ``mlflow.experimentKind=custom_model_development`` unless it says
    what it is already, so that the MLflow UI shows its runs, not an empty traces page."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def param_text(value: object) -> str | None:
    """How a param value is logged: ``true``/``false`` for booleans (the spelling ``mlflow
    run`` passes), None for nothing (unset params are left out, not logged as ``''``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    return text if text.strip() else None


def log_params(params: Mapping[str, object]) -> None:
    """Log the params the active run does not have yet, each once, in one spelling.

    ``mlflow run`` logs the entry point's parameters as it received them (``true``,
    ``100000``); logging them again as Python values (``True``, ``100000.0``) would be a
    change of value, which MLflow refuses. Booleans are logged ``true``/``false``; empty
    and None values are left out (see :func:`param_text`).
    """
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {
        key: text
        for key, value in params.items()
        if key not in existing and (text := param_text(value)) is not None
    }
    if fresh:
        mlflow.log_params(fresh)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes: what changed content is told by (mtimes can lie)."""
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()

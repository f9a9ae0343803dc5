"""Reaching the Model Registry: which store, a client for it, and one-line errors.

The registry code runs against the embedded sqlite store (``sqlite:///mlflow.db`` in the
current folder, the default) or an ``mlflow server`` named by MLFLOW_TRACKING_URI. An
HTTP server that does not answer is reported at once: MLflow's own client would retry
for minutes. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cli import UserError, check_server

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_MODEL_NAME = "marketplace-classifier"
PRODUCTION = "production"
PREVIOUS_PRODUCTION = "previous-production"
LEGACY_STAGE = "Production"


def tracking_uri() -> str:
    """The tracking URI in force: MLFLOW_TRACKING_URI, else the embedded sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`UserError` at once when the store is not there.

    An HTTP server must answer ``/health``; a sqlite file must exist (reading a registry
    should not create an empty store in whatever folder the command ran from).
    """
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise UserError(
            f"no tracking store at {database} ({uri}): run from the project folder, where "
            "training created mlflow.db, or set MLFLOW_TRACKING_URI"
        )
    check_server(uri, timeout)


def connect(uri: str | None = None) -> MlflowClient:
    """A client for the registry at ``uri`` (default :func:`tracking_uri`), checked reachable."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    check_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def error_code(exc: BaseException) -> str | None:
    """MLflow's error code (``RESOURCE_DOES_NOT_EXIST`` ...) of ``exc``, if it has one."""
    return getattr(exc, "error_code", None)

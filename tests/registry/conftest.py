"""The registry tests' store: small registered versions of a tiny pyfunc, copied per test.

Against a real sqlite tracking store holding small registered versions of a tiny pyfunc
that follows the classifier contract (mean colour -> category, weights in an artifact):

    version 1  test_accuracy 0.6     version 3  test_accuracy 0.5, predict raises
    version 2  test_accuracy 0.7     version 4  no test_accuracy (val_accuracy 0.8)

These versions are logged with the older, flat metric names (``test_accuracy``); the tests
ask for the current ones (``test/accuracy``), and versions logged with those are added
where a test needs them. The store is built once per module and copied for each test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.registry_store import BROKEN_MODEL, COLOUR_MODEL, _log_version


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with versions 1-4 of NAME (see the module docstring); copy before writing."""
    import mlflow

    folder = tmp_path_factory.mktemp("registry-template")
    previous = os.getcwd()
    os.chdir(folder)  # artifacts land in folder/mlruns
    try:
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        mlflow.set_experiment("registry-tests")
        _log_version(folder, COLOUR_MODEL, {"test_accuracy": 0.6, "val_accuracy": 0.62}, "one")
        _log_version(folder, COLOUR_MODEL, {"test_accuracy": 0.7, "val_accuracy": 0.71}, "two")
        _log_version(folder, BROKEN_MODEL, {"test_accuracy": 0.5}, "broken")
        _log_version(folder, COLOUR_MODEL, {"val_accuracy": 0.8}, "nometric")
    finally:
        os.chdir(previous)
    return folder / "mlflow.db"


@pytest.fixture
def client(template_store: Path, tracking: str, tmp_path: Path):
    """A client on a private copy of the template store (MLFLOW_TRACKING_URI points at it)."""
    from mlflow import MlflowClient

    shutil.copyfile(template_store, tmp_path / "mlflow.db")
    return MlflowClient(tracking_uri=tracking, registry_uri=tracking)

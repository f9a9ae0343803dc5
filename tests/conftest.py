"""Shared fixtures: a throwaway tracking store, and a small demo export, raw and clean."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_servers"]

DEMO_PRODUCTS = 60
DEMO_CLEAN_SIZE = 64


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite tracking store with its artifacts in ``tmp_path``; cwd is ``tmp_path``."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(variable, "")  # recorded, so teardown also removes what mlflow sets
        monkeypatch.delenv(variable)
    mlflow.set_tracking_uri(uri)
    mlflow.tracking.fluent._active_experiment_id = None  # set_experiment's cache, per store
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo export in the raw layout (read-only: copy it before changing it)."""
    from steps.demo_data import make_export

    raw = tmp_path_factory.mktemp("demo") / "raw"
    make_export(raw, products=DEMO_PRODUCTS, seed=0)
    return raw


@pytest.fixture(scope="session")
def demo_clean(demo_raw: Path) -> Path:
    """``demo_raw`` cleaned: tables, categories and images at DEMO_CLEAN_SIZE (read-only)."""
    from steps.clean_images import clean_images
    from steps.clean_tabular import clean_tabular

    clean = demo_raw.parent / "clean"
    with pytest.MonkeyPatch.context() as patch:  # log to a store of its own, not ./mlflow.db
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{demo_raw.parent / 'mlflow.db'}")
        for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            patch.setenv(variable, "")
            patch.delenv(variable)
        clean_tabular(demo_raw, clean)
        clean_images(demo_raw, clean, size=DEMO_CLEAN_SIZE)
    return clean

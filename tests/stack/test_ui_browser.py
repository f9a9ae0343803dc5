"""A freshly started ``make ui`` (stack/ui.py) in a real browser: the runs table, a training
run's metric charts and the registered model's page open without an error."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.servers import running_ui

CHROMIUM = Path("/usr/bin/chromium")
RUN_NAME = "train resnet18 e3 32px"
METRIC = "val/accuracy"
MODEL_NAME = "ui-test-classifier"
# What the page must never show: the race stack/ui.py warms up against, a server error, the
# UI's error pages and banners.
ERRORS = re.compile(
    r"NameError|SqlUserRoleAssignment|Internal Server Error|Traceback|Something went wrong"
    r"|Request failed|INTERNAL_ERROR|Page not found"
)
TIMEOUT_MS = 90_000


@dataclass(frozen=True)
class Store:
    uri: str
    experiment_id: str
    run_id: str


def _make_store(folder: Path) -> Store:
    """A store with one training run (per-epoch metrics) and a registered version of it."""
    from mlflow.tracking import MlflowClient

    from steps.runtime import EXPERIMENT_KIND_TAG, MODEL_TRAINING

    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(
        "marketplace-search", artifact_location=(folder / "artifacts").as_uri()
    )
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    run = client.create_run(experiment_id, run_name=RUN_NAME)
    run_id = run.info.run_id
    client.log_param(run_id, "arch", "resnet18")
    for epoch in range(3):
        client.log_metric(run_id, METRIC, 0.3 + 0.2 * epoch, step=epoch)
        client.log_metric(run_id, "val/loss", 2.0 - 0.5 * epoch, step=epoch)
    client.set_terminated(run_id)
    client.create_registered_model(MODEL_NAME, description="The UI test's classifier.")
    client.create_model_version(MODEL_NAME, f"runs:/{run_id}/model", run_id=run_id)
    return Store(uri, experiment_id, run_id)


@pytest.fixture
def fresh_ui(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    """``python -m stack.ui`` (make ui's command) on a free port over a new store."""
    store = _make_store(tmp_path / "store")
    with running_ui(store.uri, tmp_path, merge_stderr=True) as ui:
        yield ui.url, store
    server_log = "".join(ui.lines)
    assert "NameError" not in server_log, server_log[-3000:]


def _open(page, url: str, *expected: str) -> None:
    """Open ``url``; each of ``expected`` appears and no error text does."""
    from playwright.sync_api import expect

    page.goto(url, timeout=TIMEOUT_MS)
    for text in expected:
        expect(page.get_by_text(text, exact=False).first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("body")).not_to_have_text(ERRORS)


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),  # in CI a missing browser fails
    reason="needs Debian's chromium: apt-get install chromium (.ci/run installs it)",
)
def test_a_fresh_ui_opens_the_runs_a_runs_charts_and_the_registry_without_error(fresh_ui):
    from playwright.sync_api import sync_playwright

    base, store = fresh_ui
    failed: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on(
                "response",
                lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 500 else None,
            )
            experiment = f"{base}/#/experiments/{store.experiment_id}"
            _open(page, f"{experiment}/runs?workflowType=machine_learning", RUN_NAME)
            _open(page, f"{experiment}/runs/{store.run_id}/model-metrics", METRIC, "val/loss")
            _open(page, f"{base}/#/models/{MODEL_NAME}", MODEL_NAME, "Version 1")
            _open(page, f"{base}/#/models/{MODEL_NAME}/versions/1", MODEL_NAME, RUN_NAME)
        finally:
            browser.close()
    assert not failed, f"the UI's requests that failed on the server: {failed}"

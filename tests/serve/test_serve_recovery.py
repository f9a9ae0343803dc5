"""The service under faults: it recovers from a failed load by itself, its health and
metrics tell the truth per model slot, every answer names its version, a stop during a
load leaves nothing behind.

Against a real temporary registry holding a model of every kind (``tests.helpers.served_versions``),
through Starlette's TestClient (the lifespan runs as under uvicorn) and, for the stop, a
real ``python -m serve``. A transient fault is the artifacts of a version moved away while
the service loads it, and put back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
from fastapi.testclient import TestClient

from registry.kinds import LISTING_MODEL_NAME, TEXT_MODEL_NAME
from serve.app import MODEL_HEADER, create_app
from tests.helpers.served_versions import (
    GOOD,
    NAME,
    PHOTOS,
    photo,
    set_alias,
    settings_for,
    start_service,
    wait_until,
)
from tests.helpers.servers import StallingProxy, start_mlflow_server

FAST_RETRY = {"load_retry_initial": 0.2, "load_retry_max": 1.0}
NO_RETRY = {"load_retry_initial": 3600.0, "load_retry_max": 3600.0}
ADMIN = {"Authorization": "Bearer t"}


def _service(uri: str, **overrides) -> TestClient:
    return TestClient(create_app(settings_for(uri, **{"admin_token": "t", **overrides})))


def _promote(uri: str, name: str) -> None:
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(name, "production", "1")


def _artifacts(uri: str, name: str, version: int) -> Path:
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return Path(client.get_model_version_download_uri(name, str(version)))


@contextlib.contextmanager
def _moved_away(folder: Path) -> Iterator[callable]:
    """``folder`` is gone (a store that cannot be read) until the yielded function puts it
    back; it is put back in the end whatever happens."""
    away = folder.with_name(folder.name + ".away")
    folder.rename(away)

    def put_back() -> None:
        if away.exists():
            away.rename(folder)

    try:
        yield put_back
    finally:
        put_back()


def _metric(text: str, line: str) -> bool:
    return any(row == line for row in text.splitlines())


# ----------------------------------------------------------------------------- retries


def test_a_first_load_that_hit_a_blip_is_retried_until_the_service_is_ready(listing_store):
    with (
        _moved_away(_artifacts(listing_store, NAME, GOOD)) as put_back,
        _service(listing_store, **FAST_RETRY) as client,
    ):

        def retried_twice():
            reply = client.get("/ready")
            slot = reply.json().get("slots", {}).get("image", {})
            return reply if reply.status_code == 503 and slot.get("attempts", 0) >= 2 else None

        not_ready = wait_until(retried_twice, 120.0, "two failed attempts on /ready")
        body = not_ready.json()
        assert f"version {GOOD} of {NAME} failed to load" in body["detail"]
        image = body["slots"]["image"]
        assert image["loaded"] is False and image["next_retry"] is not None
        assert f"version {GOOD}" in image["last_error"]
        assert int(not_ready.headers["Retry-After"]) >= 1
        model = client.get("/model")
        assert model.status_code == 503 and model.json()["slots"]["image"]["attempts"] >= 2
        put_back()  # the store answers again: no restart, no admin call
        ready = wait_until(
            lambda: (r := client.get("/ready")).status_code == 200 and r.json(),
            120.0,
            "the service ready once the artifacts are back",
        )
        assert ready["model"]["version"] == GOOD
        slot = ready["slots"]["image"]
        assert slot["loaded"] and slot["attempts"] == 0 and slot["next_retry"] is None
        assert client.post("/predict", files=photo()).status_code == 200


def test_admin_reload_reaches_the_text_and_listing_slots(listing_store):
    _promote(listing_store, TEXT_MODEL_NAME)
    _promote(listing_store, LISTING_MODEL_NAME)
    text_files = _artifacts(listing_store, TEXT_MODEL_NAME, 1)
    listing_files = _artifacts(listing_store, LISTING_MODEL_NAME, 1)
    with (
        _moved_away(text_files) as text_back,
        _moved_away(listing_files) as listing_back,
        _service(listing_store, **NO_RETRY) as client,
    ):

        def both_failed():
            slots = client.get("/model").json().get("slots", {})
            return all(slots.get(kind, {}).get("attempts") == 1 for kind in ("text", "image+text"))

        wait_until(both_failed, 120.0, "the text and listing loads failing")
        refused = client.post("/predict/text", data={"text": "iphone"})
        assert refused.status_code == 503 and "failed to load" in refused.json()["detail"]
        text_back()
        listing_back()
        reply = client.post("/admin/reload", headers=ADMIN)
        assert reply.status_code == 200, reply.text
        slots = reply.json()["slots"]
        assert slots["text"]["outcome"] == "loaded" and slots["text"]["version"] == 1
        assert slots["image+text"]["outcome"] == "loaded"
        assert reply.json()["outcome"] == "unchanged" and slots["image"]["version"] == GOOD
        answer = client.post("/predict/text", data={"text": "iphone"})
        assert answer.status_code == 200 and answer.json()["model"]["name"] == TEXT_MODEL_NAME
        combined = client.post("/predict/combined", files=photo(), data={"text": "iphone"})
        assert combined.status_code == 200


# ----------------------------------------------------------------------------- metrics


def test_metrics_and_readiness_are_per_slot(listing_store):
    set_alias(listing_store, 4)  # the broken image version: the image slot never loads
    _promote(listing_store, TEXT_MODEL_NAME)
    with _service(listing_store, **NO_RETRY) as client:
        wait_until(
            lambda: client.post("/predict/text", data={"text": "iphone"}).status_code == 200,
            120.0,
            "the text model loaded",
        )
        wait_until(
            lambda: client.get("/ready").json().get("slots", {}).get("image", {}).get("attempts"),
            120.0,
            "the image load failing",
        )
        assert client.get("/ready").status_code == 503
        text = client.get("/metrics").text
        assert _metric(text, 'marketplace_model_loaded{kind="image"} 0.0')
        assert _metric(text, 'marketplace_model_loaded{kind="text"} 1.0')
        assert _metric(text, 'marketplace_model_loaded{kind="image+text"} 0.0')
        assert _metric(text, 'marketplace_reload_failures_total{kind="image"} 1.0')
        assert _metric(text, 'marketplace_reload_failures_total{kind="text"} 0.0')
        assert _metric(text, 'marketplace_reloads_total{kind="text"} 1.0')
        assert _metric(text, 'marketplace_reloads_total{kind="image"} 0.0')
        info = [row for row in text.splitlines() if row.startswith("marketplace_model_info{")]
        assert len(info) == 1 and 'kind="text"' in info[0]
        assert f'name="{TEXT_MODEL_NAME}"' in info[0]

        set_alias(listing_store, GOOD)  # the image slot loads: the text slot's series stays
        wait_until(lambda: client.get("/ready").status_code == 200, 120.0, "image loaded")
        text = client.get("/metrics").text
        info = [row for row in text.splitlines() if row.startswith("marketplace_model_info{")]
        kinds = sorted(row.split('kind="')[1].split('"')[0] for row in info)
        assert kinds == ["image", "text"], info
        assert _metric(text, 'marketplace_model_loaded{kind="image"} 1.0')
        assert _metric(text, 'marketplace_reloads_total{kind="image"} 1.0')


# ----------------------------------------------------------------------------- the version header


def test_a_500_carries_the_version_that_answered(listing_store):
    with TestClient(
        create_app(settings_for(listing_store)),
        raise_server_exceptions=False,
    ) as client:
        wait_until(lambda: client.get("/ready").status_code == 200, 120.0, "ready")

        class FailingEngine:  # an engine fault: the forward pass raises
            name = "failing"

            def forward(self, pixels):
                raise RuntimeError("the engine fell over")

        client.app.state.holder.current.engine = FailingEngine()
        reply = client.post("/predict", files=photo())
        assert reply.status_code == 500
        assert "internal error (RuntimeError)" in reply.json()["detail"]
        assert reply.headers[MODEL_HEADER] == str(GOOD)
        metrics = client.get("/metrics").text
        assert 'route="/predict",status="500"} 1.0' in metrics


def test_a_503_of_the_listing_slot_does_not_name_the_image_version(listing_store):
    with _service(listing_store) as client:
        wait_until(lambda: client.get("/ready").status_code == 200, 120.0, "ready")
        reply = client.post("/predict/combined", files=photo(), data={"text": "iphone"})
        assert reply.status_code == 503
        assert reply.headers[MODEL_HEADER] == "none"
        reply = client.post("/predict/text", data={"text": "iphone"})
        assert reply.status_code == 503 and reply.headers[MODEL_HEADER] == "none"
        assert client.post("/predict", files=photo()).headers[MODEL_HEADER] == str(GOOD)


# ----------------------------------------------------------------------------- stopping


def _register_on(server_url: str) -> None:
    """Log and register a small classifier on the tracking server, in production."""
    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig
    from registry.register import register_classifier
    from tests.helpers.served_versions import CATEGORIES, IMAGE_SIZE, _network

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", server_url)
        mlflow.set_tracking_uri(server_url)
        try:
            experiment = mlflow.MlflowClient(server_url).create_experiment("stop")
            config = ClassifierConfig(arch="resnet18", categories=CATEGORIES, image_size=IMAGE_SIZE)
            with mlflow.start_run(experiment_id=experiment):
                info = log_classifier(_network(0), config, example_image=PHOTOS[0], onnx=False)
            register_classifier(info.model_uri)
        finally:
            mlflow.set_tracking_uri(None)
    set_alias(server_url, 1)


@pytest.mark.slow
def test_a_stop_during_a_load_leaves_no_download_behind(tmp_path):
    server = start_mlflow_server(tmp_path / "mlflow", artifacts_destination=str(tmp_path / "art"))
    proxy = StallingProxy(server.url)  # the artifact download never finishes
    try:
        _register_on(server.url)
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        env = {"MLFLOW_TRACKING_URI": proxy.url, "TMPDIR": str(scratch)}
        service = start_service(tmp_path / "service", env)
        try:
            assert proxy.stalled.wait(120), "the service never started downloading"
            assert httpx.get(service.url + "/ready").status_code == 503
            assert list(scratch.rglob("serve-model-*")), "no download folder while downloading"
            service.stop(timeout=60)
        finally:
            service.stop()
        left = sorted(str(path.relative_to(scratch)) for path in scratch.rglob("*"))
        assert left == [], f"left behind in TMPDIR: {left}\n{service.log_text()}"
    finally:
        proxy.close()
        server.stop()

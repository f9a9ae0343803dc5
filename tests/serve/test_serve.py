"""The FastAPI service: routes, bad input, following promotions, engines, parity.

Against a real sqlite registry holding small real classifier versions (see
``tests/helpers/served_versions.py``), through Starlette's TestClient (which runs the lifespan,
so the model holder loads in the background exactly as under uvicorn) and, for the
promotion-under-load, tracking-server-down and fuzz tests, a real ``python -m serve``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve.app import MODEL_HEADER, create_app
from serve.settings import Settings
from tests.helpers.served_versions import (
    BROKEN,
    CATEGORIES,
    GOOD,
    IMAGE_SIZE,
    NAME,
    NO_ONNX,
    PHOTOS,
    SECOND,
    jpeg,
    running_service,
    set_alias,
    settings_for,
    upload,
    wait_until,
)
from tests.helpers.servers import start_mlflow_server


@pytest.fixture
def client(store: str) -> Iterator[TestClient]:
    """The service over version 1 in production, ready."""
    set_alias(store, GOOD)
    with TestClient(create_app(settings_for(store, admin_token="s3cret"))) as test_client:
        wait_ready(test_client)
        yield test_client


def wait_ready(client: TestClient, version: int | None = None, timeout: float = 120.0):
    def ready():
        reply = client.get("/ready")
        if reply.status_code != 200:
            return None
        if version is not None and reply.json()["model"]["version"] != version:
            return None
        return reply.json()

    return wait_until(ready, timeout, f"the service serving version {version or 'any'}")


# ----------------------------------------------------------------------------- settings


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("MODEL_URI", "models:/marketplace-classifier/3")
    monkeypatch.setenv("SERVE_PORT", "8123")
    monkeypatch.setenv("SERVE_RELOAD_INTERVAL", "2.5")
    monkeypatch.setenv("SERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("SERVE_ENGINE", "torch")
    monkeypatch.setenv("SERVE_ADMIN_TOKEN", "t0ken")
    settings = Settings()
    assert settings.tracking_uri == "http://127.0.0.1:5999"
    assert settings.model_uri == "models:/marketplace-classifier/3"
    assert (settings.port, settings.reload_interval, settings.engine) == (8123, 2.5, "torch")
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.admin_token.get_secret_value() == "t0ken"


def test_defaults_follow_the_production_alias_on_loopback(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MODEL_URI", "SERVE_PORT", "SERVE_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_uri == "models:/marketplace-classifier@production"
    assert (settings.host, settings.port, settings.reload_interval) == ("127.0.0.1", 8000, 10.0)
    assert settings.tracking_uri == "sqlite:///mlflow.db"


def test_a_bad_setting_is_a_one_line_error(tmp_path):
    env = {"SERVE_PORT": "eighty", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "serve"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "SERVE_PORT" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- routes


def test_predict_answers_with_category_top_k_and_version(client):
    reply = client.post("/predict", files=upload(PHOTOS[0]))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["category"] in CATEGORIES
    assert 0 < body["probability"] <= 1
    assert [s["category"] for s in body["top_k"]][0] == body["category"]
    assert len(body["top_k"]) == len(CATEGORIES)  # default top_k 5, capped at 3 categories
    probabilities = [s["probability"] for s in body["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(probabilities) - 1) < 1e-4
    assert body["model"]["name"] == NAME and body["model"]["version"] == GOOD
    assert body["model"]["run_id"]
    assert reply.headers[MODEL_HEADER] == str(GOOD)


def test_top_k_is_honoured(client):
    reply = client.post("/predict", files=upload(PHOTOS[1]), data={"top_k": "2"})
    assert reply.status_code == 200
    assert len(reply.json()["top_k"]) == 2


def test_batch_answers_in_order_and_a_bad_image_fails_only_its_entry(client):
    files = [
        ("images", ("a.jpg", PHOTOS[0], "image/jpeg")),
        ("images", ("notes.txt", b"not a photo at all", "text/plain")),
        ("images", ("b.jpg", PHOTOS[1], "image/jpeg")),
        ("images", ("cut.jpg", PHOTOS[2][:200], "image/jpeg")),
    ]
    reply = client.post("/predict/batch", files=files)
    assert reply.status_code == 200, reply.text
    entries = reply.json()
    assert [e["filename"] for e in entries] == ["a.jpg", "notes.txt", "b.jpg", "cut.jpg"]
    assert [e["index"] for e in entries] == [0, 1, 2, 3]
    assert entries[0]["category"] in CATEGORIES and entries[0]["error"] is None
    assert entries[1]["error"]["status"] == 415 and entries[1]["category"] is None
    assert entries[3]["error"]["status"] == 422
    singles = [client.post("/predict", files=upload(p)).json() for p in PHOTOS[:2]]
    assert entries[0]["probability"] == pytest.approx(singles[0]["probability"], abs=1e-5)
    assert entries[2]["category"] == singles[1]["category"]


def test_batch_over_the_image_limit_is_refused(store):
    set_alias(store, GOOD)
    with TestClient(create_app(settings_for(store, max_batch_images=2))) as client:
        wait_ready(client)
        files = [("images", (f"{i}.jpg", PHOTOS[0], "image/jpeg")) for i in range(3)]
        reply = client.post("/predict/batch", files=files)
    assert reply.status_code == 422
    assert "SERVE_MAX_BATCH_IMAGES" in reply.json()["detail"]


def test_operations_routes(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model"]["version"] == GOOD
    info = client.get("/model").json()
    assert info["name"] == NAME and info["version"] == GOOD
    assert info["aliases"] == ["production"]
    # logged as test_accuracy (the older name): /model says test/accuracy for every version
    assert info["metrics"] == {"test/accuracy": pytest.approx(0.6)}
    assert info["categories"] == CATEGORIES and info["image_size"] == IMAGE_SIZE
    assert info["arch"] == "resnet18" and info["engine"] == "onnx"
    assert info["follows"] is True and info["uri"].endswith("@production")
    assert info["ui_url"].endswith(f"/runs/{info['run_id']}")
    assert info["last_reload_error"] is None


def test_metrics_count_requests_predictions_and_the_version(client):
    client.post("/predict", files=upload(PHOTOS[0]))
    client.post("/predict", files=upload(b"junk"))
    text = client.get("/metrics").text
    assert 'marketplace_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'marketplace_requests_total{method="POST",route="/predict",status="415"} 1.0' in text
    assert 'marketplace_request_seconds_count{route="/predict"} 2.0' in text
    assert (
        f'marketplace_model_info{{engine="onnx",kind="image",name="{NAME}",version="{GOOD}"}} 1.0'
        in text
    )
    assert "marketplace_batch_size_count 1.0" in text
    assert 'marketplace_reloads_total{kind="image"} 1.0' in text
    assert (
        sum(f'marketplace_predictions_total{{category="{c}"}} 1.0' in text for c in CATEGORIES) == 1
    )


def test_every_answer_carries_the_model_version(client):
    for method, path in [("get", "/health"), ("get", "/metrics"), ("get", "/nowhere")]:
        assert getattr(client, method)(path).headers[MODEL_HEADER] == str(GOOD)
    assert client.post("/predict", files=upload(b"")).headers[MODEL_HEADER] == str(GOOD)


def test_capstone_shaped_routes(client):
    assert client.get("/healthcheck").json() == {"message": "API is up and running!"}
    reply = client.post("/predict/image", files=upload(PHOTOS[2]))
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"Category", "Probabilities"}
    assert body["Category"] in CATEGORIES
    assert len(body["Probabilities"]) == len(CATEGORIES)
    assert body["Category"] == CATEGORIES[int(np.argmax(body["Probabilities"]))]


def test_openapi_documents_every_route_with_an_example(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ["/predict", "/predict/batch", "/health", "/ready", "/model", "/metrics",
                 "/admin/reload", "/healthcheck", "/predict/image"]:  # fmt: skip
        assert path in paths, path
    for name in ["Prediction", "BatchEntry", "ModelInfo", "Readiness", "Problem"]:
        assert spec["components"]["schemas"][name].get("examples"), name


# ----------------------------------------------------------------------------- bad input


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"%PDF-1.4 a document, not a photo", 415, "not an image"),
        (PHOTOS[0][: len(PHOTOS[0]) // 2], 422, "cannot be read"),
        (PHOTOS[0][: len(PHOTOS[0]) - 40], 422, "truncated"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, 422, "cannot be read"),
        (b"", 422, "empty"),
    ],
    ids=["not-an-image", "cut-short", "truncated", "corrupt", "empty"],
)
def test_bad_uploads_get_a_4xx_that_says_why(client, data, status, words):
    reply = client.post("/predict", files=upload(data))
    assert reply.status_code == status, reply.text
    assert words in reply.json()["detail"]


def test_missing_field_and_out_of_range_top_k_are_422(client):
    missing = client.post("/predict", data={"top_k": "2"})
    assert missing.status_code == 422 and "image" in missing.json()["detail"]
    for value in ("0", "4", "many"):
        reply = client.post("/predict", files=upload(PHOTOS[0]), data={"top_k": value})
        assert reply.status_code == 422, value
        assert "top_k" in reply.json()["detail"]


def test_a_decompression_bomb_is_refused_without_decoding(store):
    set_alias(store, GOOD)
    bomb = _png((4000, 4000))  # 16 Mpx in a few kB
    assert len(bomb) < 100_000
    with TestClient(create_app(settings_for(store, max_image_pixels=1_000_000))) as client:
        wait_ready(client)
        started = time.perf_counter()
        reply = client.post("/predict", files=upload(bomb, "bomb.png"))
        assert reply.status_code == 422
        assert "4000 x 4000" in reply.json()["detail"]
        assert client.post("/predict", files=upload(PHOTOS[0])).status_code == 200
    assert time.perf_counter() - started < 60


def test_an_upload_over_the_limit_is_refused_before_it_is_read(store):
    set_alias(store, GOOD)
    limit = 64 * 1024
    big = jpeg((10, 10, 10)) + b"\x00" * (limit * 2)
    with TestClient(create_app(settings_for(store, max_upload_bytes=limit))) as client:
        wait_ready(client)
        reply = client.post("/predict", files=upload(big))
        assert reply.status_code == 413
        assert "SERVE_MAX_UPLOAD_BYTES" in reply.json()["detail"]

        def chunks():  # no Content-Length: refused while it streams
            boundary = b"--x\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n\r\n"
            yield boundary
            for _ in range(40):
                yield b"\x00" * 8192

        streamed = client.post(
            "/predict",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        assert streamed.status_code == 413
        assert client.post("/predict", files=upload(PHOTOS[0])).status_code == 200


def test_admin_routes_need_the_token(client):
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
    right = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200 and right.json()["outcome"] == "unchanged"


def test_admin_routes_are_off_without_a_configured_token(store):
    set_alias(store, GOOD)
    with TestClient(create_app(settings_for(store))) as client:
        reply = client.post("/admin/reload", headers={"Authorization": "Bearer anything"})
    assert reply.status_code == 401 and "SERVE_ADMIN_TOKEN" in reply.json()["detail"]


# ----------------------------------------------------------------------------- following


def test_starts_without_a_production_version_then_follows_a_promotion(store):
    with TestClient(create_app(settings_for(store))) as client:
        assert client.get("/health").status_code == 200
        not_ready = wait_until(
            lambda: (
                (r := client.get("/ready")).status_code == 503
                and "production" in r.json()["detail"]
                and r
            ),
            what="/ready saying no version holds production",
        )
        assert "promote" in not_ready.json()["detail"]
        refused = client.post("/predict", files=upload(PHOTOS[0]))
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert refused.headers[MODEL_HEADER] == "none"
        set_alias(store, GOOD)
        wait_ready(client, GOOD)
        assert client.post("/predict", files=upload(PHOTOS[0])).status_code == 200


def test_starts_without_a_tracking_store_and_says_so(tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    with TestClient(create_app(settings_for(uri))) as client:
        reply = wait_until(
            lambda: (
                (r := client.get("/ready")).status_code == 503
                and "no tracking store" in r.json()["detail"]
                and r
            ),
            what="/ready naming the missing store",
        )
    assert "MLFLOW_TRACKING_URI" in reply.json()["detail"]


def test_a_version_that_fails_to_load_is_not_swapped_in(store):
    set_alias(store, GOOD)
    settings = settings_for(store, admin_token="t", load_retry_initial=3600)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, GOOD)
        set_alias(store, BROKEN)
        info = wait_until(
            lambda: (
                client.get("/model").json()["last_reload_error"] and client.get("/model").json()
            ),
            what="the broken version's failure",
        )
        assert info["version"] == GOOD
        assert f"version {BROKEN}" in info["last_reload_error"]
        assert client.post("/predict", files=upload(PHOTOS[0])).headers[MODEL_HEADER] == str(GOOD)
        # Not retried on every poll (only after its backoff): several checks later it has
        # still failed only once.
        first_check = client.get("/model").json()["last_check"]
        wait_until(lambda: client.get("/model").json()["last_check"] > first_check)
        wait_until(lambda: client.get("/model").json()["last_check"] > first_check)
        assert 'marketplace_reload_failures_total{kind="image"} 1.0' in client.get("/metrics").text
        # ... until its backoff is over, an admin asks, or the alias moves again.
        reload = client.post("/admin/reload", headers={"Authorization": "Bearer t"}).json()
        assert reload["outcome"] == "failed" and reload["version"] == BROKEN
        assert 'marketplace_reload_failures_total{kind="image"} 2.0' in client.get("/metrics").text
        set_alias(store, SECOND)
        wait_ready(client, SECOND)
        assert client.get("/model").json()["last_reload_error"] is None


def test_admin_reload_picks_up_a_promotion_at_once(store):
    set_alias(store, GOOD)
    settings = settings_for(store, admin_token="t", reload_interval=3600)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, GOOD)
        set_alias(store, SECOND)
        reply = client.post("/admin/reload", headers={"Authorization": "Bearer t"})
        image = {"outcome": "loaded", "detail": "now serving 2", "version": SECOND}
        assert reply.json() == {**image, "slots": {**reply.json()["slots"], "image": image}}
        assert client.get("/ready").json()["model"]["version"] == SECOND


@pytest.mark.parametrize("uri_kind", ["version", "stage"])
def test_other_model_uris_are_served(store, uri_kind):
    import warnings

    from mlflow import MlflowClient

    if uri_kind == "stage":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MlflowClient(store, store).transition_model_version_stage(
                NAME, str(SECOND), "Production"
            )
        uri = f"models:/{NAME}/Production"
    else:
        uri = f"models:/{NAME}/{SECOND}"
    with TestClient(create_app(settings_for(store, model_uri=uri))) as client:
        wait_ready(client, SECOND)
        info = client.get("/model").json()
    assert info["source"] == f"models:/{NAME}/{SECOND}"
    assert info["follows"] is (uri_kind == "stage"), "a stage moves; a version number does not"


# ----------------------------------------------------------------------------- engines


def test_a_version_without_onnx_export_is_served_with_torch(store):
    set_alias(store, NO_ONNX)
    with TestClient(create_app(settings_for(store))) as client:
        wait_ready(client, NO_ONNX)
        assert client.get("/model").json()["engine"] == "torch-cpu"
        assert client.post("/predict", files=upload(PHOTOS[0])).status_code == 200


def test_forcing_onnx_on_a_version_without_export_says_why(store):
    set_alias(store, NO_ONNX)
    with TestClient(create_app(settings_for(store, engine="onnx"))) as client:
        reply = wait_until(
            lambda: (
                (r := client.get("/ready")).status_code == 503
                and "ONNX" in r.json()["detail"]
                and r
            ),
            what="/ready saying the version has no ONNX export",
        )
    assert "SERVE_ENGINE" in reply.json()["detail"]


def test_onnx_and_torch_engines_agree(store):
    set_alias(store, GOOD)
    answers = {}
    for engine in ("onnx", "torch"):
        with TestClient(create_app(settings_for(store, engine=engine))) as client:
            wait_ready(client, GOOD)
            replies = [client.post("/predict/image", files=upload(p)).json() for p in PHOTOS]
            answers[engine] = np.array([r["Probabilities"] for r in replies])
    assert np.abs(answers["onnx"] - answers["torch"]).max() < 1e-4


def test_the_service_answers_as_the_registered_pyfunc_does(client, store, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{GOOD}")
    finally:
        mlflow.set_tracking_uri(None)
    expected = model.predict(pd.DataFrame({"image": PHOTOS}))
    for photo, (_, row) in zip(PHOTOS, expected.iterrows(), strict=True):
        served = client.post("/predict/image", files=upload(photo)).json()
        assert served["Category"] == row["category"]
        assert np.allclose(served["Probabilities"], row["probabilities"], atol=1e-4)


def test_onnx_export_matches_torch_and_a_failed_check_keeps_no_file(tmp_path, monkeypatch):
    import onnxruntime
    import torch

    from marketplace_models import onnx as export
    from marketplace_models.network import ClassifierConfig, build_network

    torch.manual_seed(0)
    net = build_network("resnet18", 5).eval()
    config = ClassifierConfig(arch="resnet18", categories=list("abcde"), image_size=40)
    pixels = np.random.default_rng(1).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    report = export.export_onnx(net, config, tmp_path / "m.onnx", pixels)
    assert report.passed and report.images == 6 and report.max_abs_diff <= export.PARITY_ATOL
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    probabilities, embedding = session.run(None, {"images": pixels[:3].transpose(0, 3, 1, 2)})
    with torch.inference_mode():
        expected, features = export.serving_network(net, config)(
            torch.from_numpy(pixels[:3]).permute(0, 3, 1, 2)
        )
    assert np.allclose(probabilities, expected.numpy(), atol=export.PARITY_ATOL)
    assert embedding.shape == (3, 512) and np.allclose(embedding, features.numpy(), atol=1e-3)
    monkeypatch.setattr(export, "PARITY_ATOL", -1.0)
    failed = export.export_onnx(net, config, tmp_path / "bad.onnx", pixels)
    assert not failed.passed and not (tmp_path / "bad.onnx").exists()


# ----------------------------------------------------------------------------- real server


class Load:
    """``clients`` threads posting /predict in a loop until stopped; every answer recorded."""

    def __init__(self, url: str, clients: int) -> None:
        import httpx

        self.url = url
        self.stop = threading.Event()
        # (received at, status, version, sent at), in the order the answers came back.
        self.answers: list[tuple[float, int, str, float]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._httpx = httpx
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, index: int) -> None:
        photo = PHOTOS[index % len(PHOTOS)]
        with self._httpx.Client(timeout=120) as http:
            while not self.stop.is_set():
                try:
                    sent = time.monotonic()
                    reply = http.post(self.url + "/predict", files=upload(photo))
                    version = reply.headers.get(MODEL_HEADER, "?")
                    with self._lock:
                        self.answers.append((time.monotonic(), reply.status_code, version, sent))
                except Exception as exc:  # a refused or dropped connection is a failure too
                    with self._lock:
                        self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


@pytest.mark.slow
def test_a_promotion_under_load_fails_no_request(store, tmp_path):
    import httpx

    from registry.promotion import promote

    set_alias(store, GOOD)
    interval = 1.0
    env = {"MLFLOW_TRACKING_URI": store, "SERVE_RELOAD_INTERVAL": str(interval)}
    with running_service(tmp_path / "service", env) as service:
        wait_until(lambda: httpx.get(service.url + "/ready").status_code == 200)
        with Load(service.url, clients=8) as load:
            wait_until(lambda: len(load.answers) >= 16, what="answers from version 1")
            promoted_at = time.monotonic()
            from mlflow import MlflowClient

            promote(NAME, SECOND, client=MlflowClient(store, store), by="test", reason="load")
            switched = wait_until(
                lambda: next((t for t, _, v, _ in list(load.answers) if v == str(SECOND)), None),
                what="an answer from version 2",
            )
            count = len(load.answers)
            wait_until(lambda: len(load.answers) >= count + 16, what="answers after the swap")
        load_seconds = httpx.get(service.url + "/model").json()["load_seconds"]
    assert not load.errors, load.errors[:3]
    statuses = {status for _, status, _, _ in load.answers}
    assert statuses == {200}, service.log_text()
    versions = [v for _, _, v, _ in load.answers]
    assert versions[0] == str(GOOD) and versions[-1] == str(SECOND)
    # Once version 2 has answered, every request sent after that gets version 2. (Requests
    # already in flight finish on version 1, and on a busy machine they may come back after
    # a version-2 answer: that is the guarantee, not a failure.)
    late = [v for _, _, v, sent in load.answers if sent > switched]
    assert late and set(late) == {str(SECOND)}, versions
    # The swap came within one poll interval plus the load (generous slack for a busy CPU).
    assert switched - promoted_at < interval + load_seconds + 30


@pytest.mark.slow
def test_a_tracking_server_that_goes_down_does_not_stop_the_answers(store_template, tmp_path):
    import httpx
    import mlflow

    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig
    from registry.register import register_classifier
    from tests.helpers.served_versions import _network

    server = start_mlflow_server(tmp_path / "mlflow", artifacts_destination=str(tmp_path / "art"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", server.url)
            mlflow.set_tracking_uri(server.url)
            experiment = mlflow.MlflowClient(server.url).create_experiment("down")
            config = ClassifierConfig(arch="resnet18", categories=CATEGORIES, image_size=IMAGE_SIZE)
            with mlflow.start_run(experiment_id=experiment):
                info = log_classifier(_network(0), config, example_image=PHOTOS[0])
            register_classifier(info.model_uri)
        set_alias(server.url, 1)
        env = {"MLFLOW_TRACKING_URI": server.url, "SERVE_RELOAD_INTERVAL": "0.5"}
        with running_service(tmp_path / "service", env) as service:
            wait_until(lambda: httpx.get(service.url + "/ready").status_code == 200)
            server.stop()
            info = wait_until(
                lambda: (m := httpx.get(service.url + "/model").json())["last_check_error"] and m,
                what="the failed registry check",
            )
            assert "cannot reach the MLflow tracking server" in info["last_check_error"]
            reply = httpx.post(service.url + "/predict", files=upload(PHOTOS[1]), timeout=60)
            assert reply.status_code == 200 and reply.json()["model"]["version"] == 1
            assert httpx.get(service.url + "/ready").status_code == 200
    finally:
        server.stop()
        mlflow.set_tracking_uri(None)


# ----------------------------------------------------------------------------- shipping


def test_a_blank_admin_token_turns_admin_off(monkeypatch):
    monkeypatch.setenv("SERVE_ADMIN_TOKEN", "  ")
    assert Settings().admin_token is None


def test_the_service_ships_as_a_non_root_image_beside_the_mlflow_server():
    import yaml

    root = Path(__file__).resolve().parents[2]
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    serve = services["serve"]
    assert serve["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert serve["depends_on"]["mlflow"]["condition"] == "service_healthy"
    dockerfile = (root / serve["build"]["context"] / serve["build"]["dockerfile"]).read_text()
    # The service's own install: no torch wheels, and every package the service imports.
    assert "pip install '.[serve]'" in dockerfile
    assert "download.pytorch.org" not in dockerfile and "torchvision" not in dockerfile
    for package in ("marketplace_models", "search", "clean_data", "cli", "registry", "serve"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "USER serve" in dockerfile and "HEALTHCHECK" in dockerfile
    assert "8000/ready" in dockerfile
    assert 'CMD ["python", "-m", "serve"]' in dockerfile


def test_try_it_sends_a_photo_to_a_real_service_and_prints_the_answer(store, tmp_path):
    photo = tmp_path / "sofa.jpg"
    photo.write_bytes(PHOTOS[1])
    set_alias(store, GOOD)
    done = subprocess.run(
        [sys.executable, "-m", "serve.try_it", "--photo", str(photo), "--text", "a grey sofa"],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"curl -F image=@{photo}" in done.stdout
    assert '"category"' in done.stdout and "make serve" in done.stdout
    # the photo with its text: this store has no listing model, and the answer says why
    assert '-F text="a grey sofa"' in done.stdout and "/predict/combined" in done.stdout
    assert "no photo + text answer:" in done.stdout


def test_try_it_without_demo_data_is_a_one_line_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "serve.try_it", "--clean", str(tmp_path / "none")],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: no ") and "make demo" in done.stderr


def test_the_schema_declares_what_the_service_accepts_and_405_names_every_method(client):
    """Bounds are in the OpenAPI schema, not only in the handlers; an OPTIONS on a path
    served by GET and POST is told both."""
    refused = client.options("/search")
    assert refused.status_code == 405
    assert set(refused.headers["allow"].split(", ")) == {"GET", "POST"}
    schema = client.get("/openapi.json").json()
    query = {p["name"]: p for p in schema["paths"]["/search"]["get"]["parameters"]}
    assert (query["k"]["schema"]["minimum"], query["k"]["schema"]["maximum"]) == (1, 100)
    assert query["q"]["required"] and query["q"]["schema"]["minLength"] == 1
    bodies = schema["components"]["schemas"]
    predict = bodies["Body_predict_predict_post"]["properties"]
    assert predict["top_k"]["minimum"] == 1
    assert predict["top_k"]["maximum"] == len(CATEGORIES)  # the served version's
    assert predict["text"]["maxLength"] == Settings().max_text_chars
    assert predict["image"]["minLength"] == 1
    assert bodies["Body_predict_batch_predict_batch_post"]["properties"]["images"]["maxItems"] == (
        Settings().max_batch_images
    )

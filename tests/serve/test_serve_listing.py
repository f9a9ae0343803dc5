"""The service's text and photo + text answers: /predict with a text, /predict/text,
/predict/combined, against a real temporary registry holding one model of each kind.

The store has the image versions of ``tests.helpers.served_versions`` plus a TF-IDF text model
trained on a few listings and a listing model (the image version 1's network, that text
model and a fusion head with seeded random weights), each registered under its own name
with its ``input`` tag. Every answer is compared with what the registered pyfunc says.
"""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from registry.kinds import LISTING_MODEL_NAME, TEXT_MODEL_NAME
from serve.app import MODEL_HEADER, create_app
from tests.helpers.served_versions import (
    CATEGORIES,
    NAME,
    PHOTOS,
    photo,
    settings_for,
    wait_until,
)


def _promote_listing_models(uri: str) -> None:
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(TEXT_MODEL_NAME, "production", "1")
    client.set_registered_model_alias(LISTING_MODEL_NAME, "production", "1")


def _service(uri: str, **overrides) -> TestClient:
    return TestClient(create_app(settings_for(uri, **overrides)))


def _wait_for_every_kind(client: TestClient) -> None:
    _wait_status(client, "/predict", 200, files=photo())
    _wait_status(client, "/predict/text", 200, data={"text": "iphone"})
    _wait_status(client, "/predict/combined", 200, files=photo(), data={"text": "iphone"})


def _wait_status(client: TestClient, route: str, status: int, **request) -> dict:
    def answered():
        reply = client.post(route, **request)
        return reply if reply.status_code == status else None

    return wait_until(answered, 120.0, f"{route} answering {status}")


def _pyfunc(uri: str, name: str, frame: pd.DataFrame) -> np.ndarray:
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/1")
    return np.array(loaded.predict(frame)["probabilities"].tolist())


@pytest.fixture
def served(listing_store: str) -> Iterator[TestClient]:
    """The service with a model of every kind in production, all three loaded."""
    _promote_listing_models(listing_store)
    with _service(listing_store) as client:
        _wait_for_every_kind(client)
        yield client


def test_text_is_answered_by_the_text_model_as_its_pyfunc_does(served, listing_store) -> None:
    reply = served.post("/predict/text", data={"text": "Samsung galaxy, as new"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["input"] == "text"
    assert body["model"]["name"] == TEXT_MODEL_NAME and body["model"]["version"] == 1
    assert reply.headers[MODEL_HEADER] == "1"
    assert body["Category"] == body["category"] and len(body["Probabilities"]) == 3
    expected = _pyfunc(
        listing_store, TEXT_MODEL_NAME, pd.DataFrame({"text": ["Samsung galaxy, as new"]})
    )
    np.testing.assert_allclose(body["Probabilities"], expected[0], rtol=1e-6, atol=1e-7)
    assert body["category"] == CATEGORIES[int(expected[0].argmax())]


def test_a_photo_with_text_is_answered_by_the_listing_model(served, listing_store) -> None:
    data = {"text": "Corner sofa"}
    reply = served.post("/predict", files=photo(1), data=data)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["input"] == "image+text"
    assert body["model"]["name"] == LISTING_MODEL_NAME
    combined = served.post("/predict/combined", files=photo(1), data=data).json()
    assert combined["top_k"] == body["top_k"]
    expected = _pyfunc(
        listing_store,
        LISTING_MODEL_NAME,
        pd.DataFrame({"image": [PHOTOS[1]], "text": ["Corner sofa"]}),
    )
    np.testing.assert_allclose(combined["Probabilities"], expected[0], rtol=1e-4, atol=1e-5)

    alone = served.post("/predict", files=photo(1)).json()
    assert alone["input"] == "image" and alone["model"]["name"] == NAME


@pytest.mark.parametrize(
    ("route", "text", "words"),
    [
        ("/predict/text", "", "text is empty"),
        ("/predict/text", "   \n ", "text is empty"),
        ("/predict/text", "x" * 51, "over the 50 allowed"),
        ("/predict/combined", "", "text is empty"),
        ("/predict", " ", "text is empty"),
        ("/predict", "y" * 51, "SERVE_MAX_TEXT_CHARS"),
    ],
)
def test_an_empty_or_over_long_text_is_a_422_that_says_why(
    listing_store, route, text, words
) -> None:
    _promote_listing_models(listing_store)
    with _service(listing_store, max_text_chars=50) as client:
        _wait_for_every_kind(client)
        files = None if route == "/predict/text" else photo()
        reply = client.post(route, files=files, data={"text": text})
        assert reply.status_code == 422, reply.text
        assert words in reply.json()["detail"]


def test_without_listing_models_text_routes_say_so_and_predict_uses_thephoto(listing_store) -> None:
    with _service(listing_store) as client:
        reply = _wait_status(client, "/predict", 200, files=photo(), data={"text": "sofa"})
        assert reply.json()["input"] == "image"
        missing = client.post("/predict/text", data={"text": "sofa"})
        assert missing.status_code == 503 and "no text model" in missing.json()["detail"]
        assert missing.headers["Retry-After"]
        missing = client.post("/predict/combined", files=photo(), data={"text": "sofa"})
        assert missing.status_code == 503 and "no image+text model" in missing.json()["detail"]


def test_a_version_of_another_kind_is_never_served_in_a_slot(listing_store) -> None:
    _promote_listing_models(listing_store)
    wrong = f"models:/{TEXT_MODEL_NAME}@production"
    with _service(listing_store, listing_model_uri=wrong) as client:

        def refused():
            reply = client.post("/predict/combined", files=photo(), data={"text": "sofa"})
            detail = reply.json()["detail"]
            return reply if reply.status_code == 503 and "takes text input" in detail else None

        reply = wait_until(refused, 120.0, "the listing slot refusing a text model")
        assert "image+text" in reply.json()["detail"]
        _wait_status(client, "/predict", 200, files=photo())
        assert client.post("/predict", files=photo(), data={"text": "x"}).json()["input"] == "image"


def test_a_kind_never_registered_says_which_entry_point_trains_it_and_which_setting(
    listing_store: str,
) -> None:
    """With no registered model of a kind, its routes' 503 names the entry point that trains
    one and the setting that points the service at it, not the CLI's flags."""
    client = mlflow.MlflowClient(tracking_uri=listing_store, registry_uri=listing_store)
    for name in (NAME, TEXT_MODEL_NAME, LISTING_MODEL_NAME):
        client.delete_registered_model(name)
    expected = {
        "/predict": ("-e train --env-manager local", "MODEL_URI"),
        "/predict/text": ("-e train_text --env-manager local", "TEXT_MODEL_URI"),
        "/predict/combined": ("-e train_combined --env-manager local", "LISTING_MODEL_URI"),
    }
    with _service(listing_store) as service:
        for route, (entry_point, setting) in expected.items():

            def missing(route=route):
                reply = service.post(route, files=photo(), data={"text": "sofa"})
                detail = reply.json()["detail"]
                return detail if "no registered model" in detail else None

            detail = wait_until(missing, 120.0, f"{route} saying the model is missing")
            assert f"`mlflow run . {entry_point}`" in detail, detail
            assert f"point {setting} at another model" in detail, detail
            assert "--model-name" not in detail, detail


@pytest.mark.slow
def test_try_it_sends_the_photo_with_its_text_and_says_which_model_answered(
    listing_store: str, tmp_path
) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    _promote_listing_models(listing_store)
    picture = tmp_path / "sofa.jpg"
    picture.write_bytes(PHOTOS[1])
    done = subprocess.run(
        [sys.executable, "-m", "serve.try_it", "--photo", str(picture), "--text", "Corner sofa"],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "MLFLOW_TRACKING_URI": listing_store},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert '-F text="Corner sofa"' in done.stdout
    assert f"answered by {LISTING_MODEL_NAME} version 1 (input image+text)" in done.stdout
